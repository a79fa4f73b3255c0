"""The allowlist of My Account API routes the proxy forwards, and strict validation of paths and queries.

Security: this module decides what the browser may make the BFF do with the user's access token. Only
operations defined in the packaged OpenAPI spec (``myaccount-api-oas.json``) can ever be exposed,
configuration can only narrow that set, and ``POST /connected-accounts/connect`` and
``POST /connected-accounts/complete`` are never exposed (the BFF runs that flow server-side). Every path
and query is checked against a strict grammar before it is compared with the allowlist, so nothing the
upstream could decode into a different route (``..``, ``%2F``, ``%252F``, ``\\``, ``;``) is forwarded.

The browser path equals the upstream path: ``/me/v1/<path>`` on the BFF maps to ``/<path>`` under
``BFF_MY_ACCOUNT_URL``. :meth:`RouteTable.match` takes the raw, still percent-encoded path after
``/me/v1`` and the raw query, and answers with a :class:`RouteMatch` or a :class:`RouteRejection`:

====================  ======  ===============================================================
kind                  status  when
====================  ======  ===============================================================
``bad-path``          400     the path breaks the grammar below, or a path parameter breaks
                              the constraints the spec declares for it
``not-found``         404     the path is well formed but no enabled route has this method and
                              path (wrong method, HEAD/OPTIONS, disabled or unknown route)
``bad-query``         400     a parameter the route does not define, a repeated non-array
                              parameter, a value outside its declared type or range, or a
                              malformed query
====================  ======  ===============================================================

The grammar is checked first, over the whole path, so a malformed path is ``bad-path`` even when no route
would have matched it.

Path grammar: ``/`` followed by one or more segments separated by single ``/``, at most
:data:`MAX_PATH_LENGTH` characters. A segment is one or more of

* the unreserved characters ``A-Z a-z 0-9 - . _ ~``;
* ``|`` ``:`` ``@`` ``+`` ``=`` (Auth0 ids such as ``passkey|new`` or ``phone|dev_x``);
* the percent-encoded forms of those five, hex in either case: ``%7C %3A %40 %2B %3D``.

``.`` and ``..`` segments are rejected. Everything else is rejected, in particular empty segments (``//``,
a trailing ``/``), ``\\``, ``;``, encoded ``/`` ``\\`` ``.`` ``%`` (``%2F``, ``%5C``, ``%2E``, ``%25`` and so
double encoding such as ``%252F``), raw or encoded control characters, non-ASCII characters and malformed
percent-encoding. Literal segments of a template match only byte for byte; a path parameter matches exactly
one segment and its value (decoded) must also meet the ``pattern``/length/enum the spec declares. The
upstream path is the raw path as received, so ids are forwarded unmodified.

Query grammar: ``name=value`` pairs separated by single ``&``, at most :data:`MAX_QUERY_LENGTH`
characters. Names must be spelled exactly as in the spec (an encoded name is an unknown name). Values may
hold the unreserved characters, ``! $ ' ( ) * + , : @ / ? | =`` and well-formed percent-encoding, and must
decode (``+`` as space) to UTF-8 without control characters. Integer values must be plain decimal digits
(``-`` allowed, no leading zeros) within the declared ``minimum``/``maximum``; strings must meet the
declared ``enum``/length/``pattern``. A parameter may repeat only when the spec declares it an array
(``form`` style, exploded), up to its ``maxItems``. Accepted queries are forwarded exactly as received.

Configuration (``BFF_PROXY_ROUTES``, parsed by :meth:`RouteTable.from_config`): unset or blank enables the
default groups (``factors``, ``authentication-methods``, ``connected-accounts``). Otherwise a
comma-separated list of entries, surrounding whitespace ignored:

* ``default`` - the default groups;
* ``<group>`` - every exposable route of that group, e.g. ``consents``;
* ``<group>:<METHOD>[+<METHOD>...]`` - the group's routes with those methods, e.g.
  ``authentication-methods:GET+DELETE``;
* ``<METHOD> <template>`` - one route, template exactly as in the spec, e.g.
  ``DELETE /connected-accounts/accounts/{id}``;
* ``none`` - alone: no route at all (the proxy answers 404 to everything).

Groups and methods are case-insensitive, templates are not. The result is the union of the entries, so
``default,consents`` adds consents to the defaults while ``consents`` alone enables only consents. An
unknown group, method or route, an entry that selects nothing, and naming connect/complete raise
``ValueError`` with a message quoting the entry. The group ``profile`` exists and holds whatever the spec
tags ``profile``; the packaged spec has no such operation, so enabling it currently adds no route.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import operator
import re
import typing as t
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "DEFAULT_GROUPS",
    "GROUPS",
    "MAX_PATH_LENGTH",
    "MAX_QUERY_LENGTH",
    "NEVER_EXPOSED",
    "PathParam",
    "QueryParam",
    "RejectionKind",
    "Route",
    "RouteMatch",
    "RouteRejection",
    "RouteTable",
    "ValueRule",
    "routes_from_openapi",
    "scopes_for",
    "spec_routes",
]

GROUPS: tuple[str, ...] = (
    "factors",
    "authentication-methods",
    "connected-accounts",
    "consents",
    "organizations",
    "profile",
)
"""Every route group; an operation's group is its single OpenAPI tag."""

DEFAULT_GROUPS: tuple[str, ...] = ("factors", "authentication-methods", "connected-accounts")
"""The groups enabled when ``BFF_PROXY_ROUTES`` is unset or blank."""

NEVER_EXPOSED: frozenset[tuple[str, str]] = frozenset(
    {
        ("POST", "/connected-accounts/connect"),
        ("POST", "/connected-accounts/complete"),
    }
)
"""Routes no configuration can expose: the BFF wraps them in a server-side flow (it must own the
redirect URI, state and PKCE verifier of a connect request)."""

MAX_PATH_LENGTH = 1024
"""Longest raw path accepted; Auth0 ids are far shorter, and the bound keeps validation cheap."""

MAX_QUERY_LENGTH = 8192
"""Longest raw query accepted: room for 20 ``connection`` names of 128 ASCII characters, all encoded."""

RejectionKind = t.Literal["not-found", "bad-path", "bad-query"]

_SECURITY_SCHEME = "Bearer-DPoP"
_SPEC_RESOURCE = "myaccount-api-oas.json"
_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

# The path grammar as one expression, so an accepted path costs a single scan; the possessive quantifiers
# never backtrack, so a long hostile path costs no more.
_PATH_RE = re.compile(r"(?:/(?:[A-Za-z0-9\-._~|:@+=]++|%(?:7[Cc]|3[AaDd]|40|2[Bb]))++)++")
_LITERAL_SEGMENT_RE = re.compile(r"[A-Za-z0-9\-._~]+")
_TEMPLATE_PARAM_RE = re.compile(r"\{([A-Za-z0-9_\-.]+)\}")
_PERCENT_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_QUERY_RE = re.compile(r"(?:[A-Za-z0-9\-._~!$'()*+,:@/?|=&]++|%[0-9A-Fa-f]{2})*+")
_INTEGER_RE = re.compile(r"-?(?:0|[1-9][0-9]{0,17})")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_NAME_IN_DETAIL = 64
# Encoded characters named in path rejections, so an operator reading a 400 knows which rule fired.
_ENCODED_PATH_REASONS = {
    "2F": "an encoded '/' (%2F)",
    "5C": "an encoded '\\' (%5C)",
    "2E": "an encoded '.' (%2E)",
    "25": "an encoded '%' (%25, double encoding)",
}


@dataclass(frozen=True, slots=True)
class ValueRule:
    """The constraints the spec declares for one path or query value, checked before forwarding.

    Security: values outside these rules are refused by the BFF itself, so malformed input never
    reaches the upstream with the user's token. ``pattern`` is the spec's JSON Schema pattern compiled
    with Python's ``re`` (unanchored search, as JSON Schema specifies).
    """

    kind: t.Literal["string", "integer"] = "string"
    enum: frozenset[str] | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: re.Pattern[str] | None = None
    minimum: int | None = None
    maximum: int | None = None

    def violation(self, raw: str, decoded: str) -> str | None:
        """Why ``raw`` (as received) / ``decoded`` breaks the rule, or None when it is acceptable."""
        if self.kind == "integer":
            # The raw text, not the decoded one: "%31" or "+1" may parse differently upstream.
            if not _INTEGER_RE.fullmatch(raw):
                return "must be a decimal integer"
            number = int(raw)
            if self.minimum is not None and number < self.minimum:
                return f"must be at least {self.minimum}"
            if self.maximum is not None and number > self.maximum:
                return f"must be at most {self.maximum}"
            return None
        if self.enum is not None and decoded not in self.enum:
            return "must be one of " + ", ".join(sorted(self.enum))
        if self.min_length is not None and len(decoded) < self.min_length:
            return f"must be at least {self.min_length} characters long"
        if self.max_length is not None and len(decoded) > self.max_length:
            return f"must be at most {self.max_length} characters long"
        if self.pattern is not None and not self.pattern.search(decoded):
            return "does not match the pattern the API declares"
        return None


@dataclass(frozen=True, slots=True)
class PathParam:
    """A ``{name}`` segment of a route template; it matches exactly one path segment."""

    name: str
    rule: ValueRule


@dataclass(frozen=True, slots=True)
class QueryParam:
    """A query parameter the spec defines for a route; any other parameter is refused.

    ``repeatable`` is True only for array parameters (``form`` style, exploded), which may appear up to
    ``max_items`` times; every occurrence must meet ``rule``.
    """

    name: str
    rule: ValueRule
    repeatable: bool = False
    max_items: int | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """One My Account API operation: what the proxy may forward, and the scope the token must carry.

    ``template`` is the spec's path (``/authentication-methods/{authentication_method_id}``), the same
    under ``/me/v1`` on the BFF and upstream. ``expects_body`` says whether the spec defines a request
    body, with the media types in ``body_media_types``; the forwarding layer must drop or refuse a body
    on a route that expects none.
    """

    method: str
    template: str
    scope: str
    group: str
    operation_id: str
    path_params: tuple[PathParam, ...] = ()
    query_params: tuple[QueryParam, ...] = ()
    expects_body: bool = False
    body_media_types: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """An allowed request: forward ``route.method`` to ``upstream_path`` (relative to
    ``BFF_MY_ACCOUNT_URL``) with ``query`` (raw, possibly empty; append ``?query`` when non-empty) and a
    token carrying ``route.scope``.

    ``upstream_path`` is the validated raw path, byte for byte, so ids such as ``passkey%7Cnew`` reach the
    upstream unmodified; the HTTP client must not re-quote or normalise it.
    """

    route: Route
    upstream_path: str
    query: str

    @property
    def expects_body(self) -> bool:
        """Whether the spec defines a request body for this route."""
        return self.route.expects_body


@dataclass(frozen=True, slots=True)
class RouteRejection:
    """A refused request. ``detail`` and ``parameter`` are safe to return to the browser: they never echo
    the path, and a query parameter name is echoed only once it is known to be printable ASCII."""

    kind: RejectionKind
    detail: str
    parameter: str | None = None

    @property
    def status(self) -> int:
        """The HTTP status to answer: 404 for ``not-found``, 400 otherwise."""
        return 404 if self.kind == "not-found" else 400


# ---------------------------------------------------------------------------------------------------------
# Reading the spec


def _resolve(document: Mapping[str, t.Any], node: t.Any) -> t.Any:
    """Follow local ``$ref`` pointers (``#/components/...``) until a concrete node."""
    for _ in range(32):
        if not (isinstance(node, Mapping) and "$ref" in node):
            return node
        ref = node["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise ValueError(f"unsupported $ref {ref!r}: only local references are understood")
        target: t.Any = document
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    raise ValueError("$ref chain too long or circular")


# Schema keywords that only annotate; anything else that is not understood makes loading fail, so a
# constraint added to the spec is never silently ignored.
_ANNOTATIONS = frozenset({"description", "default", "title", "example", "examples", "format", "deprecated"})
_RULE_KEYWORDS = (
    frozenset({"type", "enum", "minLength", "maxLength", "pattern", "minimum", "maximum"}) | _ANNOTATIONS
)


def _rule(document: Mapping[str, t.Any], schema: t.Any, where: str) -> ValueRule:
    schema = _resolve(document, schema)
    if not isinstance(schema, Mapping):
        raise ValueError(f"{where}: schema is not an object")
    unknown = set(schema) - _RULE_KEYWORDS
    if unknown:
        raise ValueError(f"{where}: unsupported schema keywords {sorted(unknown)}")
    kind = schema.get("type", "string")
    if kind not in ("string", "integer"):
        raise ValueError(f"{where}: unsupported type {kind!r}")
    pattern = schema.get("pattern")
    enum = schema.get("enum")
    return ValueRule(
        kind=kind,
        enum=frozenset(str(value) for value in enum) if enum is not None else None,
        min_length=schema.get("minLength"),
        max_length=schema.get("maxLength"),
        pattern=re.compile(pattern) if pattern is not None else None,
        minimum=schema.get("minimum"),
        maximum=schema.get("maximum"),
    )


def _query_param(document: Mapping[str, t.Any], param: Mapping[str, t.Any], where: str) -> QueryParam:
    name = param["name"]
    schema = _resolve(document, param.get("schema", {}))
    alternatives = [_resolve(document, s) for s in schema.get("oneOf", schema.get("anyOf", [schema]))]
    arrays = [alt for alt in alternatives if alt.get("type") == "array"]
    if not arrays:
        if len(alternatives) != 1:
            raise ValueError(f"{where}: query parameter {name!r} has several scalar schemas")
        return QueryParam(name=name, rule=_rule(document, alternatives[0], f"{where} ?{name}"))
    if len(arrays) != 1:
        raise ValueError(f"{where}: query parameter {name!r} has several array schemas")
    style = param.get("style", "form")
    if style != "form" or not param.get("explode", True):
        # Only name=a&name=b is understood; a comma-joined list would be validated as one value.
        raise ValueError(f"{where}: query parameter {name!r} uses an unsupported array style")
    array = arrays[0]
    item = _rule(document, array.get("items", {}), f"{where} ?{name}[]")
    # A scalar alternative beside the array (a single value) must not be looser than an array item.
    for scalar in alternatives:
        if scalar is not array and _rule(document, scalar, f"{where} ?{name}") != item:
            raise ValueError(f"{where}: query parameter {name!r} has scalar and item schemas that differ")
    return QueryParam(name=name, rule=item, repeatable=True, max_items=array.get("maxItems"))


def _scope(operation: Mapping[str, t.Any], where: str) -> str:
    requirements = operation.get("security")
    scopes = [scope for requirement in requirements or () for scope in requirement.get(_SECURITY_SCHEME, ())]
    # One scope per operation is what the spec declares today; anything else needs a decision about
    # which scopes to request, so it stops startup instead of being guessed.
    if len(scopes) != 1:
        raise ValueError(f"{where}: expected exactly one {_SECURITY_SCHEME} scope, found {scopes!r}")
    return str(scopes[0])


def routes_from_openapi(document: Mapping[str, t.Any]) -> tuple[Route, ...]:
    """Every operation of an OpenAPI document as a :class:`Route`, in document order.

    Security: anything this function does not fully understand (a path template it cannot match
    strictly, a schema keyword it does not enforce, an operation without exactly one scope or group)
    raises ``ValueError`` rather than being exposed with weaker checks.
    """
    routes: list[Route] = []
    for template, item in document.get("paths", {}).items():
        item = _resolve(document, item)
        shared = [_resolve(document, p) for p in item.get("parameters", ())]
        for method in _HTTP_METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            where = f"{method.upper()} {template}"
            # Operation parameters override path-item ones with the same location and name (OpenAPI rule).
            own = [_resolve(document, p) for p in operation.get("parameters", ())]
            params = {(p["in"], p["name"]): p for p in [*shared, *own]}
            path_params: list[PathParam] = []
            segments = template.split("/")
            if template == "/" or segments[0] != "":
                raise ValueError(f"{where}: unsupported path template")
            for segment in segments[1:]:
                param = _TEMPLATE_PARAM_RE.fullmatch(segment)
                if param is None:
                    if not _LITERAL_SEGMENT_RE.fullmatch(segment) or segment in (".", ".."):
                        raise ValueError(f"{where}: unsupported literal segment {segment!r}")
                    continue
                definition = params.get(("path", param.group(1)))
                if definition is None:
                    raise ValueError(f"{where}: path parameter {param.group(1)!r} is not defined")
                rule = _rule(document, definition.get("schema", {}), f"{where} {{{param.group(1)}}}")
                path_params.append(PathParam(name=param.group(1), rule=rule))
            # Header parameters are the forwarding layer's concern; cookies are never forwarded.
            query_params = tuple(
                _query_param(document, p, where) for (place, _), p in params.items() if place == "query"
            )
            tags = operation.get("tags", ())
            if len(tags) != 1 or tags[0] not in GROUPS:
                raise ValueError(f"{where}: tags {tags!r} do not name exactly one group of {GROUPS}")
            body = _resolve(document, operation.get("requestBody"))
            routes.append(
                Route(
                    method=method.upper(),
                    template=template,
                    scope=_scope(operation, where),
                    group=tags[0],
                    operation_id=operation.get("operationId", where),
                    path_params=tuple(path_params),
                    query_params=query_params,
                    expects_body=body is not None,
                    body_media_types=tuple(body.get("content", {})) if body is not None else (),
                )
            )
    return tuple(routes)


@functools.cache
def spec_routes() -> tuple[Route, ...]:
    """Every operation of the packaged My Account API spec, read once per process."""
    text = importlib.resources.files(__package__ or "bff.proxy").joinpath(_SPEC_RESOURCE).read_text("utf-8")
    return routes_from_openapi(json.loads(text))


def scopes_for(routes: Iterable[Route]) -> tuple[str, ...]:
    """The scopes the given routes need, sorted and without duplicates: what to request for the My
    Account API audience so that every enabled route can be called (and no more)."""
    return tuple(sorted({route.scope for route in routes}))


# ---------------------------------------------------------------------------------------------------------
# Matching


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A route prepared for matching.

    ``shape`` is the template's segments with None where a parameter goes. ``pick`` takes the literal
    positions out of a request's segments in one C call; the route matches when that equals ``literals``.
    ``params`` lists only the path parameters that carry constraints.
    """

    route: Route
    enabled: bool
    shape: tuple[str | None, ...]
    pick: t.Callable[[list[str]], object]
    literals: object
    params: tuple[tuple[int, PathParam], ...]
    query: Mapping[str, QueryParam]

    @classmethod
    def of(cls, route: Route, enabled: bool) -> _Compiled:
        shape = tuple(
            None if segment.startswith("{") else segment for segment in route.template.split("/")[1:]
        )
        positions = [index for index, literal in enumerate(shape) if literal is not None]
        pick: t.Callable[[list[str]], object] = operator.itemgetter(*positions) if positions else _no_literals
        slots = (index for index, literal in enumerate(shape) if literal is None)
        params = tuple(zip(slots, route.path_params, strict=True))
        return cls(
            route=route,
            enabled=enabled,
            shape=shape,
            pick=pick,
            literals=pick([literal or "" for literal in shape]),
            # Unconstrained parameters are fully checked by the path grammar; skipping them saves time.
            params=tuple((index, param) for index, param in params if param.rule != _UNCONSTRAINED),
            query={param.name: param for param in route.query_params},
        )


_UNCONSTRAINED = ValueRule()


def _no_literals(segments: list[str]) -> object:
    return ()


def _specificity(compiled: _Compiled) -> tuple[int, ...]:
    # Literal segments before parameters, left to right: /a/b wins over /a/{x}, which wins over /{x}/b.
    return tuple(0 if literal is not None else 1 for literal in compiled.shape)


def _path_problem(raw_path: str) -> str:
    """Why ``raw_path`` breaks the path grammar; only called once the fast check has failed."""
    if len(raw_path) > MAX_PATH_LENGTH:
        return f"the path is longer than {MAX_PATH_LENGTH} characters"
    if _CONTROL_RE.search(raw_path):
        return "the path contains a control character"
    if not raw_path.isascii():
        return "the path contains a non-ASCII character"
    if not raw_path.startswith("/"):
        return "the path must start with '/'"
    if "\\" in raw_path:
        return "the path contains a backslash"
    if ";" in raw_path:
        return "the path contains ';' (path parameters are not accepted)"
    if _PERCENT_RE.search(raw_path):
        return "the path contains malformed percent-encoding"
    codes = [code.upper() for code in re.findall(r"%([0-9A-Fa-f]{2})", raw_path)]
    for code in codes:
        if code in _ENCODED_PATH_REASONS:
            return f"the path contains {_ENCODED_PATH_REASONS[code]}"
        if int(code, 16) < 0x20 or code == "7F":
            return "the path contains an encoded control character"
    if "//" in raw_path or raw_path.endswith("/"):
        return "the path contains an empty segment"
    for code in codes:
        if code not in ("7C", "3A", "3D", "40", "2B"):
            return f"the path contains %{code}, which is not accepted"
    return "the path contains a character that is not accepted"


def _bad_query(detail: str, parameter: str | None = None) -> RouteRejection:
    return RouteRejection(kind="bad-query", detail=detail, parameter=parameter)


def _shown(name: str) -> str:
    return name if len(name) <= _NAME_IN_DETAIL else name[:_NAME_IN_DETAIL] + "..."


_NOT_FOUND = RouteRejection(kind="not-found", detail="no such route")


class RouteTable:
    """The enabled routes, compiled for matching; built once at startup and shared by every request.

    Security: ``routes`` must come from ``catalogue`` (by default the packaged spec) and may not include
    :data:`NEVER_EXPOSED`, so configuration can narrow the spec but never widen it. Spec routes that are
    not enabled still take part in matching, so a request for one of them (connect, complete, a disabled
    group) is refused as ``not-found`` instead of falling through to a less specific enabled template.
    """

    __slots__ = ("_buckets", "_routes")

    def __init__(self, routes: Iterable[Route], catalogue: Sequence[Route] | None = None) -> None:
        if catalogue is None:
            catalogue = spec_routes()
        enabled = tuple(dict.fromkeys(routes))
        for route in enabled:
            if (route.method, route.template) in NEVER_EXPOSED:
                raise ValueError(f"{route.method} {route.template} is never exposed")
            if route not in catalogue:
                raise ValueError(f"{route.method} {route.template} is not a route of the spec")
        self._routes = tuple(route for route in catalogue if route in enabled)
        buckets: dict[tuple[str, int], list[_Compiled]] = {}
        for route in catalogue:
            compiled = _Compiled.of(route, enabled=route in self._routes)
            bucket = buckets.setdefault((route.method, len(compiled.shape)), [])
            if any(other.shape == compiled.shape for other in bucket):
                raise ValueError(f"{route.method} {route.template} is ambiguous with another route")
            bucket.append(compiled)
        self._buckets = {key: tuple(sorted(value, key=_specificity)) for key, value in buckets.items()}

    @classmethod
    def from_config(cls, spec: str | None, *, catalogue: Sequence[Route] | None = None) -> RouteTable:
        """The table ``BFF_PROXY_ROUTES`` asks for (syntax in the module docstring).

        Raises ``ValueError`` quoting the offending entry for an unknown group, method or route, an entry
        that selects no route, or an attempt to expose connect/complete: a mistyped allowlist stops startup
        rather than silently exposing more, or less, than intended.
        """
        if catalogue is None:
            catalogue = spec_routes()
        return cls(_select(spec, catalogue), catalogue)

    @property
    def routes(self) -> tuple[Route, ...]:
        """The enabled routes, in spec order."""
        return self._routes

    @property
    def scopes(self) -> tuple[str, ...]:
        """Every scope the enabled routes need (see :func:`scopes_for`)."""
        return scopes_for(self._routes)

    def match(self, method: str, raw_path: str, raw_query: str) -> RouteMatch | RouteRejection:
        """Decide whether ``method raw_path?raw_query`` may be forwarded.

        ``raw_path`` is the raw, still percent-encoded path after ``/me/v1`` (from ``RAW_URI`` or
        ``REQUEST_URI``), never a decoded one: decoding first would hide ``%2F`` and ``%2E%2E``.
        ``method`` is compared exactly (HTTP methods are case-sensitive). Expected refusals are returned,
        never raised.
        """
        if len(raw_path) > MAX_PATH_LENGTH or not _PATH_RE.fullmatch(raw_path):
            return RouteRejection(kind="bad-path", detail=_path_problem(raw_path))
        segments = raw_path[1:].split("/")
        if "." in segments or ".." in segments:
            return RouteRejection(kind="bad-path", detail="the path contains a '.' or '..' segment")
        for compiled in self._buckets.get((method, len(segments)), ()):
            if compiled.pick(segments) == compiled.literals:
                break
        else:
            return _NOT_FOUND
        if not compiled.enabled:
            return _NOT_FOUND
        for index, param in compiled.params:
            raw = segments[index]
            # Only %7C %3A %40 %2B %3D can be present here, so plain unquoting is exact ('+' stays '+').
            problem = param.rule.violation(raw, urllib.parse.unquote(raw) if "%" in raw else raw)
            if problem is not None:
                return RouteRejection(
                    kind="bad-path", detail=f"path parameter {param.name} {problem}", parameter=param.name
                )
        if raw_query:
            rejection = _check_query(compiled.query, raw_query)
            if rejection is not None:
                return rejection
        return RouteMatch(route=compiled.route, upstream_path=raw_path, query=raw_query)


def _check_query(allowed: Mapping[str, QueryParam], raw_query: str) -> RouteRejection | None:
    """Why ``raw_query`` may not be forwarded to a route accepting ``allowed``, or None."""
    if len(raw_query) > MAX_QUERY_LENGTH:
        return _bad_query(f"the query is longer than {MAX_QUERY_LENGTH} characters")
    if not _QUERY_RE.fullmatch(raw_query):
        if _PERCENT_RE.search(raw_query):
            return _bad_query("the query contains malformed percent-encoding")
        return _bad_query("the query contains a character that is not accepted")
    counts: dict[str, int] = {}
    for pair in raw_query.split("&"):
        name, equals, raw_value = pair.partition("=")
        if not name:
            return _bad_query("the query contains an empty parameter name or an empty '&' separated part")
        param = allowed.get(name)
        if param is None:
            return _bad_query(f"unknown query parameter '{_shown(name)}'", name)
        if not equals:
            return _bad_query(f"query parameter '{name}' has no value", name)
        count = counts[name] = counts.get(name, 0) + 1
        if count > 1 and not param.repeatable:
            return _bad_query(f"query parameter '{name}' may appear only once", name)
        if param.max_items is not None and count > param.max_items:
            return _bad_query(f"query parameter '{name}' may appear at most {param.max_items} times", name)
        value = raw_value
        if "%" in raw_value or "+" in raw_value:
            try:
                value = urllib.parse.unquote_plus(raw_value, errors="strict")
            except UnicodeDecodeError:
                return _bad_query(f"query parameter '{name}' is not valid UTF-8 text", name)
            # Raw control characters cannot pass _QUERY_RE; encoded ones could reach upstream logs.
            if _CONTROL_RE.search(value):
                return _bad_query(f"query parameter '{name}' contains a control character", name)
        problem = param.rule.violation(raw_value, value)
        if problem is not None:
            return _bad_query(f"query parameter '{name}' {problem}", name)
    return None


# ---------------------------------------------------------------------------------------------------------
# Configuration


def _exposable(routes: Iterable[Route], group: str) -> list[Route]:
    return [r for r in routes if r.group == group and (r.method, r.template) not in NEVER_EXPOSED]


def _select(config: str | None, catalogue: Sequence[Route]) -> list[Route]:
    """The routes a ``BFF_PROXY_ROUTES`` value names (syntax in the module docstring)."""
    if config is None or not config.strip():
        return [route for group in DEFAULT_GROUPS for route in _exposable(catalogue, group)]
    entries = [entry.strip() for entry in config.split(",")]
    if entries == ["none"]:
        return []
    selected: list[Route] = []
    for entry in entries:
        if not entry:
            raise ValueError(f"empty entry in route list {config!r}")
        if entry.lower() == "none":
            raise ValueError(f"entry {entry!r} must be the only entry")
        if entry.lower() == "default":
            selected += [route for group in DEFAULT_GROUPS for route in _exposable(catalogue, group)]
        elif " " in entry:
            selected.append(_select_route(entry, catalogue))
        else:
            selected += _select_group(entry, catalogue)
    return selected


def _select_route(entry: str, catalogue: Sequence[Route]) -> Route:
    method, _, template = entry.partition(" ")
    method, template = method.upper(), template.strip()
    if (method, template) in NEVER_EXPOSED:
        raise ValueError(
            f"entry {entry!r}: this route is never exposed (the BFF runs the connect flow server-side)"
        )
    for route in catalogue:
        if route.method == method and route.template == template:
            return route
    raise ValueError(f"entry {entry!r}: unknown route (expected '<METHOD> <template>' as in the spec)")


def _select_group(entry: str, catalogue: Sequence[Route]) -> list[Route]:
    group, colon, methods = entry.partition(":")
    group = group.lower()
    if group not in GROUPS:
        raise ValueError(f"entry {entry!r}: unknown route group {group!r} (known: {', '.join(GROUPS)})")
    routes = _exposable(catalogue, group)
    if not colon:
        # An empty group (profile, today) is valid: it enables whatever the spec defines, even nothing.
        return routes
    available = sorted({route.method for route in routes})
    selected: list[Route] = []
    for method in methods.split("+"):
        chosen = [route for route in routes if route.method == method.upper()]
        if not chosen:
            raise ValueError(
                f"entry {entry!r}: group {group!r} has no exposable {method.upper() or '(empty)'} route"
                f" (it has: {', '.join(available) or 'none'})"
            )
        selected += chosen
    return selected
