"""Reverse-proxy offload (``BFF_OFFLOAD=nginx``): the BFF authorizes, nginx makes the read call.

Over the wire: the system's nginx runs ``deploy/nginx-offload.conf`` (tests/support/nginx.py changes only
its addresses and paths) in front of the BFF served on a loopback port, with a private Redis, the Auth0
emulator as the identity provider and a recording stand-in for the My Account API served over https with
a certificate nginx and the BFF check. Which hops a request took is read from nginx's access line for it
(``$upstream_addr`` and ``$upstream_status`` list every server asked, an internal redirect included).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import ipaddress
import json
import logging
import pathlib
import re
import socket
import ssl
import time
import typing as t
from collections import Counter
from urllib.parse import urlsplit

import pytest
import requests

from bff import Settings, create_app, logs
from bff.errors import ProblemKind
from bff.proxy import offload
from bff.proxy.forward import REQUEST_HEADERS, Forwarder
from bff.settings import ConfigError
from bff.store import open_store
from tests.conftest import CLIENT_ID, CLIENT_SECRET, SECRET_KEY
from tests.support.browser import bff_session, login
from tests.support.nginx import DEPLOY_CONF, OFFLOAD_CONF, NginxProcess, Offload, directives
from tests.support.redis_server import free_port
from tests.support.servers import ThreadedServer
from tests.support.tls import ServerCertificate, make_ca
from tests.support.upstream import RecordingUpstream, Reply

SECRET = "offload-secret-0123456789-abcdefghijklmnop"
OTHER_SECRET = "other-offload-secret-9876543210-zyxwvutsrqp"
READ = "/me/v1/authentication-methods"
ENCODED = "/me/v1/connected-accounts/accounts?connection=google%2Doauth2&from=a%2Fb%3D%3D"
INTERNAL = "location = " + offload.INTERNAL_LOCATION
FALLBACK = "location @my_account_fallback"


# --- The pieces ------------------------------------------------------------------------------------


class TlsUpstream(RecordingUpstream):
    """The recording stand-in for the My Account API, over https (its certificate is for ``localhost``)."""

    def __init__(self, certificate: ServerCertificate) -> None:
        super().__init__()  # serving already, but nothing can have connected yet
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate.cert, certificate.key)
        server = self._server.server
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self.port = self._server.port
        self.url = f"https://localhost:{self.port}"
        self.address = f"127.0.0.1:{self.port}"


@dataclasses.dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]  # as sent, repeated ones repeated
    body: bytes

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def names(self) -> set[str]:
        return {key.lower() for key, _ in self.headers}

    def json(self) -> t.Any:
        return json.loads(self.body)


def send(
    url: str, target: str, headers: t.Mapping[str, str] = {}, *, method: str = "GET", body: bytes = b"",
    ca: pathlib.Path | None = None,
) -> Answer:
    """One request, its target byte for byte (clients normalise paths); plain or TLS (``ca``)."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(socket.create_connection((parts.hostname, parts.port), 10))
        if ca is not None:
            context = ssl.create_default_context(cafile=str(ca))
            sock = stack.enter_context(context.wrap_socket(sock, server_hostname=parts.hostname))
        sock.sendall("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)
        chunks = []
        with contextlib.suppress(ssl.SSLEOFError, ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    head, _, content = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = [(name.strip(), value.strip()) for name, _, value in (line.partition(":") for line in header_lines)]
    if any(name.lower() == "transfer-encoding" for name, _ in parsed):
        content = _dechunk(content)
    return Answer(int(status_line.split(" ")[1]), parsed, content)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out += rest[:size]
        data = rest[size + 2:]


@dataclasses.dataclass
class Site:
    """nginx with deploy/nginx-offload.conf in front of the BFF; the My Account API a recording upstream."""

    nginx: NginxProcess
    bff_url: str
    bff_address: str
    upstream: TlsUpstream
    emulator: t.Any

    @property
    def url(self) -> str:
        return self.nginx.url

    def logged_in(self) -> requests.Session:
        http = bff_session(self.url)
        http.verify = str(self.nginx.ca)
        response = login(http, self.url)
        assert response.status_code == 302, response.text
        return http

    def headers(self, http: requests.Session, **more: str) -> dict[str, str]:
        """What the SPA sends on an API call: the session cookie and ``X-CSRF: 1``."""
        cookie = "; ".join(f"{c.name}={c.value}" for c in http.cookies if c.name.endswith("bff-session"))
        return {"Cookie": cookie, "X-CSRF": "1", **more}

    def get(self, target: str, headers: t.Mapping[str, str], **kwargs: t.Any) -> Answer:
        """Through nginx."""
        return send(self.url, target, headers, ca=self.nginx.ca, **kwargs)

    def direct(self, target: str, headers: t.Mapping[str, str], **kwargs: t.Any) -> Answer:
        """To the BFF itself, past nginx."""
        return send(self.bff_url, target, headers, **kwargs)

    def hops(self, answer: Answer) -> list[str]:
        """The servers nginx asked for this answer, in order: ``bff 200``, ``api 401``, ..."""
        (request_id,) = answer.header("X-Request-Id")
        line = self.nginx.wait_for_line(rf" request_id={re.escape(request_id)}$")
        found = re.search(r" upstream=(.*) upstream_status=(.*) request_id=", line)
        assert found is not None, line
        names = {self.bff_address: "bff", self.upstream.address: "api"}
        addresses, statuses = (part.split(" : ") for part in found.groups())
        return [f"{names.get(address, address)} {status}" for address, status in zip(addresses, statuses, strict=True)]

    def token_calls(self) -> int:
        return int(self.emulator.state.counters()["token_calls"])


@pytest.fixture
def certificate(tmp_path: pathlib.Path) -> ServerCertificate:
    return make_ca(tmp_path / "ca").issue_server_certificate(tmp_path)


@pytest.fixture
def make_site(
    redis_url: str, certificate: ServerCertificate, monkeypatch: pytest.MonkeyPatch,
) -> t.Iterator[t.Callable[..., Site]]:
    from bff.emulator import EmulatorConfig, EmulatorServer

    # The BFF's own calls to the My Account API check its certificate against the test CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate.ca))
    cleanup = contextlib.ExitStack()

    def build(*, nginx_secret: str = SECRET) -> Site:
        upstream = TlsUpstream(certificate)
        cleanup.callback(upstream.stop)
        server = ThreadedServer()
        cleanup.callback(server.stop)
        address = f"127.0.0.1:{server.port}"
        nginx = NginxProcess([address, address], certificate, offload=Offload(upstream.port, certificate.ca,
                                                                               nginx_secret))
        cleanup.callback(nginx.destroy)
        emulator = EmulatorServer(EmulatorConfig(CLIENT_ID, CLIENT_SECRET, nginx.url)).start()
        cleanup.callback(emulator.stop)
        settings = Settings(
            issuer_url=emulator.url + "/",
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            base_url=nginx.url,
            secret_keys=(SECRET_KEY,),
            session_store=redis_url,
            my_account_url=upstream.url + "/me/v1",
            trusted_proxies=(ipaddress.ip_network("127.0.0.1"),),
            offload="nginx",
            offload_secret=SECRET,
            # Tests log in and call far more often than a person.
            rate_limit_session="off",
            rate_limit_address="off",
            rate_limit_login="off",
            rate_limit_connect="off",
        )
        store = open_store(redis_url, prefix=settings.store_prefix)
        cleanup.callback(store.close)
        server.serve(create_app(settings, store=store))
        nginx.start()
        return Site(nginx, server.url(), address, upstream, emulator)

    with cleanup:
        yield build


@pytest.fixture
def site(make_site: t.Callable[..., Site]) -> Site:
    return make_site()


@pytest.fixture
def access_lines() -> t.Iterator[t.Callable[[int], list[dict[str, t.Any]]]]:
    """The BFF's access lines of proxied calls, as its JSON log writes them (bound fields included), once
    there are ``count`` (a line is written after its answer has gone, so it may come after the client's)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("bff.access")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    def read(count: int) -> list[dict[str, t.Any]]:
        deadline = time.monotonic() + 10
        while True:
            lines = [json.loads(line) for line in stream.getvalue().splitlines()]
            lines = [line for line in lines if line["event"] == "request" and line["route"].startswith("/me/")]
            if len(lines) >= count or time.monotonic() > deadline:
                return lines
            time.sleep(0.02)

    yield read
    logger.removeHandler(handler)
    logger.setLevel(level)


def assert_no_token_bearing_header(answer: Answer) -> None:
    leaked = {name for name in answer.names() if name.startswith(("x-bff-", "x-accel-"))} | (
        answer.names() & {"authorization", "dpop"})
    assert leaked == set(), answer.headers


# --- An offloaded read ------------------------------------------------------------------------------


def test_an_offloaded_read_is_made_by_nginx_with_the_sessions_token_and_answers_with_the_apis_body(
    site: Site, access_lines: t.Callable[[int], list[dict[str, t.Any]]],
) -> None:
    http = site.logged_in()
    site.upstream.reply_next(Reply(body=b'{"authentication_methods":[{"id":"passkey|1"}]}'))
    answer = site.get(READ, site.headers(http, Origin=site.url, **{"Accept-Language": "de"}))

    assert answer.status == 200
    assert answer.json() == {"authentication_methods": [{"id": "passkey|1"}]}
    assert site.hops(answer) == ["bff 200", "api 200"]  # the BFF answered nginx, then nginx asked the API
    (seen,) = site.upstream.seen
    assert (seen.method, seen.raw_target) == ("GET", READ)
    scheme, _, token = seen.headers["authorization"].partition(" ")
    claims = site.emulator.state.verify_access_token(token)
    assert scheme == "Bearer" and site.emulator.state.my_account_audience in claims["aud"]
    # Only the BFF's allowlist of request headers went upstream: no cookie, no X-CSRF, no Origin, no proof.
    assert set(seen.headers) <= {"host", "connection", "authorization", *REQUEST_HEADERS}, seen.headers
    assert seen.headers["accept-language"] == "de"
    (request_id,) = answer.header("X-Request-Id")
    assert seen.headers["x-request-id"] == request_id  # the two sides' logs meet
    (line,) = access_lines(1)
    assert (line["offload"], line["status"], line["request_id"]) == ("nginx", 200, request_id)
    assert "upstream_status" not in line


def test_the_client_never_sees_the_handoff_or_a_token_and_the_answer_is_never_cached(site: Site) -> None:
    http = site.logged_in()
    site.upstream.reply_next(Reply(headers=[("Content-Type", "application/json"),
                                            ("Cache-Control", "public, max-age=3600")]))
    answer = site.get(READ, site.headers(http))
    assert site.hops(answer) == ["bff 200", "api 200"]
    assert_no_token_bearing_header(answer)
    token = site.upstream.seen[-1].headers["authorization"].removeprefix("Bearer ")
    assert not [header for header in answer.headers if token in header[1]]
    assert answer.header("Cache-Control") == ["no-store"]


def test_the_raw_path_and_query_reach_the_api_percent_encoding_intact(site: Site) -> None:
    headers = site.headers(site.logged_in())
    for target in (ENCODED, "/me/v1/authentication-methods/passkey%7Cnew"):
        answer = site.get(target, headers)
        assert answer.status == 200 and site.hops(answer) == ["bff 200", "api 200"]
        assert site.upstream.seen[-1].raw_target == target


def test_a_second_read_reuses_the_sessions_token_without_a_token_call(site: Site) -> None:
    headers = site.headers(site.logged_in())
    first = site.get(READ, headers)
    calls = site.token_calls()
    second = site.get(READ, headers)
    assert [site.hops(first), site.hops(second)] == [["bff 200", "api 200"]] * 2
    assert site.token_calls() == calls
    assert len({seen.headers["authorization"] for seen in site.upstream.seen}) == 1


# --- Only through the configured nginx --------------------------------------------------------------


def test_the_bff_reached_directly_forwards_the_call_itself_unless_the_request_proves_it_came_through_nginx(
    site: Site,
) -> None:
    headers = site.headers(site.logged_in())
    for proof in ({}, {offload.PROOF_HEADER: OTHER_SECRET}, {offload.PROOF_HEADER: SECRET[:-1]}):
        answer = site.direct(READ, {**headers, **proof})
        assert answer.status == 200 and answer.json() == {"ok": True}
        assert_no_token_bearing_header(answer)
    assert len(site.upstream.seen) == 3  # each made by the BFF itself

    # The one secret is what opens the handoff (which is why only nginx may know it).
    handed = site.direct(READ, {**headers, offload.PROOF_HEADER: SECRET})
    assert handed.header("X-Accel-Redirect") == [offload.INTERNAL_LOCATION]
    assert handed.header(offload.TARGET_HEADER) == [READ]
    assert handed.header("X-Bff-Upstream-Authorization")[0].startswith("Bearer ")
    assert not handed.names() & {"content-type", "cache-control", "set-cookie"}  # nginx would keep those
    assert len(site.upstream.seen) == 3


def test_nginx_with_another_secret_gets_every_call_forwarded_by_the_bff(make_site: t.Callable[..., Site]) -> None:
    site = make_site(nginx_secret=OTHER_SECRET)
    answer = site.get(READ, site.headers(site.logged_in()))
    assert answer.status == 200 and answer.json() == {"ok": True}
    assert site.hops(answer) == ["bff 200"]
    assert len(site.upstream.seen) == 1
    assert_no_token_bearing_header(answer)


def test_a_client_can_neither_forge_nginxs_proof_nor_send_a_call_back(site: Site) -> None:
    headers = site.headers(site.logged_in())
    for forged in ({offload.PROOF_HEADER: OTHER_SECRET}, {offload.FALLBACK_HEADER: "1"}):
        answer = site.get(READ, {**headers, **forged})
        assert site.hops(answer) == ["bff 200", "api 200"]  # nginx replaced both: still offloaded
    assert site.get(offload.INTERNAL_LOCATION, headers).status == 404
    assert len(site.upstream.seen) == 2


# --- Refused before anything is offloaded -------------------------------------------------------------


def test_calls_the_bff_refuses_are_refused_before_anything_is_offloaded(site: Site) -> None:
    headers = site.headers(site.logged_in())
    cases = [
        (READ, {key: value for key, value in headers.items() if key != "X-CSRF"}, 403, "csrf"),
        (READ, {**headers, "Origin": "https://evil.example"}, 403, "csrf"),
        ("/me/v1/authentication-methods/..%2Ffactors", headers, 400, "bad-path"),
        ("/me/v1/authentication-methods/passkey%2F..%2F..%2Ffactors", headers, 400, "bad-path"),
        ("/me/v1/authentication-methods?type=passkey%26other", headers, 400, "bad-query"),
        ("/me/v1/consents", headers, 404, "route-not-allowed"),  # not an enabled group
        (READ, {"X-CSRF": "1"}, 401, "not-authenticated"),
    ]
    for target, sent, status, kind in cases:
        answer = site.get(target, sent)
        assert (answer.status, answer.json()["type"]) == (status, f"urn:bff:problem:{kind}"), target
        assert site.hops(answer) == [f"bff {status}"]
        assert_no_token_bearing_header(answer)
    assert site.upstream.seen == []


# --- When the API refuses the token --------------------------------------------------------------------


def test_a_token_the_api_refuses_is_sent_back_to_the_bff_which_refreshes_it_and_retries_once(
    site: Site, access_lines: t.Callable[[int], list[dict[str, t.Any]]],
) -> None:
    headers = site.headers(site.logged_in())
    assert site.get(READ, headers).status == 200  # the session's token, in its record
    calls = site.token_calls()
    revoked = Reply(status=401, body=b'{"type":"A0E-401-0001","detail":"revoked"}',
                    headers=[("Content-Type", "application/json"), ("WWW-Authenticate", "Bearer")])
    site.upstream.reply_next(revoked)  # nginx's call
    site.upstream.reply_next(revoked)  # the BFF's call, with the token it had handed nginx
    site.upstream.reply_next(Reply(body=b'{"fresh":true}'))  # the BFF's retry, with a new token

    answer = site.get(READ, headers)

    assert (answer.status, answer.json()) == (200, {"fresh": True})
    assert site.hops(answer) == ["bff 200", "api 401", "bff 200"]
    offloaded, forwarded, retried = (seen.headers["authorization"] for seen in site.upstream.seen[1:])
    assert offloaded == forwarded != retried
    assert site.token_calls() == calls + 1
    _, handed, fallback = access_lines(3)
    assert (handed["offload"], fallback["offload"]) == ("nginx", "fallback")
    assert (fallback["upstream_status"], fallback["upstream_calls"]) == ("200", 2)
    assert answer.header("Cache-Control") == ["no-store"]
    assert_no_token_bearing_header(answer)
    # nginx keeps the challenge of a 401 it intercepts whatever answers next: the API's one header that
    # reaches the client on this path (docs/operations.md).
    assert answer.header("WWW-Authenticate") == ["Bearer"]


@pytest.mark.parametrize(("refusal", "kind"), [
    (Reply(status=401, body=b'{"detail":"revoked"}'), "login-required"),
    (Reply(status=403, body=b'{"type":"https://auth0.com/api-errors/A0E-403-0002","detail":"scope"}'),
     "step-up-required"),
])
def test_a_refusal_that_outlasts_the_retry_reaches_the_spa_as_the_bffs_problem_not_the_apis_error(
    site: Site, refusal: Reply, kind: str,
) -> None:
    headers = site.headers(site.logged_in())
    for _ in range(3):  # nginx's call, the BFF's, and its retry with a fresh token
        site.upstream.reply_next(refusal)
    answer = site.get(READ, headers)
    assert answer.status == 401 and answer.json()["type"] == f"urn:bff:problem:{kind}"
    assert answer.header("Content-Type") == ["application/problem+json"]
    assert site.hops(answer) == ["bff 200", f"api {refusal.status}", "bff 401"]
    assert len(site.upstream.seen) == 3


def test_an_api_that_cannot_be_reached_is_the_bffs_upstream_unavailable_problem(site: Site) -> None:
    headers = site.headers(site.logged_in())
    site.upstream.stop()  # before any call: nginx holds no kept-alive connection to it
    answer = site.get(READ, headers)
    kind = ProblemKind.UPSTREAM_UNAVAILABLE
    assert (answer.status, answer.header("Content-Type")) == (502, ["application/problem+json"])
    assert {key: answer.json()[key] for key in ("type", "title", "status")} == {
        "type": kind.type_uri, "title": kind.title, "status": kind.status}
    assert answer.header("Cache-Control") == ["no-store"]


# --- Everything but reads is the BFF's -------------------------------------------------------------------


def test_a_post_is_forwarded_by_the_bff_itself(site: Site) -> None:
    headers = site.headers(site.logged_in(), **{"Content-Type": "application/json"})
    answer = site.get("/me/v1/authentication-methods", headers, method="POST", body=b'{"type":"passkey"}')
    assert answer.status == 200 and answer.json() == {"ok": True}
    assert site.hops(answer) == ["bff 200"]
    (seen,) = site.upstream.seen
    assert (seen.method, seen.body) == ("POST", b'{"type":"passkey"}')
    assert seen.headers["authorization"].startswith("Bearer ")
    assert_no_token_bearing_header(answer)


# --- The response policy is the BFF's ---------------------------------------------------------------------


ZOO = [
    ("Content-Type", "application/json"),
    ("ETag", '"v1"'),
    ("Last-Modified", "Tue, 01 Dec 2026 10:00:00 GMT"),
    ("Content-Language", "en"),
    ("Retry-After", "5"),
    ("X-RateLimit-Limit", "10"),
    ("X-RateLimit-Remaining", "9"),
    ("X-RateLimit-Reset", "100"),
    ("X-Request-Id", "the-apis-own-id"),
    ("Set-Cookie", "planted=1; Path=/"),
    ("Cache-Control", "public, max-age=600"),
    ("Expires", "Wed, 01 Dec 2027 10:00:00 GMT"),
    ("Pragma", "cache"),
    ("Age", "10"),
    ("Vary", "Accept"),
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Credentials", "true"),
    ("Clear-Site-Data", '"cookies"'),
    ("Refresh", "0; url=https://evil.example/"),
    ("Link", "<https://evil.example/x.js>; rel=preload"),
    ("Content-Disposition", "attachment"),
    ("Alt-Svc", 'h3=":8443"'),
    ("Strict-Transport-Security", "max-age=0"),
    ("Content-Security-Policy", "default-src *"),
    ("Report-To", '{"url":"https://evil.example/"}'),
    ("NEL", '{"report_to":"default"}'),
    ("Service-Worker-Allowed", "/"),
    ("WWW-Authenticate", "Bearer"),
    ("DPoP-Nonce", "the-apis-nonce"),
    ("X-Frame-Options", "ALLOWALL"),
    ("X-Content-Type-Options", "none"),
    ("Referrer-Policy", "unsafe-url"),
    ("Server-Timing", "db;dur=1"),
    ("X-Powered-By", "api"),
]
#: Set by whichever server answered the client, not by the response policy.
TRANSPORT = {"date", "server", "connection", "content-length", "transfer-encoding", "keep-alive",
             "strict-transport-security", "x-request-id"}


@pytest.mark.parametrize(("location", "rewritten"), [
    ("{api}/me/v1/authentication-methods/passkey%7C2", "{site}/me/v1/authentication-methods/passkey%7C2"),
    ("/me/v1/authentication-methods/passkey%7C3", "{site}/me/v1/authentication-methods/passkey%7C3"),
    ("https://evil.example/me/v1/authentication-methods", None),
])
def test_an_offloaded_answer_carries_the_headers_a_forwarded_one_does_and_no_other(
    site: Site, location: str, rewritten: str | None,
) -> None:
    headers = site.headers(site.logged_in())
    reply = Reply(status=201, body=b'{"id":"x"}', headers=[*ZOO, ("Location", location.format(api=site.upstream.url))])
    site.upstream.reply_next(reply)
    offloaded = site.get(READ, headers)
    site.upstream.reply_next(reply)
    forwarded = site.direct(READ, headers)  # the BFF's own forwarding, its allowlist applied

    assert site.hops(offloaded) == ["bff 200", "api 201"]
    assert (offloaded.status, offloaded.body) == (forwarded.status, forwarded.body) == (201, b'{"id":"x"}')

    def policy(answer: Answer) -> Counter[tuple[str, str]]:
        return Counter((name.lower(), value) for name, value in answer.headers if name.lower() not in TRANSPORT)

    assert policy(offloaded) == policy(forwarded)
    expected = rewritten.format(site=site.url) if rewritten else None
    assert offloaded.header("Location") == ([expected] if expected else [])
    assert offloaded.header("Cache-Control") == ["no-store"]
    assert offloaded.header("Strict-Transport-Security") == ["max-age=63072000"]  # this site's, not the API's
    assert len(offloaded.header("X-Request-Id")) == 1 and offloaded.header("X-Request-Id") != ["the-apis-own-id"]


# --- nginx's side, with a stand-in BFF ----------------------------------------------------------------------


def test_nginx_carries_every_header_the_bff_hands_it_through_the_internal_redirect(
    certificate: ServerCertificate,
) -> None:
    """The values nginx reads from the BFF's answer survive the internal redirect (``set`` before
    ``proxy_pass``), a DPoP proof included, and go to the API only."""
    upstream = TlsUpstream(certificate)
    server = ThreadedServer()
    answers: list[dict[str, str]] = []

    def bff(environ: dict[str, t.Any], start_response: t.Callable[..., t.Any]) -> list[bytes]:
        answers.append({key: value for key, value in environ.items() if key.startswith("HTTP_X_BFF")})
        credentials = {"authorization": "DPoP the-token", "dpop": "the-proof"}
        handed = offload.handoff(Forwarder(settings_for(upstream.url)).target("/factors", "x=%2F"), credentials)
        assert handed is not None
        start_response("200 OK", list(handed.headers.items()))
        return [b""]

    server.serve(bff)
    address = f"127.0.0.1:{server.port}"
    nginx = NginxProcess([address, address], certificate, offload=Offload(upstream.port, certificate.ca, SECRET))
    try:
        nginx.start()
        answer = send(nginx.url, "/me/v1/factors?x=%2F", {"Cookie": "bff-session=x", "X-CSRF": "1"}, ca=nginx.ca)
    finally:
        nginx.destroy()
        server.stop()
        upstream.stop()
    assert answer.status == 200
    (seen,) = upstream.seen
    assert seen.raw_target == "/me/v1/factors?x=%2F"
    assert (seen.headers["authorization"], seen.headers["dpop"]) == ("DPoP the-token", "the-proof")
    assert not {name for name in seen.headers if name.startswith("x-bff") or name == "cookie"}
    assert answers == [{"HTTP_X_BFF_OFFLOAD": SECRET}]  # the proof; no fallback marker from a client
    assert_no_token_bearing_header(answer)


def settings_for(api_url: str, **changes: t.Any) -> Settings:
    values: dict[str, t.Any] = {
        "issuer_url": "http://127.0.0.1:9/", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        "base_url": "https://app.example.com", "secret_keys": (SECRET_KEY,), "my_account_url": api_url + "/me/v1",
        "offload": "nginx", "offload_secret": SECRET,
    }
    return Settings(**{**values, **changes})


def test_a_credential_header_nginx_does_not_send_keeps_the_call_with_the_bff() -> None:
    target = Forwarder(settings_for("https://localhost:1")).target("/factors", "")
    assert offload.handoff(target, {"authorization": "Bearer t", "x-other": "v"}) is None
    handed = offload.handoff(target, {"authorization": "Bearer t"})
    assert handed is not None and handed.headers[offload.TARGET_HEADER] == "/me/v1/factors"


# --- The configuration ---------------------------------------------------------------------------------------


def _located(within: str) -> list[list[str]]:
    return [words for blocks, words in directives(OFFLOAD_CONF.read_text()) if blocks[-1:] == (within,)]


def _named(within: str, name: str) -> list[list[str]]:
    return [words[1:] for words in _located(within) if words and words[0] == name]


def test_the_offload_configuration_is_the_deploy_configuration_and_more(certificate: ServerCertificate) -> None:
    base = Counter((blocks, tuple(words)) for blocks, words in directives(DEPLOY_CONF.read_text()))
    extended = Counter((blocks, tuple(words)) for blocks, words in directives(OFFLOAD_CONF.read_text()))
    assert base - extended == Counter()
    nginx = NginxProcess([f"127.0.0.1:{free_port()}"] * 2, certificate,
                         offload=Offload(free_port(), certificate.ca, SECRET))
    try:
        checked = nginx.check()
    finally:
        nginx.destroy()
    assert checked.returncode == 0, checked.stderr


def test_nginx_sends_the_api_the_bffs_request_headers_and_the_credentials_the_bff_hands_it() -> None:
    sent = {words[0].lower(): words[1] for words in _named(INTERNAL, "proxy_set_header")}
    assert set(sent) == {"host", "connection", *REQUEST_HEADERS, *offload.UPSTREAM_HEADERS}
    assert _named(INTERNAL, "proxy_pass_request_headers") == [["off"]]
    copied = {words[1]: words[0] for words in _named(INTERNAL, "set")}  # $upstream_http_... -> $variable
    for name, carrier in {**offload.UPSTREAM_HEADERS, "target": offload.TARGET_HEADER}.items():
        variable = copied["$upstream_http_" + carrier.lower().replace("-", "_")]
        if name == "target":
            assert _named(INTERNAL, "proxy_pass") == [["https://my_account" + variable]]
        else:
            assert sent[name] == variable
    for location in ("location /me/", FALLBACK):
        hidden = {words[0] for words in _named(location, "proxy_hide_header")}
        assert hidden >= {offload.TARGET_HEADER, *offload.UPSTREAM_HEADERS.values()}
    assert ["internal"] in _located(INTERNAL)
    # A call sent back carries what every request nginx sends the BFF carries, and the fallback marker.
    server = {words[1]: words[2] for blocks, words in directives(OFFLOAD_CONF.read_text())
              if blocks == ("http", "server") and words[0] == "proxy_set_header"}
    assert server[offload.PROOF_HEADER] == "$bff_offload_secret" and server[offload.FALLBACK_HEADER] == ""
    fallback = {words[0]: words[1] for words in _named(FALLBACK, "proxy_set_header")}
    assert fallback == {**server, offload.FALLBACK_HEADER: "1"}


def test_the_problems_nginx_answers_with_are_the_bffs() -> None:
    for location, kind in (("location @my_account_unavailable", ProblemKind.UPSTREAM_UNAVAILABLE),
                           ("location @my_account_timeout", ProblemKind.UPSTREAM_TIMEOUT)):
        ((status, body),) = _named(location, "return")
        problem = json.loads(body)
        assert (int(status), problem["type"], problem["title"], problem["status"]) == (
            kind.status, kind.type_uri, kind.title, kind.status)
        assert _named(location, "default_type") == [["application/problem+json"]]


# --- Settings ------------------------------------------------------------------------------------------------


GOOD = {
    "BFF_ISSUER_URL": "https://tenant.example.com/",
    "BFF_CLIENT_ID": "client",
    "BFF_CLIENT_SECRET": "secret",
    "BFF_BASE_URL": "https://app.example.com",
    "BFF_SECRET_KEY": "k" * 32,
}


@pytest.mark.parametrize(("secret", "problem"), [
    (None, "is required with BFF_OFFLOAD"),
    ("0123456789abcdef", "at least 32 random characters"),
    ("changeme-changeme-changeme-changeme", "at least 32 random characters"),
    ('offload-secret-0123456789-"abcdefghij"', "may hold only"),
    (SECRET, None),
])
def test_offload_mode_needs_a_strong_secret_of_its_own(secret: str | None, problem: str | None) -> None:
    env = {**GOOD, "BFF_OFFLOAD": "nginx", **({"BFF_OFFLOAD_SECRET": secret} if secret else {})}
    if problem is None:
        settings = Settings.from_env(env)
        assert settings.offload == "nginx" and settings.offload_secret == secret
        assert secret not in repr(settings)
        return
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(env)
    assert raised.value.variable == "BFF_OFFLOAD_SECRET" and problem in raised.value.problem


def test_offload_mode_refuses_the_session_secret_and_unknown_modes() -> None:
    with pytest.raises(ConfigError, match="must not be one of BFF_SECRET_KEY"):
        Settings.from_env({**GOOD, "BFF_SECRET_KEY": SECRET, "BFF_OFFLOAD": "nginx", "BFF_OFFLOAD_SECRET": SECRET})
    with pytest.raises(ConfigError, match="BFF_OFFLOAD: must be one of nginx"):
        Settings.from_env({**GOOD, "BFF_OFFLOAD": "apache", "BFF_OFFLOAD_SECRET": SECRET})
    assert Settings.from_env(GOOD).offload is None
