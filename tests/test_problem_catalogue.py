"""The problem catalogue, its documentation, and the module surfaces."""

from __future__ import annotations

import ast
import importlib
import pathlib
import re

import bff
from bff.errors import ProblemKind

ROOT = pathlib.Path(__file__).resolve().parent.parent
_ROW = re.compile(r"^\| `([a-z-]+)` \| (\d{3}) \| ([^|]+) \|")


def test_the_documented_problem_types_are_exactly_the_catalogue() -> None:
    documented = {
        (match[1], int(match[2]), match[3].strip())
        for line in (ROOT / "docs" / "problems.md").read_text().splitlines()
        if (match := _ROW.match(line))
    }
    assert documented == {(kind.slug, kind.status, kind.title) for kind in ProblemKind}


def test_problem_kinds_are_unique() -> None:
    slugs = [kind.slug for kind in ProblemKind]
    assert len(slugs) == len(set(slugs))


def test_no_module_spells_a_problem_type_outside_the_catalogue() -> None:
    for path in (ROOT / "bff").rglob("*.py"):
        if "emulator" in path.parts:
            continue
        assert "urn:bff:problem:" not in path.read_text() or path.name == "errors.py", path


def test_the_public_surface_is_pinned() -> None:
    assert sorted(bff.__all__) == ["ConfigError", "Settings", "__version__", "create_app"]
    for name in bff.__all__:
        assert hasattr(bff, name)


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in (ROOT / "bff").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    package = base if _modules()[module].name == "__init__.py" else base[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def test_no_module_imports_a_name_its_module_does_not_export() -> None:
    modules = _modules()
    offences = []
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            source = _resolve(module, node)
            if not source.startswith("bff"):
                continue
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:
                    continue  # a submodule, not a name
                exported = getattr(importlib.import_module(source), "__all__", None)
                if exported is None or alias.name not in exported:
                    offences.append(f"{module} imports {alias.name} from {source}")
    assert offences == []
