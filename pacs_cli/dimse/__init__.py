"""The association/DIMSE core over pynetdicom. Never imports click or rich."""
