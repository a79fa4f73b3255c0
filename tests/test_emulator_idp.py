"""The local Auth0's identity provider over real HTTP: login, tokens, rotation, MRRT, logout, controls."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import typing as t
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet
from werkzeug.wrappers import Request, Response

import bff.emulator
from bff.emulator import EmulatorConfig, EmulatorServer, EmulatorState
from bff.emulator.state import MFA_ACR, MY_ACCOUNT_SCOPES
from tests.support.browser import submit_form
from tests.support.servers import ThreadedServer

CLIENT_ID = "emulator-test-client"
CLIENT_SECRET = "emulator-test-secret"
OTHER_API = "https://api.other.example/"
ALICE = "alice@example.com"
ALICE_PASSWORD = "alice"
SPEC = Path(__file__).resolve().parents[1] / "bff" / "proxy" / "myaccount-api-oas.json"


class Receiver:
    """Stands in for the BFF: records what the emulator POSTs to it (back-channel logout)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.server = ThreadedServer()
        self.url = self.server.url()
        self.server.serve(self._app)

    def _app(self, environ: dict[str, t.Any], start_response: t.Callable[..., t.Any]) -> t.Iterable[bytes]:
        request = Request(environ)
        self.requests.append((request.path, request.mimetype, request.form.to_dict()))
        return Response("ok")(environ, start_response)


class Idp:
    """A browser and a BFF talking to one emulator: PKCE login through the form, token calls.

    ``verify`` is what both trust for HTTPS (a CA bundle's path for an emulator serving TLS).
    """

    def __init__(self, server: EmulatorServer, verify: str | bool = True) -> None:
        self.url = server.url
        self.state: EmulatorState = server.state
        self.redirect_uri = server.state.config.redirect_uri
        self.verify = verify
        self.browser = requests.Session()
        self.browser.trust_env = False
        self.browser.verify = verify
        self.verifier = ""

    def authorize(self, **params: str) -> requests.Response:
        self.verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(self.verifier.encode()).digest()).rstrip(b"=")
        query = {
            "response_type": "code",
            "client_id": CLIENT_ID,
            "redirect_uri": self.redirect_uri,
            "scope": "openid profile email offline_access",
            "state": "st-" + secrets.token_hex(4),
            "nonce": "n-" + secrets.token_hex(4),
            "code_challenge": challenge.decode(),
            "code_challenge_method": "S256",
            **params,
        }
        return self.browser.get(self.url + "/authorize", params=query, allow_redirects=False, timeout=5)

    def submit(
        self, page: requests.Response, values: dict[str, str], button: str | None = None
    ) -> requests.Response:
        return submit_form(self.browser, page, values, button)

    def login_code(
        self,
        email: str = ALICE,
        password: str = ALICE_PASSWORD,
        *,
        otp_secret: str | None = None,
        **params: str,
    ) -> str:
        """Log in through the form (and TOTP page if asked) and return the code from the callback redirect."""
        response = self.authorize(**params)
        if response.status_code == 200:
            response = self.submit(response, {"email": email, "password": password})
        if response.status_code == 200 and otp_secret is not None:
            response = self.submit(response, {"otp": self.totp(otp_secret)})
        return callback_params(self, response)["code"]

    def totp(self, secret: str) -> str:
        return pyotp.TOTP(secret).at(self.state.clock.now())

    def token(self, auth: str = "basic", **data: str) -> requests.Response:
        if auth == "basic":
            return requests.post(
                self.url + "/oauth/token",
                data=data,
                auth=(CLIENT_ID, CLIENT_SECRET),
                timeout=5,
                verify=self.verify,
            )
        data = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **data}
        return requests.post(self.url + "/oauth/token", data=data, timeout=5, verify=self.verify)

    def exchange(self, code: str) -> requests.Response:
        return self.token(
            grant_type="authorization_code",
            code=code,
            redirect_uri=self.redirect_uri,
            code_verifier=self.verifier,
        )

    def login(self, email: str = ALICE, password: str = ALICE_PASSWORD, **params: str) -> dict[str, t.Any]:
        response = self.exchange(self.login_code(email, password, **params))
        assert response.status_code == 200, response.text
        return t.cast(dict[str, t.Any], response.json())

    def refresh(self, refresh_token: str, **data: str) -> requests.Response:
        return self.token(auth="post", grant_type="refresh_token", refresh_token=refresh_token, **data)

    def claims(self, token: str) -> dict[str, t.Any]:
        jwks = requests.get(self.url + "/.well-known/jwks.json", timeout=5, verify=self.verify).json()
        keys = KeySet.import_key_set(jwks)
        return jwt.decode(token, keys, algorithms=["RS256"]).claims


def callback_params(idp: Idp, response: requests.Response) -> dict[str, str]:
    """The query of a redirect to the registered callback; the callback itself is never fetched."""
    assert response.status_code == 302, response.text[:300]
    location = response.headers["Location"]
    assert location.startswith(idp.redirect_uri + "?"), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


@pytest.fixture
def receiver() -> t.Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.server.stop()


@pytest.fixture
def server(receiver: Receiver) -> t.Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorConfig(CLIENT_ID, CLIENT_SECRET, receiver.url)) as server:
        yield server


@pytest.fixture
def idp(server: EmulatorServer) -> Idp:
    return Idp(server)


@pytest.fixture
def mfa_user(idp: Idp) -> tuple[str, str]:
    secret = pyotp.random_base32()
    idp.state.add_user("bob@example.com", "bob-password", name="Bob", totp_secret=secret)
    return "bob@example.com", secret


# -- discovery and the package surface -------------------------------------------------------------------


def test_public_surface_is_pinned() -> None:
    assert sorted(bff.emulator.__all__) == [
        "EmulatorConfig",
        "EmulatorServer",
        "EmulatorState",
        "create_emulator_app",
    ]


def test_default_policy_allows_every_my_account_scope_of_the_spec(idp: Idp) -> None:
    spec = json.loads(SPEC.read_text())
    declared = {
        scope
        for operations in spec["paths"].values()
        for operation in operations.values()
        if isinstance(operation, dict)
        for requirement in operation.get("security", [])
        for scopes in requirement.values()
        for scope in scopes
    }
    assert set(MY_ACCOUNT_SCOPES) == declared
    (policy,) = idp.state.settings.refresh_token_policies
    assert (policy.audience, set(policy.scope)) == (idp.url + "/me/", declared)


def test_discovery_points_at_the_emulator_and_jwks_verifies_its_tokens(idp: Idp) -> None:
    config = requests.get(idp.url + "/.well-known/openid-configuration", timeout=5).json()
    assert config["issuer"] == idp.url + "/"
    assert config["token_endpoint"] == idp.url + "/oauth/token"
    assert config["end_session_endpoint"] == idp.url + "/oidc/logout"
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert config["backchannel_logout_session_supported"] is True
    (key,) = requests.get(config["jwks_uri"], timeout=5).json()["keys"]
    assert key["kty"] == "RSA" and key["alg"] == "RS256" and key["kid"] and "d" not in key

    token = idp.state.mint_access_token(sub="auth0|x", audience=OTHER_API, scope="read:data")
    claims = idp.claims(token)
    assert claims["iss"] == idp.url + "/" and claims["aud"] == OTHER_API and claims["scope"] == "read:data"


def test_emulator_binds_to_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        EmulatorServer(EmulatorConfig(CLIENT_ID, CLIENT_SECRET, "http://127.0.0.1:1"), host="0.0.0.0")  # noqa: S104


def test_config_from_env_requires_the_bff_variables() -> None:
    with pytest.raises(ValueError, match="BFF_BASE_URL"):
        EmulatorConfig.from_env({"BFF_CLIENT_ID": "a", "BFF_CLIENT_SECRET": "b"})
    config = EmulatorConfig.from_env(
        {"BFF_CLIENT_ID": "a", "BFF_CLIENT_SECRET": "b", "BFF_BASE_URL": "http://x:1/"}
    )
    assert config.redirect_uri == "http://x:1/bff/callback"


# -- authorization code flow ------------------------------------------------------------------------------


def test_code_flow_with_pkce_issues_tokens_for_the_user_who_logged_in(idp: Idp) -> None:
    page = idp.authorize(state="abc", nonce="n-1")
    assert page.status_code == 200 and 'name="password"' in page.text
    params = callback_params(idp, idp.submit(page, {"email": "alice@example.com", "password": "alice"}))
    assert params["state"] == "abc"

    response = idp.exchange(params["code"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 86400
    assert body["scope"] == "openid profile email offline_access" and body["refresh_token"]

    alice = idp.state.user_by_email("alice@example.com")
    assert alice is not None
    id_token = idp.claims(body["id_token"])
    assert id_token["aud"] == CLIENT_ID and id_token["sub"] == alice.sub and id_token["nonce"] == "n-1"
    assert id_token["amr"] == ["pwd"] and "acr" not in id_token
    assert id_token["email"] == "alice@example.com" and id_token["name"] == "Alice Example"
    assert id_token["sid"] in idp.state.sso_sessions
    assert id_token["exp"] - id_token["iat"] == 36000
    picture = requests.get(id_token["picture"], timeout=5)
    assert picture.status_code == 200 and picture.headers["Content-Type"].startswith("image/svg+xml")

    access = idp.claims(body["access_token"])
    assert access["aud"] == idp.url + "/userinfo" and access["azp"] == CLIENT_ID and access["jti"]
    userinfo = requests.get(
        idp.url + "/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"}, timeout=5
    )
    assert userinfo.json()["email"] == "alice@example.com"


def test_api_audience_token_also_names_userinfo_when_openid_was_asked(idp: Idp) -> None:
    body = idp.login(audience=idp.state.my_account_audience, scope="openid offline_access read:me:factors")
    assert idp.claims(body["access_token"])["aud"] == [idp.state.my_account_audience, idp.url + "/userinfo"]
    assert body["scope"] == "openid offline_access read:me:factors"


def test_without_offline_access_no_refresh_token_is_issued(idp: Idp) -> None:
    assert "refresh_token" not in idp.login(scope="openid email")


def test_wrong_password_shows_the_form_again_with_an_error(idp: Idp) -> None:
    response = idp.submit(idp.authorize(), {"email": "alice@example.com", "password": "nope"})
    assert response.status_code == 400
    assert "Wrong email or password" in response.text and 'name="password"' in response.text
    params = callback_params(idp, idp.submit(response, {"email": "alice@example.com", "password": "alice"}))
    assert params["code"]


def test_deny_redirects_back_with_access_denied_and_the_state(idp: Idp) -> None:
    params = callback_params(idp, idp.submit(idp.authorize(state="s1"), {}, button="deny"))
    assert params["error"] == "access_denied" and params["state"] == "s1" and "code" not in params


def test_unregistered_redirect_uri_gets_an_error_page_not_a_redirect(idp: Idp) -> None:
    response = idp.authorize(redirect_uri="http://127.0.0.1:1/elsewhere")
    assert response.status_code == 400 and "Location" not in response.headers


def test_authorize_requires_s256_pkce(idp: Idp) -> None:
    params = callback_params(idp, idp.authorize(code_challenge_method="plain"))
    assert params["error"] == "invalid_request"


def test_sso_session_skips_the_form_unless_prompt_login_or_max_age_demands_it(idp: Idp) -> None:
    idp.login_code()
    assert callback_params(idp, idp.authorize())["code"]
    assert idp.authorize(prompt="login").status_code == 200
    assert callback_params(idp, idp.authorize(max_age="60"))["code"]
    idp.state.clock.advance(120)
    assert idp.authorize(max_age="60").status_code == 200


def test_prompt_none_without_a_session_answers_login_required(idp: Idp) -> None:
    params = callback_params(idp, idp.authorize(prompt="none", state="s2"))
    assert (params["error"], params["state"]) == ("login_required", "s2") and "code" not in params


def test_wrong_or_missing_code_verifier_is_invalid_grant(idp: Idp) -> None:
    code = idp.login_code()
    idp.verifier = "x" * 43
    assert idp.exchange(code).json()["error"] == "invalid_grant"
    response = idp.token(
        grant_type="authorization_code", code=idp.login_code(), redirect_uri=idp.redirect_uri
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_authorization_code_works_once(idp: Idp) -> None:
    code = idp.login_code()
    assert idp.exchange(code).status_code == 200
    replay = idp.exchange(code)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"


def test_authorization_code_expires_after_ten_minutes(idp: Idp) -> None:
    code = idp.login_code()
    idp.state.clock.advance(601)
    assert idp.exchange(code).json()["error"] == "invalid_grant"


def test_wrong_client_credentials_are_invalid_client(idp: Idp) -> None:
    for response in (
        requests.post(
            idp.url + "/oauth/token", data={"grant_type": "refresh_token"}, auth=(CLIENT_ID, "bad"), timeout=5
        ),
        requests.post(
            idp.url + "/oauth/token",
            data={"grant_type": "refresh_token", "client_id": CLIENT_ID, "client_secret": "x"},
            timeout=5,
        ),
    ):
        assert response.status_code == 401 and response.json()["error"] == "invalid_client"


# -- refresh tokens: rotation, reuse, leeway, lifetimes --------------------------------------------------


def test_refresh_rotates_the_token_and_the_new_one_works(idp: Idp) -> None:
    first = idp.login()["refresh_token"]
    second = idp.refresh(first).json()
    assert (
        second["refresh_token"] != first
        and second["id_token"]
        and "amr" not in idp.claims(second["id_token"])
    )
    third = idp.refresh(second["refresh_token"])
    assert third.status_code == 200 and idp.state.family_of(
        third.json()["refresh_token"]
    ) == idp.state.family_of(first)


def test_reusing_a_rotated_token_revokes_the_whole_family(idp: Idp) -> None:
    first = idp.login()["refresh_token"]
    second = idp.refresh(first).json()["refresh_token"]
    family = idp.state.family_of(first)

    reuse = idp.refresh(first)
    assert reuse.status_code == 403 and reuse.json()["error"] == "invalid_grant"
    assert idp.state.family_revoked(family) and idp.state.reuse_detected(family)
    assert idp.refresh(second).json()["error"] == "invalid_grant"


def test_leeway_lets_only_the_previous_token_be_reused_within_the_overlap(idp: Idp) -> None:
    idp.state.configure(leeway=30)
    first = idp.login()["refresh_token"]
    second = idp.refresh(first).json()["refresh_token"]
    again = idp.refresh(first)
    assert again.status_code == 200 and again.json()["refresh_token"] not in (first, second)

    idp.refresh(second)  # now the previous token is `second`; `first` is second-to-last
    assert idp.refresh(first).json()["error"] == "invalid_grant"
    assert idp.state.reuse_detected(idp.state.family_of(first))


def test_leeway_ends_after_the_overlap_period(idp: Idp) -> None:
    idp.state.configure(leeway=30)
    first = idp.login()["refresh_token"]
    idp.refresh(first)
    idp.state.clock.advance(31)
    assert idp.refresh(first).json()["error"] == "invalid_grant"
    assert idp.state.family_revoked(idp.state.family_of(first))


def test_without_rotation_the_refresh_token_stays_the_same(idp: Idp) -> None:
    idp.state.configure(rotation=False)
    token = idp.login()["refresh_token"]
    for _ in range(2):
        response = idp.refresh(token)
        assert response.status_code == 200 and "refresh_token" not in response.json()


def test_refresh_tokens_expire_by_inactivity_and_absolute_lifetime(idp: Idp) -> None:
    idp.state.configure(refresh_token_idle_lifetime=100, refresh_token_lifetime=250)
    token = idp.login()["refresh_token"]
    for _ in range(2):
        idp.state.clock.advance(90)
        token = idp.refresh(token).json()["refresh_token"]
    idp.state.clock.advance(90)  # 270 s after login, each step within the idle lifetime
    assert idp.refresh(token).json()["error"] == "invalid_grant"

    idle = idp.login(prompt="login")["refresh_token"]
    idp.state.clock.advance(101)
    assert idp.refresh(idle).json()["error"] == "invalid_grant"


def test_fifty_concurrent_uses_of_one_refresh_token_succeed_once_then_revoke(idp: Idp) -> None:
    token = idp.login()["refresh_token"]
    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = list(pool.map(lambda _: idp.refresh(token).status_code, range(50)))
    assert sorted(statuses) == [200] + [403] * 49
    family = idp.state.family_of(token)
    assert idp.state.family_revoked(family) and idp.state.token_calls(family) == 50


# -- MRRT and the Default Policy -------------------------------------------------------------------------


def test_mrrt_gives_a_my_account_token_with_the_requested_policy_scopes(idp: Idp) -> None:
    token = idp.login()["refresh_token"]
    response = idp.refresh(
        token,
        audience=idp.state.my_account_audience,
        scope="openid read:me:factors create:me:things read:data",
    )
    body = response.json()
    assert body["scope"] == "openid read:me:factors"
    assert idp.claims(body["access_token"])["aud"] == [idp.state.my_account_audience, idp.url + "/userinfo"]


def test_mrrt_ignores_an_audience_outside_the_policies_and_answers_for_the_default_one(idp: Idp) -> None:
    token = idp.login()["refresh_token"]
    body = idp.refresh(token, audience=OTHER_API, scope="read:data").json()
    assert idp.claims(body["access_token"])["aud"] == idp.url + "/userinfo"
    assert body["scope"] == "openid profile email offline_access"


def test_refresh_token_policies_change_at_run_time(idp: Idp) -> None:
    idp.state.configure(refresh_token_policies=[{"audience": OTHER_API, "scope": ["read:data"]}])
    token = idp.login()["refresh_token"]
    other = idp.refresh(token, audience=OTHER_API, scope="read:data write:data").json()
    assert idp.claims(other["access_token"])["aud"] == OTHER_API and other["scope"] == "read:data"
    me = idp.refresh(
        other["refresh_token"], audience=idp.state.my_account_audience, scope="read:me:factors"
    ).json()
    assert idp.claims(me["access_token"])["aud"] == idp.url + "/userinfo"


def test_default_policy_wants_mfa_within_fifteen_minutes_for_sensitive_scopes(
    idp: Idp, mfa_user: tuple[str, str]
) -> None:
    email, secret = mfa_user
    idp.state.configure(default_policy_mfa=True)
    token = idp.login_code(email, "bob-password", otp_secret=secret)
    token = idp.exchange(token).json()["refresh_token"]
    me = idp.state.my_account_audience
    sensitive = idp.refresh(token, audience=me, scope="create:me:authentication_methods")
    assert sensitive.status_code == 200, sensitive.text
    token = sensitive.json()["refresh_token"]

    idp.state.clock.advance(16 * 60)
    refused = idp.refresh(token, audience=me, scope="create:me:authentication_methods")
    assert refused.status_code == 403 and refused.json()["error"] == "mfa_required"
    assert idp.refresh(token, audience=me, scope="read:me:factors").status_code == 200


def test_default_policy_without_a_second_factor_answers_unmet_requirements_after_fifteen_minutes(
    idp: Idp,
) -> None:
    idp.state.configure(default_policy_mfa=True)
    token = idp.login()["refresh_token"]
    me = idp.state.my_account_audience
    token = idp.refresh(token, audience=me, scope="delete:me:authentication_methods").json()["refresh_token"]
    idp.state.clock.advance(16 * 60)
    refused = idp.refresh(token, audience=me, scope="delete:me:authentication_methods")
    assert refused.status_code == 403 and refused.json()["error"] == "unmet_authentication_requirements"


def test_default_policy_without_a_second_factor_wants_a_fresh_login_after_fifteen_minutes(idp: Idp) -> None:
    idp.state.configure(default_policy_mfa=True)
    idp.login_code()
    idp.state.clock.advance(16 * 60)
    assert callback_params(idp, idp.authorize(prompt="none"))["error"] == "unmet_authentication_requirements"
    assert 'name="password"' in idp.authorize().text


def test_default_policy_asks_for_the_code_again_once_the_sessions_mfa_is_stale(
    idp: Idp, mfa_user: tuple[str, str]
) -> None:
    email, secret = mfa_user
    idp.state.configure(default_policy_mfa=True)
    idp.login_code(email, "bob-password", otp_secret=secret)
    assert callback_params(idp, idp.authorize())["code"]
    idp.state.clock.advance(16 * 60)
    page = idp.authorize()
    assert 'name="otp"' in page.text and 'name="password"' not in page.text
    assert callback_params(idp, idp.authorize(prompt="none"))["error"] == "interaction_required"


def test_default_policy_also_applies_to_the_code_exchange(idp: Idp, mfa_user: tuple[str, str]) -> None:
    email, _ = mfa_user
    me = idp.state.my_account_audience
    code = idp.login_code(email, "bob-password", audience=me, scope="openid create:me:authentication_methods")
    idp.state.configure(default_policy_mfa=True)
    response = idp.exchange(code)
    assert response.status_code == 403 and response.json()["error"] == "mfa_required"


# -- step-up with TOTP -----------------------------------------------------------------------------------


def test_step_up_asks_for_a_totp_code_and_marks_the_id_token(idp: Idp, mfa_user: tuple[str, str]) -> None:
    email, secret = mfa_user
    page = idp.submit(idp.authorize(acr_values=MFA_ACR), {"email": email, "password": "bob-password"})
    assert page.status_code == 200 and 'name="otp"' in page.text
    wrong = idp.submit(page, {"otp": "000000" if idp.totp(secret) != "000000" else "111111"})
    assert wrong.status_code == 400 and 'name="otp"' in wrong.text

    body = idp.exchange(callback_params(idp, idp.submit(wrong, {"otp": idp.totp(secret)}))["code"]).json()
    id_token = idp.claims(body["id_token"])
    assert id_token["amr"] == ["pwd", "mfa"] and id_token["acr"] == MFA_ACR


def test_second_factor_is_not_asked_without_step_up_or_default_policy(
    idp: Idp, mfa_user: tuple[str, str]
) -> None:
    email, _ = mfa_user
    response = idp.submit(idp.authorize(), {"email": email, "password": "bob-password"})
    assert callback_params(idp, response)["code"]


def test_step_up_on_an_existing_session_asks_only_for_the_code(idp: Idp, mfa_user: tuple[str, str]) -> None:
    email, secret = mfa_user
    idp.login_code(email, "bob-password")
    page = idp.authorize(acr_values=MFA_ACR)
    assert 'name="otp"' in page.text and 'name="password"' not in page.text
    assert callback_params(idp, idp.submit(page, {"otp": idp.totp(secret)}))["code"]
    assert callback_params(idp, idp.authorize(acr_values=MFA_ACR))["code"]  # the session remembers the MFA


# -- revocation and logout -------------------------------------------------------------------------------


def test_revoke_invalidates_the_refresh_token_family(idp: Idp) -> None:
    first = idp.login()["refresh_token"]
    second = idp.refresh(first).json()["refresh_token"]
    bad = requests.post(
        idp.url + "/oauth/revoke",
        data={"client_id": CLIENT_ID, "client_secret": "x", "token": second},
        timeout=5,
    )
    assert bad.status_code == 401
    revoke = requests.post(
        idp.url + "/oauth/revoke",
        data={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "token": second},
        timeout=5,
    )
    assert revoke.status_code == 200 and revoke.content == b""
    assert idp.refresh(second).json()["error"] == "invalid_grant"
    assert idp.state.family_revoked(idp.state.family_of(first))


def test_logout_redirects_only_to_allowed_logout_urls(idp: Idp, receiver: Receiver) -> None:
    idp.login()
    for evil in (
        "https://evil.example/",
        receiver.url + "@evil.example/",
        "http://127.0.0.1:1/",
        receiver.url + "\\x",
        receiver.url + "/bye",  # the BFF's origin, but not an Allowed Logout URL
        receiver.url + "/?x=1",
    ):
        response = idp.browser.get(idp.url + "/oidc/logout", params={"post_logout_redirect_uri": evil})
        assert response.status_code == 400, evil
    ok = idp.browser.get(
        idp.url + "/oidc/logout",
        params={"post_logout_redirect_uri": receiver.url + "/", "state": "s3", "client_id": CLIENT_ID},
        allow_redirects=False,
    )
    assert ok.status_code == 302 and ok.headers["Location"] == receiver.url + "/?state=s3"


def test_logout_ends_the_sso_session_and_posts_a_backchannel_logout_token(
    idp: Idp, receiver: Receiver
) -> None:
    raw_hint = idp.login()["id_token"]
    id_token = idp.claims(raw_hint)
    response = idp.browser.get(
        idp.url + "/oidc/logout",
        params={
            "id_token_hint": raw_hint,
            "client_id": CLIENT_ID,
            "post_logout_redirect_uri": receiver.url + "/",
        },
        allow_redirects=False,
    )
    assert response.status_code == 302

    (delivery,) = idp.state.wait_for_backchannel(1)
    assert delivery.status_code == 200 and delivery.sid == id_token["sid"]
    (path, mimetype, form), *_ = receiver.requests
    assert (path, mimetype) == ("/bff/backchannel-logout", "application/x-www-form-urlencoded")
    logout = idp.claims(form["logout_token"])
    assert (
        logout["aud"] == CLIENT_ID and logout["sub"] == id_token["sub"] and logout["sid"] == id_token["sid"]
    )
    assert logout["events"] == {"http://schemas.openid.net/event/backchannel-logout": {}}
    assert logout["exp"] - logout["iat"] == 120 and "nonce" not in logout and logout["jti"]
    assert callback_params(idp, idp.authorize(prompt="none"))["error"] == "login_required"


def test_logout_user_simulates_a_logout_elsewhere(idp: Idp, receiver: Receiver) -> None:
    sid = idp.claims(idp.login()["id_token"])["sid"]
    alice = idp.state.user_by_email("alice@example.com")
    assert alice is not None
    assert idp.state.logout_user(alice.sub) == [sid]
    (delivery,) = idp.state.wait_for_backchannel(1)
    assert delivery.status_code == 200 and delivery.sub == alice.sub
    assert idp.authorize().status_code == 200


def test_backchannel_delivery_failure_is_recorded(idp: Idp, receiver: Receiver) -> None:
    sid = idp.claims(idp.login()["id_token"])["sid"]
    receiver.server.stop()
    assert idp.state.end_sso_session(sid)
    (delivery,) = idp.state.wait_for_backchannel(1)
    assert delivery.status_code is None and delivery.error


# -- faults, latency, counters ---------------------------------------------------------------------------


def test_injected_faults_answer_instead_of_the_grant_and_are_counted(idp: Idp) -> None:
    token = idp.login()["refresh_token"]
    idp.state.fail_next_token("server_error", 503, count=2)
    idp.state.fail_next_token("mfa_required", 403, description="Multifactor authentication required")
    for status, error in ((503, "server_error"), (503, "server_error"), (403, "mfa_required")):
        response = idp.refresh(token)
        assert (response.status_code, response.json()["error"]) == (status, error)
    assert idp.refresh(token).status_code == 200
    assert idp.state.token_calls(idp.state.family_of(token)) == 4


def test_latency_delays_a_patient_client(idp: Idp) -> None:
    token = idp.login()["refresh_token"]
    idp.state.token_latency(0.3, count=1)
    started = time.monotonic()
    assert idp.refresh(token).status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    idp.refresh(idp.login()["refresh_token"])
    assert time.monotonic() - started < 0.3


def test_latency_drops_the_request_of_a_client_that_gave_up(idp: Idp) -> None:
    token = idp.login()["refresh_token"]
    idp.state.reset_counters()
    idp.state.token_latency(0.5, count=1)
    with pytest.raises(requests.ReadTimeout):
        requests.post(
            idp.url + "/oauth/token",
            data={"grant_type": "refresh_token", "refresh_token": token},
            auth=(CLIENT_ID, CLIENT_SECRET),
            timeout=0.1,
        )
    idp.state.wait_for_token_requests(dropped=1)
    counters = idp.state.counters()
    assert counters["dropped_token_calls"] == 1 and counters["token_calls"] == 0
    assert idp.refresh(token).status_code == 200  # never processed, so the token was never rotated


def _refresh_giving_up_after(idp: Idp, token: str, timeout: float) -> None:
    """A refresh whose client hangs up after ``timeout`` seconds without an answer."""
    with pytest.raises(requests.ReadTimeout):
        requests.post(
            idp.url + "/oauth/token",
            data={"grant_type": "refresh_token", "refresh_token": token},
            auth=(CLIENT_ID, CLIENT_SECRET),
            timeout=timeout,
        )


def test_latency_can_process_the_request_of_a_client_that_gave_up(idp: Idp) -> None:
    token = idp.login()["refresh_token"]
    idp.state.reset_counters()
    idp.state.token_latency(0.5, count=1, process_abandoned=True)
    _refresh_giving_up_after(idp, token, 0.1)
    reached = idp.state.wait_for_token_requests(abandoned=1)
    assert (reached.dropped, reached.abandoned) == (0, 1)
    # Processed: the token was rotated although its client never saw the answer; presenting it again is reuse.
    assert idp.refresh(token).json()["error"] == "invalid_grant"
    assert idp.state.reuse_detected(idp.state.family_of(token))


def test_a_hang_holds_every_request_until_it_ends_then_processes_them(idp: Idp) -> None:
    patient, impatient = idp.login()["refresh_token"], idp.login()["refresh_token"]
    idp.state.reset_counters()
    idp.state.token_hang(0.6)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(idp.refresh, patient)
        _refresh_giving_up_after(idp, impatient, 0.1)
        assert waiting.result().status_code == 200
    assert idp.state.wait_for_token_requests(done=2, abandoned=1).dropped == 0
    assert idp.state.counters()["token_calls"] == 2
    assert idp.refresh(impatient).status_code == 403  # rotated during the hang: presenting it again is reuse
    started = time.monotonic()
    assert idp.refresh(idp.login()["refresh_token"]).status_code == 200  # after the hang: not held
    assert time.monotonic() - started < 0.5


def test_ending_a_hang_releases_the_requests_it_holds_at_once(idp: Idp) -> None:
    token = idp.login()["refresh_token"]
    idp.state.reset_counters()
    idp.state.token_hang(30)
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(idp.refresh, token)
        idp.state.wait_for_token_requests(received=1)
        assert not held.done()
        idp.state.end_token_hang()
        assert held.result(timeout=5).status_code == 200


def test_an_outage_answers_every_call_until_it_ends_and_counts_them(idp: Idp) -> None:
    token = idp.login()["refresh_token"]
    idp.state.reset_counters()
    idp.state.fail_tokens_for(0.5, "temporarily_unavailable", 503)
    statuses = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        response = idp.refresh(token)
        statuses.append(response.status_code)
        if response.status_code == 200:
            break
        assert response.json()["error"] == "temporarily_unavailable"
        time.sleep(0.05)
    assert statuses[-1] == 200 and set(statuses[:-1]) == {503} and len(statuses) >= 2
    assert idp.state.counters()["faulted_token_calls"] == len(statuses) - 1


def test_clearing_faults_ends_an_outage_and_a_hang(idp: Idp) -> None:
    token = idp.login()["refresh_token"]
    idp.state.fail_tokens_for(60)
    idp.state.token_hang(60)
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(idp.refresh, token)
        idp.state.wait_for_token_requests(received=1)
        idp.state.clear_faults()
        assert held.result(timeout=5).status_code == 200


def test_counters_count_calls_by_grant_type_until_reset(idp: Idp) -> None:
    token = idp.login()["refresh_token"]
    idp.refresh(token)
    idp.token(grant_type="password")
    counters = idp.state.counters()
    assert counters["token_calls"] == 3
    assert counters["token_calls_by_grant_type"] == {
        "authorization_code": 1,
        "refresh_token": 1,
        "password": 1,
    }
    idp.state.reset_counters()
    assert idp.state.counters()["token_calls"] == 0 and idp.state.token_calls(idp.state.family_of(token)) == 0


def test_access_tokens_expire_by_the_emulator_clock(idp: Idp) -> None:
    idp.state.configure(access_token_lifetime=60)
    body = idp.login()
    assert body["expires_in"] == 60
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    assert requests.get(idp.url + "/userinfo", headers=headers, timeout=5).status_code == 200
    idp.state.clock.advance(61)
    assert requests.get(idp.url + "/userinfo", headers=headers, timeout=5).status_code == 401


def test_control_endpoints_turn_the_same_knobs_over_http(idp: Idp) -> None:
    controls = idp.url + "/_emulator"
    token = idp.login()["refresh_token"]
    before = idp.state.clock.now()
    assert requests.post(controls + "/clock", json={"advance": 100}, timeout=5).json()["now"] >= before + 100
    assert requests.patch(controls + "/settings", json={"leeway": 7}, timeout=5).json()["leeway"] == 7
    assert requests.patch(controls + "/settings", json={"leeway": -1}, timeout=5).status_code == 400
    assert requests.post(controls + "/faults", json={"error": "invalid_grant"}, timeout=5).status_code == 204
    assert idp.refresh(token).json()["error"] == "invalid_grant"
    family = requests.post(controls + "/families/lookup", json={"refresh_token": token}, timeout=5).json()
    assert family == {
        "family": idp.state.family_of(token),
        "token_calls": 1,
        "revoked": False,
        "reuse_detected": False,
    }
    assert (
        requests.get(controls + "/counters", timeout=5).json()["token_calls_by_grant_type"]["refresh_token"]
        == 1
    )
    assert requests.delete(controls + "/counters", timeout=5).status_code == 204
    assert idp.state.counters()["token_calls"] == 0
    user = requests.post(controls + "/users", json={"email": "dave@example.com", "password": "d"}, timeout=5)
    assert user.status_code == 201 and idp.state.user_by_email("dave@example.com") is not None


def test_control_endpoints_turn_the_outage_and_hang_knobs_over_http(idp: Idp) -> None:
    controls = idp.url + "/_emulator"
    token = idp.login()["refresh_token"]
    outage = {"error": "temporarily_unavailable", "seconds": 60}
    assert requests.post(controls + "/faults", json=outage, timeout=5).status_code == 204
    assert idp.refresh(token).status_code == 503
    assert requests.delete(controls + "/faults", timeout=5).status_code == 204
    assert requests.post(controls + "/hang", json={"seconds": 60}, timeout=5).status_code == 204
    with ThreadPoolExecutor(1) as pool:
        idp.state.reset_counters()
        held = pool.submit(idp.refresh, token)
        idp.state.wait_for_token_requests(received=1)
        assert requests.delete(controls + "/hang", timeout=5).status_code == 204
        assert held.result(timeout=5).status_code == 200
    assert requests.post(controls + "/hang", json={"seconds": 0}, timeout=5).status_code == 400
    latency = {"seconds": 0.01, "count": 1, "process_abandoned": True}
    assert requests.post(controls + "/latency", json=latency, timeout=5).status_code == 204
