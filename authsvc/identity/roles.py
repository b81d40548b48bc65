"""authsvc.identity.roles: the roles configuration and the function turning roles into a profile.

The configuration maps Keycloak role names to global Orthanc permissions and authorized labels,
in the JSON shape the Advanced Authorization plugin forwards for ``GET/PUT /settings/roles``
(protocol spec §3.6, §3.7, §10.6)::

    {"roles": {"doctor-role": {"permissions": ["view"], "authorized-labels": ["*"]}},
     "available-labels": [],
     "group-roles": {"/radiology": ["doctor-role"]}}

``group-roles`` is authsvc's own addition (Keycloak group path -> role names); the plugin and
OE2 ignore keys they do not know. Permission names are free strings, so custom
``ExtraPermissions`` of the plugin work. ``"*"`` in a label list means every label, and is then
the only label kept: OE2 treats a user as "all labels" only if the list is exactly ``["*"]``
(spec §6.2).

:func:`load_permissions_file` reads orthanc-auth-service's ``permissions.json`` (JSON with
comments, ``authorized_labels``/``available_labels``/``allowed_labels`` spellings) so an
existing deployment can bring its file along. :func:`compose_profile` is the only place where
an identity's roles become permissions and labels.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from types import MappingProxyType
from typing import Any

from authsvc.errors import ValidationFailed
from authsvc.identity import Identity
from authsvc.identity import normalize_group

__all__ = [
    "ALL_LABELS",
    "Profile",
    "RoleGrant",
    "RolesConfig",
    "compose_profile",
    "load_permissions_file",
    "loads_jsonc",
    "normalize_labels",
    "parse_roles",
    "strip_json_comments",
]

#: The label wildcard: "every study, labelled or not".
ALL_LABELS = "*"
_ALL = frozenset({ALL_LABELS})


def normalize_labels(labels: Iterable[str]) -> frozenset[str]:
    """Return the labels as a set, collapsed to ``{"*"}`` whenever ``"*"`` is present."""
    result = frozenset(labels)
    return _ALL if ALL_LABELS in result else result


def _sorted_labels(labels: frozenset[str]) -> list[str]:
    """Return labels as the sorted JSON list, exactly ``["*"]`` for the wildcard."""
    return [ALL_LABELS] if ALL_LABELS in labels else sorted(labels)


@dataclass(frozen=True)
class RoleGrant:
    """What one role grants: global permissions and the labels whose studies it may see."""

    permissions: frozenset[str] = frozenset()
    authorized_labels: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        """Normalise the field types and the ``*`` label."""
        object.__setattr__(self, "permissions", frozenset(self.permissions))
        object.__setattr__(self, "authorized_labels", normalize_labels(self.authorized_labels))

    def to_json(self) -> dict[str, list[str]]:
        """Return the plugin's ``{"authorized-labels": [...], "permissions": [...]}`` shape."""
        return {
            "authorized-labels": _sorted_labels(self.authorized_labels),
            "permissions": sorted(self.permissions),
        }


@dataclass(frozen=True)
class RolesConfig:
    """The whole roles configuration: roles, labels OE2 may offer, and group -> roles."""

    roles: Mapping[str, RoleGrant] = field(default_factory=dict)
    # Order kept as configured: OE2 shows them in this order. Empty = any label may be created.
    available_labels: tuple[str, ...] = ()
    # Keys are normalised (no leading slash), see authsvc.identity.normalize_group.
    group_roles: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Freeze the mappings and normalise group paths once, not on every profile call."""
        object.__setattr__(self, "roles", MappingProxyType(dict(self.roles)))
        groups: dict[str, frozenset[str]] = {}
        for group, role_names in self.group_roles.items():
            key = normalize_group(group)
            groups[key] = groups.get(key, frozenset()) | frozenset(role_names)
        object.__setattr__(self, "group_roles", MappingProxyType(groups))
        object.__setattr__(self, "available_labels", tuple(dict.fromkeys(self.available_labels)))

    def to_json(self) -> dict[str, Any]:
        """Return the plugin's ``/settings/roles`` JSON (plus ``group-roles`` when set)."""
        body: dict[str, Any] = {
            "roles": {name: grant.to_json() for name, grant in sorted(self.roles.items())},
            "available-labels": list(self.available_labels),
        }
        if self.group_roles:
            body["group-roles"] = {
                group: sorted(names) for group, names in sorted(self.group_roles.items())
            }
        return body


@dataclass(frozen=True)
class Profile:
    """The effective global rights of one identity, as sent in the plugin's user profile."""

    permissions: frozenset[str]
    authorized_labels: frozenset[str]
    roles: frozenset[str]

    @property
    def all_labels(self) -> bool:
        """Return True if every study is visible (labels are exactly ``{"*"}``)."""
        return ALL_LABELS in self.authorized_labels

    def permissions_list(self) -> list[str]:
        """Return the permissions as a sorted JSON list."""
        return sorted(self.permissions)

    def labels_list(self) -> list[str]:
        """Return ``authorized-labels`` for the profile: exactly ``["*"]`` or a sorted list."""
        return _sorted_labels(self.authorized_labels)


def compose_profile(
    identity: Identity,
    roles_config: RolesConfig,
    *,
    client_roles_count: bool = True,
    extra_labels: Iterable[str] = frozenset(),
    extra_permissions: Iterable[str] = frozenset(),
) -> Profile:
    """Return the union of what the identity's roles grant; the only place this is computed.

    An identity's roles are its realm roles, its client roles (unless ``client_roles_count`` is
    False) and the roles its groups map to in ``group-roles``. Roles absent from the
    configuration (Keycloak's ``offline_access``, ``default-roles-*``...) grant nothing.
    ``extra_labels``/``extra_permissions`` are added as they are (the albums feature passes
    album labels and read-type permissions here). Any ``"*"`` label collapses to ``{"*"}``.
    """
    names = set(identity.realm_roles)
    if client_roles_count:
        names |= identity.client_roles
    if roles_config.group_roles and identity.groups:
        for group in identity.groups:
            names |= roles_config.group_roles.get(normalize_group(group), frozenset())

    matched: set[str] = set()
    permissions: set[str] = set(extra_permissions)
    labels: set[str] = set(extra_labels)
    for name in names:
        grant = roles_config.roles.get(name)
        if grant is None:
            continue
        matched.add(name)
        permissions |= grant.permissions
        labels |= grant.authorized_labels
    return Profile(
        permissions=frozenset(permissions),
        authorized_labels=normalize_labels(labels),
        roles=frozenset(matched),
    )


# --- parsing ---------------------------------------------------------------------------------

# Spellings seen in the wild: the plugin/OE2 use dashes; orthanc-auth-service's permissions.json
# uses underscores, and its older releases called available labels "allowed" labels.
_LABEL_KEYS = ("authorized-labels", "authorized_labels")
_AVAILABLE_KEYS = ("available-labels", "available_labels", "allowed-labels", "allowed_labels")
_GROUP_KEYS = ("group-roles", "group_roles")


class _Errors:
    """Collects per-field problems so one ValidationFailed reports all of them."""

    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []

    def add(self, path: str, message: str) -> None:
        self.items.append({"field": path, "message": message})

    def raise_if_any(self, message: str) -> None:
        if self.items:
            raise ValidationFailed(message, details=self.items)


def _pick(obj: Mapping[str, Any], keys: tuple[str, ...], path: str, errors: _Errors) -> Any:
    """Return the value under the one spelling present; two spellings at once is an error."""
    present = [key for key in keys if key in obj]
    if len(present) > 1:
        errors.add(_join(path, present[1]), f"duplicates {present[0]!r}; give only one of them")
    return obj[present[0]] if present else None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _name_problem(value: Any, *, what: str, forbid_pipe: bool = False) -> str | None:
    """Return why a permission/label/role name is unusable, or None."""
    if not isinstance(value, str):
        return f"{what} must be a string"
    if not value:
        return f"{what} must not be empty"
    if what == "role name":
        # Keycloak role names may contain inner spaces; only edges and control characters
        # are refused (they are invisible in the admin pages and never match a token).
        if value != value.strip() or not value.isprintable():
            return f"{what} must not start or end with spaces or contain control characters"
    elif any(ch.isspace() or not ch.isprintable() for ch in value):
        return f"{what} must not contain spaces or control characters"
    if forbid_pipe and "|" in value:
        # The plugin's Permissions table separates alternatives with "|".
        return f"{what} must not contain '|'"
    return None


def _string_list(
    value: Any, path: str, errors: _Errors, *, what: str, forbid_pipe: bool = False
) -> list[str]:
    """Validate a JSON list of names; return the good ones (order kept, duplicates dropped)."""
    if value is None:
        return []
    if not isinstance(value, list):
        errors.add(path, f"must be a list of {what}s")
        return []
    result: list[str] = []
    for index, item in enumerate(value):
        item_path = f"{path}[{index}]"
        problem = _name_problem(item, what=what, forbid_pipe=forbid_pipe)
        if problem:
            errors.add(item_path, problem)
        elif item not in result:
            result.append(item)
    return result


def parse_roles(obj: Any) -> RolesConfig:
    """Validate a roles configuration (plugin JSON shape) and return it.

    Accepts ``authorized-labels`` or ``authorized_labels`` in a role, ``available-labels`` or
    its ``available_labels``/``allowed-labels``/``allowed_labels`` aliases, and the optional
    ``group-roles``. Unknown keys (e.g. the ``server-id`` the plugin adds on PUT) are ignored.

    :raise ValidationFailed: details list every bad field as ``{"field", "message"}``.
    """
    if not isinstance(obj, Mapping):
        raise ValidationFailed(
            "The roles configuration is invalid.",
            details=[{"field": "", "message": "the roles configuration must be a JSON object"}],
        )
    errors = _Errors()
    roles: dict[str, RoleGrant] = {}
    raw_roles = obj.get("roles")
    if not isinstance(raw_roles, Mapping):
        errors.add("roles", "must be an object mapping role names to their grants")
        raw_roles = {}
    for name, raw_grant in raw_roles.items():
        path = f"roles.{name}"
        problem = _name_problem(name, what="role name")
        if problem:
            errors.add(path, problem)
            continue
        if not isinstance(raw_grant, Mapping):
            errors.add(path, 'must be an object with "permissions" and "authorized-labels"')
            continue
        permissions = _string_list(
            raw_grant.get("permissions"),
            f"{path}.permissions",
            errors,
            what="permission",
            forbid_pipe=True,
        )
        label_value = _pick(raw_grant, _LABEL_KEYS, path, errors)
        labels = _string_list(label_value, f"{path}.authorized-labels", errors, what="label")
        roles[name] = RoleGrant(frozenset(permissions), frozenset(labels))

    available = _string_list(
        _pick(obj, _AVAILABLE_KEYS, "", errors), "available-labels", errors, what="label"
    )
    if ALL_LABELS in available:
        errors.add("available-labels", "'*' is not a label that can be offered")

    group_roles: dict[str, frozenset[str]] = {}
    raw_groups = _pick(obj, _GROUP_KEYS, "", errors)
    if raw_groups is not None and not isinstance(raw_groups, Mapping):
        errors.add("group-roles", "must be an object mapping group paths to role-name lists")
    elif raw_groups is not None:
        for group, role_names in raw_groups.items():
            path = f"group-roles.{group}"
            if not isinstance(group, str) or not normalize_group(group):
                errors.add(path, "group path must be a non-empty string")
                continue
            group_roles[group] = frozenset(_string_list(role_names, path, errors, what="role name"))

    errors.raise_if_any("The roles configuration is invalid.")
    return RolesConfig(roles=roles, available_labels=tuple(available), group_roles=group_roles)


# --- JSON with comments ----------------------------------------------------------------------


def strip_json_comments(text: str) -> str:
    """Remove ``//`` and ``/* */`` comments and trailing commas outside JSON strings.

    Comments become spaces (newlines are kept, so json error positions still point at the
    right line). ``//`` inside a string, e.g. in a URL, is left alone.

    :raise ValidationFailed: a ``/*`` comment is never closed.
    """
    out: list[str] = []
    i = 0
    n = len(text)
    in_string = False
    while i < n:
        ch = text[i]
        if in_string:
            out.append(ch)
            if ch == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 2
                continue
            if ch == '"':
                in_string = False
            i += 1
            continue
        if ch == '"':
            in_string = True
            out.append(ch)
            i += 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end == -1 else end
            out.append(" " * (end - i))
            i = end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end == -1:
                line = text.count("\n", 0, i) + 1
                raise ValidationFailed(
                    "The JSON file has an unterminated /* comment.",
                    details=[{"field": "", "message": f"comment opened on line {line}"}],
                )
            comment = text[i : end + 2]
            out.append("".join("\n" if c == "\n" else " " for c in comment))
            i = end + 2
        elif ch in "}]":
            _drop_trailing_comma(out)
            out.append(ch)
            i += 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _drop_trailing_comma(out: list[str]) -> None:
    """Blank a comma that directly precedes a closing bracket (JSONC allows them)."""
    j = len(out) - 1
    while j >= 0 and out[j].isspace():
        j -= 1
    if j < 0 or out[j] != ",":
        return
    # Only after a value: "[,]" or "{,}" stay invalid and json.loads will say so.
    k = j - 1
    while k >= 0 and out[k].isspace():
        k -= 1
    if k >= 0 and out[k] not in "[{,":
        out[j] = " "


def loads_jsonc(text: str) -> Any:
    """Parse JSON that may contain comments and trailing commas (and a UTF-8 BOM).

    :raise ValidationFailed: the text is not valid JSON once comments are removed.
    """
    cleaned = strip_json_comments(text.removeprefix("\ufeff"))
    try:
        return json.loads(cleaned, parse_constant=_reject_constant)
    except ValueError as exc:
        detail = str(exc)
        if isinstance(exc, json.JSONDecodeError):
            detail = f"{exc.msg} (line {exc.lineno}, column {exc.colno})"
        raise ValidationFailed(
            "The file is not valid JSON.", details=[{"field": "", "message": detail}]
        ) from exc


def _reject_constant(name: str) -> Any:
    """json.loads hook: NaN/Infinity are not JSON."""
    raise ValueError(f"non-standard JSON constant {name}")


def load_permissions_file(text: str) -> RolesConfig:
    """Parse an orthanc-auth-service ``permissions.json`` (JSON with comments) into a config.

    :raise ValidationFailed: bad JSON, or a bad roles configuration (see :func:`parse_roles`).
    """
    return parse_roles(loads_jsonc(text))
