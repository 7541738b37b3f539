"""Groups of Value Representations (PS3.5 6.2, 7.1.2) shared by the modules that read and write
elements as bytes (archive header scan, DIMSE encoding, the sender's quick scan, ``pacs dump``)."""

# PS3.5 7.1.2: explicit VRs whose length takes 4 bytes after 2 reserved ones; every other VR's takes 2.
LONG_LENGTH_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
LONG_LENGTH_VR_BYTES = frozenset(vr.encode("ascii") for vr in LONG_LENGTH_VRS)  # as they appear in a file
SHORT_LENGTH_VR_BYTES = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT",
                                   b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})
# Values held as text, padded with a space (PS3.5 6.2); UI is text too, padded with NUL.
TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR",
                      "UT"})
# The text whose values may hold characters beyond ASCII (PS3.5 6.1.2.3): read and written with the
# Specific Character Set.
CHARACTER_SET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
NUMBER_VRS = frozenset({"FL", "FD", "SL", "SS", "SV", "UL", "US", "UV"})
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
