"""The local Auth0 behaves as Auth0 documents where Auth0's own SDKs look: HTTPS, ``/v2/logout`` and Allowed
Logout URLs, ``mfa_token``, 403 for dead refresh tokens, deleted passwords, and codes sent to an inbox."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import socket
import subprocess
import sys
import time
import typing as t
from urllib.parse import urlsplit

import pytest
import requests

from bff.emulator import EmulatorConfig, EmulatorServer, create_emulator_app
from bff.emulator.state import MY_ACCOUNT_SCOPES, OUTBOX_SIZE
from tests.conftest import Stack
from tests.support.redis_server import free_port
from tests.support.tls import ServerCertificate, make_ca
from tests.test_auth import assert_problem
from tests.test_emulator_idp import ALICE, ALICE_PASSWORD, CLIENT_ID, CLIENT_SECRET, Idp, Receiver, callback_params
from tests.test_token_refresh import READ, session_id, stored_refresh_token

UNKNOWN_REFRESH_TOKEN = "Unknown or invalid refresh token."


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
def certificate(tmp_path: pathlib.Path) -> ServerCertificate:
    return make_ca(tmp_path).issue_server_certificate(tmp_path)


@pytest.fixture
def tls_idp(receiver: Receiver, certificate: ServerCertificate) -> t.Iterator[Idp]:
    config = EmulatorConfig(CLIENT_ID, CLIENT_SECRET, receiver.url)
    with EmulatorServer(config, certfile=certificate.cert, keyfile=certificate.key) as server:
        yield Idp(server, verify=str(certificate.ca))


def sso_session_alive(idp: Idp) -> bool:
    """Whether the browser's SSO session still gives a code without asking (``prompt=none``)."""
    return "code" in callback_params(idp, idp.authorize(prompt="none"))


# -- HTTPS -----------------------------------------------------------------------------------------------


def test_with_a_certificate_the_issuer_and_the_my_account_audience_are_https(
    tls_idp: Idp, certificate: ServerCertificate
) -> None:
    port = urlsplit(tls_idp.url).port
    base = f"https://127.0.0.1:{port}/"
    config = requests.get(base + ".well-known/openid-configuration", verify=str(certificate.ca), timeout=5).json()
    assert config["issuer"] == base
    endpoints = [value for key, value in config.items() if key.endswith(("_endpoint", "_uri"))]
    assert len(endpoints) >= 6 and all(url.startswith(base) for url in endpoints), endpoints

    refresh_token = tls_idp.login()["refresh_token"]
    mrrt = tls_idp.refresh(refresh_token, audience=base + "me/", scope="read:me:authentication_methods")
    claims = tls_idp.claims(mrrt.json()["access_token"])
    assert (claims["iss"], claims["aud"]) == (base, base + "me/")
    (policy,) = tls_idp.state.settings.refresh_token_policies
    assert policy.audience == base + "me/" and set(policy.scope) == set(MY_ACCOUNT_SCOPES)


def test_a_client_that_does_not_trust_the_certificate_is_refused(tls_idp: Idp) -> None:
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(tls_idp.url + "/.well-known/openid-configuration", timeout=5)


def test_a_silent_connection_does_not_stall_the_tls_emulator(tls_idp: Idp) -> None:
    port = urlsplit(tls_idp.url).port
    with socket.create_connection(("127.0.0.1", t.cast(int, port)), timeout=5):
        # Connected, and never says a word: the handshake waits in that connection's thread only.
        response = tls_idp.browser.get(tls_idp.url + "/.well-known/jwks.json", timeout=5)
    assert response.status_code == 200


def test_over_tls_a_delayed_token_request_of_a_patient_client_is_processed(tls_idp: Idp) -> None:
    token = tls_idp.login()["refresh_token"]
    tls_idp.state.reset_counters()
    tls_idp.state.token_latency(0.3, count=1)
    assert tls_idp.refresh(token).status_code == 200
    assert tls_idp.state.counters()["dropped_token_calls"] == 0


def test_over_tls_the_request_of_a_client_that_gave_up_is_dropped(tls_idp: Idp) -> None:
    token = tls_idp.login()["refresh_token"]
    tls_idp.state.reset_counters()
    tls_idp.state.token_latency(0.5, count=1)
    with pytest.raises(requests.ReadTimeout):
        requests.post(
            tls_idp.url + "/oauth/token",
            data={"grant_type": "refresh_token", "refresh_token": token},
            auth=(CLIENT_ID, CLIENT_SECRET),
            timeout=0.1,
            verify=tls_idp.verify,
        )
    assert tls_idp.state.wait_for_token_requests(dropped=1).dropped == 1
    assert tls_idp.refresh(token).status_code == 200  # never processed, so never rotated


def test_emulator_server_takes_an_ssl_context_or_files_but_not_both(certificate: ServerCertificate) -> None:
    from bff.emulator.server import tls_context

    config = EmulatorConfig(CLIENT_ID, CLIENT_SECRET, "http://127.0.0.1:8000")
    context = tls_context(certificate.cert, certificate.key)
    with EmulatorServer(config, ssl_context=context) as server:
        assert server.url.startswith("https://127.0.0.1:")
    with pytest.raises(ValueError, match="not both"):
        EmulatorServer(config, ssl_context=context, certfile=certificate.cert)
    with pytest.raises(ValueError, match="needs its certfile"):
        EmulatorServer(config, keyfile=certificate.key)
    with pytest.raises(ValueError, match="cannot load"):
        EmulatorServer(config, certfile=certificate.ca, keyfile=certificate.key)


def _emulator_process(port: int, *args: str) -> subprocess.Popen[str]:
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONUNBUFFERED": "1",
        "BFF_CLIENT_ID": CLIENT_ID,
        "BFF_CLIENT_SECRET": CLIENT_SECRET,
        "BFF_BASE_URL": "http://127.0.0.1:8000",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "bff.cli", "emulator", "--port", str(port), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_emulator_command_serves_https_with_certfile_and_keyfile(certificate: ServerCertificate) -> None:
    port = free_port()
    process = _emulator_process(port, "--certfile", str(certificate.cert), "--keyfile", str(certificate.key))
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                document = requests.get(
                    f"https://127.0.0.1:{port}/.well-known/openid-configuration",
                    verify=str(certificate.ca),
                    timeout=1,
                )
                break
            except requests.ConnectionError:
                assert process.poll() is None and time.monotonic() < deadline, "the emulator did not start"
                time.sleep(0.1)
        assert document.json()["issuer"] == f"https://127.0.0.1:{port}/"
    finally:
        process.terminate()
        process.communicate(timeout=10)


def test_emulator_command_with_an_unreadable_certificate_says_so_in_one_line(tmp_path: pathlib.Path) -> None:
    process = _emulator_process(free_port(), "--certfile", str(tmp_path / "missing.pem"))
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 2
    (line,) = stderr.strip().splitlines()
    assert line.startswith("bff: cannot load the TLS certificate") and "missing.pem" in line


# -- logout: Allowed Logout URLs and /v2/logout ----------------------------------------------------------


def test_allowed_logout_urls_default_to_the_bff_root_and_must_be_absolute() -> None:
    config = EmulatorConfig(CLIENT_ID, CLIENT_SECRET, "http://127.0.0.1:8000/")
    assert config.logout_urls == ("http://127.0.0.1:8000/",)
    listed = EmulatorConfig(CLIENT_ID, CLIENT_SECRET, "http://127.0.0.1:8000", ["https://a.example/bye"])
    assert listed.logout_urls == ("https://a.example/bye",)
    for bad in (["/relative"], ["https://a.example/#x"], "https://a.example/"):
        with pytest.raises(ValueError, match="allowed"):
            EmulatorConfig(CLIENT_ID, CLIENT_SECRET, "http://127.0.0.1:8000", t.cast(t.Any, bad))


def test_v2_logout_ends_the_sso_session_sends_backchannel_logout_and_returns_to_an_allowed_url(
    idp: Idp, receiver: Receiver
) -> None:
    sid = idp.claims(idp.login()["id_token"])["sid"]
    response = idp.browser.get(
        idp.url + "/v2/logout",
        params={"client_id": CLIENT_ID, "returnTo": receiver.url + "/", "federated": ""},
        allow_redirects=False,
    )
    assert response.status_code == 302 and response.headers["Location"] == receiver.url + "/"
    (delivery,) = idp.state.wait_for_backchannel(1)
    assert delivery.sid == sid and delivery.status_code == 200
    (path, _, form), *_ = receiver.requests
    assert path == "/bff/backchannel-logout" and idp.claims(form["logout_token"])["sid"] == sid
    assert callback_params(idp, idp.authorize(prompt="none"))["error"] == "login_required"


def test_v2_logout_refuses_a_return_to_outside_the_allowed_logout_urls_and_keeps_the_session(
    idp: Idp, receiver: Receiver
) -> None:
    idp.login()
    for return_to in ("https://evil.example/", receiver.url + "/elsewhere", receiver.url + "/?next=x"):
        response = idp.browser.get(
            idp.url + "/v2/logout", params={"client_id": CLIENT_ID, "returnTo": return_to}, allow_redirects=False
        )
        assert response.status_code == 400 and "Location" not in response.headers, return_to
        assert "Allowed Logout URLs" in response.text and response.headers["Content-Type"].startswith("text/html")
    assert sso_session_alive(idp)
    assert idp.state.backchannel_deliveries == []


def test_v2_logout_without_return_to_goes_to_the_first_allowed_logout_url(receiver: Receiver) -> None:
    urls = [receiver.url + "/signed-out", receiver.url + "/"]
    with EmulatorServer(EmulatorConfig(CLIENT_ID, CLIENT_SECRET, receiver.url, urls)) as server:
        idp = Idp(server)
        idp.login()
        response = idp.browser.get(idp.url + "/v2/logout", params={"client_id": CLIENT_ID}, allow_redirects=False)
        assert response.status_code == 302 and response.headers["Location"] == urls[0]
        assert idp.state.wait_for_backchannel(1)


def test_v2_logout_without_client_id_or_return_to_shows_a_logged_out_page(idp: Idp) -> None:
    idp.login()
    response = idp.browser.get(idp.url + "/v2/logout", allow_redirects=False)
    assert response.status_code == 200 and "You are logged out." in response.text
    assert idp.state.wait_for_backchannel(1)
    assert not sso_session_alive(idp)


def test_v2_logout_refuses_an_unknown_client(idp: Idp) -> None:
    idp.login()
    response = idp.browser.get(idp.url + "/v2/logout", params={"client_id": "someone-else"}, allow_redirects=False)
    assert response.status_code == 400
    assert sso_session_alive(idp)


def test_oidc_logout_with_client_id_and_no_redirect_goes_to_the_first_allowed_logout_url(
    idp: Idp, receiver: Receiver
) -> None:
    idp.login()
    response = idp.browser.get(
        idp.url + "/oidc/logout", params={"client_id": CLIENT_ID, "state": "s1"}, allow_redirects=False
    )
    assert response.status_code == 302 and response.headers["Location"] == receiver.url + "/?state=s1"


def test_oidc_logout_refuses_a_redirect_outside_the_list_and_keeps_the_session(idp: Idp, receiver: Receiver) -> None:
    idp.login()
    response = idp.browser.get(
        idp.url + "/oidc/logout",
        params={"client_id": CLIENT_ID, "post_logout_redirect_uri": receiver.url + "/other"},
        allow_redirects=False,
    )
    assert response.status_code == 400
    assert sso_session_alive(idp)


# -- mfa_required carries an mfa_token ------------------------------------------------------------------


def test_mfa_required_carries_a_fresh_unguessable_mfa_token(idp: Idp) -> None:
    import pyotp

    idp.state.add_user("bob@example.com", "bob-password", totp_secret=pyotp.random_base32())
    refresh_token = idp.login("bob@example.com", "bob-password")["refresh_token"]  # no second factor asked
    idp.state.configure(default_policy_mfa=True)
    answers = [
        idp.refresh(refresh_token, audience=idp.url + "/me/", scope="create:me:authentication_methods")
        for _ in range(2)
    ]
    bodies = [answer.json() for answer in answers]
    for answer, body in zip(answers, bodies, strict=True):
        assert answer.status_code == 403 and answer.headers["Cache-Control"] == "no-store"
        assert set(body) == {"error", "error_description", "mfa_token"}
        assert (body["error"], body["error_description"]) == ("mfa_required", "Multifactor authentication required")
        assert len(body["mfa_token"]) >= 43  # 256 random bits
    assert bodies[0]["mfa_token"] != bodies[1]["mfa_token"]


def test_an_injected_mfa_required_also_carries_an_mfa_token(idp: Idp) -> None:
    token = idp.login()["refresh_token"]
    idp.state.fail_next_token("mfa_required", 403, description="Multifactor authentication required")
    body = idp.refresh(token).json()
    assert body["error"] == "mfa_required" and body["mfa_token"]


# -- dead refresh tokens: 403 invalid_grant ---------------------------------------------------------------


def test_unknown_revoked_reused_and_expired_refresh_tokens_get_403_invalid_grant(idp: Idp) -> None:
    def assert_dead(response: requests.Response) -> None:
        assert response.status_code == 403
        assert response.json() == {"error": "invalid_grant", "error_description": UNKNOWN_REFRESH_TOKEN}

    assert_dead(idp.refresh("v1.no-such-token"))

    revoked = idp.login()["refresh_token"]
    requests.post(
        idp.url + "/oauth/revoke",
        data={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "token": revoked},
        timeout=5,
    )
    assert_dead(idp.refresh(revoked))

    first = idp.login()["refresh_token"]
    idp.refresh(first)
    assert_dead(idp.refresh(first))

    idp.state.configure(refresh_token_idle_lifetime=60)
    idle = idp.login()["refresh_token"]
    idp.state.clock.advance(61)
    assert_dead(idp.refresh(idle))


def test_a_refresh_without_a_refresh_token_is_400_invalid_request(idp: Idp) -> None:
    response = idp.token(auth="post", grant_type="refresh_token")
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


def test_the_bff_ends_the_session_on_a_real_403_invalid_grant(stack: Stack) -> None:
    http = stack.logged_in()
    token = stored_refresh_token(stack.app.extensions["bff"].box, stack.store, session_id(http))
    revoke = requests.post(
        stack.emulator.url + "/oauth/revoke",
        data={"client_id": stack.settings.client_id, "client_secret": stack.settings.client_secret, "token": token},
        timeout=5,
    )
    assert revoke.status_code == 200
    body = assert_problem(http.get(stack.bff_url + READ), 401, "login-required")
    assert body["login_url"].startswith("/bff/login?returnTo=")
    assert_problem(http.get(stack.bff_url + "/bff/user"), 401, "not-authenticated")


# -- a deleted password cannot log in ---------------------------------------------------------------------


def test_a_user_whose_password_was_removed_cannot_log_in_with_it(idp: Idp) -> None:
    idp.login()
    alice = idp.state.user_by_email(ALICE)
    assert alice is not None and alice.has_password
    assert idp.state.remove_password(alice.sub) is True
    assert not alice.has_password and idp.state.remove_password(alice.sub) is False

    page = idp.authorize(prompt="login")
    for password in (ALICE_PASSWORD, ""):
        refused = idp.submit(page, {"email": ALICE, "password": password})
        assert refused.status_code == 400 and "Wrong email or password." in refused.text
    assert sso_session_alive(idp)  # deleting a password logs nobody out

    alice.password = "N3w-passphrase"  # what a new password enrollment sets
    assert idp.login_code(ALICE, "N3w-passphrase", prompt="login")


def test_removing_the_password_of_an_unknown_user_is_a_key_error(idp: Idp) -> None:
    with pytest.raises(KeyError):
        idp.state.remove_password("auth0|nobody")


# -- one-time codes: the outbox and the demo inbox ---------------------------------------------------------


def test_a_delivered_code_is_printed_and_kept_newest_first(idp: Idp, capsys: pytest.CaptureFixture[str]) -> None:
    first = idp.state.deliver_code("email", "alice@example.com", "123456")
    second = idp.state.deliver_code("sms", "+15555550100", "654321")
    assert capsys.readouterr().out.splitlines() == [
        "emulator: code for alice@example.com: 123456",
        "emulator: code for +15555550100: 654321",
    ]
    assert idp.state.outbox() == [second, first]
    assert (second.channel, second.address, second.code) == ("sms", "+15555550100", "654321")
    controls = requests.get(idp.url + "/_emulator/outbox", timeout=5).json()
    assert controls["deliveries"] == [dataclasses.asdict(second), dataclasses.asdict(first)]


def test_the_outbox_refuses_unknown_channels_and_keeps_only_the_latest(idp: Idp) -> None:
    with pytest.raises(ValueError, match="channel"):
        idp.state.deliver_code("pigeon", "alice@example.com", "123456")
    with pytest.raises(ValueError):
        idp.state.deliver_code("email", "", "123456")
    for n in range(OUTBOX_SIZE + 5):
        idp.state.deliver_code("voice", "+15555550100", f"{n:06d}")
    kept = idp.state.outbox()
    assert len(kept) == OUTBOX_SIZE and kept[0].code == f"{OUTBOX_SIZE + 4:06d}"


def test_the_inbox_page_shows_the_codes_newest_first_and_escapes_addresses(idp: Idp) -> None:
    empty = requests.get(idp.url + "/inbox", timeout=5)
    assert empty.status_code == 200 and "No codes sent yet." in empty.text
    idp.state.deliver_code("email", "<script>x</script>@example.com", "111111")
    idp.state.deliver_code("sms", "+15555550100", "222222")
    page = requests.get(idp.url + "/inbox", timeout=5)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert page.headers["Cache-Control"] == "no-store"
    assert page.text.index("222222") < page.text.index("111111")
    assert "Text message to <strong>+15555550100</strong>" in page.text
    assert "<script>x" not in page.text and "&lt;script&gt;x" in page.text
    assert idp.state.client_secret not in page.text


def test_the_inbox_refuses_a_peer_that_is_not_on_loopback(idp: Idp) -> None:
    idp.state.deliver_code("email", "alice@example.com", "333333")
    client = create_emulator_app(idp.state).test_client()
    remote = client.get("/inbox", environ_base={"REMOTE_ADDR": "203.0.113.7"})
    assert remote.status_code == 403 and b"333333" not in remote.data
    assert client.get("/inbox", environ_base={"REMOTE_ADDR": "::1"}).status_code == 200
