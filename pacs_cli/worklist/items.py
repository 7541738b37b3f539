"""Worklist items from files: the human-writable JSON format and DCMTK's ``.wl`` files.

An item file holds one item (a JSON object) or several (a JSON array of objects). Keys are DICOM
keywords; values are strings as DICOM writes them (dates ``YYYYMMDD``, times ``HHMM[SS]``, names
``Family^Given``), a list of strings for several values, and a list of objects for a sequence. To keep
long items readable the attributes may be grouped, as PS3.4 Table K.6-1 groups them, under
``"patient"``, ``"visit"``, ``"request"`` (imaging service request) and ``"procedure"`` (requested
procedure); the groups are only for the reader and are merged. ``"steps"`` is short for
``ScheduledProcedureStepSequence``, which every item needs, with at least one step::

    {
      "patient": {"PatientID": "PAT001", "PatientName": "Doe^Jane", "PatientBirthDate": "19800101",
                  "PatientSex": "F"},
      "visit": {"AdmissionID": "ADM1", "CurrentPatientLocation": "Ward 3"},
      "request": {"AccessionNumber": "ACC001", "RequestingPhysician": "House^Greg",
                  "ReferringPhysicianName": "Wilson^James"},
      "procedure": {"RequestedProcedureID": "RP001", "RequestedProcedureDescription": "CT head",
                    "RequestedProcedurePriority": "ROUTINE"},
      "steps": [
        {"ScheduledStationAETitle": "CT1", "Modality": "CT",
         "ScheduledProcedureStepStartDate": "20250102", "ScheduledProcedureStepStartTime": "0900",
         "ScheduledProcedureStepID": "SPS001", "ScheduledProcedureStepDescription": "CT head plain",
         "ScheduledPerformingPhysicianName": "Cuddy^Lisa", "ScheduledProcedureStepStatus": "SCHEDULED"}
      ]
    }

A missing Study Instance UID is made up from the file name, accession number and requested procedure
ID, so it stays the same each time the file is read. A step without a status is SCHEDULED.

``.wl`` files are DICOM datasets as DCMTK's ``wlmscpfs`` serves them (``dump2dcm`` output, with or
without File Meta); they are read as they are.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

GROUPS = ("patient", "visit", "request", "procedure")
ALIASES = {"steps": "ScheduledProcedureStepSequence"}
JSON_SUFFIXES = (".json",)
YAML_SUFFIXES = (".yaml", ".yml")
WL_SUFFIXES = (".wl",)
SCHEDULED = "SCHEDULED"


class ItemError(ValueError):
    """A worklist file that cannot be read; ``str()`` names the file and the problem."""


def suffixes() -> tuple[str, ...]:
    """The file suffixes a worklist directory is scanned for (YAML only with PyYAML installed)."""
    return JSON_SUFFIXES + (YAML_SUFFIXES if _yaml() else ()) + WL_SUFFIXES


def _yaml():
    try:
        import yaml
    except ImportError:
        return None
    return yaml


def read_items(path: Path) -> list[Dataset]:
    """The worklist items in one file, completed (Study Instance UID, step status) and checked."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in WL_SUFFIXES:
        items = [_read_wl(path)]
    elif suffix in JSON_SUFFIXES or suffix in YAML_SUFFIXES:
        items = [from_mapping(obj, f"{path.name} item {n}") for n, obj in enumerate(_read_objects(path), 1)]
    else:
        raise ItemError(f"{path}: not a worklist file (use {', '.join(suffixes())})")
    return [complete(ds, f"{path.name} item {n}" if len(items) > 1 else path.name, path.name)
            for n, ds in enumerate(items, 1)]


def _read_objects(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ItemError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        if path.suffix.lower() in YAML_SUFFIXES:
            data = _yaml().safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - json and yaml raise their own error classes
        raise ItemError(f"{path}: not valid {path.suffix[1:].upper()}: {exc}") from None
    objects = data if isinstance(data, list) else [data]
    if not objects or not all(isinstance(obj, dict) for obj in objects):
        raise ItemError(f"{path}: expected an item (an object) or a list of items")
    return objects


def _read_wl(path: Path) -> Dataset:
    try:
        ds = dcmread(path, force=True)
        ds.remove_private_tags()
        for elem in ds:  # decode now, so that a broken file fails here and not during a query
            pass
    except (OSError, InvalidDicomError, ValueError, TypeError, EOFError) as exc:
        raise ItemError(f"{path}: not a DICOM worklist file: {exc}") from None
    clean = Dataset()
    clean.update(ds)  # without File Meta and preamble
    return clean


def from_mapping(obj: dict, where: str) -> Dataset:
    """A Dataset from the human-writable form (keywords, strings, lists, groups)."""
    flat = {}
    for key, value in obj.items():
        if key in GROUPS:
            if not isinstance(value, dict):
                raise ItemError(f"{where}: {key!r} must be an object of keyword: value")
            flat.update(value)
        else:
            flat[ALIASES.get(key, key)] = value
    ds = Dataset()
    for keyword, value in flat.items():
        ds.add(_element(keyword, value, where))
    return ds


def _element(keyword: str, value, where: str) -> DataElement:
    keyword = ALIASES.get(keyword, keyword)
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ItemError(f"{where}: {keyword!r} is not a DICOM keyword")
    vr = dictionary_VR(tag).split(" or ")[0]
    if vr == "SQ":
        if value in (None, ""):
            value = []
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise ItemError(f"{where}: {keyword} is a sequence: give a list of objects")
        return DataElement(tag, vr, Sequence([from_mapping(item, f"{where} {keyword}") for item in value]))
    if value is None:
        value = ""
    if isinstance(value, list):
        if not all(isinstance(v, (str, int, float)) for v in value):
            raise ItemError(f"{where}: {keyword} takes strings (a list for several values)")
        value = [str(v) for v in value]
    elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
        value = str(value)
    else:
        raise ItemError(f"{where}: {keyword} takes a string (a list for several values)")
    return DataElement(tag, vr, value, validation_mode=pydicom_config.IGNORE)


def complete(ds: Dataset, where: str, source: str) -> Dataset:
    """Check what a worklist item cannot do without and fill what can be derived (PS3.4 K.6.1.2)."""
    steps = ds.get("ScheduledProcedureStepSequence")
    if not steps:
        raise ItemError(f"{where}: no ScheduledProcedureStepSequence (\"steps\"): an item needs at least one step")
    if "StudyInstanceUID" not in ds or not ds.StudyInstanceUID:
        # The same file gives the same UID on every reload: the modality copies it into its images.
        ds.StudyInstanceUID = generate_uid(entropy_srcs=[source, str(ds.get("AccessionNumber", "")),
                                                          str(ds.get("RequestedProcedureID", "")), where])
    for step in steps:
        if not step.get("ScheduledProcedureStepStatus"):
            step.ScheduledProcedureStepStatus = SCHEDULED
    return ds


def add_file(source: Path, directory: Path) -> tuple[Path, list[Dataset]]:
    """Check ``source`` and copy it into the worklist directory under its own name; never overwrites."""
    source, directory = Path(source), Path(directory)
    datasets = read_items(source)
    target = directory / source.name
    if target.exists():
        raise ItemError(f"{target} already exists: remove it first, or edit it in place (it is reread)")
    partial = target.with_name("." + target.name + ".partial")  # dotfiles are not scanned
    partial.write_bytes(source.read_bytes())
    partial.replace(target)
    return target, datasets


def remove_files(paths: list[str], directory: Path, accession: str, holds) -> list[Path]:
    """Delete the item files of ``accession``; refuse a file that holds other accession numbers too.

    ``holds(path)`` gives the accession numbers of a file's items (from the database).
    """
    directory = Path(directory).resolve()
    removed = []
    for name in paths:
        path = (directory / name).resolve()
        if directory not in path.parents:
            raise ItemError(f"{path} is not in the worklist directory {directory}")
        others = sorted(set(holds(name)) - {accession})
        if others:
            raise ItemError(f"{path} also holds accession number(s) {', '.join(others)}: edit it instead")
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed
