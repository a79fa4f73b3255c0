"""DPoP (RFC 9449) at the local Auth0 over real HTTP: bound codes and tokens, proofs at the My Account API,
nonce challenges, replay, and the test controls BFF tests use.

Proofs are made with the BFF's own builder (:mod:`bff.dpop`); the emulator verifies them with its own code
(:mod:`bff.emulator.dpop_check`), so these tests also hold the two against each other. Malformed proofs are
signed here by hand, with ``cryptography``.
"""

from __future__ import annotations

import base64
import http.client
import json
import pathlib
import secrets
import typing as t
from urllib.parse import urlencode, urlsplit

import pytest
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from bff.dpop import DpopKey, access_token_hash
from bff.emulator import EmulatorConfig, EmulatorServer
from bff.emulator.dpop_check import SUPPORTED_ALGORITHMS, ProofError, ProofGuard, same_htu, verify_proof
from bff.emulator.state import Clock
from tests.support.tls import ServerCertificate, make_ca
from tests.test_emulator_idp import CLIENT_ID, CLIENT_SECRET, Idp, Receiver

READ_SCOPE = "read:me:authentication_methods"
METHODS = "/me/v1/authentication-methods"


class Dpop:
    """The BFF's side of DPoP against one emulator: token requests and My Account calls with proofs."""

    def __init__(self, idp: Idp) -> None:
        self.idp = idp
        self.state = idp.state
        self.token_url = idp.url + "/oauth/token"

    def proof(
        self,
        key: DpopKey,
        method: str,
        url: str,
        *,
        nonce: str | None = None,
        access_token: str | None = None,
    ) -> str:
        return key.proof(method, url, now=self.state.clock.now(), nonce=nonce, access_token=access_token)

    def token(
        self, key: DpopKey | None, *, nonce: str | None = None, proof: str | None = None, **data: str
    ) -> requests.Response:
        """A token request with a fresh proof of ``key`` (or the ``proof`` given; none when both are None)."""
        headers = {}
        if proof is None and key is not None:
            proof = self.proof(key, "POST", self.token_url, nonce=nonce)
        if proof is not None:
            headers["DPoP"] = proof
        auth = (CLIENT_ID, CLIENT_SECRET)
        return requests.post(self.token_url, data=data, headers=headers, auth=auth, timeout=5, verify=self.idp.verify)

    def code(self, *, dpop_jkt: str | None = None) -> str:
        return self.idp.login_code(**({"dpop_jkt": dpop_jkt} if dpop_jkt else {}))

    def exchange(self, code: str, key: DpopKey | None, **kwargs: t.Any) -> requests.Response:
        return self.token(
            key,
            grant_type="authorization_code",
            code=code,
            redirect_uri=self.idp.redirect_uri,
            code_verifier=self.idp.verifier,
            **kwargs,
        )

    def login(self, key: DpopKey | None, *, dpop_jkt: bool = True) -> dict[str, t.Any]:
        code = self.code(dpop_jkt=key.thumbprint if key is not None and dpop_jkt else None)
        response = self.exchange(code, key)
        assert response.status_code == 200, response.text
        return t.cast(dict[str, t.Any], response.json())

    def refresh(self, refresh_token: str, key: DpopKey | None, **data: str) -> requests.Response:
        return self.token(key, grant_type="refresh_token", refresh_token=refresh_token, **data)

    def my_account_token(self, refresh_token: str, key: DpopKey | None) -> dict[str, t.Any]:
        """An MRRT exchange for the My Account API."""
        response = self.refresh(refresh_token, key, audience=self.state.my_account_audience, scope=READ_SCOPE)
        assert response.status_code == 200, response.text
        return t.cast(dict[str, t.Any], response.json())

    def api(
        self,
        access_token: str,
        key: DpopKey | None,
        *,
        method: str = "GET",
        path: str = METHODS,
        scheme: str = "DPoP",
        proof: str | None = None,
        proof_url: str | None = None,
        proof_method: str | None = None,
        nonce: str | None = None,
    ) -> requests.Response:
        """A My Account call; the proof is for this call unless ``proof``, ``proof_url`` or ``proof_method``
        say otherwise."""
        url = self.idp.url + path
        headers = {"Authorization": f"{scheme} {access_token}"}
        if proof is None and key is not None:
            proof = self.proof(
                key, proof_method or method, proof_url or url, nonce=nonce, access_token=access_token
            )
        if proof is not None:
            headers["DPoP"] = proof
        return requests.request(method, url, headers=headers, timeout=5, verify=self.idp.verify)

    def claims(self, token: str) -> dict[str, t.Any]:
        return self.idp.claims(token)


def forge(header: dict[str, t.Any], claims: dict[str, t.Any], key: ec.EllipticCurvePrivateKey | None = None) -> str:
    """A compact JWS over any header and claims, ES256-signed with ``key`` (a fresh one by default)."""
    key = key or ec.generate_private_key(ec.SECP256R1())

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()

    def b64(value: int) -> str:
        return base64.urlsafe_b64encode(value.to_bytes(32, "big")).rstrip(b"=").decode()

    return {"kty": "EC", "crv": "P-256", "x": b64(numbers.x), "y": b64(numbers.y)}


def dpop_challenge(response: requests.Response) -> str:
    """The ``WWW-Authenticate`` of a 401 from the My Account API, which must be an ErrorResponse."""
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["status"] == 401 and body["type"].startswith("https://auth0.com/api-errors/A0E-401-")
    return response.headers["WWW-Authenticate"]


@pytest.fixture
def receiver() -> t.Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.server.stop()


@pytest.fixture
def idp(receiver: Receiver) -> t.Iterator[Idp]:
    with EmulatorServer(EmulatorConfig(CLIENT_ID, CLIENT_SECRET, receiver.url)) as server:
        yield Idp(server)


@pytest.fixture
def dpop(idp: Idp) -> Dpop:
    return Dpop(idp)


@pytest.fixture
def key() -> DpopKey:
    return DpopKey.generate()


@pytest.fixture
def bound(dpop: Dpop, key: DpopKey) -> dict[str, t.Any]:
    """A login whose tokens are bound to ``key``, and a bound My Account token from its refresh token."""
    login = dpop.login(key)
    api = dpop.my_account_token(login["refresh_token"], key)
    return {"login": login, "api": api, "access_token": api["access_token"], "refresh_token": api["refresh_token"]}


# -- discovery and settings ------------------------------------------------------------------------------


def test_discovery_advertises_es256_as_auth0_and_the_list_is_configurable(idp: Idp) -> None:
    discovery = idp.url + "/.well-known/openid-configuration"
    assert requests.get(discovery, timeout=5).json()["dpop_signing_alg_values_supported"] == ["ES256"]
    idp.state.configure(dpop_signing_algs=["ES384", "ES256"])
    assert requests.get(discovery, timeout=5).json()["dpop_signing_alg_values_supported"] == ["ES384", "ES256"]


@pytest.mark.parametrize("algs", [["none"], ["HS256"], [], "ES256"])
def test_only_asymmetric_algorithms_can_be_configured(idp: Idp, algs: t.Any) -> None:
    with pytest.raises(ValueError, match="dpop_signing_algs"):
        idp.state.configure(dpop_signing_algs=algs)
    assert idp.state.settings.dpop_signing_algs == ("ES256",)


def test_a_proof_signed_with_an_algorithm_not_advertised_is_refused(dpop: Dpop) -> None:
    dpop.state.configure(dpop_signing_algs=["ES256"])
    response = dpop.exchange(dpop.code(), DpopKey.generate("ES384"))
    assert (response.status_code, response.json()["error"]) == (400, "invalid_dpop_proof")
    dpop.state.configure(dpop_signing_algs=["ES384"])
    response = dpop.exchange(dpop.code(), DpopKey.generate("ES384"))
    assert (response.status_code, response.json()["token_type"]) == (200, "DPoP")
    response = dpop.exchange(dpop.code(), DpopKey.generate("ES256"))
    assert (response.status_code, response.json()["error"]) == (400, "invalid_dpop_proof")


# -- binding at the token endpoint -----------------------------------------------------------------------


def test_code_exchange_with_the_dpop_jkt_key_issues_bound_tokens(dpop: Dpop, key: DpopKey) -> None:
    body = dpop.login(key)
    assert body["token_type"] == "DPoP"
    claims = dpop.claims(body["access_token"])
    assert claims["cnf"] == {"jkt": key.thumbprint}
    (issued, *_) = dpop.state.issued_tokens()
    assert (issued.access_token, issued.refresh_token) == (body["access_token"], body["refresh_token"])
    assert (issued.jkt, issued.token_type, issued.grant_type) == (key.thumbprint, "DPoP", "authorization_code")


def test_a_proof_without_dpop_jkt_at_authorize_also_binds_the_tokens(dpop: Dpop, key: DpopKey) -> None:
    body = dpop.login(key, dpop_jkt=False)
    assert body["token_type"] == "DPoP"
    assert dpop.claims(body["access_token"])["cnf"] == {"jkt": key.thumbprint}
    assert dpop.refresh(body["refresh_token"], DpopKey.generate()).json()["error"] == "invalid_dpop_proof"


def test_a_code_bound_to_dpop_jkt_is_refused_with_another_key_or_without_a_proof(dpop: Dpop, key: DpopKey) -> None:
    response = dpop.exchange(dpop.code(dpop_jkt=key.thumbprint), DpopKey.generate())
    assert (response.status_code, response.json()["error"]) == (400, "invalid_dpop_proof")
    response = dpop.exchange(dpop.code(dpop_jkt=key.thumbprint), None)
    assert (response.status_code, response.json()["error"]) == (400, "invalid_dpop_proof")
    code = dpop.code(dpop_jkt=key.thumbprint)
    assert dpop.exchange(code, key).status_code == 200
    assert dpop.state.issued_tokens()[0].jkt == key.thumbprint


def test_a_code_refused_for_its_key_is_spent(dpop: Dpop, key: DpopKey) -> None:
    code = dpop.code(dpop_jkt=key.thumbprint)
    assert dpop.exchange(code, DpopKey.generate()).status_code == 400
    response = dpop.exchange(code, key)
    assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")


def test_a_malformed_dpop_jkt_is_an_authorize_error(dpop: Dpop) -> None:
    response = dpop.idp.authorize(dpop_jkt="not-a-thumbprint")
    assert response.status_code == 302
    assert "error=invalid_request" in response.headers["Location"]


def test_refresh_and_mrrt_keep_the_binding(dpop: Dpop, key: DpopKey) -> None:
    login = dpop.login(key)
    refreshed = dpop.refresh(login["refresh_token"], key)
    assert refreshed.status_code == 200, refreshed.text
    body = refreshed.json()
    assert body["token_type"] == "DPoP" and body["refresh_token"] != login["refresh_token"]
    assert dpop.claims(body["access_token"])["cnf"] == {"jkt": key.thumbprint}

    api = dpop.my_account_token(body["refresh_token"], key)
    claims = dpop.claims(api["access_token"])
    assert api["token_type"] == "DPoP" and claims["aud"] == dpop.state.my_account_audience
    assert claims["cnf"] == {"jkt": key.thumbprint}
    # The rotated-in token is bound too.
    assert dpop.refresh(api["refresh_token"], DpopKey.generate()).json()["error"] == "invalid_dpop_proof"
    assert dpop.refresh(api["refresh_token"], key).status_code == 200


@pytest.mark.parametrize("other", ["another key", "no proof"])
def test_refresh_without_the_bound_key_is_refused_and_spends_nothing(
    dpop: Dpop, key: DpopKey, bound: dict[str, t.Any], other: str
) -> None:
    refresh_token = bound["refresh_token"]
    for audience in ({}, {"audience": dpop.state.my_account_audience}):
        response = dpop.refresh(refresh_token, DpopKey.generate() if other == "another key" else None, **audience)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_dpop_proof"
    family = dpop.state.family_of(refresh_token)
    assert not dpop.state.family_revoked(family) and not dpop.state.reuse_detected(family)
    # Neither rotated nor revoked: the holder of the key still refreshes with the very same token.
    assert dpop.refresh(refresh_token, key).status_code == 200


def test_an_unbound_login_refreshed_with_a_proof_gets_a_bound_access_token_only(dpop: Dpop, key: DpopKey) -> None:
    login = dpop.login(None)
    assert login["token_type"] == "Bearer" and "cnf" not in dpop.claims(login["access_token"])
    body = dpop.refresh(login["refresh_token"], key).json()
    assert body["token_type"] == "DPoP" and dpop.claims(body["access_token"])["cnf"] == {"jkt": key.thumbprint}
    assert dpop.refresh(body["refresh_token"], None).json()["token_type"] == "Bearer"


def test_an_application_that_requires_sender_constraining_refuses_token_requests_without_a_proof(
    dpop: Dpop, key: DpopKey
) -> None:
    dpop.state.configure(require_proof_of_possession=True)
    response = dpop.exchange(dpop.code(), None)
    assert (response.status_code, response.json()["error"]) == (400, "invalid_dpop_proof")
    assert "sender-constrained" in response.json()["error_description"]
    assert dpop.exchange(dpop.code(), key).json()["token_type"] == "DPoP"


@pytest.mark.parametrize(
    "case",
    ["typ", "alg none", "alg HS256", "private jwk", "bad signature", "no jti", "htm", "htu", "iat old", "iat future"],
)
def test_invalid_proofs_are_refused_at_the_token_endpoint(dpop: Dpop, case: str) -> None:
    signer = ec.generate_private_key(ec.SECP256R1())
    jwk: dict[str, t.Any] = public_jwk(signer)
    header: dict[str, t.Any] = {"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}
    now = int(dpop.state.clock.now())
    claims: dict[str, t.Any] = {"jti": secrets.token_urlsafe(12), "htm": "POST", "htu": dpop.token_url, "iat": now}
    assert dpop.exchange(dpop.code(), None, proof=forge(header, claims, signer)).status_code == 200
    claims["jti"] = secrets.token_urlsafe(12)
    if case == "typ":
        header["typ"] = "JWT"
    elif case == "alg none":
        header["alg"] = "none"
    elif case == "alg HS256":
        header["alg"] = "HS256"
    elif case == "private jwk":
        jwk["d"] = base64.urlsafe_b64encode(
            signer.private_numbers().private_value.to_bytes(32, "big")
        ).rstrip(b"=").decode()
    elif case == "no jti":
        del claims["jti"]
    elif case == "htm":
        claims["htm"] = "GET"
    elif case == "htu":
        claims["htu"] = dpop.idp.url + "/oauth/revoke"
    elif case == "iat old":
        claims["iat"] = now - 61
    elif case == "iat future":
        claims["iat"] = now + 61
    proof = forge(header, claims, signer)
    if case == "bad signature":
        proof = forge(header, claims)  # signed by another key than the jwk's
    response = dpop.exchange(dpop.code(), None, proof=proof)
    assert (response.status_code, response.json()["error"]) == (400, "invalid_dpop_proof"), response.text


def test_two_dpop_headers_are_refused(dpop: Dpop, key: DpopKey) -> None:
    body = urlencode(
        {
            "grant_type": "authorization_code",
            "code": dpop.code(),
            "redirect_uri": dpop.idp.redirect_uri,
            "code_verifier": dpop.idp.verifier,
        }
    ).encode()
    parts = urlsplit(dpop.token_url)
    # http.client, as requests keeps headers in a dict and could not send the header twice.
    connection = http.client.HTTPConnection(t.cast(str, parts.hostname), parts.port, timeout=5)
    try:
        connection.putrequest("POST", parts.path)
        connection.putheader("Content-Type", "application/x-www-form-urlencoded")
        connection.putheader("Content-Length", str(len(body)))
        basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        connection.putheader("Authorization", f"Basic {basic}")
        connection.putheader("DPoP", dpop.proof(key, "POST", dpop.token_url))
        connection.putheader("DPoP", dpop.proof(key, "POST", dpop.token_url))
        connection.endheaders(body)
        response = connection.getresponse()
        answer = json.loads(response.read())
    finally:
        connection.close()
    assert (response.status, answer["error"]) == (400, "invalid_dpop_proof")
    assert "exactly one" in answer["error_description"]


def test_a_replayed_proof_is_refused_at_the_token_endpoint(dpop: Dpop, key: DpopKey) -> None:
    login = dpop.login(key)
    proof = dpop.proof(key, "POST", dpop.token_url)
    ok = dpop.token(None, proof=proof, grant_type="refresh_token", refresh_token=login["refresh_token"])
    assert ok.status_code == 200, ok.text
    again = dpop.token(None, proof=proof, grant_type="refresh_token", refresh_token=ok.json()["refresh_token"])
    assert (again.status_code, again.json()["error"]) == (400, "invalid_dpop_proof")
    assert "used before" in again.json()["error_description"]


def test_revoking_a_bound_refresh_token_needs_client_authentication_only(dpop: Dpop, key: DpopKey) -> None:
    refresh_token = dpop.login(key)["refresh_token"]
    response = requests.post(
        dpop.idp.url + "/oauth/revoke", data={"token": refresh_token}, auth=(CLIENT_ID, CLIENT_SECRET), timeout=5
    )
    assert response.status_code == 200
    assert dpop.state.family_revoked(dpop.state.family_of(refresh_token))
    refused = dpop.refresh(refresh_token, key)
    assert (refused.status_code, refused.json()["error"]) == (403, "invalid_grant")


# -- the My Account API ----------------------------------------------------------------------------------


def test_a_bound_token_works_at_the_api_with_the_dpop_scheme_and_a_proof(
    dpop: Dpop, key: DpopKey, bound: dict[str, t.Any]
) -> None:
    response = dpop.api(bound["access_token"], key)
    assert response.status_code == 200, response.text
    post = dpop.api(bound["access_token"], key, method="POST")
    assert post.status_code == 403  # a proof for POST passes; the token lacks the create scope
    assert 'DPoP error="insufficient_scope"' in post.headers["WWW-Authenticate"]


def test_a_bound_token_presented_as_bearer_is_refused(dpop: Dpop, bound: dict[str, t.Any]) -> None:
    challenge = dpop_challenge(dpop.api(bound["access_token"], None, scheme="Bearer"))
    assert challenge.startswith('DPoP error="invalid_token"') and 'algs="ES256"' in challenge
    (issued, *_) = dpop.state.issued_tokens()
    assert issued.access_token == bound["access_token"] and issued.jkt is not None
    dpop_challenge(dpop.api(issued.access_token, None, scheme="Bearer"))


def test_a_bound_token_with_a_proof_of_another_key_is_refused(dpop: Dpop, bound: dict[str, t.Any]) -> None:
    challenge = dpop_challenge(dpop.api(bound["access_token"], DpopKey.generate()))
    assert challenge.startswith('DPoP error="invalid_token"') and "confirmation mismatch" in challenge


def test_a_bound_token_with_the_dpop_scheme_but_no_proof_is_refused(dpop: Dpop, bound: dict[str, t.Any]) -> None:
    assert 'error="invalid_dpop_proof"' in dpop_challenge(dpop.api(bound["access_token"], None))


def test_a_replayed_proof_is_refused_at_the_api(dpop: Dpop, key: DpopKey, bound: dict[str, t.Any]) -> None:
    proof = dpop.proof(key, "GET", dpop.idp.url + METHODS, access_token=bound["access_token"])
    assert dpop.api(bound["access_token"], None, proof=proof).status_code == 200
    challenge = dpop_challenge(dpop.api(bound["access_token"], None, proof=proof))
    assert 'error="invalid_dpop_proof"' in challenge and "used before" in challenge


@pytest.mark.parametrize(
    "wrong",
    [
        {"proof_url": "/me/v1/factors"},
        {"proof_url": "/me/v1/authentication-methods/other"},
        {"proof_method": "POST"},
        {"proof_url": "https://127.0.0.1:1/me/v1/authentication-methods"},
    ],
)
def test_a_proof_for_another_url_or_method_is_refused(
    dpop: Dpop, key: DpopKey, bound: dict[str, t.Any], wrong: dict[str, str]
) -> None:
    if "proof_url" in wrong and wrong["proof_url"].startswith("/"):
        wrong = {"proof_url": dpop.idp.url + wrong["proof_url"]}
    challenge = dpop_challenge(dpop.api(bound["access_token"], key, **wrong))
    assert challenge.startswith('DPoP error="invalid_dpop_proof"'), challenge


def test_the_query_is_not_part_of_htu(dpop: Dpop, key: DpopKey, bound: dict[str, t.Any]) -> None:
    url = dpop.idp.url + METHODS + "?type=totp"
    proof = dpop.proof(key, "GET", url, access_token=bound["access_token"])
    response = requests.get(
        url, headers={"Authorization": f"DPoP {bound['access_token']}", "DPoP": proof}, timeout=5
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("ath", ["missing", "another token"])
def test_a_proof_without_the_tokens_ath_is_refused(
    dpop: Dpop, key: DpopKey, bound: dict[str, t.Any], ath: str
) -> None:
    url = dpop.idp.url + METHODS
    other = bound["login"]["access_token"]
    proof = dpop.proof(key, "GET", url, access_token=None if ath == "missing" else other)
    challenge = dpop_challenge(dpop.api(bound["access_token"], None, proof=proof))
    assert 'error="invalid_dpop_proof"' in challenge and "ath" in challenge


def test_an_unbound_token_with_the_dpop_scheme_is_refused(dpop: Dpop, key: DpopKey) -> None:
    login = dpop.login(None)
    token = dpop.my_account_token(login["refresh_token"], None)["access_token"]
    assert 'error="invalid_token"' in dpop_challenge(dpop.api(token, key))


def test_the_unbound_bearer_flow_works_as_before(dpop: Dpop) -> None:
    login = dpop.login(None)
    assert login["token_type"] == "Bearer"
    api = dpop.my_account_token(login["refresh_token"], None)
    assert api["token_type"] == "Bearer" and "cnf" not in dpop.claims(api["access_token"])
    assert dpop.api(api["access_token"], None, scheme="Bearer").status_code == 200
    headers = {"Authorization": f"Bearer {login['access_token']}"}
    assert requests.get(dpop.idp.url + "/userinfo", headers=headers, timeout=5).status_code == 200
    assert dpop.state.issued_tokens()[0].jkt is None


def test_userinfo_wants_the_dpop_scheme_and_a_proof_for_a_bound_token(dpop: Dpop, key: DpopKey) -> None:
    token = dpop.login(key)["access_token"]
    url = dpop.idp.url + "/userinfo"
    bearer = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert bearer.status_code == 401 and 'error="invalid_token"' in bearer.headers["WWW-Authenticate"]
    proof = dpop.proof(key, "GET", url, access_token=token)
    response = requests.get(url, headers={"Authorization": f"DPoP {token}", "DPoP": proof}, timeout=5)
    assert response.status_code == 200 and response.json()["sub"]


# -- nonces ----------------------------------------------------------------------------------------------


def test_the_token_endpoint_challenges_for_its_nonce_and_the_retry_succeeds(dpop: Dpop, key: DpopKey) -> None:
    dpop.state.configure(dpop_nonce=True)
    code = dpop.code(dpop_jkt=key.thumbprint)
    challenged = dpop.exchange(code, key)
    assert challenged.status_code == 400
    assert challenged.json() == {
        "error": "use_dpop_nonce",
        "error_description": "Authorization server requires nonce in DPoP proof",
    }
    nonce = challenged.headers["DPoP-Nonce"]
    assert nonce == dpop.state.dpop_nonce("token_endpoint")
    # The challenge spent nothing: the same code goes through with the nonce.
    response = dpop.exchange(code, key, nonce=nonce)
    assert response.status_code == 200, response.text
    assert response.headers["DPoP-Nonce"] == nonce
    assert dpop.state.counters()["dpop_nonce_challenges"] == {"token_endpoint": 1, "my_account": 0}

    dpop.state.rotate_dpop_nonce("token_endpoint")
    stale = dpop.refresh(response.json()["refresh_token"], key, nonce=nonce)
    assert stale.json()["error"] == "use_dpop_nonce" and stale.headers["DPoP-Nonce"] != nonce
    fresh = dpop.refresh(response.json()["refresh_token"], key, nonce=stale.headers["DPoP-Nonce"])
    assert fresh.status_code == 200, fresh.text
    assert dpop.state.dpop_nonce_challenges("token_endpoint") == 2
    dpop.state.reset_counters()
    assert dpop.state.dpop_nonce_challenges("token_endpoint") == 0


def test_without_nonces_configured_no_nonce_is_asked_or_sent(dpop: Dpop, key: DpopKey) -> None:
    response = dpop.exchange(dpop.code(), key)
    assert response.status_code == 200 and "DPoP-Nonce" not in response.headers
    assert dpop.state.counters()["dpop_nonce_challenges"] == {"token_endpoint": 0, "my_account": 0}


def test_the_api_challenges_for_its_own_nonce_and_the_retry_succeeds(
    dpop: Dpop, key: DpopKey, bound: dict[str, t.Any]
) -> None:
    dpop.state.configure(dpop_api_nonce=True)
    response = dpop.api(bound["access_token"], key)
    challenge = dpop_challenge(response)
    assert challenge.startswith('DPoP error="use_dpop_nonce"'), challenge
    assert 'error_description="Resource server requires nonce in DPoP proof"' in challenge
    nonce = response.headers["DPoP-Nonce"]
    assert nonce == dpop.state.dpop_nonce("my_account") != dpop.state.dpop_nonce("token_endpoint")
    retried = dpop.api(bound["access_token"], key, nonce=nonce)
    assert retried.status_code == 200, retried.text
    assert retried.headers["DPoP-Nonce"] == nonce
    # The token endpoint's nonce does not do for the API, nor the other way round.
    assert dpop_challenge(dpop.api(bound["access_token"], key, nonce=dpop.state.dpop_nonce("token_endpoint")))
    assert dpop.refresh(bound["refresh_token"], key).status_code == 200  # token endpoint nonces are off
    assert dpop.state.counters()["dpop_nonce_challenges"] == {"token_endpoint": 0, "my_account": 2}
    dpop.state.rotate_dpop_nonce()
    assert dpop_challenge(dpop.api(bound["access_token"], key, nonce=nonce))
    assert dpop.state.dpop_nonce_challenges("my_account") == 3


def test_nonce_challenges_need_an_otherwise_valid_proof(dpop: Dpop, key: DpopKey, bound: dict[str, t.Any]) -> None:
    dpop.state.configure(dpop_api_nonce=True)
    challenge = dpop_challenge(dpop.api(bound["access_token"], key, proof_method="DELETE"))
    assert 'error="invalid_dpop_proof"' in challenge
    assert dpop.state.dpop_nonce_challenges("my_account") == 0


# -- HTTPS: htu is the issuer's URL ----------------------------------------------------------------------


@pytest.fixture
def certificate(tmp_path: pathlib.Path) -> ServerCertificate:
    return make_ca(tmp_path).issue_server_certificate(tmp_path)


def test_over_tls_htu_is_the_https_url(receiver: Receiver, certificate: ServerCertificate, key: DpopKey) -> None:
    config = EmulatorConfig(CLIENT_ID, CLIENT_SECRET, receiver.url)
    with EmulatorServer(config, certfile=certificate.cert, keyfile=certificate.key) as server:
        dpop = Dpop(Idp(server, verify=str(certificate.ca)))
        assert dpop.token_url.startswith("https://")
        login = dpop.login(key)
        assert login["token_type"] == "DPoP"
        port = urlsplit(dpop.token_url).port
        plain = dpop.proof(key, "POST", f"http://127.0.0.1:{port}/oauth/token")
        refused = dpop.token(None, proof=plain, grant_type="refresh_token", refresh_token=login["refresh_token"])
        assert (refused.status_code, refused.json()["error"]) == (400, "invalid_dpop_proof")
        token = dpop.my_account_token(login["refresh_token"], key)["access_token"]
        assert dpop.api(token, key).status_code == 200


# -- controls over HTTP ----------------------------------------------------------------------------------


def test_dpop_controls_over_http(dpop: Dpop, key: DpopKey) -> None:
    controls = dpop.idp.url + "/_emulator"
    assert requests.patch(controls + "/settings", json={"dpop_nonce": True}, timeout=5).json()["dpop_nonce"]
    assert requests.patch(controls + "/settings", json={"dpop_signing_algs": ["none"]}, timeout=5).status_code == 400
    before = requests.get(controls + "/dpop", timeout=5).json()
    assert before["token_endpoint"] == {"nonce": dpop.state.dpop_nonce("token_endpoint"), "nonce_challenges": 0}
    assert dpop.exchange(dpop.code(), key).json()["error"] == "use_dpop_nonce"
    rotated = requests.post(controls + "/dpop/nonce", json={"server": "token_endpoint"}, timeout=5).json()
    assert rotated["token_endpoint"]["nonce"] != before["token_endpoint"]["nonce"]
    assert rotated["token_endpoint"]["nonce_challenges"] == 1
    assert rotated["my_account"] == before["my_account"]
    assert requests.post(controls + "/dpop/nonce", json={"server": "nope"}, timeout=5).status_code == 400

    dpop.state.configure(dpop_nonce=False)
    body = dpop.login(key)
    user = dpop.state.user_by_email("alice@example.com")
    assert user is not None
    sub = user.sub
    tokens = requests.get(controls + "/tokens", params={"sub": sub}, timeout=5).json()["tokens"]
    assert tokens[0]["access_token"] == body["access_token"] and tokens[0]["jkt"] == key.thumbprint
    assert requests.get(controls + "/tokens", params={"sub": "auth0|nobody"}, timeout=5).json() == {"tokens": []}


# -- the proof checker on its own ------------------------------------------------------------------------


def test_the_emulators_thumbprint_and_ath_agree_with_rfc_7638_and_9449_examples() -> None:
    # RFC 7638 section 3.1's RSA key and thumbprint.
    rsa_jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV"
        "4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0z"
        "gdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csF"
        "Cur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
    }
    from bff.emulator.dpop_check import access_token_hash as emulator_ath
    from bff.emulator.dpop_check import jwk_thumbprint

    assert jwk_thumbprint(rsa_jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    # RFC 9449 section 7.1's access token and its ath.
    token = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
    assert emulator_ath(token) == access_token_hash(token) == "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"


def test_same_htu_normalises_case_default_ports_and_ignores_query_and_fragment() -> None:
    assert same_htu("HTTPS://Example.COM:443/a%7Cb?x=1#f", "https://example.com/a|b")
    assert same_htu("http://127.0.0.1:80/x", "http://127.0.0.1/x")
    assert not same_htu("http://example.com/x", "https://example.com/x")
    assert not same_htu("https://example.com:8443/x", "https://example.com/x")
    assert not same_htu("https://example.com/x/", "https://example.com/x")
    assert not same_htu("https://example.com:port/x", "https://example.com/x")


def test_the_guard_keeps_a_jti_while_its_proof_could_pass_then_forgets_it(key: DpopKey) -> None:
    clock = Clock()
    guard = ProofGuard(clock, "nonce please")
    url = "https://issuer.example/oauth/token"

    def check(proof: str) -> str:
        checked = guard.check([proof], method="POST", url=url, algorithms=SUPPORTED_ALGORITHMS, nonce_required=False)
        return checked.jkt

    proof = key.proof("POST", url, now=clock.now())
    assert check(proof) == key.thumbprint
    with pytest.raises(ProofError, match="used before"):
        check(proof)
    clock.advance(61)
    with pytest.raises(ProofError, match="iat"):
        check(proof)
    clock.advance(-61)  # a clock moved back a little does not revive it
    with pytest.raises(ProofError, match="used before"):
        check(proof)
    clock.advance(121)
    check(key.proof("POST", url, now=clock.now()))  # accepting another proof forgets the expired jtis
    clock.advance(-121)
    assert check(proof) == key.thumbprint


def test_verify_proof_refuses_what_is_not_a_compact_jws_of_a_public_key() -> None:
    signer = ec.generate_private_key(ec.SECP256R1())
    claims = {"jti": "j", "htm": "GET", "htu": "https://x.example/", "iat": 1}
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": public_jwk(signer)}
    assert verify_proof(forge(header, claims, signer), ["ES256"])[0] == claims
    for bad in ["", "a.b", "a.b.c.d", "!!.!!.!!", forge(header, claims, signer) + "A"]:
        with pytest.raises(ProofError):
            verify_proof(bad, ["ES256"])
    symmetric = {"typ": "dpop+jwt", "alg": "ES256", "jwk": {"kty": "oct", "k": "c2VjcmV0"}}
    with pytest.raises(ProofError, match="private"):
        verify_proof(forge(symmetric, claims, signer), ["ES256"])
    off_curve = dict(header, jwk=dict(public_jwk(signer), y=public_jwk(signer)["x"]))
    with pytest.raises(ProofError):
        verify_proof(forge(off_curve, claims, signer), ["ES256"])
