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


def assert_sent_back(response: requests.Response, path: str, error: str) -> dict[str, str]:
    """A navigation that failed: a redirect to the SPA's ``path`` with ``error`` (and a description)."""
    from urllib.parse import parse_qs, urlsplit

    assert response.status_code == 302, response.text
    target = urlsplit(response.headers["Location"])
    assert target.scheme == "" and target.netloc == "" and target.path == path, response.headers["Location"]
    query = {name: values[-1] for name, values in parse_qs(target.query).items()}
    assert query.get("error") == error, query
    assert query.get("error_description"), query
    assert response.headers["Cache-Control"] == "no-store"
    return query


def assert_error_page(response: requests.Response, status: int) -> str:
    """A navigation that failed with nowhere safe to go: a small HTML page offering to try again."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("text/html")
    assert "Try again" in response.text and "<script" not in response.text
    assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
    return response.text
