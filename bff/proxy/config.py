"""The configuration language of ``BFF_PROXY_ROUTES``: which routes of the spec the proxy enables.

Security: configuration can only narrow the set of operations the packaged spec defines
(:mod:`bff.proxy.spec`), never widen it, and it can never name ``POST /connected-accounts/connect`` or
``POST /connected-accounts/complete`` (the BFF runs that flow server-side). A mistyped allowlist stops
startup rather than silently exposing more, or less, than intended.

Syntax (parsed by :func:`enabled_routes`, which :meth:`bff.proxy.matching.RouteTable.from_config` uses):
unset or blank enables the default groups (``factors``, ``authentication-methods``, ``connected-accounts``).
Otherwise a comma-separated list of entries, surrounding whitespace ignored:

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

from collections.abc import Iterable, Sequence

from .spec import GROUPS, NEVER_EXPOSED, Route

__all__ = ["DEFAULT_GROUPS", "enabled_routes"]

DEFAULT_GROUPS: tuple[str, ...] = ("factors", "authentication-methods", "connected-accounts")
"""The groups enabled when ``BFF_PROXY_ROUTES`` is unset or blank."""


def _exposable(routes: Iterable[Route], group: str) -> list[Route]:
    return [r for r in routes if r.group == group and (r.method, r.template) not in NEVER_EXPOSED]


def enabled_routes(config: str | None, catalogue: Sequence[Route]) -> list[Route]:
    """The routes of ``catalogue`` a ``BFF_PROXY_ROUTES`` value names (syntax in the module docstring), in
    the order named; a route named twice appears twice.

    Raises ``ValueError`` quoting the offending entry for an unknown group, method or route, an entry that
    selects no route, or an attempt to expose connect/complete.
    """
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
