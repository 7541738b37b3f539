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

from pacs_cli.dimse import requests

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

    The file goes as it is stored (:func:`~pacs_cli.dimse.requests.store_file` streams it from the
    file, after the File Meta) when the peer accepted its transfer syntax. When the peer accepted only
    one pynetdicom can convert to (Explicit and Implicit VR Little Endian), the file is read and sent as a
    dataset by pynetdicom; with neither, pynetdicom's "no presentation context" error fails the
    sub-operation without the file being read.
    """

    def send_c_store(self, dataset, msg_id=1, priority=2, originator_aet=None, originator_id=None):
        self.dul.return_socket()  # lent to a sender (requests.take_message): pynetdicom waits for the DUL to read
        if not isinstance(dataset, StoredInstance):
            return super().send_c_store(dataset, msg_id, priority, originator_aet, originator_id)
        try:
            context = self._get_valid_context(dataset.SOPClassUID, dataset.transfer_syntax, "scu")
            if context.transfer_syntax[0] != dataset.transfer_syntax:
                return super().send_c_store(dcmread(dataset.path), msg_id, priority, originator_aet, originator_id)
            request = self._file_request(dataset.path, msg_id, priority, originator_aet, originator_id)
            with requests.sending(self):  # as send_c_store: the reactor resumes after each
                response = requests.store_file(self, context.context_id, request)
            return Dataset() if response is None else self._check_received_status(response)
        except Exception as exc:
            # pynetdicom counts the exception as one failed sub-operation and goes on with the next
            log.warning("cannot send %s: %s: %s", dataset.SOPInstanceUID, type(exc).__name__, exc)
            raise

    @staticmethod
    def _file_request(path: Path, msg_id: int, priority: int, originator_aet, originator_id):
        """The C-STORE-RQ of a stored file, its UIDs from its File Meta as pynetdicom's ``send_c_store``
        takes them, read from the file's first bytes (pynetdicom reads the File Meta with pydicom and
        builds a validating primitive: measured, a quarter of a sub-operation's CPU)."""
        from pacs_cli.dimse.send import read_part10_header  # send imports the AE, whose sockets need us

        with open(path, "rb") as fp:
            header = read_part10_header(fp)
        if header is None or None in (header.media_sop_class, header.media_sop_instance):
            raise ValueError(f"{path} has no File Meta with its SOP Class and Instance UIDs")
        return requests.FileRequest(msg_id, priority, header.media_sop_class, header.media_sop_instance,
                                    (str(path), header.offset), originator_aet, originator_id)
