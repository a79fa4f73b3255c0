"""The proxy allowlist: which My Account API routes the browser reaches, and what a path or query may hold."""

from __future__ import annotations

import typing as t

import pytest

from bff.proxy import config as config_module
from bff.proxy import matching as matching_module
from bff.proxy import spec as spec_module
from bff.proxy.config import DEFAULT_GROUPS, enabled_routes
from bff.proxy.matching import MAX_PATH_LENGTH, MAX_QUERY_LENGTH, RouteMatch, RouteRejection, RouteTable
from bff.proxy.spec import GROUPS, NEVER_EXPOSED, Route, routes_from_openapi, scopes_for, spec_routes

DEFAULT = RouteTable.from_config(None)

ACCOUNTS = "/connected-accounts/accounts"
CONNECTIONS = "/connected-accounts/connections"
METHODS = "/authentication-methods"


def matched(result: RouteMatch | RouteRejection) -> RouteMatch:
    assert isinstance(result, RouteMatch), result
    return result


def rejected(result: RouteMatch | RouteRejection) -> RouteRejection:
    assert isinstance(result, RouteRejection), result
    return result


def operation(tag: str, scope: str, **extra: t.Any) -> dict[str, t.Any]:
    return {
        "operationId": f"op-{tag}-{scope}",
        "tags": [tag],
        "security": [{"Bearer-DPoP": [scope]}],
        **extra,
    }


def document(paths: dict[str, dict[str, t.Any]]) -> dict[str, t.Any]:
    return {"openapi": "3.1.0", "paths": paths}


# ---------------------------------------------------------------------------------------------------------
# The default allowlist

DEFAULT_ROUTES = [
    # method, request path, template, scope, group, body expected
    ("GET", "/factors", "/factors", "read:me:factors", "factors", False),
    ("GET", METHODS, METHODS, "read:me:authentication_methods", "authentication-methods", False),
    ("POST", METHODS, METHODS, "create:me:authentication_methods", "authentication-methods", True),
    (
        "GET",
        f"{METHODS}/totp|dev_1",
        f"{METHODS}/{{authentication_method_id}}",
        "read:me:authentication_methods",
        "authentication-methods",
        False,
    ),
    (
        "PATCH",
        f"{METHODS}/phone|dev_1",
        f"{METHODS}/{{authentication_method_id}}",
        "update:me:authentication_methods",
        "authentication-methods",
        True,
    ),
    (
        "DELETE",
        f"{METHODS}/email|dev_1",
        f"{METHODS}/{{authentication_method_id}}",
        "delete:me:authentication_methods",
        "authentication-methods",
        False,
    ),
    (
        "POST",
        f"{METHODS}/passkey%7Cnew/verify",
        f"{METHODS}/{{authentication_method_id}}/verify",
        "create:me:authentication_methods",
        "authentication-methods",
        True,
    ),
    ("GET", ACCOUNTS, ACCOUNTS, "read:me:connected_accounts", "connected-accounts", False),
    (
        "DELETE",
        f"{ACCOUNTS}/cac_abc123",
        f"{ACCOUNTS}/{{id}}",
        "delete:me:connected_accounts",
        "connected-accounts",
        False,
    ),
    ("GET", CONNECTIONS, CONNECTIONS, "read:me:connected_accounts", "connected-accounts", False),
]


@pytest.mark.parametrize(
    ("method", "path", "template", "scope", "group", "body"),
    DEFAULT_ROUTES,
    ids=[f"{r[0]} {r[2]}" for r in DEFAULT_ROUTES],
)
def test_default_route_matches_with_its_scope_group_and_body(
    method: str, path: str, template: str, scope: str, group: str, body: bool
) -> None:
    result = matched(DEFAULT.match(method, path, ""))
    assert (result.route.method, result.route.template) == (method, template)
    assert result.route.scope == scope
    assert result.route.group == group
    assert result.route.operation_id
    assert result.expects_body is body
    assert result.route.body_media_types == (("application/json",) if body else ())
    assert result.upstream_path == path
    assert result.query == ""


def test_default_table_exposes_exactly_the_default_routes() -> None:
    assert DEFAULT_GROUPS == ("factors", "authentication-methods", "connected-accounts")
    assert {(r.method, r.template) for r in DEFAULT.routes} == {(r[0], r[2]) for r in DEFAULT_ROUTES}


@pytest.mark.parametrize("config", [None, "", "   "])
def test_unset_or_blank_config_means_the_defaults(config: str | None) -> None:
    assert RouteTable.from_config(config).routes == DEFAULT.routes


def test_scopes_lists_every_scope_the_enabled_routes_need_once() -> None:
    expected = (
        "create:me:authentication_methods",
        "delete:me:authentication_methods",
        "delete:me:connected_accounts",
        "read:me:authentication_methods",
        "read:me:connected_accounts",
        "read:me:factors",
        "update:me:authentication_methods",
    )
    assert scopes_for(DEFAULT.routes) == expected
    assert DEFAULT.scopes == expected
    assert RouteTable.from_config("factors").scopes == ("read:me:factors",)
    assert scopes_for([]) == ()


def test_spec_is_read_once() -> None:
    assert spec_routes() is spec_routes()


@pytest.mark.parametrize(
    ("module", "surface"),
    [
        (
            spec_module,
            [
                "GROUPS",
                "NEVER_EXPOSED",
                "PathParam",
                "QueryParam",
                "Route",
                "ValueRule",
                "routes_from_openapi",
                "scopes_for",
                "spec_routes",
            ],
        ),
        (
            matching_module,
            ["MAX_PATH_LENGTH", "MAX_QUERY_LENGTH", "RejectionKind", "RouteMatch", "RouteRejection", "RouteTable"],
        ),
        (config_module, ["DEFAULT_GROUPS", "enabled_routes"]),
    ],
)
def test_public_surface_is_pinned(module: t.Any, surface: list[str]) -> None:
    assert sorted(module.__all__) == surface
    assert all(hasattr(module, name) for name in module.__all__)


@pytest.mark.parametrize(("kind", "status"), [("not-found", 404), ("bad-path", 400), ("bad-query", 400)])
def test_rejection_kind_maps_to_http_status(
    kind: t.Literal["not-found", "bad-path", "bad-query"], status: int
) -> None:
    assert RouteRejection(kind=kind, detail="x").status == status


# ---------------------------------------------------------------------------------------------------------
# Connect and complete


@pytest.mark.parametrize(
    "config", [None, "connected-accounts", "default,connected-accounts", "connected-accounts:GET+DELETE"]
)
def test_connect_and_complete_are_never_exposed_by_groups(config: str | None) -> None:
    table = RouteTable.from_config(config)
    for method, template in sorted(NEVER_EXPOSED):
        assert rejected(table.match(method, template, "")).kind == "not-found"
        assert all((r.method, r.template) != (method, template) for r in table.routes)


@pytest.mark.parametrize(
    "config",
    [
        "POST /connected-accounts/connect",
        "factors, post /connected-accounts/complete",
        "connected-accounts:POST",
    ],
)
def test_naming_connect_or_complete_in_config_is_refused(config: str) -> None:
    with pytest.raises(ValueError, match=r"entry '(POST|post|connected-accounts:POST)"):
        RouteTable.from_config(config)


def test_constructor_refuses_never_exposed_routes() -> None:
    connect = next(
        r for r in spec_routes() if (r.method, r.template) == ("POST", "/connected-accounts/connect")
    )
    with pytest.raises(ValueError, match="never exposed"):
        RouteTable([connect])


def test_constructor_refuses_routes_outside_the_spec() -> None:
    invented = Route(
        method="GET", template="/admin", scope="read:me:factors", group="factors", operation_id="x"
    )
    with pytest.raises(ValueError, match="not a route of the spec"):
        RouteTable([invented])


def test_disabled_literal_route_shadows_an_enabled_parameter_route() -> None:
    # If a parameter template could also match /connected-accounts/connect, the request must still be
    # refused rather than be forwarded under the broader template.
    catalogue = routes_from_openapi(
        document(
            {
                # The broader template first, so document order alone would pick it.
                "/connected-accounts/{thing}": {
                    "post": operation(
                        "connected-accounts",
                        "create:me:connected_accounts",
                        parameters=[
                            {"name": "thing", "in": "path", "required": True, "schema": {"type": "string"}}
                        ],
                    )
                },
                "/connected-accounts/connect": {
                    "post": operation("connected-accounts", "create:me:connected_accounts")
                },
            }
        )
    )
    table = RouteTable.from_config("connected-accounts", catalogue=catalogue)
    assert [r.template for r in table.routes] == ["/connected-accounts/{thing}"]
    assert (
        matched(table.match("POST", "/connected-accounts/other", "")).route.template
        == "/connected-accounts/{thing}"
    )
    assert rejected(table.match("POST", "/connected-accounts/connect", "")).kind == "not-found"


# ---------------------------------------------------------------------------------------------------------
# Paths

BAD_PATHS = [
    # id, path, fragment of the detail
    ("encoded-slash-lower", f"{METHODS}/a%2fb", "encoded '/'"),
    ("encoded-slash-upper", f"{METHODS}/a%2Fb", "encoded '/'"),
    ("encoded-backslash", f"{METHODS}/a%5cb", "encoded '\\'"),
    ("encoded-dot-dot", f"{METHODS}/%2E%2E", "encoded '.'"),
    ("encoded-dot-lower", f"{METHODS}/%2e", "encoded '.'"),
    ("double-encoded-slash", f"{METHODS}/a%252Fb", "double encoding"),
    ("double-encoded-pipe", f"{METHODS}/passkey%257Cnew", "double encoding"),
    ("slash-backslash", "/\\factors", "backslash"),
    ("backslash-in-id", f"{METHODS}/a\\b", "backslash"),
    ("encoded-nul", f"{METHODS}/a%00", "encoded control"),
    ("encoded-unit-separator", f"{METHODS}/a%1f", "encoded control"),
    ("encoded-del", f"{METHODS}/a%7F", "encoded control"),
    ("raw-tab", f"{METHODS}/a\tb", "control character"),
    ("raw-nul", "/factors\x00", "control character"),
    ("raw-del", f"{METHODS}/a\x7f", "control character"),
    ("raw-newline", "/factors\n", "control character"),
    ("non-ascii", f"{METHODS}/caf\u00e9", "non-ASCII"),
    ("non-ascii-latin1-byte", f"{METHODS}/a\xff", "non-ASCII"),
    ("trailing-slash", "/factors/", "empty segment"),
    ("double-slash", "//factors", "empty segment"),
    ("double-slash-inside", f"{METHODS}//verify", "empty segment"),
    ("root-only", "/", "empty segment"),
    ("dot-segment", "/./factors", "'.' or '..' segment"),
    ("dot-dot-segment", f"{METHODS}/../factors", "'.' or '..' segment"),
    ("dot-dot-as-id", f"{METHODS}/..", "'.' or '..' segment"),
    ("semicolon-parameter", "/factors;jsessionid=1", "';'"),
    ("truncated-percent", f"{METHODS}/a%7", "malformed percent-encoding"),
    ("non-hex-percent", f"{METHODS}/a%zz", "malformed percent-encoding"),
    ("bare-percent", f"{METHODS}/100%", "malformed percent-encoding"),
    ("encoded-utf8", f"{METHODS}/caf%C3%A9", "%C3"),
    ("encoded-space", f"{METHODS}/a%20b", "%20"),
    ("raw-space", f"{METHODS}/a b", "not accepted"),
    ("question-mark", "/factors?x", "not accepted"),
    ("exclamation", f"{METHODS}/a!b", "not accepted"),
    ("no-leading-slash", "factors", "start with '/'"),
    ("empty", "", "start with '/'"),
    ("too-long", f"{METHODS}/" + "a" * MAX_PATH_LENGTH, "longer than"),
]


@pytest.mark.parametrize(("path", "fragment"), [c[1:] for c in BAD_PATHS], ids=[c[0] for c in BAD_PATHS])
def test_malformed_path_is_bad_path(path: str, fragment: str) -> None:
    result = rejected(DEFAULT.match("GET", path, ""))
    assert result.kind == "bad-path"
    assert result.status == 400
    assert fragment in result.detail


NOT_FOUND = [
    ("unknown-path", "GET", "/admin"),
    ("wrong-method", "PUT", "/factors"),
    ("delete-on-list", "DELETE", METHODS),
    ("head", "HEAD", "/factors"),
    ("options", "OPTIONS", METHODS),
    ("lower-case-method", "get", "/factors"),
    ("literal-case", "GET", "/Factors"),
    ("extra-segment", "GET", "/factors/x"),
    ("parameter-is-one-segment", "GET", f"{METHODS}/a/b"),
    ("parameter-is-one-segment-verify", "POST", f"{METHODS}/a/b/verify"),
    ("disabled-group", "GET", "/consents"),
    ("bff-prefix-repeated", "GET", "/me/v1/factors"),
    ("connect", "POST", "/connected-accounts/connect"),
    ("complete", "POST", "/connected-accounts/complete"),
]


@pytest.mark.parametrize(("method", "path"), [c[1:] for c in NOT_FOUND], ids=[c[0] for c in NOT_FOUND])
def test_well_formed_request_off_the_allowlist_is_not_found(method: str, path: str) -> None:
    result = rejected(DEFAULT.match(method, path, ""))
    assert result.kind == "not-found"
    assert result.status == 404


IDS = [
    "passkey|new",
    "passkey%7Cnew",
    "passkey%7cnew",
    "phone|dev_Ab-9.x~y",
    "webauthn-roaming%7Cdev_x:y@z+w=",
    "totp%7Cdev%3Ax%40y%2Bz%3D",
]


@pytest.mark.parametrize("method_id", IDS)
def test_authentication_method_id_is_forwarded_unmodified(method_id: str) -> None:
    get = matched(DEFAULT.match("GET", f"{METHODS}/{method_id}", ""))
    verify = matched(DEFAULT.match("POST", f"{METHODS}/{method_id}/verify", ""))
    assert get.upstream_path == f"{METHODS}/{method_id}"
    assert verify.upstream_path == f"{METHODS}/{method_id}/verify"


@pytest.mark.parametrize("account_id", ["abc123", "cac_", "cac_a-b", "cac_a%7Cb", "CAC_abc"])
def test_connected_account_id_must_match_the_declared_pattern(account_id: str) -> None:
    result = rejected(DEFAULT.match("DELETE", f"{ACCOUNTS}/{account_id}", ""))
    assert result.kind == "bad-path"
    assert result.parameter == "id"


# ---------------------------------------------------------------------------------------------------------
# Queries


@pytest.mark.parametrize(
    ("method", "path", "query", "name"),
    [
        ("GET", "/factors", "foo=1", "foo"),
        ("GET", METHODS, "typ=totp", "typ"),
        ("GET", METHODS, "type=totp&take=5", "take"),
        ("GET", ACCOUNTS, "t%61ke=5", "t%61ke"),
        ("GET", ACCOUNTS, "connection%5B%5D=github", "connection%5B%5D"),
        ("GET", CONNECTIONS, "connection=github", "connection"),
        ("DELETE", f"{ACCOUNTS}/cac_1", "force=true", "force"),
        ("POST", f"{METHODS}/passkey%7Cnew/verify", "take=1", "take"),
    ],
)
def test_unknown_query_parameter_is_bad_query_naming_it(
    method: str, path: str, query: str, name: str
) -> None:
    result = rejected(DEFAULT.match(method, path, query))
    assert result.kind == "bad-query"
    assert result.parameter == name
    assert f"'{name}'" in result.detail


def test_long_unknown_parameter_name_is_shortened_in_the_detail() -> None:
    result = rejected(DEFAULT.match("GET", "/factors", "x" * 500 + "=1"))
    assert result.parameter == "x" * 500
    assert len(result.detail) < 120


@pytest.mark.parametrize(
    "query",
    [
        "connection=github",
        "connection=github&connection=google-oauth2",
        "connection=a&from=cursor&connection=b&take=20",
        "&".join(f"connection=c{i}" for i in range(20)),
        "connection=" + "a" * 128,
    ],
)
def test_connection_may_repeat_on_the_accounts_list(query: str) -> None:
    assert matched(DEFAULT.match("GET", ACCOUNTS, query)).query == query


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("&".join(f"connection=c{i}" for i in range(21)), "at most 20 times"),
        ("connection=" + "a" * 129, "at most 128 characters"),
        ("connection=a&connection=" + "b" * 129, "at most 128 characters"),
    ],
)
def test_connection_respects_declared_item_limits(query: str, fragment: str) -> None:
    result = rejected(DEFAULT.match("GET", ACCOUNTS, query))
    assert (result.kind, result.parameter) == ("bad-query", "connection")
    assert fragment in result.detail


@pytest.mark.parametrize(
    ("path", "query", "name"),
    [
        (ACCOUNTS, "take=1&take=2", "take"),
        (ACCOUNTS, "from=a&from=b", "from"),
        (CONNECTIONS, "take=5&from=a&take=5", "take"),
        (METHODS, "type=totp&type=phone", "type"),
    ],
)
def test_parameter_not_declared_as_array_may_not_repeat(path: str, query: str, name: str) -> None:
    result = rejected(DEFAULT.match("GET", path, query))
    assert (result.kind, result.parameter) == ("bad-query", name)
    assert "only once" in result.detail


@pytest.mark.parametrize("path", [ACCOUNTS, CONNECTIONS])
@pytest.mark.parametrize("take", ["1", "10", "20", "100"])
def test_take_within_declared_range_is_accepted(path: str, take: str) -> None:
    assert matched(DEFAULT.match("GET", path, f"take={take}")).query == f"take={take}"


@pytest.mark.parametrize("path", [ACCOUNTS, CONNECTIONS])
@pytest.mark.parametrize(
    ("take", "fragment"),
    [
        ("0", "at least 1"),
        ("-1", "at least 1"),
        ("", "decimal integer"),
        ("abc", "decimal integer"),
        ("1.5", "decimal integer"),
        ("+1", "decimal integer"),
        ("01", "decimal integer"),
        ("%31", "decimal integer"),
        ("1e3", "decimal integer"),
        ("9" * 30, "decimal integer"),
    ],
)
def test_take_outside_declared_range_or_not_an_integer_is_bad_query(
    path: str, take: str, fragment: str
) -> None:
    result = rejected(DEFAULT.match("GET", path, f"take={take}"))
    assert (result.kind, result.parameter) == ("bad-query", "take")
    assert fragment in result.detail


def test_take_maximum_is_enforced_when_the_spec_declares_one() -> None:
    take = {"name": "take", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 20}}
    catalogue = routes_from_openapi(
        document({"/factors": {"get": operation("factors", "read:me:factors", parameters=[take])}})
    )
    table = RouteTable.from_config("factors", catalogue=catalogue)
    assert isinstance(table.match("GET", "/factors", "take=20"), RouteMatch)
    result = rejected(table.match("GET", "/factors", "take=21"))
    assert (result.kind, result.parameter) == ("bad-query", "take")
    assert "at most 20" in result.detail


@pytest.mark.parametrize("factor", ["passkey", "totp", "recovery-code", "pass%6Bey"])
def test_type_filter_accepts_declared_factor_types(factor: str) -> None:
    assert matched(DEFAULT.match("GET", METHODS, f"type={factor}")).query == f"type={factor}"


@pytest.mark.parametrize("factor", ["sms", "", "PASSKEY"])
def test_type_filter_refuses_undeclared_factor_types(factor: str) -> None:
    result = rejected(DEFAULT.match("GET", METHODS, f"type={factor}"))
    assert (result.kind, result.parameter) == ("bad-query", "type")


def test_accepted_query_is_forwarded_exactly_as_received() -> None:
    query = "connection=google%2Doauth2&from=abc%3D%3D+x&connection=git|hub&take=5"
    assert matched(DEFAULT.match("GET", ACCOUNTS, query)).query == query


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("take=1&&from=a", "empty"),
        ("take=1&", "empty"),
        ("&take=1", "empty"),
        ("=1", "empty"),
        ("take", "no value"),
        ("take=1;from=a", "not accepted"),
        ("from=a b", "not accepted"),
        ("from=caf\u00e9", "not accepted"),
        ("from=a\tb", "not accepted"),
        ("from=a#b", "not accepted"),
        ("from=%zz", "malformed percent-encoding"),
        ("from=%4", "malformed percent-encoding"),
        ("from=%FF", "not valid UTF-8"),
        ("from=a%0Ab", "control character"),
        ("from=%00", "control character"),
        ("from=%7f", "control character"),
        ("from=" + "a" * MAX_QUERY_LENGTH, "longer than"),
    ],
)
def test_malformed_query_is_bad_query(query: str, fragment: str) -> None:
    result = rejected(DEFAULT.match("GET", ACCOUNTS, query))
    assert result.kind == "bad-query"
    assert fragment in result.detail


def test_path_is_checked_before_the_query() -> None:
    assert rejected(DEFAULT.match("GET", "/factors/", "foo=1")).kind == "bad-path"
    assert rejected(DEFAULT.match("GET", "/nowhere", "foo=1")).kind == "not-found"


# ---------------------------------------------------------------------------------------------------------
# Configuration


def templates(table: RouteTable) -> set[tuple[str, str]]:
    return {(r.method, r.template) for r in table.routes}


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("factors", {("GET", "/factors")}),
        (
            "authentication-methods:GET",
            {("GET", METHODS), ("GET", f"{METHODS}/{{authentication_method_id}}")},
        ),
        (
            " Factors , authentication-methods:get+delete ",
            {
                ("GET", "/factors"),
                ("GET", METHODS),
                ("GET", f"{METHODS}/{{authentication_method_id}}"),
                ("DELETE", f"{METHODS}/{{authentication_method_id}}"),
            },
        ),
        ("DELETE /connected-accounts/accounts/{id}", {("DELETE", f"{ACCOUNTS}/{{id}}")}),
        ("get /connected-accounts/accounts, GET /factors", {("GET", ACCOUNTS), ("GET", "/factors")}),
        ("factors,factors,GET /factors", {("GET", "/factors")}),
        ("none", set()),
    ],
)
def test_config_narrows_the_allowlist(config: str, expected: set[tuple[str, str]]) -> None:
    table = RouteTable.from_config(config)
    assert templates(table) == expected
    assert templates(table) <= templates(DEFAULT)


def test_narrowed_table_refuses_what_it_left_out() -> None:
    table = RouteTable.from_config("authentication-methods:GET")
    assert isinstance(table.match("GET", f"{METHODS}/totp|dev_1", ""), RouteMatch)
    assert rejected(table.match("POST", METHODS, "")).kind == "not-found"
    assert rejected(table.match("DELETE", f"{METHODS}/totp|dev_1", "")).kind == "not-found"
    assert rejected(table.match("GET", "/factors", "")).kind == "not-found"


def test_none_config_refuses_everything() -> None:
    table = RouteTable.from_config("none")
    assert table.routes == ()
    assert table.scopes == ()
    assert rejected(table.match("GET", "/factors", "")).kind == "not-found"


def test_naming_consents_enables_them_with_their_scope() -> None:
    assert rejected(DEFAULT.match("GET", "/consents", "")).kind == "not-found"
    table = RouteTable.from_config("default,consents")
    assert templates(table) == templates(DEFAULT) | {("GET", "/consents"), ("GET", "/consents/{consent_id}")}
    result = matched(table.match("GET", "/consents/cns_123", ""))
    assert (result.route.template, result.route.scope) == ("/consents/{consent_id}", "read:me:consents")
    assert "read:me:consents" in table.scopes
    only = RouteTable.from_config("consents")
    assert templates(only) == {("GET", "/consents"), ("GET", "/consents/{consent_id}")}


def test_naming_organizations_enables_them_with_their_take_limit() -> None:
    table = RouteTable.from_config("organizations")
    result = matched(table.match("GET", "/organizations", "from=x&take=50"))
    assert result.route.scope == "read:me:organizations"
    assert rejected(table.match("GET", "/organizations", "take=0")).parameter == "take"


@pytest.mark.parametrize(
    ("config", "entry", "fragment"),
    [
        ("factorz", "factorz", "unknown route group 'factorz'"),
        ("factors,connected_accounts", "connected_accounts", "unknown route group"),
        ("admin:GET", "admin:GET", "unknown route group 'admin'"),
        ("factors:DELETE", "factors:DELETE", "no exposable DELETE route (it has: GET)"),
        ("factors:GET+", "factors:GET+", "no exposable (empty) route"),
        ("profile:GET", "profile:GET", "(it has: none)"),
        ("GET /nope", "GET /nope", "unknown route"),
        ("GET /factors/", "GET /factors/", "unknown route"),
        ("GET /authentication-methods/{id}", "GET /authentication-methods/{id}", "unknown route"),
        ("HEAD /factors", "HEAD /factors", "unknown route"),
        ("none,factors", "none", "only entry"),
    ],
)
def test_bad_config_entry_is_a_value_error_naming_it(config: str, entry: str, fragment: str) -> None:
    with pytest.raises(ValueError, match="entry") as error:
        RouteTable.from_config(config)
    assert repr(entry) in str(error.value)
    assert fragment in str(error.value)


@pytest.mark.parametrize("config", ["factors,,consents", "factors,", ","])
def test_empty_config_entry_is_a_value_error(config: str) -> None:
    with pytest.raises(ValueError, match="empty entry"):
        RouteTable.from_config(config)


def test_enabled_routes_lists_what_the_config_names_in_order_and_the_table_deduplicates() -> None:
    named = enabled_routes("GET /factors, factors", spec_routes())
    assert [(r.method, r.template) for r in named] == [("GET", "/factors"), ("GET", "/factors")]
    assert RouteTable(named).routes == RouteTable.from_config("factors").routes
    assert enabled_routes("none", spec_routes()) == []


# ---------------------------------------------------------------------------------------------------------
# The profile group


def test_profile_group_exists_and_is_empty_in_the_packaged_spec() -> None:
    assert "profile" in GROUPS
    assert "profile" not in DEFAULT_GROUPS
    assert [r for r in spec_routes() if r.group == "profile"] == []
    assert RouteTable.from_config("profile").routes == ()
    assert RouteTable.from_config("default,profile").routes == DEFAULT.routes


def test_profile_group_holds_whatever_the_spec_tags_profile() -> None:
    catalogue = routes_from_openapi(
        document(
            {
                "/factors": {"get": operation("factors", "read:me:factors")},
                "/profile": {
                    "get": operation("profile", "read:me:profile"),
                    "patch": operation(
                        "profile",
                        "update:me:profile",
                        requestBody={"content": {"application/json": {"schema": {"type": "object"}}}},
                    ),
                },
            }
        )
    )
    assert templates(RouteTable.from_config(None, catalogue=catalogue)) == {("GET", "/factors")}
    table = RouteTable.from_config("profile", catalogue=catalogue)
    assert templates(table) == {("GET", "/profile"), ("PATCH", "/profile")}
    assert table.scopes == ("read:me:profile", "update:me:profile")
    assert matched(table.match("PATCH", "/profile", "")).expects_body


# ---------------------------------------------------------------------------------------------------------
# Reading the spec


def test_every_spec_operation_is_known_with_one_scope_and_group() -> None:
    routes = spec_routes()
    assert len(routes) == 15
    assert all(r.group in GROUPS and r.scope.count(":") == 2 for r in routes)
    assert {(r.method, r.template) for r in routes} >= NEVER_EXPOSED


@pytest.mark.parametrize(
    ("op", "fragment"),
    [
        (operation("billing", "read:me:billing"), "do not name exactly one group"),
        ({"operationId": "x", "tags": ["factors"]}, "exactly one Bearer-DPoP scope"),
        ({"operationId": "x", "tags": ["factors"], "security": [{"Bearer-DPoP": ["a", "b"]}]}, "exactly one"),
        (
            operation(
                "factors",
                "read:me:factors",
                parameters=[
                    {"name": "q", "in": "query", "schema": {"type": "string", "format": "x", "const": "y"}}
                ],
            ),
            "unsupported schema keywords ['const']",
        ),
        (
            operation(
                "factors",
                "read:me:factors",
                parameters=[{"name": "q", "in": "query", "schema": {"type": "object"}}],
            ),
            "unsupported type",
        ),
        (
            operation(
                "factors",
                "read:me:factors",
                parameters=[
                    {
                        "name": "q",
                        "in": "query",
                        "explode": False,
                        "schema": {"type": "array", "items": {"type": "string"}},
                    }
                ],
            ),
            "unsupported array style",
        ),
    ],
)
def test_spec_features_that_cannot_be_enforced_stop_loading(op: dict[str, t.Any], fragment: str) -> None:
    with pytest.raises(ValueError, match="GET /factors") as error:
        routes_from_openapi(document({"/factors": {"get": op}}))
    assert fragment in str(error.value)


@pytest.mark.parametrize(
    "template", ["/factors/", "/factors//x", "/a%2Fb", "/{id}x", "/x/{undeclared}", "/x/.."]
)
def test_unsupported_path_templates_stop_loading(template: str) -> None:
    with pytest.raises(ValueError, match="GET"):
        routes_from_openapi(document({template: {"get": operation("factors", "read:me:factors")}}))


def test_ambiguous_templates_stop_table_construction() -> None:
    param = {"in": "path", "required": True, "schema": {"type": "string"}}
    catalogue = routes_from_openapi(
        document(
            {
                "/x/{a}": {"get": operation("factors", "s:a:b", parameters=[{"name": "a", **param}])},
                "/x/{b}": {"get": operation("factors", "s:a:b", parameters=[{"name": "b", **param}])},
            }
        )
    )
    with pytest.raises(ValueError, match="ambiguous"):
        RouteTable((), catalogue)
