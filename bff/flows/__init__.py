"""Multi-step account flows the BFF runs server-side (connected accounts)."""

from __future__ import annotations
