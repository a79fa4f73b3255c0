"""The My Account API operations the proxy can ever forward, read from the packaged OpenAPI spec.

Security: only operations defined in the packaged spec (``myaccount-api-oas.json``) can ever be exposed, and
each carries the constraints the spec declares for its path and query values, which the matcher enforces
before forwarding. Anything this module does not fully understand (a path template it cannot match strictly,
a schema keyword it does not enforce, an operation without exactly one scope or group) stops loading rather
than being exposed with weaker checks. ``POST /connected-accounts/connect`` and
``POST /connected-accounts/complete`` are in the spec but listed in :data:`NEVER_EXPOSED`: the BFF runs that
flow server-side, so no configuration can expose them.

Each operation becomes a :class:`Route`: its method and template (the same under ``/me/v1`` on the BFF and
upstream), the one scope the token must carry, its group (the operation's single tag, one of
:data:`GROUPS`), its path and query parameters with the :class:`ValueRule` each must meet, and whether it
takes a request body. :func:`spec_routes` reads the packaged spec once per process; :func:`scopes_for` gives
the scopes a set of routes needs.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
import typing as t
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "GROUPS",
    "NEVER_EXPOSED",
    "PathParam",
    "QueryParam",
    "Route",
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

NEVER_EXPOSED: frozenset[tuple[str, str]] = frozenset(
    {
        ("POST", "/connected-accounts/connect"),
        ("POST", "/connected-accounts/complete"),
    }
)
"""Routes no configuration can expose: the BFF wraps them in a server-side flow (it must own the
redirect URI, state and PKCE verifier of a connect request)."""

_SECURITY_SCHEME = "Bearer-DPoP"
_SPEC_RESOURCE = "myaccount-api-oas.json"
_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_LITERAL_SEGMENT_RE = re.compile(r"[A-Za-z0-9\-._~]+")
_TEMPLATE_PARAM_RE = re.compile(r"\{([A-Za-z0-9_\-.]+)\}")
_INTEGER_RE = re.compile(r"-?(?:0|[1-9][0-9]{0,17})")


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
