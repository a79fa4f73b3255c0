"""Print the generated blocks of docs/auth0-setup.md from the packaged My Account API spec.

    .venv/bin/python scripts/scopes_table.py            # the scopes table (group -> routes -> scopes)
    .venv/bin/python scripts/scopes_table.py --policy   # the MRRT policy request body for the defaults

The table lists every route group of :data:`bff.proxy.spec.GROUPS` with the routes the proxy can expose
(``bff.proxy.spec.spec_routes()``), each with the one scope the spec requires, marks the groups enabled
when ``BFF_PROXY_ROUTES`` is unset (:data:`bff.proxy.config.DEFAULT_GROUPS`), and ends with the two
routes the server-side connect flow calls. ``tests/test_docs.py`` regenerates both blocks and holds the
document to them, so the document cannot drift from the spec: after a change, paste the output between
the document's marker comments.
"""

from __future__ import annotations

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bff.proxy.config import DEFAULT_GROUPS, enabled_routes  # noqa: E402
from bff.proxy.spec import GROUPS, NEVER_EXPOSED, Route, scopes_for, spec_routes  # noqa: E402

__all__ = ["connect_routes", "default_scopes", "main", "policy_block", "scopes_table"]

#: The audience written into the policy, with the placeholder the document explains.
MY_ACCOUNT_AUDIENCE = "https://{domain}/me/"
#: The rotation overlap the example uses (docs/operations.md); BFF_REFRESH_TOKEN_OVERLAP must match it.
EXAMPLE_LEEWAY = 30


def connect_routes() -> list[Route]:
    """The spec's routes the BFF calls only from its own connect flow (never proxied)."""
    return [route for route in spec_routes() if (route.method, route.template) in NEVER_EXPOSED]


def default_scopes() -> list[str]:
    """The scopes the default configuration needs: the default groups' routes and the connect flow."""
    routes = [*enabled_routes(None, spec_routes()), *connect_routes()]
    return list(scopes_for(routes))


def _code(text: str) -> str:
    return f"`{text}`"


def scopes_table() -> str:
    """The markdown table: one row per route, the group and its default marker on its first row."""
    lines = [
        "| group (`BFF_PROXY_ROUTES`) | enabled by default | method | route under `/me/v1` | scope |",
        "|---|---|---|---|---|",
    ]
    routes = spec_routes()
    for group in GROUPS:
        default = "yes" if group in DEFAULT_GROUPS else "no"
        members = [r for r in routes if r.group == group and (r.method, r.template) not in NEVER_EXPOSED]
        if not members:
            lines.append(f"| {_code(group)} | {default} | | (no route in the packaged spec) | |")
        for index, route in enumerate(members):
            first = index == 0
            lines.append(
                f"| {_code(group) if first else ''} | {default if first else ''} | {_code(route.method)} "
                f"| {_code(route.template)} | {_code(route.scope)} |"
            )
    for index, route in enumerate(connect_routes()):
        first = index == 0
        lines.append(
            f"| {'connect flow (`POST /bff/connect`, never proxied)' if first else ''} "
            f"| {'always' if first else ''} | {_code(route.method)} | {_code(route.template)} "
            f"| {_code(route.scope)} |"
        )
    lines.append("")
    lines.append(
        "Scopes for the default configuration (the default groups and the connect flow): "
        + ", ".join(_code(scope) for scope in default_scopes())
        + "."
    )
    return "\n".join(lines)


def policy_block() -> str:
    """The ``PATCH /api/v2/clients/{client_id}`` body for the default configuration, as a JSON block."""
    body = {
        "is_first_party": True,
        "refresh_token": {
            "rotation_type": "rotating",
            "expiration_type": "expiring",
            "token_lifetime": 31557600,
            "idle_token_lifetime": 2592000,
            "infinite_token_lifetime": False,
            "infinite_idle_token_lifetime": False,
            "leeway": EXAMPLE_LEEWAY,
            "policies": [{"audience": MY_ACCOUNT_AUDIENCE, "scope": default_scopes()}],
        },
    }
    return "```json\n" + json.dumps(body, indent=2) + "\n```"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--policy"]:
        print(policy_block())
    elif not args:
        print(scopes_table())
    else:
        raise SystemExit("usage: scopes_table.py [--policy]")


if __name__ == "__main__":
    main()
