"""The audit trail: the DICOM audit message vocabulary (PS3.15 A.5, IHE ATNA) as JSON lines.

A local append-only file is what a command-line SCP can promise; each line holds the fields of an
ATNA audit message (EventIdentification, ActiveParticipant, AuditSourceIdentification,
ParticipantObjectIdentification) so that it can be forwarded to a syslog/ATNA repository as is.
Which events, with which codes (PS3.16 CID 400-405):

| what happened | EventID | EventTypeCode | action |
|---|---|---|---|
| SCP started / stopped | 110100 Application Activity | 110120 / 110121 | E |
| association accepted / released | 110114 User Authentication | 110122 Login / 110123 Logout | E |
| association rejected, address refused, TLS or PDU failure | 110113 Security Alert | 110126 Node Authentication | E |
| instance stored (or refused) | 110104 DICOM Instances Transferred | | C |
| query | 110112 Query | | E |
| C-MOVE / C-GET sub-operations start | 110102 Begin Transferring DICOM Instances | | E |
| instances sent by C-MOVE / C-GET (or the retrieve refused) | 110104 DICOM Instances Transferred | | R |
| MPPS created / updated | 110111 Procedure Record | | C / U |
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from pacs_cli.hooks import JsonLines, utc_now

SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE = 0, 4, 8


def _code(code: str, meaning: str, system: str = "DCM") -> dict:
    return {"code": code, "codeSystemName": system, "displayName": meaning}


APPLICATION_ACTIVITY = _code("110100", "Application Activity")
USER_AUTHENTICATION = _code("110114", "User Authentication")
SECURITY_ALERT = _code("110113", "Security Alert")
INSTANCES_TRANSFERRED = _code("110104", "DICOM Instances Transferred")
BEGIN_TRANSFERRING = _code("110102", "Begin Transferring DICOM Instances")
QUERY = _code("110112", "Query")
PROCEDURE_RECORD = _code("110111", "Procedure Record")

APPLICATION_START = _code("110120", "Application Start")
APPLICATION_STOP = _code("110121", "Application Stop")
LOGIN = _code("110122", "Login")
LOGOUT = _code("110123", "Logout")
NODE_AUTHENTICATION = _code("110126", "Node Authentication")

SOURCE = _code("110153", "Source Role ID")
DESTINATION = _code("110152", "Destination Role ID")
APPLICATION = _code("110150", "Application")


def peer(ae_title: str, address: str, requestor: bool = True, role: dict | None = SOURCE) -> dict:
    """An ActiveParticipant that is a network node (NetworkAccessPointTypeCode 2: IP address).

    ``role`` None: a participant with no Source or Destination role, such as the requestor of a C-MOVE
    whose instances go to a third node.
    """
    participant = {"UserID": ae_title, "UserIsRequestor": requestor, "RoleIDCode": role,
                   "NetworkAccessPointID": address, "NetworkAccessPointTypeCode": "2"}
    if role is None:
        del participant["RoleIDCode"]
    return participant


def patient(patient_id: str) -> dict:
    return {"ParticipantObjectID": patient_id, "ParticipantObjectTypeCode": "1",
            "ParticipantObjectTypeCodeRole": "1", "ParticipantObjectIDTypeCode": _code("2", "Patient Number", "RFC-3881")}


def study(study_uid: str, sop_class_uid: str = "", instances: tuple[str, ...] = (),
          classes: Mapping[str, Sequence[str]] | None = None) -> dict:
    """A study participant object; its SOP classes, each with its instances, as a list (the schema's
    SOPClass is repeatable): ``sop_class_uid`` with ``instances``, and/or ``classes`` (class -> instances)."""
    obj = {"ParticipantObjectID": study_uid, "ParticipantObjectTypeCode": "2",
           "ParticipantObjectTypeCodeRole": "3", "ParticipantObjectIDTypeCode": _code("110180", "Study Instance UID")}
    by_class = {sop_class_uid: list(instances)} if sop_class_uid else {}
    for uid, uids in (classes or {}).items():
        by_class.setdefault(uid, []).extend(uids)
    if by_class:
        obj["ParticipantObjectDescription"] = {"SOPClass": [
            {"UID": uid, "NumberOfInstances": len(uids), "Instance": [{"UID": i} for i in uids]}
            for uid, uids in by_class.items()]}
    return obj


def studies_of(instances: Iterable[tuple[str, str, str, str]]) -> list[dict]:
    """Patient and study participant objects for (patient ID, study UID, SOP class, SOP instance) rows;
    an empty value (not known) adds nothing at its level."""
    patients: dict[str, None] = {}
    by_study: dict[str, dict[str, list[str]]] = {}
    for patient_id, study_uid, sop_class_uid, sop_instance_uid in instances:
        if patient_id:
            patients.setdefault(patient_id)
        if study_uid:
            classes = by_study.setdefault(study_uid, {})
            if sop_class_uid and sop_instance_uid:
                classes.setdefault(sop_class_uid, []).append(sop_instance_uid)
    return [patient(p) for p in patients] + [study(uid, classes=classes) for uid, classes in by_study.items()]


class AuditLog(JsonLines):
    """``--audit-log FILE``: one ATNA-shaped record per line."""

    def __init__(self, path: Path | None, ae_title: str):
        super().__init__(path, "audit log")
        self.ae_title = ae_title
        self.host = socket.gethostname()
        self.source = {"AuditSourceID": f"{ae_title}@{self.host}", "AuditSourceTypeCode": "4"}

    def me(self, requestor: bool = False, role: dict = DESTINATION) -> dict:
        return {"UserID": self.ae_title, "UserIsRequestor": requestor, "RoleIDCode": role,
                "NetworkAccessPointID": self.host, "NetworkAccessPointTypeCode": "1"}

    def record(self, event_id: dict, action: str, outcome: int, participants: list[dict],
               objects: list[dict] = (), type_code: dict | None = None, description: str = "") -> None:
        if not self.enabled:
            return
        event = {"EventID": event_id, "EventActionCode": action, "EventDateTime": utc_now(),
                 "EventOutcomeIndicator": outcome}
        if type_code:
            event["EventTypeCode"] = [type_code]
        if description:
            event["EventOutcomeDescription"] = description
        record = {"EventIdentification": event, "ActiveParticipant": participants,
                  "AuditSourceIdentification": self.source}
        if objects:
            record["ParticipantObjectIdentification"] = list(objects)
        self.append(record)

    def application(self, started: bool) -> None:
        self.record(APPLICATION_ACTIVITY, "E", SUCCESS, [self.me(role=APPLICATION)],
                    type_code=APPLICATION_START if started else APPLICATION_STOP)

    def association(self, calling: str, address: str, accepted: bool) -> None:
        self.record(USER_AUTHENTICATION, "E", SUCCESS, [peer(calling, address), self.me()],
                    type_code=LOGIN if accepted else LOGOUT)

    def security_alert(self, address: str, reason: str, calling: str = "") -> None:
        self.record(SECURITY_ALERT, "E", MINOR_FAILURE, [peer(calling or "-", address), self.me()],
                    type_code=NODE_AUTHENTICATION, description=reason)

    def stored(self, calling: str, address: str, patient_id: str, study_uid: str, sop_class_uid: str,
               sop_instance_uid: str, outcome: int = SUCCESS, description: str = "") -> None:
        if not self.enabled:
            return  # called per object: not even the participants are built
        self.record(INSTANCES_TRANSFERRED, "C", outcome, [peer(calling, address), self.me()],
                    [patient(patient_id), study(study_uid, sop_class_uid, (sop_instance_uid,))],
                    description=description)

    def query(self, calling: str, address: str, sop_class_uid: str, keys: dict, outcome: int = SUCCESS,
              description: str = "") -> None:
        """PS3.15 A.5.3.10: the SOP class queried, with the query keys (here as JSON, not base64)."""
        query = {"ParticipantObjectID": sop_class_uid, "ParticipantObjectTypeCode": "2",
                 "ParticipantObjectTypeCodeRole": "3",
                 "ParticipantObjectIDTypeCode": _code("110181", "SOP Class UID"), "ParticipantObjectQuery": keys}
        self.record(QUERY, "E", outcome, [peer(calling, address), self.me()], [query], description=description)

    def procedure(self, calling: str, address: str, patient_id: str, study_uids: tuple[str, ...], mpps_uid: str,
                  created: bool, outcome: int = SUCCESS, description: str = "") -> None:
        """PS3.15 A.5.3.8 Procedure Record: an MPPS created (action C) or updated (U); the patient and the
        studies are the participant objects, the MPPS SOP Instance UID is named in the description."""
        objects = [patient(patient_id)] + [study(uid) for uid in study_uids]
        text = f"MPPS {mpps_uid}" + (f": {description}" if description else "")
        self.record(PROCEDURE_RECORD, "C" if created else "U", outcome, [peer(calling, address), self.me()],
                    objects, description=text)

    def transfer_begins(self, requestor: dict, destination: dict, instances) -> None:
        """PS3.15 A.5.3.3 Begin Transferring DICOM Instances: a C-MOVE or C-GET starts its sub-operations.

        ``requestor`` and ``destination`` are :func:`peer` participants (one and the same for a C-GET);
        ``instances`` are (patient ID, study UID, SOP class, SOP instance) of what is about to be sent.
        """
        self.record(BEGIN_TRANSFERRING, "E", SUCCESS, self._transfer_participants(requestor, destination),
                    studies_of(instances))

    def retrieved(self, requestor: dict, destination: dict, instances, outcome: int, description: str) -> None:
        """PS3.15 A.5.3.4 DICOM Instances Transferred, action R: instances this SCP read and sent by C-MOVE
        or C-GET (or none, when the retrieve was refused); ``description`` holds the status and the
        sub-operation counts."""
        self.record(INSTANCES_TRANSFERRED, "R", outcome, self._transfer_participants(requestor, destination),
                    studies_of(instances), description=description)

    def _transfer_participants(self, requestor: dict, destination: dict) -> list[dict]:
        """We send (Source); the destination receives; a C-MOVE's requestor, when another node, is listed too."""
        participants = [self.me(role=SOURCE), destination]
        if requestor is not destination:
            participants.append(requestor)
        return participants
