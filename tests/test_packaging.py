"""What a production install carries: the emulator's packages are an extra, and only the emulator uses them."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
import typing as t
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EMULATOR_PACKAGES = frozenset({"webauthn", "pyotp", "cbor2"})
"""Top-level modules only the emulator may import (cbor2 comes with webauthn)."""
EMULATOR_ONLY = ("bff/emulator", "bff/demo")
"""Where the emulator's code lives: the emulator itself and ``bff demo``, which runs it."""
EMULATOR_ONLY_MODULES = tuple(place.replace("/", ".") for place in EMULATOR_ONLY)

_REQUIREMENT = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")


def _requirement(spec: str) -> tuple[str, set[str]]:
    """``(normalized name, extras)`` of a PEP 508 requirement string."""
    match = _REQUIREMENT.match(spec)
    assert match, f"not a requirement: {spec!r}"
    name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
    return name, {extra.strip() for extra in (match.group(2) or "").split(",") if extra.strip()}


def _names(project: dict[str, t.Any], extra: str | None = None) -> set[str]:
    """Package names a plain install (``extra=None``) or ``bff[extra]`` pulls in, following ``bff[...]``."""
    extras = project.get("optional-dependencies", {})
    specs = list(project["dependencies"]) if extra is None else list(extras[extra])
    names: set[str] = set()
    while specs:
        name, wanted = _requirement(specs.pop())
        if name == project["name"]:
            for other in wanted:
                specs.extend(extras[other])
        else:
            names.add(name)
    return names


def _imported_modules(path: Path) -> t.Iterator[tuple[str, bool]]:
    """``(absolute module name, at module level)`` for every import in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    top_level = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, id(node) in top_level
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            yield base, id(node) in top_level
            # ``from . import emulator`` names a module in its alias, not in ``module``.
            for alias in node.names:
                yield f"{base}.{alias.name}", id(node) in top_level


def test_a_production_install_carries_no_emulator_package_and_no_production_module_imports_one() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    assert _names(project).isdisjoint({"webauthn", "pyotp", "segno"})
    assert {"webauthn", "pyotp"} <= _names(project, "emulator")
    assert _names(project, "emulator") <= _names(project, "demo")  # `pip install '.[demo]'` runs the demo
    assert _names(project, "emulator") <= _names(project, "test")  # the tests run the emulator

    production = [
        path for path in sorted((ROOT / "bff").rglob("*.py"))
        if not any(path.is_relative_to(ROOT / place) for place in EMULATOR_ONLY)
    ]
    assert production, "found no production modules to check"
    offenders = []
    for path in production:
        for module, at_module_level in _imported_modules(path):
            top = module.partition(".")[0]
            # Anywhere in the file for the packages themselves; for the emulator, only an import at module
            # level breaks a production install (the `bff emulator` and `bff demo` commands import it lazily).
            if top in EMULATOR_PACKAGES or (at_module_level and module.startswith(EMULATOR_ONLY_MODULES)):
                offenders.append(f"{path.relative_to(ROOT)}: {module}")
    assert not offenders, "production modules import what only the emulator may: " + ", ".join(offenders)


def test_emulator_commands_without_the_extra_name_it_in_one_line() -> None:
    # None in sys.modules makes an import fail as if the package were not installed.
    for command in ("emulator", "demo"):
        result = subprocess.run(
            [sys.executable, "-c",
             "import sys; sys.modules.update(webauthn=None, pyotp=None, cbor2=None); "
             f"from bff.cli import main; main([{command!r}, '--port', '0'])"],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.splitlines() == ["bff: the emulator needs its extra: pip install 'bff[emulator]'"]
