"""The official My Account API spec, applied to the emulator and to the BFF in front of it.

1. A property-based run (schemathesis, driven by ``bff/proxy/myaccount-api-oas.json``) against the
   emulator's ``/me/v1`` with a real access token holding every scope of the spec: no server error, no
   response outside the spec's schemas, and no status code the spec does not declare for the operation,
   none: where the spec declares no 404 for an unknown id, the emulator answers the declared 400, as no Auth0
   guide documents another answer. Bounded and deterministic.
2. Through the BFF: every operation of the default allowlist, called with spec-conforming input, answers
   what the emulator answers directly (status, body, content type, where ``Location`` points), unless
   the BFF refuses the call for one of its own documented reasons (:data:`BFF_REFUSALS`).
3. ``bff serve``: the longest queries the allowlist accepts reach it through gunicorn.
"""

from __future__ import annotations

import datetime
import typing as t
import urllib.parse

import hypothesis
import pyotp
import pytest
import requests
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from bff.emulator.myaccount_spec import SPEC_PATH, ApiSpec, validate
from bff.proxy.config import enabled_routes
from bff.proxy.matching import MAX_QUERY_LENGTH, RouteMatch, RouteTable
from bff.proxy.spec import NEVER_EXPOSED, spec_routes
from tests.conftest import CLIENT_ID, CLIENT_SECRET, SECRET_KEY, Stack
from tests.support.browser import bff_session, login
from tests.support.problems import PROBLEM, assert_problem
from tests.support.processes import BffProcess
from tests.support.redis_server import free_port

# schemathesis's strategies draw from the ``random`` module, which newer hypothesis releases flag with a
# deprecation warning now and then (the suite turns warnings into errors); the warning is about that
# library's internals, not about anything these tests or the BFF do.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies:hypothesis.errors.HypothesisDeprecationWarning"
)

#: Why the BFF answers a spec-conforming call itself (problem ``urn:bff:problem:<kind>``, with the status)
#: instead of forwarding it; documented in ``bff/proxy/views.py``, ``matching.py`` and ``config.py``.
BFF_REFUSALS: dict[str, tuple[int, str]] = {
    "route-not-allowed": (
        404,
        "The operation is not on the allowlist: POST /connected-accounts/connect and /complete are never "
        "exposed (the BFF runs that flow itself, /bff/connect); consents and organizations are not in the "
        "default groups.",
    ),
    "bad-path": (
        400,
        "A path segment outside the proxy's path grammar (unreserved characters, | : @ + = and their "
        "percent-encoded forms), although the spec's path parameters may be any string. Checked first, so "
        "it also answers for routes off the allowlist.",
    ),
    "bad-query": (
        400,
        "A query outside the proxy's query grammar: a value that decodes to a control character or to "
        "invalid UTF-8, or a query over MAX_QUERY_LENGTH characters (matching.py); an integer of more than "
        "18 digits, which the spec's unbounded take allows (spec.py's integer rule, not in a docstring).",
    ),
    "unsupported-media-type": (
        415,
        "No application/json body on an operation that has a request body: the spec leaves the bodies of "
        "POST /authentication-methods, PATCH and verify optional, the proxy requires one (the API itself "
        "answers 400 for the missing type or auth_session).",
    ),
}

SCOPES = " ".join(sorted({route.scope for route in spec_routes()}))
DEFAULT_ROUTES = {(route.method, route.template) for route in enabled_routes(None, spec_routes())}
DEFAULT_TABLE = RouteTable.from_config(None)
#: JSON members whose values are random by construction (secrets, challenges), masked before comparing.
RANDOM_MEMBERS = frozenset({"auth_session", "barcode_uri", "manual_input_code", "recovery_code", "challenge"})

SPEC = ApiSpec.load()
EVERYTHING = schemathesis.openapi.from_path(
    SPEC_PATH,
    # Never the token schemathesis would make up: every call carries the real one.
    config=schemathesis.Config.from_dict({"generation": {"with-security-parameters": False}}),
)
CONFORMING = schemathesis.openapi.from_path(
    SPEC_PATH,
    config=schemathesis.Config.from_dict({"generation": {"mode": "positive", "with-security-parameters": False}}),
)
BOUNDED = hypothesis.settings(
    max_examples=15,
    derandomize=True,
    deadline=datetime.timedelta(seconds=2),
    database=None,
    # Fixtures are shared by an operation's examples on purpose: one emulator, one logged-in session.
    suppress_health_check=list(hypothesis.HealthCheck),
)


def bearer(state: t.Any, email: str = "alice@example.com") -> dict[str, str]:
    """A real access token for the My Account API with every scope of the spec, signed by the emulator."""
    sub = state.user_by_email(email).sub
    token = state.mint_access_token(sub=sub, audience=state.my_account_audience, scope=SCOPES, lifetime=3600)
    return {"Authorization": f"Bearer {token}"}


# ---------------------------------------------------------------------------------------------------------
# 1. The spec against the emulator


@pytest.fixture(scope="module")
def emulator() -> t.Iterator[t.Any]:
    from bff.emulator import EmulatorConfig, EmulatorServer

    server = EmulatorServer(EmulatorConfig(CLIENT_ID, CLIENT_SECRET, "http://localhost:8000"))
    server.start()
    yield server
    server.stop()


def method_not_allowed_lists_the_spec_methods(ctx: t.Any, response: t.Any, case: t.Any) -> bool | None:
    """A 405 is an ``ErrorResponse`` whose ``Allow`` names exactly the spec's methods for the path."""
    if response.status_code != 405:
        return None
    declared = {method.upper() for method in SPEC.document["paths"][case.operation.path]}
    allowed = {method.strip() for method in response.headers["allow"][0].split(",")}
    assert allowed == declared, (case.operation.path, allowed)
    assert not validate(SPEC, SPEC.schema("ErrorResponse"), response.json())
    return None


@EVERYTHING.parametrize()
@BOUNDED
def test_the_emulator_answers_every_operation_as_the_spec_declares(case: t.Any, emulator: t.Any) -> None:
    response = case.call(base_url=emulator.url + "/me/v1", headers=bearer(emulator.state), timeout=10)
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_headers_conformance,
            response_schema_conformance,
            unsupported_method,
            allow_header_conformance,
            method_not_allowed_lists_the_spec_methods,
        ],
    )


# ---------------------------------------------------------------------------------------------------------
# 2. Through the BFF


Answer = t.Any
"""A ``requests.Response`` or a schemathesis ``Response`` (lower-case header names, lists of values)."""


def header(response: Answer, name: str) -> str | None:
    value = response.headers.get(name) or response.headers.get(name.lower())
    return (value[0] if value else None) if isinstance(value, list) else value


def bff_problem(response: Answer) -> str | None:
    """The kind of the BFF's own problem+json answer (``urn:bff:problem:<kind>``), or None."""
    if not (header(response, "Content-Type") or "").startswith(PROBLEM):
        return None
    return str(response.json()["type"]).removeprefix("urn:bff:problem:")


def masked(value: t.Any) -> t.Any:
    """``value`` with the members in :data:`RANDOM_MEMBERS` replaced, at any depth."""
    if isinstance(value, dict):
        return {k: "<random>" if k in RANDOM_MEMBERS else masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(item) for item in value]
    return value


def answer(response: Answer, api_base: str, *, own: bool = False) -> dict[str, t.Any]:
    """What must be equal on both sides: status, content type, body (random members masked) and where
    ``Location`` points, relative to the side's ``/me/v1`` base.

    ``own``: the answer is about a resource each side has for itself (made by the call, or prepared once
    per side): its ``id`` and ``created_at`` are masked, and ``Location`` must name that ``id``.
    """
    body = response.json() if response.content else None
    own_id = body.get("id") if own and isinstance(body, dict) else None
    location = header(response, "Location")
    if location is not None:
        assert location.startswith(api_base + "/"), (location, api_base)  # absolute, on that side's origin
        location = location[len(api_base):]
        if own_id:
            location = location.replace(quoted(own_id), "{id}")
    if own_id:
        body = {**body, "id": "{id}", **({"created_at": "<own>"} if "created_at" in body else {})}
    for name in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"):
        assert header(response, name), name
    return {
        "status": response.status_code,
        "content-type": header(response, "Content-Type"),
        "location": location,
        "body": masked(body),
    }


def quoted(method_id: str) -> str:
    """An id as a path segment: ``|`` and the like percent-encoded, as the API's own ``Location`` does."""
    return urllib.parse.quote(method_id, safe="")


class Sides:
    """The same call made directly to the emulator (with a token for the session's user) and through the
    BFF (with the session); records the allowlisted routes it exercised."""

    def __init__(self, stack: Stack, http: requests.Session) -> None:
        self.stack = stack
        self.http = http
        self.direct_base = stack.emulator.url + "/me/v1"
        self.bff_base = stack.bff_url + "/me/v1"
        self.exercised: set[tuple[str, str]] = set()

    def direct(self, method: str, path: str, **kwargs: t.Any) -> requests.Response:
        return requests.request(method, self.direct_base + path, headers=bearer(self.stack.idp), timeout=10, **kwargs)

    def bff(self, method: str, path: str, **kwargs: t.Any) -> requests.Response:
        return self.http.request(method, self.bff_base + path, timeout=10, **kwargs)

    def note(self, method: str, path: str) -> None:
        target, _, query = path.partition("?")
        match = DEFAULT_TABLE.match(method, target, query)
        assert isinstance(match, RouteMatch), (method, path, match)
        self.exercised.add((match.route.method, match.route.template))

    def alike(self, direct: requests.Response, via_bff: requests.Response, *, own: bool = False) -> None:
        assert bff_problem(via_bff) is None, via_bff.text
        assert answer(via_bff, self.bff_base, own=own) == answer(direct, self.direct_base, own=own), (
            via_bff.text,
            direct.text,
        )

    def same(self, method: str, path: str, *, bff_path: str | None = None, own: bool = False, **kwargs: t.Any) -> None:
        """Call ``path`` directly and ``bff_path`` (default: the same) through the BFF: they answer alike.
        Two paths are for resources prepared once per side (what one side deletes is gone for the other)."""
        direct = self.direct(method, path, **kwargs)
        via_bff = self.bff(method, bff_path or path, **kwargs)
        self.note(method, path)
        self.alike(direct, via_bff, own=own)


def connect_directly(stack: Stack, connection: str) -> dict[str, t.Any]:
    """Connect an account for alice straight through the emulator, consent page included."""
    auth = bearer(stack.idp)
    api = stack.emulator.url + "/me/v1/connected-accounts"
    callback = stack.bff_url + "/bff/connect/callback"
    started = requests.post(
        api + "/connect", json={"connection": connection, "redirect_uri": callback}, headers=auth, timeout=10
    ).json()
    ticket = started["connect_params"]["ticket"]
    decided = requests.post(
        started["connect_uri"], data={"ticket": ticket, "decision": "allow"}, allow_redirects=False, timeout=10
    )
    code = urllib.parse.parse_qs(urllib.parse.urlsplit(decided.headers["Location"]).query)["connect_code"][0]
    body = {"auth_session": started["auth_session"], "connect_code": code, "redirect_uri": callback}
    completed = requests.post(api + "/complete", json=body, headers=auth, timeout=10)
    assert completed.status_code == 201, completed.text
    return t.cast(dict[str, t.Any], completed.json())


def test_every_allowlisted_operation_answers_through_the_bff_what_the_emulator_answers(stack: Stack) -> None:
    sides = Sides(stack, stack.logged_in())
    store = stack.idp.my_account
    sub = stack.idp.user_by_email("alice@example.com").sub
    methods = "/authentication-methods"

    sides.same("GET", "/factors")
    # Enrollment starts: random secrets masked; the rest (policy, passkey options, Location) alike.
    for body in (
        {"type": "passkey"},
        {"type": "totp"},
        {"type": "push-notification"},
        {"type": "recovery-code"},
        {"type": "email", "email": "alice.mfa@example.com"},
        {"type": "phone", "phone_number": "+15551234567", "preferred_authentication_method": "voice"},
        {"type": "password"},
        {"type": "phone", "phone_number": "555-1234"},  # not E.164: the same 400
        {"type": "webauthn-roaming"},  # read-only: the same 400
    ):
        sides.same("POST", methods, json=body, own=True)
    # A TOTP enrollment verified on each side.
    verified = []
    for call in (sides.direct, sides.bff):
        started = call("POST", methods, json={"type": "totp"}).json()
        code = pyotp.TOTP(started["manual_input_code"]).at(int(stack.idp.clock.now()))
        body = {"auth_session": started["auth_session"], "otp_code": code}
        verified.append(call("POST", f"{methods}/{quoted(started['id'])}/verify", json=body))
    sides.alike(*verified, own=True)
    sides.note("POST", f"{methods}/totp%7Cx/verify")
    sides.same("POST", f"{methods}/totp%7Cnone/verify", json={"auth_session": "x", "otp_code": "1"})
    passkey = store.seed_method(sub, "passkey", key_id="a2V5", credential_backed_up=False, transports=["usb"])
    sides.same("POST", methods, json={"type": "passkey"}, own=True)  # excludeCredentials names it
    for query in ("", "?type=totp", "?type=passkey"):
        sides.same("GET", methods + query)
    sides.same("GET", f"{methods}/{quoted(passkey)}")
    sides.same("GET", f"{methods}/totp%7Cnone")
    # Changes, on a resource of its own per side.
    phone = {"phone_number": "+15551234567", "preferred_authentication_method": "sms"}
    phones = [f"{methods}/{quoted(store.seed_method(sub, 'phone', **phone))}" for _ in range(2)]
    change = {"name": "Work phone", "preferred_authentication_method": "voice"}
    sides.same("PATCH", phones[0], bff_path=phones[1], json=change, own=True)
    sides.same("PATCH", f"{methods}/{quoted(passkey)}", json={"name": "x"})  # a passkey has no name: 400
    sides.same("PATCH", f"{methods}/phone%7Cnone", json=change)
    sides.same("DELETE", phones[0], bff_path=phones[1])
    sides.same("DELETE", f"{methods}/phone%7Cnone")
    store.delete_method(sub, passkey)
    password = sides.direct("GET", f"{methods}?type=password").json()["authentication_methods"][0]["id"]
    sides.same("DELETE", f"{methods}/{quoted(password)}")  # the last primary method: the same 409
    # Connected accounts.
    accounts = [connect_directly(stack, "google-oauth2")["id"], connect_directly(stack, "github")["id"]]
    for query in ("", "?connection=github", "?connection=github&connection=google-oauth2", "?take=1", "?take=21"):
        sides.same("GET", "/connected-accounts/accounts" + query)
    cursor = sides.direct("GET", "/connected-accounts/accounts?take=1").json()["next"]
    sides.same("GET", f"/connected-accounts/accounts?take=1&from={cursor}")
    for query in ("", "?take=1", "?take=1&from=MQ", "?from=%21%21"):
        sides.same("GET", "/connected-accounts/connections" + query)
    sides.same(
        "DELETE", f"/connected-accounts/accounts/{accounts[0]}", bff_path=f"/connected-accounts/accounts/{accounts[1]}"
    )
    sides.same("DELETE", "/connected-accounts/accounts/cac_none")

    assert sides.exercised == DEFAULT_ROUTES


@pytest.mark.parametrize(("method", "path"), [*sorted(NEVER_EXPOSED), ("GET", "/consents"), ("GET", "/organizations")])
def test_operations_off_the_default_allowlist_are_refused_by_the_bff_itself(
    stack: Stack, method: str, path: str
) -> None:
    http = stack.logged_in()
    before = sum(stack.idp.my_account.calls.values())
    response = http.request(method, stack.bff_url + "/me/v1" + path, json={} if method == "POST" else None)
    assert_problem(response, 404, "route-not-allowed")
    assert sum(stack.idp.my_account.calls.values()) == before


@pytest.fixture
def session(stack: Stack) -> requests.Session:
    """One logged-in browser session, shared by all examples of an operation."""
    return stack.logged_in()


@CONFORMING.parametrize()
@BOUNDED
def test_spec_conforming_calls_answer_alike_directly_and_through_the_bff(
    case: t.Any, stack: Stack, session: requests.Session
) -> None:
    route = (case.operation.method.upper(), case.operation.path)
    direct = case.call(base_url=stack.emulator.url + "/me/v1", headers=bearer(stack.idp), timeout=10)
    via_bff = case.call(base_url=stack.bff_url + "/me/v1", session=session, timeout=10)
    kind = bff_problem(via_bff)
    if route not in DEFAULT_ROUTES:
        assert kind in ("route-not-allowed", "bad-path"), via_bff.text
    if kind is not None:
        assert kind in BFF_REFUSALS and via_bff.status_code == BFF_REFUSALS[kind][0], via_bff.text
        return
    own = via_bff.status_code in (201, 202)  # an enrollment each side started for itself
    bff_base, direct_base = stack.bff_url + "/me/v1", stack.emulator.url + "/me/v1"
    assert answer(via_bff, bff_base, own=own) == answer(direct, direct_base, own=own), (via_bff.text, direct.text)


# ---------------------------------------------------------------------------------------------------------
# 3. The longest queries through ``bff serve``

GUNICORN_LINE_LIMIT = 8190  # bff/cli.py sets gunicorn's limit_request_line to its largest bounded value
ACCOUNTS = "/me/v1/connected-accounts/accounts"


def accounts_query(length: int) -> str:
    """A query of exactly ``length`` characters for ``GET /connected-accounts/accounts``, valid for the API:
    20 ``connection`` names of at most 128 characters, percent-encoded (``%C3%A9``, an ``é``, takes 6).
    The allowlist accepts it up to ``MAX_QUERY_LENGTH``."""
    count = 20
    room = length - count * len("connection=") - (count - 1)
    sizes = [room // count + (1 if index < room % count else 0) for index in range(count)]
    assert min(sizes) > 0 and max(sizes) <= 700  # 700 = 116 encoded + 4 plain characters at most
    query = "&".join("connection=" + "%C3%A9" * (size // 6) + "A" * (size % 6) for size in sizes)
    assert len(query) == length, (len(query), length)
    accepted = isinstance(DEFAULT_TABLE.match("GET", ACCOUNTS.removeprefix("/me/v1"), query), RouteMatch)
    assert accepted == (length <= MAX_QUERY_LENGTH)
    return query


@pytest.fixture(scope="module")
def served(redis_server: t.Any) -> t.Iterator[tuple[str, requests.Session]]:
    """``bff serve`` (gunicorn) in front of an emulator, and a logged-in session with it; the tests below
    only read, so they share one."""
    from bff.emulator import EmulatorConfig, EmulatorServer

    if redis_server.process is None:  # a test stopped it to simulate an outage
        redis_server.start()

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    emulator = EmulatorServer(EmulatorConfig(CLIENT_ID, CLIENT_SECRET, base_url))
    emulator.start()
    env = {
        "BFF_ISSUER_URL": emulator.url + "/",
        "BFF_CLIENT_ID": CLIENT_ID,
        "BFF_CLIENT_SECRET": CLIENT_SECRET,
        "BFF_BASE_URL": base_url,
        "BFF_SECRET_KEY": SECRET_KEY,
        "BFF_SESSION_STORE": redis_server.url,
    }
    process = None
    try:
        process = BffProcess(port, env)
        http = bff_session(base_url)
        assert login(http, base_url).status_code == 302
        yield base_url, http
    finally:
        if process is not None:
            process.stop()
        emulator.stop()


def line_length(path: str, query: str) -> int:
    return len(f"GET {path}?{query} HTTP/1.1")


def test_bff_serve_answers_a_query_longer_than_gunicorns_default_line_limit(
    served: tuple[str, requests.Session],
) -> None:
    base_url, http = served
    response = http.get(f"{base_url}{ACCOUNTS}?{accounts_query(4500)}")  # gunicorn's default limit: 4094
    assert response.status_code == 200, (response.status_code, response.text[:200])
    assert response.json() == {"accounts": []}


def test_the_longest_path_and_query_the_allowlist_accepts_fit_the_servers_request_line() -> None:
    from bff.proxy.matching import MAX_PATH_LENGTH

    assert len("DELETE /me/v1" + "/" * 0) + MAX_PATH_LENGTH + 1 + MAX_QUERY_LENGTH + len(" HTTP/1.1") <= (
        GUNICORN_LINE_LIMIT
    )


def test_bff_serve_answers_the_largest_query_the_allowlist_accepts(served: tuple[str, requests.Session]) -> None:
    base_url, http = served
    response = http.get(f"{base_url}{ACCOUNTS}?{accounts_query(MAX_QUERY_LENGTH)}")
    assert response.status_code != 414, "gunicorn refused the request line"
    assert response.json() == {"accounts": []}


def test_bff_serve_refuses_a_query_beyond_the_allowlists_limit(served: tuple[str, requests.Session]) -> None:
    base_url, http = served
    response = http.get(f"{base_url}{ACCOUNTS}?{accounts_query(MAX_QUERY_LENGTH + 1)}")
    if response.status_code != 414:
        assert_problem(response, 400, "bad-query")

