"""Unit tests for authsvc.identity.roles: parsing, JSONC files, normalising, profiles."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from authsvc.errors import ValidationFailed
from authsvc.identity import ANONYMOUS
from authsvc.identity import Identity
from authsvc.identity import IdentityKind
from authsvc.identity.roles import ALL_LABELS
from authsvc.identity.roles import Profile
from authsvc.identity.roles import RoleGrant
from authsvc.identity.roles import RolesConfig
from authsvc.identity.roles import compose_profile
from authsvc.identity.roles import load_permissions_file
from authsvc.identity.roles import loads_jsonc
from authsvc.identity.roles import normalize_labels
from authsvc.identity.roles import parse_roles
from authsvc.identity.roles import strip_json_comments

pytestmark = pytest.mark.unit

# Spec §3.6 (the shape OE2 expects from GET /settings/roles).
SPEC_ROLES = {
    "roles": {
        "admin-role": {"authorized-labels": ["*"], "permissions": ["all", "admin-permissions"]},
        "doctor-role": {
            "authorized-labels": ["*"],
            "permissions": ["view", "download", "share", "send"],
        },
        "external-role": {"authorized-labels": ["external"], "permissions": ["view", "download"]},
    },
    "available-labels": [],
}

# Spec §12.6 R2 (the body the plugin forwards on PUT, with its injected server-id).
R2_BODY = {
    "roles": {
        "admin-role": {"authorized-labels": ["*"], "permissions": ["all", "admin-permissions"]}
    },
    "available-labels": ["external"],
    "server-id": None,
}


def details_of(exc: pytest.ExceptionInfo[ValidationFailed]) -> dict[str, str]:
    """Map field -> message of a ValidationFailed."""
    return {item["field"]: item["message"] for item in exc.value.details}


def user(*realm: str, client: tuple[str, ...] = (), groups: tuple[str, ...] = ()) -> Identity:
    return Identity(
        kind=IdentityKind.USER,
        subject="u-1",
        realm_roles=frozenset(realm),
        client_roles=frozenset(client),
        groups=frozenset(groups),
    )


# --- parsing: spec vectors -------------------------------------------------------------------


def test_spec_roles_round_trip() -> None:
    config = parse_roles(SPEC_ROLES)
    assert config.roles["doctor-role"] == RoleGrant(
        frozenset({"view", "download", "share", "send"}), frozenset({"*"})
    )
    body = config.to_json()
    assert body == {
        "roles": {
            "admin-role": {"authorized-labels": ["*"], "permissions": ["admin-permissions", "all"]},
            "doctor-role": {
                "authorized-labels": ["*"],
                "permissions": ["download", "send", "share", "view"],
            },
            "external-role": {
                "authorized-labels": ["external"],
                "permissions": ["download", "view"],
            },
        },
        "available-labels": [],
    }
    assert parse_roles(body) == config  # what we serve can be PUT back unchanged


def test_r2_put_body_strips_server_id() -> None:
    config = parse_roles(R2_BODY)
    body = config.to_json()
    assert "server-id" not in body
    assert body == {
        "roles": {
            "admin-role": {"authorized-labels": ["*"], "permissions": ["admin-permissions", "all"]}
        },
        "available-labels": ["external"],
    }


def test_to_json_is_json_serialisable_and_stable() -> None:
    config = parse_roles(SPEC_ROLES)
    assert json.dumps(config.to_json()) == json.dumps(parse_roles(SPEC_ROLES).to_json())


def test_custom_permission_names_are_accepted() -> None:
    # ExtraPermissions of the plugin can introduce any name (spec §4.5, §10.5).
    config = parse_roles(
        {"roles": {"r": {"permissions": ["create-inbox-links", "my-site:export"]}}}
    )
    assert config.roles["r"].permissions == {"create-inbox-links", "my-site:export"}


def test_empty_roles_object_is_valid() -> None:
    assert parse_roles({"roles": {}}) == RolesConfig()


def test_missing_lists_default_to_empty() -> None:
    config = parse_roles({"roles": {"nothing": {}}})
    assert config.roles["nothing"] == RoleGrant()
    assert config.available_labels == ()


def test_duplicates_dropped_and_available_order_kept() -> None:
    config = parse_roles(
        {
            "roles": {"r": {"permissions": ["view", "view"], "authorized-labels": ["b", "a", "b"]}},
            "available-labels": ["zeta", "alpha", "zeta"],
        }
    )
    assert config.available_labels == ("zeta", "alpha")
    assert config.to_json()["roles"]["r"] == {
        "authorized-labels": ["a", "b"],
        "permissions": ["view"],
    }


# --- parsing: spellings and aliases ----------------------------------------------------------


@pytest.mark.parametrize("key", ["authorized-labels", "authorized_labels"])
def test_label_key_spellings(key: str) -> None:
    config = parse_roles({"roles": {"r": {key: ["external"]}}})
    assert config.roles["r"].authorized_labels == {"external"}


@pytest.mark.parametrize(
    "key", ["available-labels", "available_labels", "allowed-labels", "allowed_labels"]
)
def test_available_label_aliases(key: str) -> None:
    config = parse_roles({"roles": {}, key: ["external", "teaching"]})
    assert config.available_labels == ("external", "teaching")
    assert config.to_json()["available-labels"] == ["external", "teaching"]


def test_two_spellings_at_once_refused() -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_roles(
            {
                "roles": {"r": {"authorized-labels": ["a"], "authorized_labels": ["b"]}},
                "available-labels": [],
                "allowed_labels": [],
            }
        )
    fields = details_of(info)
    assert "roles.r.authorized_labels" in fields
    assert "allowed_labels" in fields


# --- parsing: "*" normalisation --------------------------------------------------------------


@pytest.mark.parametrize(
    "labels", [["*"], ["external", "*"], ["*", "external"], ["a", "*", "b", "*"]]
)
def test_star_label_collapses_to_exactly_star(labels: list[str]) -> None:
    config = parse_roles({"roles": {"r": {"authorized-labels": labels}}})
    assert config.roles["r"].authorized_labels == {ALL_LABELS}
    assert config.to_json()["roles"]["r"]["authorized-labels"] == ["*"]


def test_star_is_not_an_available_label() -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_roles({"roles": {}, "available-labels": ["*"]})
    assert "available-labels" in details_of(info)


def test_star_in_permissions_is_just_a_name() -> None:
    # The plugin compares permission names exactly; "*" grants nothing special there.
    config = parse_roles({"roles": {"r": {"permissions": ["*"]}}})
    assert config.roles["r"].permissions == {"*"}


@pytest.mark.parametrize(
    ("labels", "expected"),
    [([], set()), (["a"], {"a"}), (["a", "*"], {"*"}), (("*",), {"*"}), ({"x", "y"}, {"x", "y"})],
)
def test_normalize_labels(labels: Any, expected: set[str]) -> None:
    assert normalize_labels(labels) == expected


def test_role_grant_normalises_when_built_directly() -> None:
    grant = RoleGrant(frozenset({"view"}), frozenset({"x", "*"}))
    assert grant.authorized_labels == {"*"}


# --- parsing: bad input ----------------------------------------------------------------------


@pytest.mark.parametrize("obj", [None, [], "roles", 42, True])
def test_non_object_refused(obj: Any) -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_roles(obj)
    assert "" in details_of(info)


@pytest.mark.parametrize(
    ("body", "field", "message_part"),
    [
        ({}, "roles", "must be an object"),
        ({"roles": []}, "roles", "must be an object"),
        ({"roles": {"r": []}}, "roles.r", "must be an object"),
        ({"roles": {"r": "view"}}, "roles.r", "must be an object"),
        ({"roles": {"r": {"permissions": "view"}}}, "roles.r.permissions", "list"),
        ({"roles": {"r": {"permissions": ["view", 3]}}}, "roles.r.permissions[1]", "string"),
        ({"roles": {"r": {"permissions": [""]}}}, "roles.r.permissions[0]", "empty"),
        ({"roles": {"r": {"permissions": ["view "]}}}, "roles.r.permissions[0]", "spaces"),
        ({"roles": {"r": {"permissions": ["view|delete"]}}}, "roles.r.permissions[0]", "'|'"),
        ({"roles": {"r": {"permissions": ["vi\new"]}}}, "roles.r.permissions[0]", "control"),
        ({"roles": {"r": {"authorized-labels": "*"}}}, "roles.r.authorized-labels", "list"),
        ({"roles": {"r": {"authorized-labels": [None]}}}, "roles.r.authorized-labels[0]", "string"),
        (
            {"roles": {"r": {"authorized-labels": ["my label"]}}},
            "roles.r.authorized-labels[0]",
            "spaces",
        ),
        ({"roles": {"": {}}}, "roles.", "empty"),
        ({"roles": {" admin": {}}}, "roles. admin", "spaces"),
        ({"roles": {}, "available-labels": "x"}, "available-labels", "list"),
        ({"roles": {}, "available-labels": [1]}, "available-labels[0]", "string"),
        ({"roles": {}, "group-roles": []}, "group-roles", "must be an object"),
        ({"roles": {}, "group-roles": {"/": ["r"]}}, "group-roles./", "non-empty"),
        ({"roles": {}, "group-roles": {"/g": "r"}}, "group-roles./g", "list"),
        ({"roles": {}, "group-roles": {"/g": [""]}}, "group-roles./g[0]", "empty"),
    ],
)
def test_bad_fields_reported(body: Any, field: str, message_part: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_roles(body)
    fields = details_of(info)
    assert field in fields, fields
    assert message_part in fields[field]


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_roles(
            {
                "roles": {"a": {"permissions": [1]}, "b": {"authorized-labels": "x"}},
                "available-labels": [None],
            }
        )
    assert set(details_of(info)) == {
        "roles.a.permissions[0]",
        "roles.b.authorized-labels",
        "available-labels[0]",
    }
    assert info.value.status == 422


def test_role_names_may_contain_inner_spaces() -> None:
    # Keycloak allows "Senior Radiologist" as a role name.
    config = parse_roles({"roles": {"Senior Radiologist": {"permissions": ["view"]}}})
    assert "Senior Radiologist" in config.roles


def test_unknown_keys_are_ignored() -> None:
    config = parse_roles({"roles": {"r": {"permissions": ["view"], "colour": "red"}}, "x": 1})
    assert config.roles["r"].permissions == {"view"}


def test_non_string_keys_from_python_callers_are_reported() -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_roles({"roles": {1: {}}, "group-roles": {2: ["r"]}})
    assert set(details_of(info)) == {"roles.1", "group-roles.2"}


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=15,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["roles", "available-labels", "allowed_labels", "group-roles", "x"]),
        _json | st.dictionaries(st.text(max_size=5), _json, max_size=3),
    )
)
def test_parse_never_crashes(body: dict[str, Any]) -> None:
    try:
        config = parse_roles(body)
    except ValidationFailed as exc:
        assert exc.details and all({"field", "message"} <= set(d) for d in exc.details)
    else:
        assert parse_roles(config.to_json()) == config


# --- JSON with comments ----------------------------------------------------------------------


def test_permissions_file_with_comments_and_underscores() -> None:
    text = """
    // orthanc-auth-service permissions.json
    {
      /* roles known to Keycloak */
      "roles": {
        "admin-role": {
          "permissions": ["all", "admin-permissions"], // admins
          "authorized_labels": ["*"]
        },
        "external-role": {
          "permissions": ["view", "download"],
          "authorized_labels": ["external"],   /* trailing comma next */
        },
      },
      "available_labels": ["external"]
    }
    """
    config = load_permissions_file(text)
    assert config.roles["admin-role"].authorized_labels == {"*"}
    assert config.roles["external-role"] == RoleGrant(
        frozenset({"view", "download"}), frozenset({"external"})
    )
    assert config.available_labels == ("external",)


def test_reference_sample_file_shape() -> None:
    # The shape shipped by orthanc-auth-service (underscore keys, older "allowed_labels").
    text = json.dumps(
        {
            "roles": {
                "doctor-role": {"authorized_labels": ["*"], "permissions": ["view", "share"]},
                "external-role": {"authorized_labels": ["external"], "permissions": ["view"]},
            },
            "allowed_labels": [],
        },
        indent=2,
    )
    assert set(load_permissions_file(text).roles) == {"doctor-role", "external-role"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"url": "http://keycloak:8080/realms"}', {"url": "http://keycloak:8080/realms"}),
        ('{"a": "/* not a comment */"}', {"a": "/* not a comment */"}),
        ('{"a": "x\\"//y"} // real', {"a": 'x"//y'}),
        ('{"a": "back\\\\"} // real', {"a": "back\\"}),
        ('{"a": 1 /* inline */, "b": 2}', {"a": 1, "b": 2}),
        ('{"a": [1, 2, ], }', {"a": [1, 2]}),
        ('{"a": "x,]"}', {"a": "x,]"}),
        ('{"a": 1}//no newline at end', {"a": 1}),
        ('{"a": /* multi\nline */ 1}', {"a": 1}),
        ('\ufeff{"a": 1}', {"a": 1}),
        ('{"a": "\u00e9/\u00e9"}', {"a": "\u00e9/\u00e9"}),
        ("[1 /**/ ]", [1]),
        ('{"a": 1 /***/ }', {"a": 1}),
    ],
)
def test_loads_jsonc(text: str, expected: Any) -> None:
    assert loads_jsonc(text) == expected


def test_comment_markers_become_spaces_and_keep_lines() -> None:
    text = '{"a": 1, /* x\ny */ "b": 2 // c\n}'
    stripped = strip_json_comments(text)
    assert stripped.count("\n") == text.count("\n")
    assert "/*" not in stripped and "//" not in stripped
    assert "1/**/2" not in strip_json_comments("1/**/2") and strip_json_comments("1/**/2") != "12"


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1 /* never closed',
        '{"a": [,]}',
        "{,}",
        '{"a": 1,, }',
        '{"a": NaN}',
        '{"a": Infinity}',
        "",
        "// only a comment",
        '{"a": "unterminated}',
        "{'a': 1}",
    ],
)
def test_bad_jsonc_refused(text: str) -> None:
    with pytest.raises(ValidationFailed):
        loads_jsonc(text)


def test_json_error_reports_line() -> None:
    with pytest.raises(ValidationFailed) as info:
        load_permissions_file('{\n  // c\n  "roles": {\n    "r": [}\n}')
    assert "line 4" in info.value.details[0]["message"]


def test_permissions_file_with_bad_roles_reports_fields() -> None:
    with pytest.raises(ValidationFailed) as info:
        load_permissions_file('{"roles": {"r": {"permissions": "all"}}} // wrong type')
    assert "roles.r.permissions" in details_of(info)


@settings(max_examples=300, deadline=None)
@given(_json)
def test_plain_json_is_unchanged_by_comment_stripping(value: Any) -> None:
    text = json.dumps(value)
    assert loads_jsonc(text) == value
    assert strip_json_comments(text) == text


# --- group-roles -----------------------------------------------------------------------------


def test_group_roles_parse_normalise_and_serialise() -> None:
    config = parse_roles(
        {
            "roles": {"doctor-role": {"permissions": ["view"]}},
            "group-roles": {"/radiology": ["doctor-role"], "radiology": ["extra"], "/a/b": []},
        }
    )
    assert config.group_roles == {"radiology": {"doctor-role", "extra"}, "a/b": frozenset()}
    assert config.to_json()["group-roles"] == {
        "a/b": [],
        "radiology": ["doctor-role", "extra"],
    }


def test_group_roles_underscore_spelling() -> None:
    config = parse_roles({"roles": {}, "group_roles": {"/g": ["r"]}})
    assert config.group_roles == {"g": {"r"}}


def test_group_roles_absent_from_json_when_empty() -> None:
    assert "group-roles" not in RolesConfig().to_json()


def test_config_is_immutable() -> None:
    config = parse_roles(SPEC_ROLES)
    with pytest.raises(TypeError):
        config.roles["evil"] = RoleGrant(frozenset({"all"}))  # type: ignore[index]
    with pytest.raises(AttributeError):
        config.available_labels = ("x",)  # type: ignore[misc]


# --- compose_profile -------------------------------------------------------------------------

CONFIG = parse_roles(
    {
        "roles": {
            "admin-role": {"authorized-labels": ["*"], "permissions": ["all", "admin-permissions"]},
            "doctor-role": {"authorized-labels": ["*"], "permissions": ["view", "download"]},
            "external-role": {"authorized-labels": ["external"], "permissions": ["view"]},
            "teaching-role": {"authorized-labels": ["teaching"], "permissions": ["view", "send"]},
            "uploader": {"authorized-labels": [], "permissions": ["upload"]},
        },
        "available-labels": [],
        "group-roles": {"/radiology": ["doctor-role"], "students": ["teaching-role"]},
    }
)


def test_spec_p1_profile() -> None:
    # §12.2 P1: Keycloak defaults are ignored, doctor-role grants its permissions and "*".
    identity = user("default-roles-orthanc", "offline_access", "doctor-role")
    profile = compose_profile(identity, CONFIG)
    assert profile == Profile(
        permissions=frozenset({"view", "download"}),
        authorized_labels=frozenset({"*"}),
        roles=frozenset({"doctor-role"}),
    )
    assert profile.labels_list() == ["*"]
    assert profile.all_labels


def test_union_of_several_roles() -> None:
    profile = compose_profile(user("external-role", "teaching-role", "uploader"), CONFIG)
    assert profile.permissions == {"view", "send", "upload"}
    assert profile.authorized_labels == {"external", "teaching"}
    assert profile.roles == {"external-role", "teaching-role", "uploader"}
    assert profile.labels_list() == ["external", "teaching"]
    assert profile.permissions_list() == ["send", "upload", "view"]
    assert not profile.all_labels


def test_star_wins_over_specific_labels() -> None:
    profile = compose_profile(user("external-role", "doctor-role"), CONFIG)
    assert profile.authorized_labels == {"*"}
    assert profile.labels_list() == ["*"]


def test_unknown_roles_grant_nothing() -> None:
    profile = compose_profile(user("offline_access", "uma_authorization", "ADMIN-ROLE"), CONFIG)
    assert profile == Profile(frozenset(), frozenset(), frozenset())
    assert profile.labels_list() == [] and profile.permissions_list() == []


def test_anonymous_gets_nothing_from_roles() -> None:
    assert compose_profile(ANONYMOUS, CONFIG) == Profile(frozenset(), frozenset(), frozenset())


@pytest.mark.parametrize(("counted", "expected"), [(True, {"upload"}), (False, set())])
def test_client_roles_switch(counted: bool, expected: set[str]) -> None:
    identity = user(client=("uploader",))
    profile = compose_profile(identity, CONFIG, client_roles_count=counted)
    assert profile.permissions == expected


@pytest.mark.parametrize(
    ("groups", "expected_roles"),
    [
        (("/radiology",), {"doctor-role"}),
        (("radiology",), {"doctor-role"}),
        (("/students",), {"teaching-role"}),
        (("/dept/radiology",), set()),  # a different group, not a suffix match
        (("/radiology", "/students"), {"doctor-role", "teaching-role"}),
        ((), set()),
    ],
)
def test_groups_map_to_roles(groups: tuple[str, ...], expected_roles: set[str]) -> None:
    profile = compose_profile(user(groups=groups), CONFIG)
    assert profile.roles == expected_roles


def test_group_mapped_to_unknown_role_grants_nothing() -> None:
    config = parse_roles({"roles": {}, "group-roles": {"/g": ["ghost"]}})
    assert compose_profile(user(groups=("/g",)), config).roles == frozenset()


def test_extra_labels_and_permissions_are_added() -> None:
    profile = compose_profile(
        user("external-role"),
        CONFIG,
        extra_labels=frozenset({"album-x7k2"}),
        extra_permissions=frozenset({"download"}),
    )
    assert profile.authorized_labels == {"external", "album-x7k2"}
    assert profile.permissions == {"view", "download"}
    assert profile.roles == {"external-role"}


def test_extras_alone_for_a_user_without_roles() -> None:
    profile = compose_profile(user(), CONFIG, extra_labels={"album-1"}, extra_permissions={"view"})
    assert profile == Profile(frozenset({"view"}), frozenset({"album-1"}), frozenset())


def test_extra_star_label_normalises() -> None:
    profile = compose_profile(user("external-role"), CONFIG, extra_labels={"*"})
    assert profile.labels_list() == ["*"]


def test_compose_does_not_mutate_inputs() -> None:
    before = CONFIG.to_json()
    extras = {"album-1"}
    compose_profile(user("doctor-role", groups=("/students",)), CONFIG, extra_labels=extras)
    assert CONFIG.to_json() == before and extras == {"album-1"}


_names = st.sampled_from(
    ["admin-role", "doctor-role", "external-role", "teaching-role", "uploader", "ghost", "x"]
)


@settings(max_examples=200, deadline=None)
@given(
    st.frozensets(_names),
    st.frozensets(_names),
    st.frozensets(st.sampled_from(["/radiology", "students", "/nobody"])),
    st.frozensets(st.sampled_from(["album-1", "album-2", "*"])),
)
def test_composition_is_the_union_of_grants(
    realm: frozenset[str], client: frozenset[str], groups: frozenset[str], extra: frozenset[str]
) -> None:
    identity = Identity(
        kind=IdentityKind.USER, subject="s", realm_roles=realm, client_roles=client, groups=groups
    )
    profile = compose_profile(identity, CONFIG, extra_labels=extra)
    names = set(realm | client)
    for group in groups:
        names |= CONFIG.group_roles.get(group.lstrip("/"), frozenset())
    grants = [CONFIG.roles[n] for n in names if n in CONFIG.roles]
    labels = set(extra).union(*(g.authorized_labels for g in grants))
    assert profile.permissions == set().union(*(g.permissions for g in grants))
    assert profile.authorized_labels == ({"*"} if "*" in labels else labels)
    assert profile.roles == {n for n in names if n in CONFIG.roles}
    labels_json = profile.labels_list()
    assert labels_json == ["*"] or "*" not in labels_json
