"""Which DICOM attribute lives in which table and column of the index: the one keyword->column map.

The store path and ``pacs index`` fill rows from :data:`COLUMNS`; the Q/R SCP builds its C-FIND SQL
from it. Each Q/R level (PS3.4 C.6.1.1 Patient Root, C.6.2.1 Study Root) has one table:

=========  ==========  ==============================================================
level      table       key
=========  ==========  ==============================================================
PATIENT    patients    (PatientID, IssuerOfPatientID); PatientID may be empty
STUDY      studies     StudyInstanceUID; ``patient_pk`` -> patients.pk
SERIES     series      SeriesInstanceUID; ``study_pk`` -> studies.pk
IMAGE      instances   SOPInstanceUID; ``series_pk`` -> series.pk; plus the file columns
=========  ==========  ==============================================================

Every table has an integer primary key ``pk``. Values are the dataset's strings, decoded with its
Specific Character Set (pydicom does this), padding removed, multiple values joined with ``\\``;
an absent or zero-length attribute is ``''`` (never NULL), so "zero length" has one spelling and
the Q/R rule "an empty required key in the database matches" (PS3.4 C.2.2.1) is easy. IS values stay
strings, so ``007`` survives. Each PN column has a ``<column>_norm`` sibling (:func:`normalise_pn`)
for PS3.4's case- and accent-insensitive PN matching; SQLite's ``upper()``/``LIKE`` fold ASCII only.

Columns with ``source="derived"`` are computed by the index in the same transaction that changes the
rows below them (ModalitiesInStudy, the Number Of ... Related ... counts). At the patient and study
levels the values come from the most recent instance stored that has a non-empty value.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

PATIENT, STUDY, SERIES, IMAGE = "PATIENT", "STUDY", "SERIES", "IMAGE"
LEVELS = (PATIENT, STUDY, SERIES, IMAGE)
TABLES = {PATIENT: "patients", STUDY: "studies", SERIES: "series", IMAGE: "instances"}
# The foreign key each table holds to the level above it.
PARENT_KEYS = {STUDY: "patient_pk", SERIES: "study_pk", IMAGE: "series_pk"}


@dataclass(frozen=True)
class Column:
    """One DICOM attribute in the index.

    ``key`` is its matching-key type in PS3.4 C.6: U unique, R required, O optional.
    ``source`` says where the value comes from: the dataset, the File Meta group, or the index.
    """

    keyword: str
    level: str
    column: str
    vr: str
    key: str = "O"
    source: str = "dataset"

    @property
    def table(self) -> str:
        return TABLES[self.level]

    @property
    def norm_column(self) -> str | None:
        """The case- and accent-folded twin of a PN column, for matching."""
        return f"{self.column}_norm" if self.vr == "PN" else None


def _c(keyword, level, column, vr, key="O", source="dataset") -> Column:
    return Column(keyword, level, column, vr, key, source)


COLUMNS: tuple[Column, ...] = (
    _c("PatientName", PATIENT, "patient_name", "PN", "R"),
    _c("PatientID", PATIENT, "patient_id", "LO", "U"),
    _c("IssuerOfPatientID", PATIENT, "issuer_of_patient_id", "LO"),
    _c("PatientBirthDate", PATIENT, "patient_birth_date", "DA"),
    _c("PatientSex", PATIENT, "patient_sex", "CS"),
    _c("NumberOfPatientRelatedStudies", PATIENT, "number_of_patient_related_studies", "IS", source="derived"),
    _c("NumberOfPatientRelatedSeries", PATIENT, "number_of_patient_related_series", "IS", source="derived"),
    _c("NumberOfPatientRelatedInstances", PATIENT, "number_of_patient_related_instances", "IS", source="derived"),
    _c("StudyInstanceUID", STUDY, "study_instance_uid", "UI", "U"),
    _c("StudyDate", STUDY, "study_date", "DA", "R"),
    _c("StudyTime", STUDY, "study_time", "TM", "R"),
    _c("AccessionNumber", STUDY, "accession_number", "SH", "R"),
    _c("StudyID", STUDY, "study_id", "SH", "R"),
    _c("ReferringPhysicianName", STUDY, "referring_physician_name", "PN"),
    _c("StudyDescription", STUDY, "study_description", "LO"),
    _c("ModalitiesInStudy", STUDY, "modalities_in_study", "CS", source="derived"),
    _c("SOPClassesInStudy", STUDY, "sop_classes_in_study", "UI", source="derived"),
    _c("NumberOfStudyRelatedSeries", STUDY, "number_of_study_related_series", "IS", source="derived"),
    _c("NumberOfStudyRelatedInstances", STUDY, "number_of_study_related_instances", "IS", source="derived"),
    _c("SeriesInstanceUID", SERIES, "series_instance_uid", "UI", "U"),
    _c("Modality", SERIES, "modality", "CS", "R"),
    _c("SeriesNumber", SERIES, "series_number", "IS", "R"),
    _c("SeriesDescription", SERIES, "series_description", "LO"),
    _c("BodyPartExamined", SERIES, "body_part_examined", "CS"),
    _c("SeriesDate", SERIES, "series_date", "DA"),
    _c("SeriesTime", SERIES, "series_time", "TM"),
    _c("NumberOfSeriesRelatedInstances", SERIES, "number_of_series_related_instances", "IS", source="derived"),
    _c("SOPInstanceUID", IMAGE, "sop_instance_uid", "UI", "U"),
    _c("InstanceNumber", IMAGE, "instance_number", "IS", "R"),
    _c("SOPClassUID", IMAGE, "sop_class_uid", "UI"),
    _c("SpecificCharacterSet", IMAGE, "specific_character_set", "CS"),
    # (0002,0010) from the File Meta group; C-FIND returns it as AvailableTransferSyntaxUID (0008,3002).
    _c("TransferSyntaxUID", IMAGE, "transfer_syntax_uid", "UI", source="meta"),
)

BY_KEYWORD: dict[str, Column] = {c.keyword: c for c in COLUMNS}
UNIQUE_KEYS: dict[str, Column] = {c.level: c for c in COLUMNS if c.key == "U"}

# What a header read must return: every column filled from the file.
READ_KEYWORDS: tuple[str, ...] = tuple(c.keyword for c in COLUMNS if c.source != "derived")

# instances' columns that describe the file rather than the dataset.
FILE_COLUMNS = ("path", "size", "mtime_ns", "received_at", "calling_aet", "source")


def columns_of(level: str, source: str | None = None) -> tuple[Column, ...]:
    """The columns of one level, optionally only those from one source."""
    return tuple(c for c in COLUMNS if c.level == level and (source is None or c.source == source))


def normalise_pn(value: str) -> str:
    """Fold a PN value for matching: NFKD, combining marks dropped, Unicode case-folded.

    PS3.4 C.2.2.2.1 lets PN matching ignore case and accents; apply the same function to the
    query value. All component groups are kept (alphabetic=ideographic=phonetic).
    """
    if value.isascii():  # nothing to decompose: the common case, per stored name
        return value.lower()
    decomposed = unicodedata.normalize("NFKD", value)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()
