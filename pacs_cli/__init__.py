"""pacs: DICOM networking tools in the spirit of DCMTK, built on pynetdicom."""

__version__ = "0.1.0"
