#!/usr/bin/env bash
# Run a throwaway archive for a CI job, send a folder to it with DCMTK, and check that every file arrived.
# Usage: examples/ci-archive.sh FOLDER
set -euo pipefail
folder=$1
work=$(mktemp -d)
count=$(find "$folder" -type f | wc -l)
pacs storescp --port 0 --dir "$work/archive" --ready-file "$work/ready" --events "$work/events.jsonl" \
    --exit-after "$count" --idle-exit 60 &
until [ -s "$work/ready" ]; do sleep 0.1; done
/usr/bin/storescu -aec PACS +sd +r 127.0.0.1 "$(cut -d: -f2 "$work/ready")" "$folder"
wait
stored=$(grep -c '"event": "stored"' "$work/events.jsonl")
echo "$stored of $count files stored in $work/archive"
[ "$stored" -eq "$count" ]
