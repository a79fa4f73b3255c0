"""Auth0's official Python SDK, ``auth0-server-python``, unchanged, against the local Auth0 over HTTPS.

The emulator serves TLS with a certificate from a throwaway CA. The SDK is made to trust that CA the way a
deployment makes any client trust a private CA: the CA is appended to a copy of the public CA bundle and
``SSL_CERT_FILE`` names the result (the SDK talks HTTP through httpx, which reads ``SSL_CERT_FILE`` whenever
it builds a client). Nothing of the SDK is patched or replaced; its public API is all the tests call, and
``MyAccountClient`` is built the way the SDK's examples build it. Only the stores are the tests' own, as the
SDK asks every application to bring them (:class:`MemoryTransactionStore`, :class:`MemoryStateStore`, both
sealing what they keep with the SDK's own ``encrypt``/``decrypt``).

Covered:

- interactive login: ``start_interactive_login`` (PKCE S256, state) -> the emulator's login form, driven with
  ``requests`` -> ``complete_interactive_login`` with the callback URL, which fetches discovery and JWKS over
  HTTPS and verifies the ID token (signature, ``aud``, ``iss``, ``exp``) before keeping the session;
- MRRT: ``get_access_token(audience=<My Account audience>, scope=...)`` exchanges the login's refresh token
  under the emulator's ``refresh_token.policies`` for that audience (rotation included), serves the kept
  token from the session afterwards, and gets no scope the policy leaves out;
- the My Account API through the SDK: ``MyAccountClient.list_authentication_methods`` and ``get_factors``,
  and Connected Accounts end to end with ``ServerClient``: connections, ``start_connect_account`` -> the
  consent page at ``/connect?ticket=`` -> ``complete_connect_account`` -> list -> delete;
- logout: ``logout()`` builds ``/v2/logout`` with ``client_id`` and ``returnTo``; following it ends the
  emulator's SSO session, so the next ``/authorize`` asks for the password again;
- back-channel logout: the emulator POSTs its ``logout_token`` to the application's back-channel URL, where
  the application hands it to ``handle_backchannel_logout``; the SDK accepts it and the session with that
  ``sid`` goes. A tampered token and an ID token in place of a logout token are refused.

Where the SDK and Auth0's documentation disagree, the tests follow the documentation:

- The SDK's ``StateStore.delete_by_logout_token`` docstring asks stores to delete every session matching
  ``sid`` *or* ``sub``. Auth0 says the application finds "the session associated with" the token's ``sid``
  and terminates it (back-channel-logout.md, configure-back-channel-logout.md), so one logout does not end
  the user's other sessions; :class:`MemoryStateStore` matches ``sid`` (``sub`` only for a token without
  one), and a test checks that the user's other session survives.
- ``MyAccountClient.get_factors`` says Auth0 answers ``/me/v1/factors`` with a bare array; the My Account
  API's OpenAPI spec (myaccount-api-oas.json, ``ListFactorsResponseContent``) declares ``{"factors": [...]}``,
  which the emulator answers and the SDK also reads.
- The SDK's docstrings and its My Account example request scopes with hyphens
  (``read:me:authentication-methods``); the spec's scopes use underscores, and so do these tests (with
  hyphens the emulator, like Auth0, grants nothing the application asked for).

What the SDK (1.0.0b20) does not do, so these tests cannot cover it:

- It sends no ``nonce`` on ``/authorize`` and so checks none; PKCE and ``state`` protect the code flow.
- ``logout()`` builds Auth0's ``/v2/logout`` only; the OIDC ``/oidc/logout`` (``id_token_hint``,
  ``post_logout_redirect_uri``; oidc-logout.md) is not offered, so a test calls it directly, as another
  application of the tenant would.
- ``LogoutTokenClaims`` requires both ``sub`` and ``sid``, while Auth0 documents "``sid`` and/or ``sub``";
  Auth0 (and the emulator) send both, so this does not show here.
- ``handle_backchannel_logout`` does not refuse a token whose ``sid`` the application does not know, as
  back-channel-logout.md asks; that is left to the store, and this one ignores such a token.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import dataclasses
import json
import pathlib
import typing as t
import warnings
from urllib.parse import parse_qs, urljoin, urlsplit

import certifi
import pytest
import requests
from werkzeug.wrappers import Request, Response

from bff.emulator import EmulatorConfig, EmulatorServer
from bff.emulator.state import BACKCHANNEL_LOGOUT_EVENT
from tests.support.browser import parse_forms, submit_form
from tests.support.servers import ThreadedServer
from tests.support.tls import make_ca

with warnings.catch_warnings():
    # The SDK's pydantic models and authlib's httpx integration announce deprecations as they are imported.
    warnings.simplefilter("ignore", DeprecationWarning)
    from auth0_server_python.auth_server import MyAccountClient, ServerClient
    from auth0_server_python.auth_types import (
        ConnectAccountOptions,
        LogoutOptions,
        StartInteractiveLoginOptions,
        TransactionData,
    )
    from auth0_server_python.error import (
        ApiError,
        BackchannelLogoutError,
        MissingTransactionError,
        MyAccountApiError,
    )
    from auth0_server_python.store import StateStore, TransactionStore

pytestmark = [
    # The SDK calls pydantic's v1-style API (``.dict()``, ``parse_obj``) itself; that is not ours to fix.
    pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20"),
    pytest.mark.filterwarnings("ignore::authlib.deprecate.AuthlibDeprecationWarning"),
]

CLIENT_ID = "sdk-test-client"
CLIENT_SECRET = "sdk-test-secret"
SDK_SECRET = "sdk-test-session-encryption-secret-0123456789abcdef"
ALICE = "alice@example.com"
ALICE_PASSWORD = "alice"
SCOPE = "openid profile email offline_access"
MY_ACCOUNT_POLICY_SCOPES = [
    "read:me:authentication_methods",
    "read:me:factors",
    "create:me:connected_accounts",
    "read:me:connected_accounts",
    "delete:me:connected_accounts",
]
"""The MRRT policy the tests give the application for the My Account API: no sensitive method scopes."""


# -- the stores the SDK asks the application for ------------------------------------------------------


def _session_key(options: dict[str, t.Any] | None) -> str:
    """Which browser a call is for: the application's session cookie, here a name in ``store_options``."""
    if not options or "session" not in options:
        raise ValueError("store_options must name the browser's session")
    return str(options["session"])


def _normalized(url: str) -> str:
    url = url.lower().rstrip("/")
    return url if url.startswith("https://") else "https://" + url.removeprefix("http://")


class MemoryTransactionStore(TransactionStore):
    """Login and connect transactions, sealed with the SDK's encryption, for the ``state`` they belong to."""

    def __init__(self, secret: str) -> None:
        super().__init__({"secret": secret})
        self.sealed: dict[str, str] = {}

    async def set(
        self,
        identifier: str,
        state: t.Any,
        remove_if_expires: bool = False,
        options: dict[str, t.Any] | None = None,
    ) -> None:
        self.sealed[identifier] = self.encrypt(identifier, state.model_dump())

    async def get(self, identifier: str, options: dict[str, t.Any] | None = None) -> t.Any:
        sealed = self.sealed.get(identifier)
        return None if sealed is None else TransactionData.model_validate(self.decrypt(identifier, sealed))

    async def delete(self, identifier: str, options: dict[str, t.Any] | None = None) -> None:
        self.sealed.pop(identifier, None)


class MemoryStateStore(StateStore):
    """Sessions by browser, sealed with the SDK's encryption; found by ``sid`` for back-channel logout."""

    def __init__(self, secret: str) -> None:
        super().__init__({"secret": secret})
        self.sealed: dict[str, tuple[str, str]] = {}

    async def set(
        self,
        identifier: str,
        state: t.Any,
        remove_if_expires: bool = False,
        options: dict[str, t.Any] | None = None,
    ) -> None:
        data = state if isinstance(state, dict) else state.model_dump()
        self.sealed[_session_key(options)] = (identifier, self.encrypt(identifier, data))

    async def get(self, identifier: str, options: dict[str, t.Any] | None = None) -> dict[str, t.Any] | None:
        entry = self.sealed.get(_session_key(options))
        if entry is None or entry[0] != identifier:
            return None
        return self.decrypt(identifier, entry[1])

    async def delete(self, identifier: str, options: dict[str, t.Any] | None = None) -> None:
        self.sealed.pop(_session_key(options), None)

    async def delete_by_logout_token(self, claims: dict[str, t.Any], options: dict[str, t.Any] | None = None) -> None:
        """End the session the token names: by ``sid`` (back-channel-logout.md), by ``sub`` only without one."""
        sid, sub, iss = claims.get("sid"), claims.get("sub"), claims.get("iss")
        for key, (identifier, sealed) in list(self.sealed.items()):
            session = self.decrypt(identifier, sealed)
            if iss and _normalized(iss) != _normalized(session.get("domain") or ""):
                continue
            if (session["internal"]["sid"] == sid) if sid else (session["user"]["sub"] == sub):
                del self.sealed[key]


# -- the application around the SDK ------------------------------------------------------------------


class App:
    """The application using the SDK, as far as the emulator sees it: its back-channel logout URL.

    Whatever arrives at ``/bff/backchannel-logout`` goes to the SDK's ``handle_backchannel_logout``; the
    answer is 200, or 400 when the SDK refuses the token (back-channel-logout.md).
    """

    def __init__(self) -> None:
        self.server = ThreadedServer()
        self.url = self.server.url()
        self.sdk: ServerClient[t.Any] | None = None
        self.refusals: list[str] = []
        self.server.serve(self._wsgi)

    @property
    def callback_url(self) -> str:
        return self.url + "/bff/callback"

    def _wsgi(self, environ: dict[str, t.Any], start_response: t.Callable[..., t.Any]) -> t.Iterable[bytes]:
        request = Request(environ)
        if request.method != "POST" or request.path != "/bff/backchannel-logout" or self.sdk is None:
            return Response("not found", status=404)(environ, start_response)
        try:
            # The delivery thread has no event loop of its own; the SDK gets one for this request.
            run(self.sdk.handle_backchannel_logout(request.form.get("logout_token", "")))
        except BackchannelLogoutError as exc:
            self.refusals.append(str(exc))
            return Response("invalid logout token", status=400)(environ, start_response)
        return Response("", status=200)(environ, start_response)


@dataclasses.dataclass
class Deployment:
    emulator: EmulatorServer
    app: App
    sdk: ServerClient[t.Any]
    states: MemoryStateStore
    ca_bundle: pathlib.Path

    @property
    def issuer(self) -> str:
        return self.emulator.state.issuer

    @property
    def domain(self) -> str:
        """The SDK's ``domain``: host and port of the emulator, as an Auth0 domain is a host name."""
        return t.cast(str, urlsplit(self.emulator.url).netloc)

    def browser(self) -> requests.Session:
        """A browser that trusts what the deployment trusts, and ignores proxy settings of the test host."""
        browser = requests.Session()
        browser.trust_env = False
        browser.verify = str(self.ca_bundle)
        return browser


@pytest.fixture
def deployment(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> t.Iterator[Deployment]:
    ca = make_ca(tmp_path / "ca")
    certificate = ca.issue_server_certificate(tmp_path)
    # A private CA joins the public ones in the bundle the process trusts, as a deployment installs one.
    bundle = tmp_path / "ca-bundle.pem"
    bundle.write_bytes(pathlib.Path(certifi.where()).read_bytes() + b"\n" + ca.pem.read_bytes())
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    # httpx honours proxy variables too: loopback must never go through a proxy of the test host.
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")

    app = App()
    try:
        config = EmulatorConfig(CLIENT_ID, CLIENT_SECRET, app.url)
        with EmulatorServer(config, certfile=certificate.cert, keyfile=certificate.key) as emulator:
            # The application's refresh_token.policies (configure-and-implement-multi-resource-refresh-token.md).
            emulator.state.configure(
                refresh_token_policies=[
                    {"audience": emulator.state.my_account_audience, "scope": MY_ACCOUNT_POLICY_SCOPES},
                ]
            )
            states = MemoryStateStore(SDK_SECRET)
            sdk: ServerClient[t.Any] = ServerClient(
                domain=urlsplit(emulator.url).netloc,
                client_id=CLIENT_ID,
                client_secret=CLIENT_SECRET,
                secret=SDK_SECRET,
                redirect_uri=app.callback_url,
                transaction_store=MemoryTransactionStore(SDK_SECRET),
                state_store=states,
                authorization_params={"scope": SCOPE},
            )
            app.sdk = sdk
            yield Deployment(emulator, app, sdk, states, bundle)
    finally:
        app.server.stop()


# -- helpers -----------------------------------------------------------------------------------------


T = t.TypeVar("T")


def run(coroutine: t.Coroutine[t.Any, t.Any, T]) -> T:
    """One event loop per scenario, in a thread of its own: the test process may already run a loop
    (Playwright's, after the browser tests), in which ``asyncio.run`` cannot start another."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def claims_of(jwt: str) -> dict[str, t.Any]:
    """The payload of a JWT the test has no reason to verify again (the SDK or the emulator did)."""
    payload = jwt.split(".")[1]
    return t.cast(dict[str, t.Any], json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def open_authorization_url(browser: requests.Session, url: str, *, until: str) -> requests.Response:
    """Follow the emulator's redirects from ``url`` until a login page, or a redirect to ``until``."""
    response = browser.get(url, allow_redirects=False, timeout=10)
    for _ in range(10):
        if response.status_code not in (302, 303):
            return response
        location = urljoin(response.url, response.headers["Location"])
        if location.startswith(until):
            return response
        response = browser.get(location, allow_redirects=False, timeout=10)
    raise AssertionError("too many redirects")


def asks_for_password(page: requests.Response) -> bool:
    return page.status_code == 200 and any("password" in form["fields"] for form in parse_forms(page.text))


def log_in(deployment: Deployment, browser: requests.Session, authorization_url: str) -> str:
    """The user at the emulator: the login form if the SSO session does not suffice; returns the callback URL."""
    page = open_authorization_url(browser, authorization_url, until=deployment.app.callback_url)
    if asks_for_password(page):
        page = submit_form(browser, page, {"email": ALICE, "password": ALICE_PASSWORD})
    assert page.status_code == 302, page.text[:500]
    callback = urljoin(page.url, page.headers["Location"])
    assert callback.startswith(deployment.app.callback_url + "?"), callback
    return callback


async def sdk_login(deployment: Deployment, browser: requests.Session, session: str) -> dict[str, t.Any]:
    """A whole interactive login through the SDK for ``browser``, kept as the application session ``session``."""
    options = {"session": session}
    url = await deployment.sdk.start_interactive_login(store_options=options)
    return await deployment.sdk.complete_interactive_login(log_in(deployment, browser, url), store_options=options)


# -- interactive login -------------------------------------------------------------------------------


def test_interactive_login_with_pkce_verifies_the_id_token_and_keeps_the_session(deployment: Deployment) -> None:
    state = deployment.emulator.state
    browser = deployment.browser()
    options = {"session": "browser-1"}

    async def scenario() -> None:
        url = await deployment.sdk.start_interactive_login(
            StartInteractiveLoginOptions(app_state={"returnTo": "/account"}), store_options=options
        )
        parts = urlsplit(url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == deployment.issuer + "authorize"
        assert query["client_id"] == CLIENT_ID and query["response_type"] == "code"
        assert query["redirect_uri"] == deployment.app.callback_url
        assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
        assert query["scope"] == SCOPE and query["state"]

        callback = log_in(deployment, browser, url)
        assert parse_qs(urlsplit(callback).query)["state"] == [query["state"]]
        result = await deployment.sdk.complete_interactive_login(callback, store_options=options)
        assert result["app_state"] == {"returnTo": "/account"}

        user = await deployment.sdk.get_user(store_options=options)
        assert user is not None
        alice = state.user_by_email(ALICE)
        assert alice is not None
        assert (user["sub"], user["email"], user["name"]) == (alice.sub, ALICE, "Alice Example")
        assert user["iss"] == deployment.issuer and user["aud"] == CLIENT_ID

        session = await deployment.sdk.get_session(store_options=options)
        assert session is not None
        id_token = claims_of(session["id_token"])
        (sso,) = state.sso_sessions.values()
        assert id_token["sid"] == sso.sid and id_token["sub"] == alice.sub
        # The SDK keeps the sid from the verified ID token, which back-channel logout will name.
        sealed = deployment.states.sealed["browser-1"]
        assert deployment.states.decrypt(*sealed)["internal"]["sid"] == sso.sid
        assert session["refresh_token"] in state.refresh_tokens
        (token_set,) = session["token_sets"]
        assert token_set["audience"] == "default" and token_set["scope"] == SCOPE

        # The transaction is spent: the same callback cannot log in twice.
        with pytest.raises(MissingTransactionError):
            await deployment.sdk.complete_interactive_login(callback, store_options={"session": "browser-2"})

    run(scenario())


def test_an_expired_id_token_is_refused(deployment: Deployment) -> None:
    """The emulator's clock runs ten minutes late and its ID tokens live one: the SDK refuses the login."""
    state = deployment.emulator.state
    state.configure(id_token_lifetime=60)
    state.clock.advance(-600)
    options = {"session": "browser-1"}

    async def scenario() -> None:
        url = await deployment.sdk.start_interactive_login(store_options=options)
        callback = log_in(deployment, deployment.browser(), url)
        with pytest.raises(ApiError) as refused:
            await deployment.sdk.complete_interactive_login(callback, store_options=options)
        assert refused.value.code == "token_expired"
        assert await deployment.sdk.get_session(store_options=options) is None

    run(scenario())


def test_without_the_private_ca_the_sdk_refuses_the_emulator(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TLS is real: a client that trusts only the public CAs cannot even read the discovery document."""
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    untrusting: ServerClient[t.Any] = ServerClient(
        domain=deployment.domain,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        secret=SDK_SECRET,
        redirect_uri=deployment.app.callback_url,
        transaction_store=MemoryTransactionStore(SDK_SECRET),
        state_store=MemoryStateStore(SDK_SECRET),
    )
    with pytest.raises(ApiError) as refused:
        run(untrusting.start_interactive_login(store_options={"session": "browser-1"}))
    assert refused.value.code == "metadata_error"
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value.cause)


# -- MRRT and the My Account API ---------------------------------------------------------------------


def test_mrrt_exchange_for_the_my_account_audience_and_my_account_calls(deployment: Deployment) -> None:
    state = deployment.emulator.state
    browser = deployment.browser()
    options = {"session": "browser-1"}
    audience = state.my_account_audience
    assert audience == f"https://{deployment.domain}/me/"

    async def scenario() -> None:
        await sdk_login(deployment, browser, "browser-1")
        login_refresh_token = (await deployment.sdk.get_session(store_options=options) or {})["refresh_token"]
        state.reset_counters()

        token = await deployment.sdk.get_access_token(
            audience=audience, scope="read:me:authentication_methods read:me:factors", store_options=options
        )
        claims = claims_of(token)
        assert claims["iss"] == deployment.issuer
        assert audience in (claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]])
        assert {"read:me:authentication_methods", "read:me:factors"} <= set(claims["scope"].split())
        assert state.counters()["token_calls_by_grant_type"] == {"refresh_token": 1}
        # Rotation: the session now holds the new refresh token, and the login's is spent.
        session = await deployment.sdk.get_session(store_options=options) or {}
        assert session["refresh_token"] != login_refresh_token
        assert state.refresh_tokens[login_refresh_token].rotated_at is not None
        assert state.family_of(session["refresh_token"]) == state.family_of(login_refresh_token)

        # The token kept for that audience and scope is served from the session, without the IdP.
        again = await deployment.sdk.get_access_token(
            audience=audience, scope="read:me:authentication_methods read:me:factors", store_options=options
        )
        assert again == token and state.counters()["token_calls"] == 1

        # A scope outside the application's policy for the audience is not granted.
        narrow = await deployment.sdk.get_access_token(
            audience=audience, scope="delete:me:authentication_methods", store_options=options
        )
        assert "delete:me:authentication_methods" not in claims_of(narrow)["scope"].split()

        my_account = MyAccountClient(domain=deployment.domain)
        assert my_account.audience == audience
        methods = await my_account.list_authentication_methods(access_token=token)
        alice = state.user_by_email(ALICE)
        assert alice is not None
        (password,) = [m for m in methods.authentication_methods if m.type == "password"]
        assert password.identity_user_id == alice.sub
        assert (await my_account.get_authentication_method(token, password.id)).id == password.id
        factors = await my_account.get_factors(access_token=token)
        assert {"totp", "passkey"} <= {f.type for f in factors.factors}
        # The narrow token lacks the read scope: the API's problem details reach the application intact.
        with pytest.raises(MyAccountApiError) as denied:
            await my_account.list_authentication_methods(access_token=narrow)
        assert denied.value.status == 403
        assert denied.value.type == "https://auth0.com/api-errors/A0E-403-0002"

    run(scenario())


def test_connected_accounts_flow_through_the_sdk(deployment: Deployment) -> None:
    browser = deployment.browser()
    options = {"session": "browser-1"}
    redirect_uri = deployment.app.url + "/bff/connect/callback"

    async def scenario() -> None:
        await sdk_login(deployment, browser, "browser-1")
        connections = await deployment.sdk.list_connected_account_connections(store_options=options)
        assert "github" in {c.name for c in connections.connections}

        connect_url = await deployment.sdk.start_connect_account(
            ConnectAccountOptions(
                connection="github", redirect_uri=redirect_uri, scopes=["read:user"], app_state={"from": "/profile"}
            ),
            store_options=options,
        )
        parts = urlsplit(connect_url)
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == deployment.issuer + "connect"
        assert set(parse_qs(parts.query)) == {"ticket"}

        consent = browser.get(connect_url, allow_redirects=False, timeout=10)
        assert consent.status_code == 200 and "github" in consent.text
        decided = submit_form(browser, consent, {}, button="allow")
        assert decided.status_code == 302
        back = decided.headers["Location"]
        assert back.startswith(redirect_uri + "?") and "connect_code" in parse_qs(urlsplit(back).query)

        account = await deployment.sdk.complete_connect_account(back, store_options=options)
        assert (account.connection, account.scopes, account.app_state) == (
            "github",
            ["read:user"],
            {"from": "/profile"},
        )

        listed = await deployment.sdk.list_connected_accounts(store_options=options)
        assert [a.id for a in listed.accounts] == [account.id]
        await deployment.sdk.delete_connected_account(account.id, store_options=options)
        assert (await deployment.sdk.list_connected_accounts(store_options=options)).accounts == []

    run(scenario())


# -- logout ------------------------------------------------------------------------------------------


def test_logout_goes_through_v2_logout_and_ends_the_sso_session(deployment: Deployment) -> None:
    state = deployment.emulator.state
    browser = deployment.browser()
    options = {"session": "browser-1"}
    return_to = deployment.app.url + "/"

    async def scenario() -> None:
        await sdk_login(deployment, browser, "browser-1")
        (sso,) = state.sso_sessions.values()
        # While the SSO session lasts, a new login goes straight back to the application.
        url = await deployment.sdk.start_interactive_login(store_options={"session": "probe"})
        page = open_authorization_url(browser, url, until=deployment.app.callback_url)
        assert page.status_code == 302 and not asks_for_password(page)

        logout_url = await deployment.sdk.logout(LogoutOptions(return_to=return_to), store_options=options)
        parts = urlsplit(logout_url)
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == deployment.issuer + "v2/logout"
        assert parse_qs(parts.query) == {"client_id": [CLIENT_ID], "returnTo": [return_to]}
        assert await deployment.sdk.get_session(store_options=options) is None

        logged_out = browser.get(logout_url, allow_redirects=False, timeout=10)
        assert logged_out.status_code == 302 and logged_out.headers["Location"] == return_to
        assert state.sso_sessions == {}
        (delivery,) = state.wait_for_backchannel(1)
        assert (delivery.sid, delivery.status_code) == (sso.sid, 200)

        url = await deployment.sdk.start_interactive_login(store_options={"session": "probe"})
        assert asks_for_password(open_authorization_url(browser, url, until=deployment.app.callback_url))

    run(scenario())


def test_backchannel_logout_token_from_the_emulator_ends_that_session_only(deployment: Deployment) -> None:
    state = deployment.emulator.state
    laptop, phone = deployment.browser(), deployment.browser()

    async def scenario() -> None:
        await sdk_login(deployment, laptop, "laptop")
        await sdk_login(deployment, phone, "phone")
        assert len(state.sso_sessions) == 2
        laptop_sid = claims_of(
            (await deployment.sdk.get_session(store_options={"session": "laptop"}) or {})["id_token"]
        )["sid"]

        # The user logs out at the IdP from the laptop, through another application (RP-initiated logout).
        response = laptop.get(
            deployment.issuer + "oidc/logout",
            params={"client_id": CLIENT_ID, "post_logout_redirect_uri": deployment.app.url + "/"},
            allow_redirects=False,
            timeout=10,
        )
        assert response.status_code == 302
        (delivery,) = state.wait_for_backchannel(1)
        assert delivery.sid == laptop_sid
        assert delivery.status_code == 200, (delivery.error, deployment.app.refusals)
        logout_claims = claims_of(delivery.logout_token)
        assert logout_claims["events"] == {BACKCHANNEL_LOGOUT_EVENT: {}} and "nonce" not in logout_claims

        assert await deployment.sdk.get_session(store_options={"session": "laptop"}) is None
        assert await deployment.sdk.get_session(store_options={"session": "phone"}) is not None

        # The same token again, now for a session that is gone, changes nothing.
        await deployment.sdk.handle_backchannel_logout(delivery.logout_token)
        assert await deployment.sdk.get_session(store_options={"session": "phone"}) is not None

    run(scenario())


def test_backchannel_logout_refuses_what_is_not_a_valid_logout_token(deployment: Deployment) -> None:
    browser = deployment.browser()

    async def scenario() -> None:
        await sdk_login(deployment, browser, "browser-1")
        session = await deployment.sdk.get_session(store_options={"session": "browser-1"}) or {}
        # An ID token has the right issuer, audience and signature, but is no logout event.
        with pytest.raises(BackchannelLogoutError, match="backchannel logout event"):
            await deployment.sdk.handle_backchannel_logout(session["id_token"])

        deployment.emulator.state.logout_user(t.cast(str, session["user"]["sub"]))
        (delivery,) = deployment.emulator.state.wait_for_backchannel(1)
        header, _payload, signature = delivery.logout_token.split(".")
        claims = claims_of(delivery.logout_token)
        forged = dict(claims, sid="someone-elses-session")
        forged_payload = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
        with pytest.raises(BackchannelLogoutError):
            await deployment.sdk.handle_backchannel_logout(f"{header}.{forged_payload}.{signature}")

    run(scenario())
