#!/usr/bin/env bash
# The whole modality workflow with pacs commands alone, against one `pacs storescp --worklist` playing
# RIS and PACS: query the worklist, N-CREATE the performed step, send the images, N-SET COMPLETED,
# then check the step's status and the stored study.
#
# Usage: examples/modality-workflow.sh [IMAGE_DIR]   (without one, a few small CT images are made)
set -euo pipefail
work=$(mktemp -d)
trap 'kill "$scp" 2>/dev/null || true; wait "$scp" 2>/dev/null || true' EXIT

mkdir -p "$work/worklist" "$work/images"
cat > "$work/worklist/ct-head.json" <<'ITEM'
{
  "patient": {"PatientID": "WF001", "PatientName": "Workflow^Test", "PatientBirthDate": "19700101", "PatientSex": "O"},
  "request": {"AccessionNumber": "ACCWF1"},
  "procedure": {"RequestedProcedureID": "RPWF1", "RequestedProcedureDescription": "CT head",
                "StudyInstanceUID": "1.2.826.0.1.3680043.9.7133.1.1"},
  "steps": [{"ScheduledStationAETitle": "CT1", "Modality": "CT", "ScheduledProcedureStepStartDate": "20250102",
             "ScheduledProcedureStepStartTime": "0900", "ScheduledProcedureStepID": "SPSWF1",
             "ScheduledProcedureStepDescription": "CT head plain"}]
}
ITEM

# 1. The RIS and the PACS, in one process, on a free port.
pacs storescp --port 0 --ready-file "$work/ready" --dir "$work/archive" --worklist "$work/worklist" \
    --events "$work/events.jsonl" -q &
scp=$!
until [ -s "$work/ready" ]; do sleep 0.1; done
port=$(cut -d: -f2 "$work/ready")

# 2. The modality asks for its work.
pacs find 127.0.0.1 "$port" -W -aet CT1 -k ScheduledProcedureStepSequence[0].ScheduledStationAETitle=CT1 \
    -k AccessionNumber -k PatientID --format csv -q > "$work/worklist.csv"
grep -q ACCWF1 "$work/worklist.csv"

# 3. It starts the procedure: N-CREATE IN PROGRESS, from the worklist item.
uid=$(pacs mpps-scu create 127.0.0.1 "$port" -aet CT1 --from-worklist -k AccessionNumber=ACCWF1 -q)

# 4. It sends its images, made for this study if none were given.
images=${1:-$work/images}
if [ -z "${1:-}" ]; then
    python3 - "$work/images" <<'MAKE'
import sys
from pathlib import Path
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
series = generate_uid()
for i in range(3):
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", generate_uid()
    ds.PatientID, ds.PatientName, ds.AccessionNumber = "WF001", "Workflow^Test", "ACCWF1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = "1.2.826.0.1.3680043.9.7133.1.1", series, "CT"
    ds.InstanceNumber = i + 1
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.save_as(Path(sys.argv[1]) / f"{i}.dcm", enforce_file_format=True)
MAKE
fi
pacs storescu 127.0.0.1 "$port" -aet CT1 "$images" -q

# 5. It reports completion with the series it sent.
pacs mpps-scu set "$uid" 127.0.0.1 "$port" -aet CT1 --status COMPLETED --series-from "$images" -q

# 6. The step is completed, and the study is in the archive.
pacs mwl-scp --dir "$work/worklist" --list > "$work/steps.txt"
grep -q COMPLETED "$work/steps.txt"
count=$(pacs find --dir "$work/archive" --level IMAGE -k AccessionNumber=ACCWF1 --format ndjson -q | wc -l)
[ "$count" -eq "$(find "$images" -name '*.dcm' | wc -l)" ]
echo "workflow complete: MPPS $uid COMPLETED, $count images stored"
