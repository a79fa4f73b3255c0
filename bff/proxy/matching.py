"""Strict validation of a browser request's raw path and query against the enabled routes.

Security: every path and query is checked against a strict grammar before it is compared with the
allowlist, so nothing the upstream could decode into a different route (``..``, ``%2F``, ``%252F``, ``\\``,
``;``) is forwarded with the user's access token. Only spec routes can be enabled, never
:data:`~bff.proxy.spec.NEVER_EXPOSED` ones, and the spec routes that are not enabled still take part in
matching, so a request for one of them is refused instead of falling through to a less specific enabled
template.

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
"""

from __future__ import annotations

import operator
import re
import typing as t
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .config import enabled_routes
from .spec import NEVER_EXPOSED, PathParam, QueryParam, Route, ValueRule, scopes_for, spec_routes

__all__ = [
    "MAX_PATH_LENGTH",
    "MAX_QUERY_LENGTH",
    "RejectionKind",
    "RouteMatch",
    "RouteRejection",
    "RouteTable",
]

MAX_PATH_LENGTH = 1024
"""Longest raw path accepted; Auth0 ids are far shorter, and the bound keeps validation cheap."""

MAX_QUERY_LENGTH = 7100
"""Longest raw query accepted: room for 20 ``connection`` names of 128 characters and more, and small
enough that the longest path and query still fit the longest request line a bounded server (gunicorn:
8190 bytes) reads, so whatever the allowlist accepts reaches it."""

RejectionKind = t.Literal["not-found", "bad-path", "bad-query"]

# The path grammar as one expression, so an accepted path costs a single scan; the possessive quantifiers
# never backtrack, so a long hostile path costs no more.
_PATH_RE = re.compile(r"(?:/(?:[A-Za-z0-9\-._~|:@+=]++|%(?:7[Cc]|3[AaDd]|40|2[Bb]))++)++")
_PERCENT_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_QUERY_RE = re.compile(r"(?:[A-Za-z0-9\-._~!$'()*+,:@/?|=&]++|%[0-9A-Fa-f]{2})*+")
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
        """The table ``BFF_PROXY_ROUTES`` asks for (syntax in :mod:`bff.proxy.config`).

        Raises ``ValueError`` quoting the offending entry for an unknown group, method or route, an entry
        that selects no route, or an attempt to expose connect/complete: a mistyped allowlist stops startup
        rather than silently exposing more, or less, than intended.
        """
        if catalogue is None:
            catalogue = spec_routes()
        return cls(enabled_routes(spec, catalogue), catalogue)

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
