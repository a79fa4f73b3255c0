"""Liveness and readiness for orchestrators and load balancers."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from .services import services

__all__ = ["blueprint"]

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz() -> Response:
    """The process answers; touches nothing else."""
    return jsonify({"status": "ok"})


@blueprint.get("/readyz")
def readyz() -> Response:
    """The store answers and accepts writes; a 503 problem otherwise (StoreUnavailable)."""
    services().store.ping()
    return jsonify({"status": "ready"})
