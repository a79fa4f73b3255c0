"""ID tokens are trusted only after signature, issuer, audience, expiry and nonce checks."""

from __future__ import annotations

import time
import typing as t

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.jwk import RSAKey

from bff.clock import SystemClock
from bff.errors import Problem
from bff.oidc import Provider
from tests.conftest import Stack


def claims(stack: Stack, **changes: t.Any) -> dict[str, t.Any]:
    now = int(time.time())
    base = {"iss": stack.settings.issuer_url, "aud": stack.settings.client_id, "sub": "auth0|abc",
            "iat": now, "exp": now + 600, "nonce": "n-123"}
    base.update(changes)
    return {key: value for key, value in base.items() if value is not None}


@pytest.fixture
def provider(stack: Stack) -> Provider:
    return Provider(stack.settings, SystemClock())


def test_a_well_formed_id_token_is_accepted(stack: Stack, provider: Provider) -> None:
    token = stack.idp.sign(claims(stack))
    assert provider.validate_id_token(token, nonce="n-123")["sub"] == "auth0|abc"


@pytest.mark.parametrize(
    "changes",
    [
        {"nonce": "another"},
        {"nonce": None},
        {"iss": "https://evil.example/"},
        {"aud": "another-client"},
        {"aud": ["another-client", "more"]},
        {"exp": int(time.time()) - 3600},
        {"iat": None},
        {"sub": None},
    ],
    ids=["wrong-nonce", "no-nonce", "wrong-iss", "wrong-aud", "foreign-multi-aud", "expired", "no-iat", "no-sub"],
)
def test_an_id_token_failing_a_check_is_refused(stack: Stack, provider: Provider, changes: dict[str, t.Any]) -> None:
    token = stack.idp.sign(claims(stack, **changes))
    with pytest.raises(Problem) as raised:
        provider.validate_id_token(token, nonce="n-123")
    assert raised.value.status == 400 and raised.value.kind.slug == "login-failed"


def test_multiple_audiences_need_azp_to_be_this_client(stack: Stack, provider: Provider) -> None:
    audiences = [stack.settings.client_id, "https://api.example/"]
    ok = stack.idp.sign(claims(stack, aud=audiences, azp=stack.settings.client_id))
    assert provider.validate_id_token(ok, nonce="n-123")
    with pytest.raises(Problem):
        provider.validate_id_token(stack.idp.sign(claims(stack, aud=audiences, azp="other")), nonce="n-123")


def test_an_id_token_signed_by_another_key_is_refused(stack: Stack, provider: Provider) -> None:
    key = RSAKey.import_key(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    forged = jwt.encode({"alg": "RS256", "kid": "forged"}, claims(stack), key)
    with pytest.raises(Problem):
        provider.validate_id_token(forged, nonce="n-123")


def test_an_unsigned_id_token_is_refused(stack: Stack, provider: Provider) -> None:
    import base64
    import json

    def part(value: dict[str, t.Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    unsigned = part({"alg": "none"}) + "." + part(claims(stack)) + "."
    with pytest.raises(Problem):
        provider.validate_id_token(unsigned, nonce="n-123")
