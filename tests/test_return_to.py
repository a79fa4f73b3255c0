"""Return URLs are local paths only: no open redirect through login or connect."""

from __future__ import annotations

import pytest

from bff.errors import Problem
from bff.security import safe_return_to

REJECTED = [
    "//evil.example",
    "//evil.example/path",
    "/\\evil.example",
    "\\\\evil.example",
    "https://evil.example",
    "http:evil.example",
    "javascript:alert(1)",
    "JavaScript:alert(1)",
    "evil.example",
    "/%2F%2Fevil.example",
    "%2F%2Fevil.example",
    "/%5Cevil.example",
    "/%252F%252Fevil.example",
    "%2f%2fevil.example",
    "/path\r\nSet-Cookie: x=1",
    "/path%0d%0aSet-Cookie:%20x=1",
    "/path%250d%250a",
    "/\tpath",
    "/path\x00",
    "/" + "a" * 3000,
]


@pytest.mark.parametrize("value", REJECTED)
def test_non_local_return_urls_are_rejected(value: str) -> None:
    with pytest.raises(Problem) as raised:
        safe_return_to(value)
    assert raised.value.status == 400
    assert raised.value.kind.slug == "invalid-return-url"


@pytest.mark.parametrize(
    "value", ["/", "/settings", "/settings?tab=security#mfa", "/a/b%20c", "/users/auth0%7C123"]
)
def test_local_paths_are_accepted_unchanged(value: str) -> None:
    assert safe_return_to(value) == value


def test_missing_return_url_defaults_to_root() -> None:
    assert safe_return_to(None) == "/"
    assert safe_return_to("") == "/"
