"""The asynchronous operations window (PS3.7 D.3.3.3): how many requests may be outstanding at once.

With one request outstanding (the default, synchronous mode) a storage SCU waits for each C-STORE-RSP
before it reads the next file, so the sender's and the receiver's work per object add up; with a
window the sender prepares and sends the next object while the receiver stores the last. Both sides
are ours only when the peer answers the proposal: DCMTK answers none (so 1), pynetdicom answers 1.

The sub-item's two numbers have the same meaning in the request and in the answer (as dcm4che reads
them): *invoked* is how many requests the requestor may have outstanding, *performed* how many the
acceptor may have outstanding on the requestor; 0 is unlimited.
"""

from __future__ import annotations

from pynetdicom.pdu_primitives import AsynchronousOperationsWindowNegotiation
from pynetdicom.service_class import StorageServiceClass, VerificationServiceClass
from pynetdicom.sop_class import uid_to_service_class

MAX_OUTSTANDING = 16  # requests an acceptor of ours lets a requestor have outstanding


def proposal(window: int) -> list:
    """The extended negotiation items that ask for ``window`` outstanding requests (none for 1)."""
    if window <= 1:
        return []
    return [_item(window, 1)]


def granted(assoc, window: int) -> int:
    """How many requests this requestor may have outstanding, given what it proposed and the answer."""
    if window <= 1:
        return 1
    invoked, _ = assoc.acceptor.asynchronous_operations
    return window if invoked == 0 else max(1, min(window, invoked))


def grant(requestor) -> AsynchronousOperationsWindowNegotiation:
    """The acceptor's answer to a requestor's proposal.

    Requests are served one at a time, in the order they came, whatever the window: it only lets the
    requestor send the next while the last is served. That is safe for storage and verification;
    the other services keep the synchronous mode, because pynetdicom's C-GET SCP takes the next
    message off the association's queue as the response to its own C-STORE sub-operation, and a
    queued request there would be taken for one.
    """
    invoked, _ = requestor.asynchronous_operations
    if not all(_pipelines(context.abstract_syntax) for context in requestor.requested_contexts):
        invoked = 1
    return _item(MAX_OUTSTANDING if invoked == 0 else min(invoked, MAX_OUTSTANDING), 1)


def _pipelines(uid: str) -> bool:
    return uid_to_service_class(uid) in (StorageServiceClass, VerificationServiceClass)


def _item(invoked: int, performed: int) -> AsynchronousOperationsWindowNegotiation:
    item = AsynchronousOperationsWindowNegotiation()
    item.maximum_number_operations_invoked = invoked
    item.maximum_number_operations_performed = performed
    return item
