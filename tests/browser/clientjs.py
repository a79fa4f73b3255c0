"""The JavaScript client package (``clients/js``) as the tests use it: its pinned dev dependencies, Node.

``npm ci`` installs the dependencies ``package-lock.json`` pins (TypeScript, esbuild, React) when
``node_modules`` is missing or older than the lock file; ``scripts/test.sh`` does the same before pytest.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import typing as t
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT_DIR = ROOT / "clients" / "js"
EXAMPLES = CLIENT_DIR / "examples"
NODE_TIMEOUT = 300


def _installed() -> bool:
    marker = CLIENT_DIR / "node_modules" / ".package-lock.json"
    lock = CLIENT_DIR / "package-lock.json"
    return marker.is_file() and marker.stat().st_mtime >= lock.stat().st_mtime


def ensure_node_modules() -> None:
    """Install the package's pinned dev dependencies unless they are there; skip without Node.js."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js and npm are not installed (scripts/test.sh installs them with apt-get)")
    if _installed():
        return
    completed = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"],
        cwd=CLIENT_DIR, capture_output=True, text=True, timeout=NODE_TIMEOUT, check=False,
    )
    assert completed.returncode == 0, f"npm ci failed:\n{completed.stdout}\n{completed.stderr}"


def run(*args: str, input: str | None = None, cwd: Path = CLIENT_DIR) -> subprocess.CompletedProcess[str]:
    """Run a command of the package (``node``, ``node_modules/.bin/tsc``...) and capture its output."""
    return subprocess.run(
        list(args), cwd=cwd, input=input, capture_output=True, text=True, timeout=NODE_TIMEOUT, check=False
    )


def build_react_example(outdir: Path) -> Path:
    """Bundle the React example (React from npm, the client from the package) into ``outdir``."""
    completed = run("node", str(EXAMPLES / "react" / "build.mjs"), str(outdir))
    assert completed.returncode == 0, completed.stderr
    return outdir


def node_json(script: str) -> t.Any:
    """Run an ES module ``script`` with Node in the package's directory; it prints one JSON document."""
    completed = run("node", "--input-type=module", "-", input=script)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)
