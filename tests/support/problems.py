"""Assertions on the BFF's problem+json answers."""

from __future__ import annotations

import typing as t

import requests

PROBLEM = "application/problem+json"


def assert_problem(response: requests.Response, status: int, kind: str) -> dict[str, t.Any]:
    """The response is a ``status`` problem of type ``urn:bff:problem:<kind>``; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith(PROBLEM)
    body = response.json()
    assert body["type"] == f"urn:bff:problem:{kind}", body
    assert body["status"] == status and body["title"] and body["detail"]
    return t.cast(dict[str, t.Any], body)
