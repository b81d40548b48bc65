"""An in-memory stand-in for the few Orthanc REST routes the albums feature calls.

For unit and functional tests only (tests/integration uses the real Orthanc). It is mounted on
a ``requests_mock.Mocker`` and keeps studies with their labels, so a test can assert what
authsvc did to Orthanc and make Orthanc fail (``down``) to exercise the pending-label path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Any

import requests
import requests_mock as rm

URL = "http://orthanc.test:8042"


def orthanc_id(uid: str) -> str:
    """Return an Orthanc-shaped id (5 groups of 8 hex digits) derived from a UID."""
    digest = hashlib.sha1(uid.encode(), usedforsecurity=False).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


@dataclasses.dataclass
class FakeStudy:
    """One study: its UID, a few tags and its labels."""

    id: str
    uid: str
    labels: set[str] = dataclasses.field(default_factory=set)
    patient_name: str = "Doe^Jane"
    patient_id: str = "P1"
    description: str = "fake study"
    modalities: str = "CT\\SR"
    instances: int = 3

    def to_json(self, requested: list[str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "ID": self.id,
            "Type": "Study",
            "Labels": sorted(self.labels),
            "MainDicomTags": {
                "StudyInstanceUID": self.uid,
                "StudyDate": "20240102",
                "StudyDescription": self.description,
            },
            "PatientMainDicomTags": {
                "PatientName": self.patient_name,
                "PatientID": self.patient_id,
            },
        }
        if requested:
            computed = {
                "ModalitiesInStudy": self.modalities,
                "NumberOfStudyRelatedInstances": str(self.instances),
                "NumberOfStudyRelatedSeries": "2",
            }
            flat = {**body["MainDicomTags"], **body["PatientMainDicomTags"], **computed}
            body["RequestedTags"] = {k: flat[k] for k in requested if k in flat}
        return body


class FakeOrthanc:
    """The fake server's state and request handlers."""

    def __init__(self, mock: rm.Mocker, url: str = URL) -> None:
        self.url = url
        self.studies: dict[str, FakeStudy] = {}
        #: When True every call fails as if Orthanc were unreachable.
        self.down = False
        self.calls: list[tuple[str, str]] = []
        base = re.escape(url)
        mock.register_uri(rm.ANY, re.compile(base + r"/.*"), json=self._dispatch)

    def add_study(self, uid: str, labels: set[str] | None = None, **tags: Any) -> FakeStudy:
        """Store a study and return it."""
        study = FakeStudy(id=orthanc_id(uid), uid=uid, labels=set(labels or ()), **tags)
        self.studies[study.id] = study
        return study

    def labels_of(self, study: FakeStudy | str) -> set[str]:
        """Return a study's labels."""
        key = study.id if isinstance(study, FakeStudy) else study
        return set(self.studies[key].labels)

    def _dispatch(self, request: Any, context: Any) -> Any:
        path = request.path
        method = request.method
        self.calls.append((method, path))
        if self.down:
            raise requests.ConnectionError("fake Orthanc is down")
        match = re.fullmatch(r"/studies/([0-9a-f-]+)/labels/([A-Za-z0-9_-]+)", path)
        if match and method in ("PUT", "DELETE"):
            study = self.studies.get(match.group(1))
            if study is None:
                context.status_code = 404
                return {"Message": "Unknown resource"}
            if method == "PUT":
                study.labels.add(match.group(2))
            else:
                study.labels.discard(match.group(2))
            return {}
        match = re.fullmatch(r"/studies/([0-9a-f-]+)", path)
        if match and method == "GET":
            study = self.studies.get(match.group(1))
            if study is None:
                context.status_code = 404
                return {"Message": "Unknown resource"}
            return study.to_json()
        if path == "/tools/labels" and method == "GET":
            return sorted({label for s in self.studies.values() for label in s.labels})
        if path in ("/tools/find", "/tools/count-resources") and method == "POST":
            body = json.loads(request.body or b"{}")
            found = self._find(body)
            if path == "/tools/count-resources":
                return {"Count": len(found)}
            since = int(body.get("Since", 0))
            limit = body.get("Limit")
            page = found[since : since + int(limit)] if limit else found[since:]
            if body.get("Expand"):
                return [s.to_json(body.get("RequestedTags")) for s in page]
            return [s.id for s in page]
        context.status_code = 404
        return {"Message": f"fake Orthanc has no route {method} {path}"}

    def _find(self, body: dict[str, Any]) -> list[FakeStudy]:
        labels = set(body.get("Labels", []))
        constraint = body.get("LabelsConstraint", "All")
        uid = (body.get("Query") or {}).get("StudyInstanceUID")
        out = []
        for study in sorted(self.studies.values(), key=lambda s: s.id):
            if uid is not None and study.uid != uid:
                continue
            if labels:
                if constraint == "All" and not labels <= study.labels:
                    continue
                if constraint == "Any" and labels.isdisjoint(study.labels):
                    continue
                if constraint == "None" and not labels.isdisjoint(study.labels):
                    continue
            out.append(study)
        return out
