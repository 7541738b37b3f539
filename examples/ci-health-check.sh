#!/usr/bin/env bash
# Wait until a DICOM peer answers C-ECHO (at most 60 tries), then report its latency.
# Usage: examples/ci-health-check.sh HOST PORT [CALLED_AET]
set -euo pipefail
host=$1 port=$2 aec=${3:-ANY-SCP}
for _ in $(seq 60); do
    if pacs -q echo "$host" "$port" -aec "$aec" -to 2; then
        exec pacs echo "$host" "$port" -aec "$aec" --repeat 5
    fi
    sleep 1
done
echo "no DICOM peer answered at $host:$port" >&2
exit 3
