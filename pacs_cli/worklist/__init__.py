"""The Modality Worklist and its Performed Procedure Steps: item files, the SQLite store, the MPPS rules.

:mod:`items` reads worklist items (JSON, YAML when PyYAML is there, DCMTK ``.wl`` files) into pydicom
Datasets; :mod:`db` keeps them, and the MPPS instances, in SQLite (its only SQL); :mod:`mpps` is the
PS3.4 F.7 state machine; :mod:`scp` assembles ``pacs mwl-scp`` from them and :mod:`pacs_cli.dimse`.
Nothing here imports click or rich.
"""
