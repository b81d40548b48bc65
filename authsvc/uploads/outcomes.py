"""authsvc.uploads.outcomes: what an upload reports (per item, per study) and what it needs.

The result types the views answer and audit with, the configured limits, and the two
interfaces the pipeline talks to: where instances go (:class:`InstanceStore`) and who takes a
form's plain fields (:class:`FormFields`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import IO
from typing import Any
from typing import Final
from typing import Protocol

from authsvc.errors import AuthsvcError

# STOW-RS failure reasons (DICOM PS3.4 status codes, PS3.18 §10.5 FailureReason 0008,1197).
FAILURE_PROCESSING: Final = 0x0110  # processing failure (Orthanc refused the instance)
FAILURE_OUT_OF_RESOURCES: Final = 0xA700  # a limit was reached
FAILURE_CANNOT_UNDERSTAND: Final = 0xC000  # not a DICOM Part 10 file


@dataclasses.dataclass
class InstanceOutcome:
    """What happened to one item of the upload."""

    index: int
    name: str | None = None
    status: str = "failed"  # stored | already-stored | failed | skipped (non-DICOM in a ZIP)
    reason: str | None = None
    failure_code: int | None = None
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    instance_id: str | None = None  # Orthanc ids
    series_id: str | None = None
    study_id: str | None = None

    @property
    def stored(self) -> bool:
        """True if Orthanc holds the instance (newly or from before)."""
        return self.status in ("stored", "already-stored")

    def to_json(self) -> dict[str, Any]:
        """Return the outcome for the JSON API."""
        body: dict[str, Any] = {"index": self.index, "status": self.status}
        for key in ("name", "reason", "sop_class_uid", "sop_instance_uid"):
            value = getattr(self, key)
            if value is not None:
                body[key] = value
        if self.instance_id is not None:
            body["orthanc_id"] = self.instance_id
            body["study"] = self.study_id
        return body


@dataclasses.dataclass
class StudyOutcome:
    """A study the upload touched, and whether it is in the album yet."""

    study_id: str  # Orthanc id
    study_instance_uid: str | None = None
    in_album: bool = False

    def to_json(self) -> dict[str, Any]:
        """Return the study for the JSON API."""
        return {
            "orthanc_id": self.study_id,
            "study_instance_uid": self.study_instance_uid,
            "in_album": self.in_album,
        }


@dataclasses.dataclass
class UploadResult:
    """Everything the caller needs to answer and to audit."""

    instances: list[InstanceOutcome] = dataclasses.field(default_factory=list)
    studies: dict[str, StudyOutcome] = dataclasses.field(default_factory=dict)
    #: Why the upload stopped before its end (framing, limit, Orthanc down), if it did.
    error: AuthsvcError | None = None
    bytes_read: int = 0

    @property
    def stored(self) -> list[InstanceOutcome]:
        """Instances Orthanc holds."""
        return [i for i in self.instances if i.stored]

    @property
    def failed(self) -> list[InstanceOutcome]:
        """Instances that were not stored."""
        return [i for i in self.instances if i.status == "failed"]

    @property
    def pending_studies(self) -> list[StudyOutcome]:
        """Studies stored in Orthanc but not yet labelled for the album (retried later)."""
        return [s for s in self.studies.values() if not s.in_album]

    @property
    def outcome(self) -> str:
        """One word for the audit trail: success, partial, failure."""
        if self.error is None and not self.failed and not self.pending_studies:
            return "success" if self.instances else "failure"
        return "partial" if self.stored else "failure"

    def summary(self) -> dict[str, Any]:
        """Counts for the audit row and the JSON answer."""
        return {
            "instances": len(self.instances),
            "stored": sum(1 for i in self.instances if i.status == "stored"),
            "already_stored": sum(1 for i in self.instances if i.status == "already-stored"),
            "failed": len(self.failed),
            "skipped": sum(1 for i in self.instances if i.status == "skipped"),
            "studies": len(self.studies),
            "pending_studies": len(self.pending_studies),
            "bytes": self.bytes_read,
        }


# --- the Orthanc side ----------------------------------------------------------------------


class InstanceStore(Protocol):
    """Where instances go: :class:`authsvc.orthanc.OrthancClient` satisfies it."""

    def store_instance(self, body: bytes | IO[bytes]) -> dict[str, Any]:
        """Store one DICOM file; return Orthanc's answer (ID, ParentStudy, Status…)."""
        ...


#: Called once per new study; puts it in the album and fills in ``in_album`` (False: the
#: label could not be applied now and is recorded as pending) and ``study_instance_uid``.
StudySink = Callable[["StudyOutcome"], None]


@dataclasses.dataclass(frozen=True)
class UploadLimits:
    """Configured limits, enforced while reading."""

    max_bytes: int
    max_instances: int


#: A form field (a part without a file name) may not be longer than this.
MAX_FIELD_BYTES: Final = 4096


class FormFields(Protocol):
    """Receives the plain fields of a ``multipart/form-data`` upload (parts with no file name).

    A browser sends a form's fields in document order, so a field placed before the file input
    (the admin pages' CSRF token) arrives before any file: :meth:`before_file` can refuse the
    upload before a byte of it reaches Orthanc.
    """

    def field(self, name: str, value: bytes) -> None:
        """Take one field (at most :data:`MAX_FIELD_BYTES`)."""
        ...

    def before_file(self) -> None:
        """Called before each file part is handled; raise to stop the upload there."""
        ...
