"""The BFF against a certified OpenID provider (oidc-provider), configured as a standard provider.

The provider names its issuer without a trailing slash, takes RFC 8707 resource indicators
(``BFF_RESOURCE_PARAMETER=resource``), issues JWT access tokens for the API, requires PKCE, rotates
refresh tokens (presenting a rotated one again revokes the whole grant), and offers revocation,
RP-initiated logout and back-channel logout. The My Account API is a recording stand-in; the BFF runs
in-process on its own clock, so expiries are reached by moving that clock.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import threading
import typing as t
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet

from bff import Settings, create_app
from bff.errors import Problem, ProblemKind
from bff.oidc import Provider
from bff.proxy.matching import RouteTable
from bff.store import SessionStore, open_store
from tests.conftest import CLIENT_ID, CLIENT_SECRET, SECRET_KEY
from tests.support.browser import bff_session, follow, parse_forms, submit_form
from tests.support.clock import ManualClock
from tests.support.oidc_provider import OidcProvider, ensure_installed, login
from tests.support.problems import assert_problem
from tests.support.servers import ThreadedServer
from tests.support.upstream import RecordingUpstream

#: The My Account API's resource indicator, as the provider knows it.
RESOURCE = "https://my-account.test/me/"
API_SCOPES = RouteTable.from_config(None).scopes
READ_SCOPES = " ".join(sorted(scope for scope in API_SCOPES if scope.startswith("read:")))
READ = "/me/v1/authentication-methods"


@dataclasses.dataclass
class StandardStack:
    """oidc-provider, a BFF served on a free port with its own clock, its store, and the API stand-in."""

    bff_url: str
    provider: OidcProvider
    settings: Settings
    store: SessionStore
    app: t.Any
    upstream: RecordingUpstream
    clock: ManualClock

    def browser(self) -> requests.Session:
        return bff_session(self.bff_url)

    def logged_in(self, **kwargs: t.Any) -> requests.Session:
        http = self.browser()
        response = login(http, self.bff_url, **kwargs)
        assert response.status_code == 302, response.text
        return http

    def session_id(self, http: requests.Session) -> str:
        return http.cookies[self.settings.session_cookie_name]

    def idp_sid(self, http: requests.Session) -> str:
        """The provider session (the ID token's ``sid``) the browser's BFF session was started from."""
        record = self.store.load(self.session_id(http))
        assert record is not None
        return t.cast(str, json.loads(record.fields["doc"])["idp_sid"])

    def refresh_token(self, http: requests.Session) -> str:
        record = self.store.load(self.session_id(http))
        assert record is not None
        return t.cast(str, self.app.extensions["bff"].box.open(record.fields["rt"]).decode())

    def refresh_grants(self) -> list[dict[str, t.Any]]:
        return self.provider.events("grant.success", grant_type="refresh_token")


@pytest.fixture(scope="session")
def provider_installed() -> None:
    ensure_installed()


@pytest.fixture
def standard(provider_installed: None, redis_url: str, tmp_path: pathlib.Path) -> t.Iterator[StandardStack]:
    server = ThreadedServer()
    bff_url = server.url()
    upstream = RecordingUpstream()
    provider = OidcProvider(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, base_url=bff_url,
        resource=RESOURCE, resource_scopes=API_SCOPES, log_dir=tmp_path,
    )
    store: SessionStore | None = None
    try:
        provider.start()
        settings = Settings(
            issuer_url=provider.issuer,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            base_url=bff_url,
            secret_keys=(SECRET_KEY,),
            session_store=redis_url,
            # A standard provider grants at login what later refreshes may ask for: the API, its scopes.
            scopes=" ".join(("openid", "profile", "email", "offline_access", *API_SCOPES)),
            resource_parameter="resource",
            audience=RESOURCE,
            my_account_url=upstream.url + "/me/v1",
            my_account_audience=RESOURCE,
            rate_limit_session="off",
            rate_limit_address="off",
            rate_limit_login="off",
            rate_limit_connect="off",
        )
        clock = ManualClock()
        store = open_store(redis_url, clock=clock.now)
        app = create_app(settings, store=store, clock=clock)
        server.serve(app)
        yield StandardStack(bff_url, provider, settings, store, app, upstream, clock)
    finally:
        if server.thread is not None:
            server.stop()
        else:
            server.server.server_close()
        upstream.stop()
        provider.stop()
        if store is not None:
            store.close()


def calls_at_once(
    stack: StandardStack, http: requests.Session, count: int, path: str = READ
) -> list[requests.Response]:
    """``count`` proxied GETs of one session, released together."""
    cookies = {stack.settings.session_cookie_name: stack.session_id(http)}
    barrier = threading.Barrier(count)

    def call(_: int) -> requests.Response:
        barrier.wait()
        return requests.get(stack.bff_url + path, cookies=cookies, headers={"X-CSRF": "1"}, timeout=30)

    with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(call, range(count)))


def bearer_tokens(stack: StandardStack, since: int) -> set[str]:
    tokens = {seen.headers["authorization"] for seen in stack.upstream.seen[since:]}
    assert all(token.startswith("Bearer ") for token in tokens), tokens
    return {token.removeprefix("Bearer ") for token in tokens}


def api_claims(stack: StandardStack, access_token: str) -> dict[str, t.Any]:
    """The claims of an access token the provider issued, its signature checked against the provider's keys."""
    keys = requests.get(stack.provider.metadata()["jwks_uri"], timeout=10).json()
    return dict(jwt.decode(access_token, KeySet.import_key_set(keys), algorithms=["RS256"]).claims)


def logout_at_provider(http: requests.Session, url: str, *, expect_redirect_to: str | None = None) -> None:
    """Open the provider's end-session URL, confirm on its page, and follow it to the end."""
    page = http.get(url, allow_redirects=False, timeout=10)
    assert page.status_code == 200, page.text[:500]
    assert any("xsrf" in form["fields"] for form in parse_forms(page.text)), page.text[:500]
    done = submit_form(http, page, {}, button="yes")
    assert done.status_code == 303, done.text[:500]
    if expect_redirect_to is not None:
        assert done.headers["Location"] == expect_redirect_to
    follow(http, done, until=expect_redirect_to)


def provider_shows_login_page(stack: StandardStack, http: requests.Session) -> bool:
    """Whether a new login in this browser needs the provider's login form (no provider session)."""
    start = http.get(stack.bff_url + "/bff/login", allow_redirects=False, timeout=10)
    page = follow(http, start, until=stack.bff_url)
    return page.status_code == 200 and any("password" in form["fields"] for form in parse_forms(page.text))


# --- Discovery and login ------------------------------------------------------------------------


def test_discovery_is_accepted_with_the_issuer_spelled_without_a_trailing_slash(standard: StandardStack) -> None:
    issuer = standard.provider.issuer
    assert issuer.startswith("http://127.0.0.1:") and not issuer.endswith("/")
    assert standard.provider.metadata()["issuer"] == issuer
    bff_provider = standard.app.extensions["bff"].provider
    assert bff_provider.issuer() == issuer
    assert bff_provider.skipped_features() == []
    # Configured with a trailing slash, the same provider is accepted, and tokens are held to its spelling.
    slashed = dataclasses.replace(standard.settings, issuer_url=issuer + "/")
    assert Provider(slashed, standard.clock).issuer() == issuer
    # Any other spelling of the same server is refused: the document must name the issuer it was fetched for.
    elsewhere = dataclasses.replace(standard.settings, issuer_url=issuer.replace("127.0.0.1", "localhost"))
    with pytest.raises(Problem) as refused:
        Provider(elsewhere, standard.clock).metadata()
    assert refused.value.kind is ProblemKind.IDP_MISCONFIGURED


def test_login_uses_code_pkce_and_the_resource_and_validates_the_providers_id_token(
    standard: StandardStack,
) -> None:
    http = standard.browser()
    start = http.get(standard.bff_url + "/bff/login", allow_redirects=False, timeout=10)
    query = parse_qs(urlsplit(start.headers["Location"]).query)
    assert urlsplit(start.headers["Location"]).path == "/auth"
    assert query["response_type"] == ["code"] and query["code_challenge_method"] == ["S256"]
    assert query["resource"] == [RESOURCE] and "audience" not in query
    assert set(API_SCOPES) <= set(query["scope"][0].split())

    callback = login(http, standard.bff_url, return_to="/settings")
    assert callback.status_code == 302 and callback.headers["Location"] == "/settings"
    body = http.get(standard.bff_url + "/bff/user", timeout=10).json()
    assert body["claims"]["sub"] == "alice"
    assert body["claims"]["email"] == "alice@example.com"
    assert body["session"]["amr"] == ["pwd"]
    # The login's access token is already the API's: the first call needs no exchange.
    assert http.get(standard.bff_url + READ, timeout=10).status_code == 200
    assert standard.refresh_grants() == []
    [token] = bearer_tokens(standard, 0)
    claims = api_claims(standard, token)
    assert claims["iss"] == standard.provider.issuer and claims["aud"] == RESOURCE
    assert claims["client_id"] == CLIENT_ID and claims["sub"] == "alice"


def test_a_wrong_password_at_the_provider_starts_no_session(standard: StandardStack) -> None:
    http = standard.browser()
    start = http.get(standard.bff_url + "/bff/login", allow_redirects=False, timeout=10)
    page = follow(http, start, until=standard.bff_url)
    again = submit_form(http, page, {"email": "alice@example.com", "password": "wrong"})
    assert again.status_code == 200 and "Wrong email or password" in again.text
    assert_problem(http.get(standard.bff_url + "/bff/user", timeout=10), 401, "not-authenticated")


# --- Refresh under rotation ---------------------------------------------------------------------


def test_fifty_calls_at_each_expiry_make_one_rotating_exchange_per_expiry(standard: StandardStack) -> None:
    http = standard.logged_in()
    assert http.get(standard.bff_url + READ, timeout=10).status_code == 200  # the login's token
    tokens_used = bearer_tokens(standard, 0)
    refresh_tokens = [standard.refresh_token(http)]
    exchanges_per_expiry = []

    for _ in range(3):
        standard.clock.advance(standard.provider.access_token_ttl + 1)
        grants_before, seen_before = len(standard.refresh_grants()), len(standard.upstream.seen)

        responses = calls_at_once(standard, http, 50)

        assert [r.status_code for r in responses] == [200] * 50, [r.text for r in responses if r.status_code != 200]
        grants = standard.refresh_grants()[grants_before:]
        exchanges_per_expiry.append(len(grants))
        assert grants == [{**grants[0], "resource": RESOURCE, "scope": READ_SCOPES}], grants
        # Every call of the burst carried the one new token, a JWT for the API with the read scopes.
        [token] = bearer_tokens(standard, seen_before)
        assert token not in tokens_used
        tokens_used.add(token)
        claims = api_claims(standard, token)
        assert claims["aud"] == RESOURCE and set(READ_SCOPES.split()) <= set(claims["scope"].split())
        refresh_tokens.append(standard.refresh_token(http))

    print(f"refresh-token exchanges per expiry (50 concurrent calls each): {exchanges_per_expiry}")
    assert exchanges_per_expiry == [1, 1, 1]
    # Each exchange rotated the refresh token, and no rotated token was presented again: the provider
    # would have refused it and revoked the grant (see the next test).
    assert len(set(refresh_tokens)) == len(refresh_tokens)
    assert standard.provider.events("grant.error") == []
    assert standard.provider.events("grant.revoked") == []
    assert standard.provider.refresh(refresh_tokens[-1], resource=RESOURCE, scope=READ_SCOPES).status_code == 200


def test_a_rotated_refresh_token_presented_again_revokes_the_grant_and_ends_the_session(
    standard: StandardStack,
) -> None:
    http = standard.logged_in()
    first = standard.refresh_token(http)
    standard.clock.advance(standard.provider.access_token_ttl + 1)
    assert http.get(standard.bff_url + READ, timeout=10).status_code == 200
    assert standard.refresh_token(http) != first  # rotated

    reused = standard.provider.refresh(first, resource=RESOURCE, scope=READ_SCOPES)

    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant", reused.text
    assert standard.provider.events("grant.error", error_detail="refresh token already used")
    standard.clock.advance(standard.provider.access_token_ttl + 1)
    assert_problem(http.get(standard.bff_url + READ, timeout=10), 401, "login-required")
    assert_problem(http.get(standard.bff_url + "/bff/user", timeout=10), 401, "not-authenticated")


def test_each_scope_set_is_a_refresh_grant_for_the_api_resource_with_that_scope(standard: StandardStack) -> None:
    http = standard.logged_in()
    standard.clock.advance(standard.provider.access_token_ttl + 1)

    assert http.get(standard.bff_url + READ, timeout=10).status_code == 200
    assert http.delete(standard.bff_url + READ + "/passkey%7Cnew", timeout=10).status_code == 200

    grants = standard.refresh_grants()
    assert [(g["resource"], g["scope"]) for g in grants] == [
        (RESOURCE, READ_SCOPES), (RESOURCE, "delete:me:authentication_methods")
    ]
    delete_token = standard.upstream.seen[-1].headers["authorization"].removeprefix("Bearer ")
    assert api_claims(standard, delete_token)["scope"] == "delete:me:authentication_methods"


# --- Logout -------------------------------------------------------------------------------------


def test_logout_follows_the_providers_end_session_endpoint_and_ends_its_session(standard: StandardStack) -> None:
    http = standard.logged_in()
    assert not provider_shows_login_page(standard, http)  # a provider session: logged in without a page
    assert login(http, standard.bff_url).status_code == 302
    idp_sid = standard.idp_sid(http)
    assert idp_sid

    logout = http.post(standard.bff_url + "/bff/logout", timeout=10)

    assert logout.status_code == 200
    url = logout.json()["logout_url"]
    query = parse_qs(urlsplit(url).query)
    assert url.startswith(standard.provider.metadata()["end_session_endpoint"] + "?")
    assert query["client_id"] == [CLIENT_ID]
    assert query["post_logout_redirect_uri"] == [standard.bff_url + "/"]
    assert query["logout_hint"] == [idp_sid] and "id_token_hint" not in query
    logout_at_provider(http, url, expect_redirect_to=standard.bff_url + "/")
    assert standard.provider.events("end_session.success")
    assert standard.provider.events("session.destroyed", sub="alice")
    assert provider_shows_login_page(standard, http)


def test_logging_out_at_the_provider_ends_that_bff_session_by_back_channel(standard: StandardStack) -> None:
    laptop, phone = standard.logged_in(), standard.logged_in()  # two browsers: two provider sessions
    end_session = standard.provider.metadata()["end_session_endpoint"]
    laptop_sid = standard.idp_sid(laptop)
    assert laptop_sid != standard.idp_sid(phone)

    logout_at_provider(laptop, f"{end_session}?client_id={CLIENT_ID}")

    [delivery] = standard.provider.events("backchannel.success")
    assert delivery == {**delivery, "client_id": CLIENT_ID, "sub": "alice", "sid": laptop_sid}
    assert standard.provider.events("backchannel.error") == []
    assert_problem(laptop.get(standard.bff_url + "/bff/user", timeout=10), 401, "not-authenticated")
    assert phone.get(standard.bff_url + "/bff/user", timeout=10).status_code == 200


def test_bff_logout_revokes_the_refresh_token_at_the_provider(standard: StandardStack) -> None:
    http = standard.logged_in()
    refresh_token = standard.refresh_token(http)

    assert http.post(standard.bff_url + "/bff/logout", timeout=10).status_code == 200  # the URL is not followed

    # The BFF revoked it (RFC 7009): the provider session itself was not ended.
    assert [event["route"] for event in standard.provider.events("grant.revoked")] == ["revocation"]
    assert standard.provider.events("end_session.success") == []
    answer = standard.provider.refresh(refresh_token)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant", answer.text


# --- bff check ----------------------------------------------------------------------------------


def test_bff_check_accepts_the_provider_and_skips_nothing(standard: StandardStack) -> None:
    settings = standard.settings
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "BFF_ISSUER_URL": standard.provider.issuer,
        "BFF_CLIENT_ID": CLIENT_ID,
        "BFF_CLIENT_SECRET": CLIENT_SECRET,
        "BFF_BASE_URL": standard.bff_url,
        "BFF_SECRET_KEY": SECRET_KEY,
        "BFF_SESSION_STORE": t.cast(str, settings.session_store),
        "BFF_SCOPES": settings.scopes,
        "BFF_RESOURCE_PARAMETER": "resource",
        "BFF_AUDIENCE": RESOURCE,
        "BFF_MY_ACCOUNT_URL": settings.my_account_url,
        "BFF_MY_ACCOUNT_AUDIENCE": RESOURCE,
    }
    result = subprocess.run([sys.executable, "-m", "bff.cli", "check"], env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "configuration ok"
    assert "the provider advertises" not in result.stdout, result.stdout
