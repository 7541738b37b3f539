"""Start the measured programs from a small helper process, so that their peak RSS is their own.

On Linux a process's ``ru_maxrss`` survives ``execve``: it is the high-water mark of every memory image
the process had, and a freshly forked child's first image is a copy of its parent's. Forked from the bench
process (pydicom, pynetdicom, generated data: 60 MB and more), every child would read at least that. So
the bench starts one helper, this file run as a script (``python -I -S``, a few standard modules, no
threads), and asks it over a pipe to start each child. The helper forks (a plain fork: with vfork or
posix_spawn the child would inherit the helper's own high-water mark instead) and execs the program,
and reaps it with ``os.wait4`` as soon as SIGCHLD arrives, so the wall time (spawn to exit), the CPU
seconds (``ru_utime + ru_stime``) and the peak RSS (``ru_maxrss``, KiB) are the child's, including its
reaped children. What is left of the helper in a child before its exec is the floor of the method:
about 6.5 MB here, less than any program measured (DCMTK's dcmqridx, the smallest, peaks at 8.7 MB);
run.py measures it with ``true`` and prints it in the report.

Protocol: one JSON object per line. Request ``{"id", "argv", "env", "stdout", "stderr", "session"}``;
replies ``{"id", "pid"}`` once started and ``{"id", "exit": {...}}`` once reaped; a program that cannot
be executed exits with 127 and says why in its stderr file. Request ``{"id", "times": true}``: reply
``{"id", "cpu_s"}``, the CPU seconds of the helper and the children it has reaped.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time

# Nothing else at module level: what the helper imports is copied into every child before its exec and
# raises the floor (threading, subprocess and concurrent.futures would add 2-3 MB; the client imports them).


def serve() -> None:
    """The helper: start what is asked for, report each exit; kill what is left when stdin closes."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that the wakeup fd is written
    running: dict[int, tuple[int, float]] = {}  # pid -> (request id, start)
    pending = b""

    def reply(message: dict) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    def reap() -> None:
        while running:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
            if pid == 0:
                return
            request_id, start = running.pop(pid)
            reply({"id": request_id, "exit": {
                "wall_s": time.perf_counter() - start, "cpu_s": usage.ru_utime + usage.ru_stime,
                "rss_kb": usage.ru_maxrss, "returncode": os.waitstatus_to_exitcode(status)}})

    def start(request: dict) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        began = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # the child: file descriptors, session, exec; never return
            try:
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                os.dup2(os.open(request["stdout"], flags, 0o644), 1)
                os.dup2(1 if request["stderr"] == request["stdout"] else os.open(request["stderr"], flags, 0o644), 2)
                os.closerange(3, 1 << 16)
                if request["session"]:
                    os.setsid()
                os.execvpe(request["argv"][0], request["argv"], request["env"])
            except BaseException as exc:
                try:
                    os.write(2, f"cannot start {request['argv'][0]}: {exc}\n".encode())
                finally:
                    os._exit(127)
        running[pid] = (request["id"], began)
        reply({"id": request["id"], "pid": pid})

    while True:
        readable, _, _ = select.select([0, wake_r], [], [])
        if wake_r in readable:
            os.read(wake_r, 4096)
        reap()
        if 0 in readable:
            data = os.read(0, 1 << 16)
            if not data:
                break
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                request = json.loads(line)
                if request.get("times"):  # CPU seconds of the helper and every child it has reaped
                    t = os.times()
                    reply({"id": request["id"], "cpu_s": t.user + t.system + t.children_user + t.children_system})
                else:
                    start(request)
    for pid in running:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Child:
    """A child started by the helper: its pid, and a Future of its exit figures."""

    def __init__(self, pid: int, exit):
        self.pid, self.exit = pid, exit

    def running(self) -> bool:
        return not self.exit.done()


class Spawner:
    """The bench side: one helper per bench process, started on first use."""

    def __init__(self):
        import subprocess
        import threading

        self._proc = subprocess.Popen([sys.executable, "-I", "-S", __file__], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, bufsize=1)
        self._lock = threading.Lock()
        self._next = 0
        self._started: dict = {}
        self._exits: dict = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self._proc.stdout:
            message = json.loads(line)
            if "exit" in message:
                self._exits.pop(message["id"]).set_result(message["exit"])
            elif "cpu_s" in message:
                self._started.pop(message["id"]).set_result(message["cpu_s"])
            else:
                self._started.pop(message["id"]).set_result(message["pid"])
        for future in [*self._started.values(), *self._exits.values()]:  # the helper died
            if not future.done():
                future.set_exception(RuntimeError("the bench's spawn helper exited"))

    def start(self, argv: list[str], env: dict, stdout, stderr, session: bool = False) -> Child:
        from concurrent.futures import Future

        with self._lock:
            self._next += 1
            request_id = self._next
            started, exit = Future(), Future()
            self._started[request_id], self._exits[request_id] = started, exit
            self._proc.stdin.write(json.dumps({"id": request_id, "argv": argv, "env": env, "stdout": str(stdout),
                                               "stderr": str(stderr), "session": session}) + "\n")
            self._proc.stdin.flush()
        return Child(started.result(timeout=60), exit)

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by the helper and every child it has reaped."""
        from concurrent.futures import Future

        with self._lock:
            self._next += 1
            answer = Future()
            self._started[self._next] = answer
            self._proc.stdin.write(json.dumps({"id": self._next, "times": True}) + "\n")
            self._proc.stdin.flush()
        return answer.result(timeout=60)

    def close(self) -> None:
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        self._proc.wait(timeout=30)


if __name__ == "__main__":
    serve()
