"""Issue 8, fuzzing: mutated A-ASSOCIATE-RQ PDUs and mutated DIMSE messages against one `pacs storescp`.

Hypothesis draws the mutations with a fixed seed (``derandomize=True``) and a bounded number of examples,
so a run is repeatable and takes seconds. After every example the server must have answered (a status,
an A-ASSOCIATE-AC/RJ, an A-ABORT or a closed connection, never silence), and the archive must be clean:
a row for the instance exactly when the answer was success, no file without a row, nothing left in
staging. After every batch the server survives (battery.assert_survives).
"""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import generate_uid
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    SOPClassExtendedNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import build_context

import pdus
from battery import (
    CT_IMAGE_STORAGE, RawAssociation, WatchedSCP, assert_survives, c_store_rq, command_set, measure_baseline,
    wait_until,
)
from test_storescp import dataset_bytes, make_file

FUZZ = dict(derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
ANSWER_WITHIN = 10.0  # seconds: -ta is 3 here, so even a PDU left half-sent is dropped well before


@pytest.fixture(scope="module")
def fuzz_scp(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    # Every refused request holds its association slot until -ta runs out (the lock-out hole tested
    # below): a short -ta and room for them keep the fuzzing itself from locking the fuzzer out.
    scp = WatchedSCP(root, "-ta", "3", "--max-associations", "200", "--max-per-address", "200")
    try:
        yield scp, measure_baseline(scp), root
    finally:
        scp.stop()


# --- (a) A-ASSOCIATE-RQ, built by pynetdicom, then bent -----------------------------------------------


def association_request() -> bytes:
    """A rich, valid A-ASSOCIATE-RQ from pynetdicom's own encoder: two contexts and every user item."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = "FUZZ", "PACS"
    contexts = [build_context("1.2.840.10008.1.1"),
                build_context(CT_IMAGE_STORAGE, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])]
    for number, cx in enumerate(contexts):
        cx.context_id = 2 * number + 1
    primitive.presentation_context_definition_list = contexts
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.3.0"
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = "FUZZ_1"
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid, role.scu_role, role.scp_role = CT_IMAGE_STORAGE, True, True
    identity = UserIdentityNegotiation()
    identity.user_identity_type, identity.primary_field, identity.secondary_field = 2, b"user", b"secret"
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = window.maximum_number_operations_performed = 1
    extended = SOPClassExtendedNegotiation()
    extended.sop_class_uid, extended.service_class_application_information = CT_IMAGE_STORAGE, b"\x01\x01"
    primitive.user_information = [max_length, class_uid, version, role, identity, window, extended]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


VALID_RQ = association_request()
FIXED_PART = 6 + 68  # PDU header, then protocol version .. reserved (PS3.8 Table 9-11)


def item_spans(raw: bytes) -> list[tuple[int, int]]:
    """(start, end) of every item and sub-item (PS3.8 9.3.2), as the lengths in ``raw`` say."""
    spans = []

    def walk(start: int, end: int) -> None:
        pos = start
        while pos + 4 <= end:
            kind, length = raw[pos], struct.unpack(">H", raw[pos + 2:pos + 4])[0]
            stop = min(pos + 4 + length, end)
            spans.append((pos, stop))
            if kind == 0x20:  # presentation context: ID, 3 reserved bytes, then sub-items
                walk(pos + 8, stop)
            elif kind == 0x50:  # user information: sub-items
                walk(pos + 4, stop)
            pos = stop

    walk(FIXED_PART, len(raw))
    return spans


def mutate(raw: bytes, mutation: tuple) -> bytes:
    kind, a, b = mutation
    data = bytearray(raw)
    spans = item_spans(raw) or [(FIXED_PART, len(raw))]
    start, end = spans[a % len(spans)]
    if kind == "flip" and data:
        data[a % len(data)] ^= 1 + b % 255
    elif kind == "pdu-length":
        data[2:6] = struct.pack(">I", b)
    elif kind == "item-length" and end - start >= 4:
        data[start + 2:start + 4] = struct.pack(">H", b & 0xFFFF)
    elif kind == "truncate":
        del data[a % (len(data) + 1):]
    elif kind == "duplicate":
        data[end:end] = raw[start:end] * (1 + b % 3)
    elif kind == "drop":
        del data[start:end]
    elif kind == "junk":
        data[a % (len(data) + 1):a % (len(data) + 1)] = bytes([b & 0xFF]) * (1 + b % 64)
    return bytes(data)


mutations = st.tuples(st.sampled_from(["flip", "pdu-length", "item-length", "truncate", "duplicate", "drop", "junk"]),
                      st.integers(0, 1 << 16), st.integers(0, (1 << 32) - 1))


def with_pdu_length(data: bytes) -> bytes:
    """The PDU length made true again, so a mutation gets past the first check."""
    return data[:2] + struct.pack(">I", max(len(data) - 6, 0)) + data[6:] if len(data) >= 6 else data


def first_reply(port: int, data: bytes, patience: float = 0.2) -> int | None:
    """The first byte (PDU type) the server answers ``data`` with, None for a close; fails on silence.

    A request whose lengths promise more bytes than were sent leaves the server waiting (until -ta):
    after ``patience`` seconds without an answer we close our side, and the server must then close too.
    """
    reply = b""
    with socket.create_connection(("127.0.0.1", port), timeout=patience) as sock:
        try:
            sock.sendall(data)
            try:
                reply = sock.recv(1)
            except TimeoutError:
                sock.shutdown(socket.SHUT_WR)
                sock.settimeout(ANSWER_WITHIN)
                reply = sock.recv(1)
            sock.settimeout(ANSWER_WITHIN)
            while sock.recv(65536):  # then the server must close: an AC is followed by our EOF
                sock.shutdown(socket.SHUT_WR)
        except TimeoutError:
            pytest.fail(f"no reply and no close within {ANSWER_WITHIN} s to {data[:80].hex()}...")
        except OSError:  # reset, broken pipe, not connected any more: the server closed on us
            pass
    return reply[0] if reply else None


def test_pynetdicom_built_request_is_accepted(fuzz_scp):
    scp, _, _ = fuzz_scp
    # A-ASSOCIATE-AC: the base of the mutations is valid
    assert first_reply(scp.port, VALID_RQ, patience=ANSWER_WITHIN) == 0x02


def test_mutated_association_requests(fuzz_scp):
    scp, baseline, _ = fuzz_scp
    replies = []

    @settings(max_examples=120, **FUZZ)
    @given(st.lists(mutations, min_size=1, max_size=4), st.booleans())
    def one(changes, fix_length):
        data = VALID_RQ
        for change in changes:
            data = mutate(data, change)
        if fix_length:
            data = with_pdu_length(data)
        reply = first_reply(scp.port, data)
        assert reply in (None, 0x02, 0x03, 0x07), f"PDU type {reply} in answer to an A-ASSOCIATE-RQ"
        replies.append(reply)

    one()
    assert {0x02, 0x07} <= set(replies), set(replies)  # some mutations pass, some are refused
    assert_survives(scp, baseline, "mutated A-ASSOCIATE-RQs")


BAD_REQUESTS = {
    "aborted: not DICOM's application context": pdus.associate_rq(application_context=b"1.2.3"),
    "dropped: PDU longer than 1 MiB": b"\x01\x00\x7f\xff\xff\xff" + bytes(100),
    "closed: half a request": pdus.associate_rq()[:40],
}


@pytest.mark.parametrize("kind", BAD_REQUESTS)
def test_refused_requests_free_their_association_slot_at_once(watched_scp, kind):
    scp = watched_scp("-ta", "2", "--max-associations", "4", "--max-per-address", "4")
    baseline = measure_baseline(scp)
    for _ in range(4):
        first_reply(scp.port, BAD_REQUESTS[kind], patience=0.05)
    assert_survives(scp, baseline, f"4 requests {kind}")  # its C-ECHO comes well within -ta


# --- (b) DIMSE: a valid association, then a mutated command set or dataset ------------------------------

ACCEPTABLE_STATUSES = {0x0000, 0xA700, 0xC000, 0x0122, 0x0211, 0xA900}


def explicit_elements(data: bytes) -> list[tuple[int, bytes]]:
    """(tag, encoded element) of a flat Explicit VR Little Endian dataset, in order."""
    out, pos = [], 0
    while pos + 8 <= len(data):
        group, elem = struct.unpack("<HH", data[pos:pos + 4])
        vr = data[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV", b"SV", b"UV"):
            length, header = struct.unpack("<I", data[pos + 8:pos + 12])[0], 12
        else:
            length, header = struct.unpack("<H", data[pos + 6:pos + 8])[0], 8
        out.append(((group << 16) | elem, data[pos:pos + header + length]))
        pos += header + length
    return out


def explicit(tag: int, vr: bytes, value: bytes, length: int | None = None) -> bytes:
    length = len(value) if length is None else length
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return head + b"\0\0" + struct.pack("<I", length) + value
    return head + struct.pack("<H", length) + value


def with_element(elements: list[tuple[int, bytes]], tag: int, encoded: bytes) -> bytes:
    """The dataset with ``encoded`` put in tag order (replacing an element of the same tag)."""
    kept = [(t, e) for t, e in elements if t != tag] + [(tag, encoded)]
    return b"".join(e for _, e in sorted(kept, key=lambda pair: pair[0]))


def nested_sequences(depth: int, undefined: bool) -> bytes:
    """(0008,1115) nested ``depth`` deep, one item per level; undefined lengths with delimiters, or defined."""
    sq_tag = struct.pack("<HH", 0x0008, 0x1115) + b"SQ\0\0"
    item, item_end, seq_end = b"\xfe\xff\x00\xe0", b"\xfe\xff\x0d\xe0\0\0\0\0", b"\xfe\xff\xdd\xe0\0\0\0\0"
    if undefined:
        return (sq_tag + b"\xff" * 4 + item + b"\xff" * 4) * depth + (item_end + seq_end) * depth
    lengths, inner = [], 0  # from the innermost level out: item = 8 + element below; SQ value = item
    for _ in range(depth):
        lengths.append(8 + inner)
        inner = 12 + lengths[-1]
    return b"".join(sq_tag + struct.pack("<I", n) + item + struct.pack("<I", n - 8) for n in reversed(lengths))


class Exchange:
    """One C-STORE over a raw association: what came back, and the archive checked afterwards.

    A file left in staging by a request the server dropped before any handler ran (an abort or a
    close) is a known hole, pinned by test_staged_file_is_removed_when_the_request_is_dropped: it is
    recorded in ``orphans`` and removed, so that every other invariant can still be checked.
    """

    def __init__(self, scp: WatchedSCP):
        self.scp = scp
        self.orphans: list[tuple[tuple, str]] = []

    def run(self, uid: str, command: bytes, dataset: bytes | None, patience: float = ANSWER_WITHIN,
            label: tuple = ()) -> tuple[str, int | None]:
        assoc = RawAssociation(self.scp.port, timeout=ANSWER_WITHIN)
        try:
            assert assoc.accepted
            assoc.send_message(command, dataset)
            outcome = assoc.response(patience)
            if outcome[0] == "status":
                assoc.release()
        finally:
            assoc.close()
        self.check(uid, outcome, label)
        return outcome

    def check(self, uid: str, outcome: tuple[str, int | None], label: tuple = ()) -> None:
        kind, code = outcome
        assert kind in ("status", "abort", "closed", "silent"), outcome
        if kind == "status":
            assert code in ACCEPTABLE_STATUSES, f"status 0x{code:04X}"
        rows = self.scp.rows("select path from instances where sop_instance_uid = ?", (uid,))
        assert len(rows) == (1 if outcome == ("status", 0x0000) else 0), (outcome, rows)
        clean = wait_until(lambda: self.scp.staging_leftovers() == [], 2)
        if not clean:
            assert kind != "status", f"a file left in staging after a {outcome}: {self.scp.staging_leftovers()}"
            self.orphans.append((label, kind))
            for path in self.scp.staging_leftovers():
                path.unlink(missing_ok=True)
        assert len(self.scp.files()) == len(self.scp.rows()), "a file in the archive without its row"


@pytest.fixture(scope="module")
def instance(fuzz_scp):
    """A valid CT instance's dataset bytes (Explicit VR Little Endian) and its elements."""
    _, _, root = fuzz_scp
    data = dataset_bytes(make_file(root / "template.dcm", sop="1.2.3.4.5.6"))
    return data, explicit_elements(data)


def retagged(data: bytes, uid: str) -> bytes:
    """The template dataset with SOP Instance UID ``uid`` (each example stores a new instance)."""
    value = uid.encode() + (b"\0" if len(uid) % 2 else b"")
    return with_element(explicit_elements(data), 0x00080018, explicit(0x00080018, b"UI", value))


def test_valid_raw_store_is_stored(fuzz_scp, instance):
    scp, _, _ = fuzz_scp
    uid = generate_uid()
    assert Exchange(scp).run(uid, c_store_rq(uid), retagged(instance[0], uid)) == ("status", 0x0000)


COMMAND_TAGS = [0x00000002, 0x00000100, 0x00000110, 0x00000120, 0x00000600, 0x00000700, 0x00000800,
                0x00000900, 0x00001000, 0x00001001, 0x00001030, 0x00001031, 0x00005010, 0x0000FFFF]


def raw_command(elements: list[tuple[int, bytes]]) -> bytes:
    """Implicit VR Little Endian elements as given (any tag, any value), CommandGroupLength first."""
    body = b"".join(struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(v)) + v for tag, v in sorted(elements))
    return struct.pack("<HHIL", 0, 0, 4, len(body)) + body


command_mutation = st.one_of(
    st.tuples(st.just("random-elements"),
              st.lists(st.tuples(st.sampled_from(COMMAND_TAGS) | st.integers(0, 0xFFFF), st.binary(max_size=24)),
                       max_size=8)),
    st.tuples(st.just("command-field"), st.integers(0, 0xFFFF)),
    st.tuples(st.just("element-length"), st.integers(0, 7), st.integers(0, (1 << 32) - 1)),
    st.tuples(st.just("truncate"), st.integers(0, 200)),
    st.tuples(st.just("flip"), st.integers(0, 200), st.integers(1, 255)),
)


def bent_command(uid: str, mutation: tuple) -> bytes:
    kind = mutation[0]
    if kind == "random-elements":
        return raw_command([(0x0000FFFF & tag, value) for tag, value in mutation[1]])
    if kind == "command-field":
        return command_set(AffectedSOPClassUID=CT_IMAGE_STORAGE, CommandField=mutation[1], MessageID=1,
                           Priority=0, CommandDataSetType=0x0000, AffectedSOPInstanceUID=uid)
    data = bytearray(c_store_rq(uid))
    if kind == "element-length":  # the length field of the n-th element (implicit VR: tag 4, length 4)
        pos, n = 0, 0
        while pos + 8 <= len(data) and n < mutation[1]:
            pos += 8 + struct.unpack("<I", data[pos + 4:pos + 8])[0]
            n += 1
        if pos + 8 <= len(data):
            data[pos + 4:pos + 8] = struct.pack("<I", mutation[2])
    elif kind == "truncate":
        del data[mutation[1] % (len(data) + 1):]
    elif kind == "flip":
        data[mutation[1] % len(data)] ^= mutation[2]
    return bytes(data)


def test_mutated_command_sets(fuzz_scp, instance):
    scp, baseline, _ = fuzz_scp
    exchange = Exchange(scp)

    @settings(max_examples=80, **FUZZ)
    @given(command_mutation, st.booleans())
    def one(mutation, with_dataset):
        uid = generate_uid()
        # without the dataset its command announces, the server rightly waits for it: do not wait long
        exchange.run(uid, bent_command(uid, mutation), retagged(instance[0], uid) if with_dataset else None,
                     patience=ANSWER_WITHIN if with_dataset else 0.25, label=mutation)

    one()
    assert_survives(scp, baseline, "mutated command sets")


dataset_mutation = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 400)),
    st.tuples(st.just("huge-length"), st.integers(0, 12),
              st.sampled_from([0xFFFFFFF0, 0x7FFFFFFF, 0x10000000, 0xFFFF])),
    st.tuples(st.just("flip"), st.integers(0, 400), st.integers(1, 255)),
    st.tuples(st.just("nesting"), st.sampled_from([1, 50, 300, 2_000]), st.booleans()),
    st.tuples(st.just("other-uid"), st.sampled_from(["1.2.3", "", "../../etc/passwd", "1.2.3" + "4" * 100])),
    st.tuples(st.just("other-class"), st.sampled_from(["1.2.840.10008.5.1.4.1.1.4", "", "1.2.3.4"])),
    st.tuples(st.just("drop"), st.sampled_from([0x00080016, 0x00080018, 0x0020000D, 0x0020000E, 0x00100020])),
)


def bent_dataset(data: bytes, uid: str, mutation: tuple) -> bytes:
    kind = mutation[0]
    elements = explicit_elements(retagged(data, uid))
    whole = b"".join(e for _, e in elements)
    if kind == "truncate":
        return whole[:mutation[1] % (len(whole) + 1)]
    if kind == "huge-length":  # the n-th element claims far more bytes than follow
        tag, encoded = elements[mutation[1] % len(elements)]
        wide = encoded[4:6] in (b"OB", b"OW", b"SQ", b"UN", b"UT")
        patched = (encoded[:8] + struct.pack("<I", mutation[2]) + encoded[12:] if wide
                   else encoded[:6] + struct.pack("<H", mutation[2] & 0xFFFF) + encoded[8:])
        return with_element(elements, tag, patched)
    if kind == "flip":
        data = bytearray(whole)
        data[mutation[1] % len(data)] ^= mutation[2]
        return bytes(data)
    if kind == "nesting":
        return with_element(elements, 0x00081115, nested_sequences(mutation[1], mutation[2]))
    if kind == "other-uid":
        value = mutation[1].encode() + (b"\0" if len(mutation[1]) % 2 else b"")
        return with_element(elements, 0x00080018, explicit(0x00080018, b"UI", value))
    if kind == "other-class":
        value = mutation[1].encode() + (b"\0" if len(mutation[1]) % 2 else b"")
        return with_element(elements, 0x00080016, explicit(0x00080016, b"UI", value))
    if kind == "drop":
        return b"".join(e for t, e in elements if t != mutation[1])
    raise AssertionError(kind)


def test_mutated_datasets(fuzz_scp, instance):
    scp, baseline, _ = fuzz_scp
    exchange = Exchange(scp)

    @settings(max_examples=150, **FUZZ)
    @given(dataset_mutation)
    def one(mutation):
        uid = generate_uid()
        outcome = exchange.run(uid, c_store_rq(uid), bent_dataset(instance[0], uid, mutation), label=mutation)
        assert outcome[0] != "silent", f"no answer to a complete C-STORE within {ANSWER_WITHIN} s"
        if mutation[0] in ("other-uid", "other-class") and mutation[1] not in ("", CT_IMAGE_STORAGE):
            assert outcome == ("status", 0xC000), (mutation, outcome)  # README: UID mismatch -> 0xC000
        if mutation[0] == "drop" and mutation[1] in (0x00080018, 0x0020000D, 0x0020000E):
            assert outcome == ("status", 0xC000), (mutation, outcome)  # no SOP Instance or hierarchy UID

    one()
    assert_survives(scp, baseline, "mutated datasets")


# --- the same classes of input, one case each, with what the README promises -----------------------


def store_one(scp: WatchedSCP, dataset: bytes, uid: str, **command) -> tuple[str, int | None]:
    exchange = Exchange(scp)
    try:
        return exchange.run(uid, c_store_rq(uid, **command), dataset)
    finally:
        assert exchange.orphans == [], f"left in staging: {exchange.orphans}"


def test_deep_nesting_with_undefined_lengths_is_refused(fuzz_scp, instance):
    """10,000 levels of sequence delimiters: pydicom's recursion ends at ~200; answered 0xC000, nothing kept."""
    scp, baseline, _ = fuzz_scp
    uid = generate_uid()
    assert store_one(scp, bent_dataset(instance[0], uid, ("nesting", 10_000, True)), uid) == ("status", 0xC000)
    assert_survives(scp, baseline, "10,000 nested sequences")


def test_deep_nesting_with_defined_lengths_is_refused(fuzz_scp, instance):
    scp, _, _ = fuzz_scp
    uid = generate_uid()
    assert store_one(scp, bent_dataset(instance[0], uid, ("nesting", 10_000, False)), uid) == ("status", 0xC000)


def cut_short(data: bytes, uid: str, how: str) -> bytes:
    elements = explicit_elements(retagged(data, uid))
    whole = b"".join(e for _, e in elements)
    if how == "Pixel Data cut short":
        return whole[:-50]
    series = dict(elements)[0x0020000E]
    return with_element(elements, 0x0020000E, series[:6] + struct.pack("<H", 0xFFF0) + series[8:])


@pytest.mark.parametrize("how", ["Pixel Data cut short", "SeriesInstanceUID claims 65,520 bytes"])
def test_element_running_past_the_end_is_refused(fuzz_scp, instance, how):
    scp, _, _ = fuzz_scp
    uid = generate_uid()
    assert store_one(scp, cut_short(instance[0], uid, how), uid) == ("status", 0xC000)


@pytest.mark.parametrize("field, value", [("AffectedSOPInstanceUID", "1.2.3.999"),
                                          ("AffectedSOPClassUID", "1.2.840.10008.5.1.4.1.1.4")])
def test_command_and_dataset_uids_that_differ_are_refused(fuzz_scp, instance, field, value):
    scp, baseline, _ = fuzz_scp
    uid = generate_uid()
    command = {"sop_class_uid": value} if field == "AffectedSOPClassUID" else {}
    if field == "AffectedSOPInstanceUID":
        dataset, uid = retagged(instance[0], uid), value
    else:
        dataset = retagged(instance[0], uid)
    assert store_one(scp, dataset, uid, **command) == ("status", 0xC000)
    assert_survives(scp, baseline, f"a C-STORE whose {field} differs from the dataset's")


@pytest.mark.parametrize("how", ["SOP class never negotiated", "presentation context never negotiated"])
def test_staged_file_is_removed_when_the_request_is_dropped(fuzz_scp, instance, how):
    scp, _, _ = fuzz_scp
    uid = generate_uid()
    assoc = RawAssociation(scp.port, timeout=ANSWER_WITHIN)
    try:
        if how == "SOP class never negotiated":
            assoc.send_message(c_store_rq(uid, sop_class_uid="1.2.3"), retagged(instance[0], uid))
        else:
            assoc.send_message(c_store_rq(uid), retagged(instance[0], uid), context_id=3)
        assert assoc.response()[0] in ("abort", "closed")
    finally:
        assoc.close()
    try:
        assert wait_until(lambda: scp.staging_leftovers() == [], 2), scp.staging_leftovers()
    finally:
        for path in scp.staging_leftovers():  # so that the other tests of this module start clean
            path.unlink(missing_ok=True)
