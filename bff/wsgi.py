"""WSGI entry point for any server: ``gunicorn bff.wsgi:app``. Settings come from ``BFF_*``."""

from __future__ import annotations

from .app import create_app

app = create_app()
