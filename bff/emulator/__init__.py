"""A local Auth0 for tests and the demo: OIDC login, tokens and the My Account API on loopback.

The BFF application never imports this package; it talks to the emulator over HTTP like to Auth0.
"""

from __future__ import annotations

from bff.emulator.app import create_emulator_app
from bff.emulator.server import EmulatorServer
from bff.emulator.state import EmulatorConfig, EmulatorState

__all__ = ["EmulatorConfig", "EmulatorServer", "EmulatorState", "create_emulator_app"]
