"""The documents hold what the code says: the tenant setup's generated blocks, and the README's variables."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re
import types

from bff.flows.connect import CONNECT_SCOPE
from bff.proxy.config import DEFAULT_GROUPS
from bff.proxy.spec import GROUPS, spec_routes
from bff.settings import variables

ROOT = pathlib.Path(__file__).resolve().parent.parent
SETUP = ROOT / "docs" / "auth0-setup.md"
README = ROOT / "README.md"
_VARIABLE = re.compile(r"`(BFF_[A-Z0-9_]+)`")


def _script() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("scopes_table", ROOT / "scripts" / "scopes_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _block(text: str, name: str) -> str:
    """What stands between ``<!-- name:start -->`` and ``<!-- name:end -->``, each on a line of its own."""
    start, end = f"<!-- {name}:start -->\n", f"\n<!-- {name}:end -->"
    assert text.count(start) == 1, f"{name}: expected exactly one start marker"
    assert text.count(end) == 1, f"{name}: expected exactly one end marker"
    return text.split(start, 1)[1].split(end, 1)[0]


def test_the_setup_guide_holds_the_generated_scopes_table() -> None:
    assert _block(SETUP.read_text(), "scopes-table") == _script().scopes_table(), (
        "docs/auth0-setup.md is out of date: paste the output of scripts/scopes_table.py between its markers"
    )


def test_the_setup_guide_holds_the_generated_mrrt_policy() -> None:
    assert _block(SETUP.read_text(), "mrrt-policy") == _script().policy_block(), (
        "docs/auth0-setup.md is out of date: paste the output of scripts/scopes_table.py --policy between its markers"
    )


def test_the_generated_table_covers_every_group_route_and_scope() -> None:
    table = _script().scopes_table()
    for group in GROUPS:
        marker = "yes" if group in DEFAULT_GROUPS else "no"
        assert f"| `{group}` | {marker} |" in table
    for route in spec_routes():
        assert f"| `{route.method}` | `{route.template}` | `{route.scope}` |" in table


def test_the_policy_asks_for_the_default_routes_and_the_connect_scope() -> None:
    script = _script()
    body = json.loads(script.policy_block().removeprefix("```json\n").removesuffix("\n```"))
    [policy] = body["refresh_token"]["policies"]
    assert policy["audience"] == "https://{domain}/me/"
    assert policy["scope"] == script.default_scopes()
    assert CONNECT_SCOPE in policy["scope"]
    assert {route.scope for route in script.connect_routes()} == {CONNECT_SCOPE}
    assert body["refresh_token"]["rotation_type"] == "rotating"


def _readme_table() -> list[str]:
    section = README.read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows, "README.md: no configuration table found"
    return rows


def test_every_variable_the_readme_names_exists() -> None:
    named = {name for row in _readme_table() for name in _VARIABLE.findall(row)}
    assert named - set(variables()) == set()


def test_every_variable_has_a_row_in_the_readme() -> None:
    described = {name for row in _readme_table() for name in _VARIABLE.findall(row.split("|")[1])}
    assert set(variables()) - described == set()
