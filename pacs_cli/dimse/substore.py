"""C-MOVE and C-GET sub-operations sent from the archived file, its dataset never decoded.

pynetdicom's Q/R service class takes only a pydicom ``Dataset`` from a retrieve handler and hands it
to ``send_c_store``, which encodes it again: every instance read whole, decoded and re-encoded, about
2 ms of CPU for a 512 KB CT image (measured). The handler yields a :class:`StoredInstance` instead, and
:class:`SendsStoredFiles`, mixed into the association class pacs installs on every association
(:class:`~pacs_cli.dimse.reactor.EventDrivenAssociation`), sends the file's bytes as they lie on disk:
over the C-GET requester's association, and over the C-MOVE sub-association, which the SCP's AE opens
and which is pacs's own because that AE is a :class:`~pacs_cli.dimse.ae.RequestorAE`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import _config

log = logging.getLogger("pacs_cli.retrieve")


class StoredInstance(Dataset):
    """An archived instance as the index knows it (SOP Class and Instance UID, patient, study), with
    the path and transfer syntax of its file.

    A ``Dataset`` because pynetdicom's service class sends nothing else, and it needs the SOP Instance
    UID for the Failed SOP Instance UID List (PS3.4 C.4.2.1.5). It has no File Meta on purpose: an
    association without :class:`SendsStoredFiles` cannot send it, and fails the sub-operation rather
    than sending these few elements as if they were the instance.
    """

    def __init__(self, path: Path, transfer_syntax: str, **elements: str):
        super().__init__()
        for keyword, value in elements.items():
            setattr(self, keyword, value)
        self.path = path
        self.transfer_syntax = UID(transfer_syntax or "")


class SendsStoredFiles:
    """``send_c_store`` that also takes a :class:`StoredInstance`.

    The file goes as it is stored (pynetdicom's chunked send streams it from the file, after the File
    Meta) when the peer accepted its transfer syntax. When the peer accepted only one pynetdicom can
    convert to (Explicit and Implicit VR Little Endian), the file is read and sent as a dataset, as
    every sub-operation was before; with neither, pynetdicom's "no presentation context" error fails
    the sub-operation without the file being read.
    """

    def send_c_store(self, dataset, *args, **kwargs):
        if not isinstance(dataset, StoredInstance):
            return super().send_c_store(dataset, *args, **kwargs)
        try:
            return super().send_c_store(self._as_sent(dataset), *args, **kwargs)
        except Exception as exc:
            # pynetdicom counts the exception as one failed sub-operation and goes on with the next
            log.warning("cannot send %s: %s: %s", dataset.SOPInstanceUID, type(exc).__name__, exc)
            raise

    def _as_sent(self, instance: StoredInstance):
        """The file's path when the peer takes it as stored, else the file read into a dataset.

        The context is chosen by pynetdicom's own lookup, the one its ``send_c_store`` makes: it
        prefers an exact transfer syntax match and otherwise returns a convertible one.
        """
        context = self._get_valid_context(instance.SOPClassUID, instance.transfer_syntax, "scu")
        if context.transfer_syntax[0] != instance.transfer_syntax:
            return dcmread(instance.path)
        # pynetdicom reads this process-wide switch on each call; off, it would decode the file
        _config.STORE_SEND_CHUNKED_DATASET = True
        return instance.path
