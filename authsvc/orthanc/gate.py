"""authsvc.orthanc.gate: the decision behind nginx ``auth_request`` (``GET /gate/auth``).

nginx asks, for every request to Orthanc, "may this caller do METHOD URI?". The answer is a
status only: 2xx (forward it), 401 (no or bad credentials) or 403 (known caller, or a failure
on our side: fail closed). nginx turns any other status into a 500, so nothing else is ever
returned. The flow (the view reads headers, this module decides):

1. classify the URI (:mod:`authsvc.orthanc.routes`) and map it to a gate action
   (:func:`authsvc.policy.gate_action`);
2. if the answer cannot depend on a study (static assets, admin routes, lists, uploads, global
   admins, deletes by non-admins), decide at once, without calling Orthanc;
3. otherwise trace each resource the URI names to the studies that own it and read their labels
   (:class:`~authsvc.orthanc.study_labels.StudyLabelCache`), then ask
   :func:`authsvc.policy.decide` per study with the caller's best album role among the albums
   whose labels the study carries.
   Every study must pass. A resource Orthanc does not know is denied (a guess is not a read).

Album read tokens are decided by :func:`authsvc.policy.decide_token_access` (read-only
methods on read routes) plus one fact checked here: every study touched carries the album's
label. A token never opens a listing route.

This module is pure apart from the Orthanc calls made through the injected cache and client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from types import MappingProxyType

from authsvc.errors import OrthancError
from authsvc.errors import OrthancUnavailable
from authsvc.orthanc.client import OrthancClient
from authsvc.orthanc.routes import RouteClassifier
from authsvc.orthanc.routes import RouteKind
from authsvc.orthanc.routes import RouteTarget
from authsvc.orthanc.study_labels import StudyFacts
from authsvc.orthanc.study_labels import StudyLabelCache
from authsvc.policy import Action
from authsvc.policy import Actor
from authsvc.policy import AlbumRole
from authsvc.policy import Allowed
from authsvc.policy import Decision
from authsvc.policy import Denied
from authsvc.policy import Target
from authsvc.policy import TokenKind
from authsvc.policy import decide
from authsvc.policy import decide_token_access
from authsvc.policy import gate_action

__all__ = [
    "ALL_LABELS",
    "Caller",
    "GateAnswer",
    "GateEngine",
    "best_album_role",
    "decide_on_studies",
]

log = logging.getLogger(__name__)

#: The role-config label meaning "every study".
ALL_LABELS = "*"

# Gate actions whose answer depends on the study's labels; the others are decided without I/O.
_STUDY_ACTIONS = frozenset(
    {Action.GATE_STUDY_READ, Action.GATE_STUDY_WRITE, Action.GATE_STUDY_MODIFY}
)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking, with what the gate needs beyond the policy actor.

    * ``role_labels``: authorized labels from the roles configuration (``*``: every study);
    * ``album_roles``: album label → the caller's role in that album (groups included);
    * ``token_kind``: set when the caller presented a token instead of an identity (then
      ``actor`` is anonymous and only the token counts); ``token_album_label`` is the album of
      an album read token, ``token_covers`` tells whether a share link covers a study.
    """

    actor: Actor
    role_labels: frozenset[str] = frozenset()
    album_roles: Mapping[str, AlbumRole] = field(default_factory=lambda: MappingProxyType({}))
    token_kind: TokenKind | None = None
    token_album_label: str | None = None
    token_covers: Callable[[StudyFacts], bool] | None = None

    @property
    def is_anonymous(self) -> bool:
        """Return True when the caller sent no usable credential at all."""
        return not self.actor.is_authenticated and self.token_kind is None


@dataclass(frozen=True, slots=True)
class GateAnswer:
    """What the gate tells nginx: ``status`` (200, 401 or 403) and a reason safe to log."""

    status: int
    reason: str
    action: Action | None = None
    studies: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        """Return True for a 2xx answer."""
        return self.status < 300


def best_album_role(
    album_roles: Mapping[str, AlbumRole], labels: frozenset[str]
) -> AlbumRole | None:
    """Return the caller's strongest role among the albums whose labels a study carries."""
    best: AlbumRole | None = None
    for label in labels:
        role = album_roles.get(label)
        if role is not None and (best is None or role.rank > best.rank):
            best = role
    return best


def _label_access(role_labels: frozenset[str], labels: frozenset[str]) -> bool:
    """Return True if the role-config labels cover the study."""
    return ALL_LABELS in role_labels or not role_labels.isdisjoint(labels)


def decide_on_studies(
    caller: Caller,
    method: str,
    target: RouteTarget,
    studies: tuple[StudyFacts, ...],
) -> Decision:
    """Return the decision for a classified request once its studies are known (pure).

    ``studies`` are the studies the target's resources belong to (empty for routes that name
    none, or when Orthanc knows none of them).
    """
    action = gate_action(target)
    if caller.token_kind is not None:
        return _decide_token(caller, method, target, action, studies)
    if action not in _STUDY_ACTIONS:
        return decide(caller.actor, action)
    if caller.actor.is_global_admin:
        return decide(caller.actor, action)
    if not studies:
        return Denied("no such resource")
    decision: Decision = Denied("no study")
    for study in studies:
        decision = decide(
            caller.actor,
            action,
            album_role=best_album_role(caller.album_roles, study.labels),
            target=Target(study_label_access=_label_access(caller.role_labels, study.labels)),
        )
        if not decision:
            return decision
    return decision


def _decide_token(
    caller: Caller,
    method: str,
    target: RouteTarget,
    action: Action,
    studies: tuple[StudyFacts, ...],
) -> Decision:
    """Tokens: read-only; an album read token only on studies carrying the album's label, a
    share link only on the studies it names."""
    if action is Action.GATE_STATIC:
        return Allowed("open route")
    if caller.token_kind is None:
        return Denied("no token")
    method_ok = decide_token_access(caller.token_kind, method, None, capability=target.capability)
    if not method_ok:
        return method_ok
    if target.kind is not RouteKind.RESOURCE or action not in _STUDY_ACTIONS:
        return Denied("tokens do not open server-wide routes")
    if not studies:
        return Denied("no such resource")
    if caller.token_kind is TokenKind.ALBUM_READ:
        label = caller.token_album_label
        if label is None or any(label not in study.labels for study in studies):
            return Denied("study outside the token's album")
        return Allowed("album read token")
    covers = caller.token_covers
    if covers is None or not all(covers(study) for study in studies):
        return Denied("the token does not cover this study")
    return Allowed("share link")


def needs_studies(caller: Caller, target: RouteTarget) -> bool:
    """Return True if the decision depends on the labels of the studies the target names."""
    action = gate_action(target)
    if action not in _STUDY_ACTIONS or target.kind is not RouteKind.RESOURCE:
        return False
    if caller.token_kind is not None:
        return True
    # Global admins pass without a lookup; nobody else can pass without one.
    return not caller.actor.is_global_admin


class GateEngine:
    """Classify, resolve and decide; turns every failure into a 403 with a reason."""

    def __init__(
        self,
        classifier: RouteClassifier,
        cache: StudyLabelCache,
        client: Callable[[], OrthancClient | None],
    ) -> None:
        """Store the collaborators (built once per app)."""
        self.classifier = classifier
        self.cache = cache
        self._client = client

    def classify(self, method: str, uri: str) -> RouteTarget:
        """Return what the request touches."""
        return self.classifier.classify(method, uri)

    def answer(self, caller: Caller, method: str, target: RouteTarget) -> GateAnswer:
        """Return the gate's answer for an authenticated (or anonymous) caller."""
        action = gate_action(target)
        studies: tuple[StudyFacts, ...] = ()
        if needs_studies(caller, target):
            client = self._client()
            if client is None:
                return GateAnswer(403, "no Orthanc server configured", action)
            try:
                found: list[StudyFacts] = []
                for ref in target.resources:
                    resolved = self.cache.studies_of(client, ref)
                    if not resolved:
                        # One unknown resource: deny the whole request.
                        found = []
                        break
                    found.extend(s for s in resolved if s not in found)
                studies = tuple(found)
            except OrthancUnavailable:
                log.warning("gate: Orthanc unavailable while resolving %s", target.family)
                return GateAnswer(403, "orthanc unavailable", action)
            except OrthancError as exc:
                log.warning(
                    "gate: Orthanc error %s while resolving %s", exc.orthanc_status, target.family
                )
                return GateAnswer(403, "orthanc error", action)
        decision = decide_on_studies(caller, method, target, studies)
        ids = tuple(s.study_id for s in studies)
        if decision:
            return GateAnswer(200, decision.reason, action, ids)
        # An anonymous caller is told to authenticate, unless nothing could ever pass.
        status = 401 if caller.is_anonymous and action is not Action.GATE_MALFORMED else 403
        return GateAnswer(status, decision.reason, action, ids)
