"""The emulator's My Account API, over real HTTP: auth, enrollments, connected accounts, limits."""

from __future__ import annotations

import base64
import hashlib
import html.parser
import os
import time
import typing as t
import urllib.parse

import pyotp
import pytest
import requests

from bff.emulator.myaccount_spec import ApiSpec
from tests.support.webauthn import passkey_credential as support_credential

CLIENT_ID = "myaccount-test-client"
CLIENT_SECRET = "myaccount-test-client-secret-0123456789"
BFF_URL = "http://localhost:8000"
CALLBACK = BFF_URL + "/bff/connect/callback"
ALL_SCOPES = " ".join(
    [
        "read:me:factors",
        "read:me:authentication_methods",
        "create:me:authentication_methods",
        "update:me:authentication_methods",
        "delete:me:authentication_methods",
        "create:me:connected_accounts",
        "read:me:connected_accounts",
        "delete:me:connected_accounts",
        "read:me:consents",
        "read:me:organizations",
    ]
)


@pytest.fixture
def emulator() -> t.Iterator[t.Any]:
    from bff.emulator import EmulatorConfig, EmulatorServer

    server = EmulatorServer(EmulatorConfig(CLIENT_ID, CLIENT_SECRET, BFF_URL))
    server.start()
    yield server
    server.stop()


class MyAccount:
    """A My Account API client for one user of the emulator."""

    def __init__(self, emulator: t.Any, email: str = "alice@example.com") -> None:
        self.emulator = emulator
        self.state = emulator.state
        self.sub: str = self.state.user_by_email(email).sub
        self.base = emulator.url + "/me/v1"
        self.http = requests.Session()
        self.http.trust_env = False

    def token(self, scope: str = ALL_SCOPES, **kwargs: t.Any) -> str:
        kwargs.setdefault("audience", self.state.my_account_audience)
        return t.cast(str, self.state.mint_access_token(sub=self.sub, scope=scope, **kwargs))

    def call(self, method: str, path: str, *, token: str | None = None, **kwargs: t.Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {token or self.token()}"}
        headers.update(kwargs.pop("headers", {}))
        url = path if path.startswith("http") else self.base + path
        return self.http.request(method, url, headers=headers, timeout=10, **kwargs)

    def enroll(self, body: dict[str, t.Any]) -> requests.Response:
        response = self.call("POST", "/authentication-methods", json=body)
        assert response.status_code == 202, response.text
        return response

    def verify(self, location: str, body: dict[str, t.Any]) -> requests.Response:
        return self.call("POST", location + "/verify", json=body)


@pytest.fixture
def me(emulator: t.Any) -> MyAccount:
    return MyAccount(emulator)


def assert_error(response: requests.Response, status: int, code: str | None = None) -> dict[str, t.Any]:
    """The response is the spec's ErrorResponse with ``status`` (and the A0E ``code``)."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body: dict[str, t.Any] = response.json()
    assert set(body) <= {"type", "status", "title", "detail", "validation_errors"}
    assert body["status"] == status and body["title"] and body["detail"]
    assert body["type"].startswith("https://auth0.com/api-errors/A0E-")
    if code is not None:
        assert body["type"] == f"https://auth0.com/api-errors/{code}"
    return body


def error_fields(response: requests.Response) -> set[str]:
    return {e.get("field", "") for e in response.json().get("validation_errors", [])}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def passkey_credential(options: dict[str, t.Any], origin: str = BFF_URL) -> dict[str, t.Any]:
    """What ``navigator.credentials.create()`` returns for ``options`` (``none`` attestation)."""
    return support_credential(options, origin)


# ----------------------------------------------------------------------- access tokens


def test_every_operation_of_the_spec_is_served_and_requires_a_token(me: MyAccount) -> None:
    spec = ApiSpec.load()
    for method, path in spec.operations():
        concrete = path.replace("{authentication_method_id}", "totp%7Cdev_x").replace("{id}", "cac_x")
        response = me.http.request(method, me.base + concrete.replace("{consent_id}", "c1"), timeout=10)
        body = assert_error(response, 401, "A0E-401-0001")
        assert "Bearer" in response.headers["WWW-Authenticate"], (method, path, body)


def test_token_without_the_operations_scope_is_403_insufficient_scope(me: MyAccount) -> None:
    response = me.call("GET", "/authentication-methods", token=me.token("read:me:factors"))
    body = assert_error(response, 403, "A0E-403-0002")
    assert "insufficient_scope" in body["detail"]
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    assert me.call("GET", "/factors", token=me.token("read:me:factors")).status_code == 200


def test_token_for_another_audience_is_401(me: MyAccount) -> None:
    token = me.token(audience=me.state.issuer + "api/v2/")
    assert_error(me.call("GET", "/factors", token=token), 401, "A0E-401-0003")


def test_token_expired_by_the_emulator_clock_is_401(me: MyAccount) -> None:
    token = me.token(lifetime=60)
    assert me.call("GET", "/factors", token=token).status_code == 200
    me.state.clock.advance(61)
    assert_error(me.call("GET", "/factors", token=token), 401, "A0E-401-0003")


def test_token_signed_by_someone_else_is_401(me: MyAccount) -> None:
    header, claims, _ = me.token().split(".")
    forged = f"{header}.{claims}.{b64url(b'not-a-signature')}"
    assert_error(me.call("GET", "/factors", token=forged), 401, "A0E-401-0003")


# ----------------------------------------------------------------------- factors and listing


def test_factors_lists_the_tenants_enrollable_factors(me: MyAccount) -> None:
    response = me.call("GET", "/factors")
    assert response.status_code == 200
    factors = {f["type"]: f["usage"] for f in response.json()["factors"]}
    assert factors["passkey"] == ["primary"] and factors["totp"] == ["secondary"]
    assert "webauthn-roaming" not in factors


def test_enrolling_a_factor_the_tenant_disabled_is_400(me: MyAccount) -> None:
    del me.state.my_account.enabled_factors["email"]
    response = me.call("POST", "/authentication-methods", json={"type": "email", "email": "a@example.com"})
    assert_error(response, 400)
    assert error_fields(response) == {"type"}


def test_a_new_user_has_a_password_method(me: MyAccount) -> None:
    methods = me.call("GET", "/authentication-methods").json()["authentication_methods"]
    assert [(m["type"], m["identity_user_id"], m["usage"]) for m in methods] == [
        ("password", me.sub, ["primary"])
    ]


def test_list_filters_by_type_and_rejects_an_unknown_type(me: MyAccount) -> None:
    roaming = me.state.my_account.seed_method(me.sub, "webauthn-roaming", name="YubiKey", key_id="a2V5")
    me.state.my_account.seed_method(me.sub, "webauthn-platform", name="Touch ID")
    listed = me.call("GET", "/authentication-methods", params={"type": "webauthn-roaming"}).json()
    assert [(m["id"], m["name"], m["confirmed"]) for m in listed["authentication_methods"]] == [
        (roaming, "YubiKey", True)
    ]
    assert len(me.call("GET", "/authentication-methods").json()["authentication_methods"]) == 3
    response = me.call("GET", "/authentication-methods", params={"type": "sms"})
    assert_error(response, 400)
    assert response.json()["validation_errors"][0]["source"] == "query"


def test_read_only_webauthn_types_cannot_be_enrolled(me: MyAccount) -> None:
    for kind in ("webauthn-platform", "webauthn-roaming"):
        response = me.call("POST", "/authentication-methods", json={"type": kind})
        assert_error(response, 400)
        assert error_fields(response) == {"type"}


def test_create_bodies_are_validated_against_the_spec(me: MyAccount) -> None:
    missing = me.call("POST", "/authentication-methods", json={"type": "email"})
    assert_error(missing, 400)
    assert error_fields(missing) == {"email"}
    extra = me.call("POST", "/authentication-methods", json={"type": "totp", "label": "x"})
    assert error_fields(extra) == {"label"}
    enum = me.call(
        "POST",
        "/authentication-methods",
        json={"type": "phone", "phone_number": "+15551234567", "preferred_authentication_method": "fax"},
    )
    assert error_fields(enum) == {"preferred_authentication_method"}
    assert error_fields(me.call("POST", "/authentication-methods", json={})) == {"type"}


def test_non_json_bodies_are_415(me: MyAccount) -> None:
    response = me.call(
        "POST", "/authentication-methods", data="type=totp", headers={"Content-Type": "text/plain"}
    )
    assert_error(response, 415)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/authentication-methods", {"type": {}}),
        ("POST", "/authentication-methods", {"type": []}),
        ("POST", "/authentication-methods", {"type": None}),
        ("POST", "/authentication-methods", {"type": 7}),
        ("POST", "/authentication-methods", []),
        ("POST", "/authentication-methods", "totp"),
        ("POST", "/authentication-methods", None),
        ("POST", "/authentication-methods", {"type": "phone", "phone_number": 15551234567}),
        ("POST", "/authentication-methods", {"type": "email", "email": ["a@example.com"]}),
        ("POST", "/authentication-methods", {"type": "passkey", "identity_user_id": {}}),
        ("PATCH", "/authentication-methods/password%7Cx", {"name": 1}),
        ("PATCH", "/authentication-methods/password%7Cx", {"preferred_authentication_method": {}}),
        ("PATCH", "/authentication-methods/password%7Cx", [{"name": "x"}]),
        ("POST", "/authentication-methods/passkey%7Cnew/verify", {"auth_session": {}}),
        ("POST", "/authentication-methods/passkey%7Cnew/verify", {"auth_session": ["s"], "otp_code": 1}),
        ("POST", "/authentication-methods/passkey%7Cnew/verify", []),
        ("POST", "/connected-accounts/connect", {"connection": {}, "redirect_uri": []}),
        ("POST", "/connected-accounts/connect", {"connection": "github", "redirect_uri": CALLBACK, "scopes": "a"}),
        ("POST", "/connected-accounts/connect", {"connection": "github", "redirect_uri": "http://[x"}),
        (
            "POST",
            "/connected-accounts/connect",
            {"connection": "github", "redirect_uri": CALLBACK, "authorization_params": []},
        ),
        ("POST", "/connected-accounts/complete", {"auth_session": 1, "connect_code": {}, "redirect_uri": 2}),
        ("POST", "/connected-accounts/complete", [1, 2]),
    ],
)
def test_a_body_of_the_wrong_json_shape_is_a_400_error_response_never_a_500(
    me: MyAccount, method: str, path: str, body: t.Any
) -> None:
    response = me.call(method, path, json=body)
    assert_error(response, 400, "A0E-400-0001")


def test_json_nested_deeper_than_the_parser_goes_is_a_400_not_a_500(me: MyAccount) -> None:
    deep = '{"type": ' + "[" * 100_000 + "]" * 100_000 + "}"
    response = me.call(
        "POST", "/authentication-methods", data=deep, headers={"Content-Type": "application/json"}
    )
    assert_error(response, 400)


@pytest.mark.parametrize("take", ["\u00b2", "\u0661", "1.0", "-1", " 1"])
def test_a_page_size_that_is_not_plain_ascii_digits_is_400(me: MyAccount, take: str) -> None:
    response = me.call("GET", "/connected-accounts/connections", params={"take": take})
    assert_error(response, 400)
    assert error_fields(response) == {"take"}


# ----------------------------------------------------------------------- enrollments


def test_passkey_enrollment_verifies_a_real_none_attestation(me: MyAccount) -> None:
    started = me.enroll({"type": "passkey"})
    location = started.headers["Location"]
    assert location == me.state.issuer + "me/v1/authentication-methods/passkey%7Cnew"
    body = started.json()
    options = body["authn_params_public_key"]
    assert options["rp"] == {"id": "localhost", "name": "bff emulator"}
    assert base64.urlsafe_b64decode(options["user"]["id"] + "==") == me.sub.encode()
    assert options["authenticatorSelection"] == {"residentKey": "required", "userVerification": "preferred"}
    credential = passkey_credential(options)

    verified = me.verify(location, {"auth_session": body["auth_session"], "authn_response": credential})

    assert verified.status_code == 201, verified.text
    passkey = verified.json()
    assert passkey["id"].startswith("passkey|") and passkey["id"] != "passkey|new"
    assert verified.headers["Location"].endswith(
        "/authentication-methods/" + passkey["id"].replace("|", "%7C")
    )
    assert passkey["key_id"] == credential["id"]
    assert passkey["identity_user_id"] == me.sub and passkey["usage"] == ["primary"]
    assert passkey["relying_party_id"] == "localhost" and passkey["transports"] == ["internal"]
    assert me.call("GET", verified.headers["Location"]).json() == passkey


def test_passkey_creation_options_exclude_the_users_existing_passkeys(me: MyAccount) -> None:
    first = me.enroll({"type": "passkey"}).json()
    assert first["authn_params_public_key"]["excludeCredentials"] == []
    credential = passkey_credential(first["authn_params_public_key"])
    location = me.base + "/authentication-methods/passkey%7Cnew"
    verified = me.verify(location, {"auth_session": first["auth_session"], "authn_response": credential})
    assert verified.status_code == 201, verified.text

    second = me.enroll({"type": "passkey"}).json()

    assert second["authn_params_public_key"]["excludeCredentials"] == [
        {"id": credential["id"], "type": "public-key", "transports": ["internal"]}
    ]
    # The same authenticator's credential is refused even by a client that ignored the list.
    again = me.verify(location, {"auth_session": second["auth_session"], "authn_response": credential})
    assert_error(again, 400)
    opted_out = me.enroll({"type": "passkey", "use_exclude_credentials": False}).json()
    assert "excludeCredentials" not in opted_out["authn_params_public_key"]


def test_passkey_for_another_origin_or_challenge_is_rejected(me: MyAccount) -> None:
    body = me.enroll({"type": "passkey"}).json()
    options = body["authn_params_public_key"]
    location = me.base + "/authentication-methods/passkey%7Cnew"
    other_origin = passkey_credential(options, origin="https://evil.example")
    response = me.verify(location, {"auth_session": body["auth_session"], "authn_response": other_origin})
    assert_error(response, 400)
    wrong_challenge = passkey_credential({**options, "challenge": b64url(os.urandom(32))})
    response = me.verify(location, {"auth_session": body["auth_session"], "authn_response": wrong_challenge})
    assert_error(response, 400)
    assert me.call("GET", "/authentication-methods", params={"type": "passkey"}).json() == {
        "authentication_methods": []
    }


def test_passkey_verify_body_is_validated_for_its_type(me: MyAccount) -> None:
    body = me.enroll({"type": "passkey"}).json()
    location = me.base + "/authentication-methods/passkey%7Cnew"
    response = me.verify(location, {"auth_session": body["auth_session"], "otp_code": "123456"})
    assert_error(response, 400)
    assert error_fields(response) == {"authn_response", "otp_code"}


def test_totp_enrollment_checks_the_code_and_adds_a_login_factor(me: MyAccount) -> None:
    started = me.enroll({"type": "totp"})
    body = started.json()
    assert body["barcode_uri"].startswith("otpauth://totp/") and body["id"].startswith("totp|")
    assert started.headers["Location"].endswith(
        "/authentication-methods/" + urllib.parse.quote(body["id"], "")
    )
    secret = body["manual_input_code"]
    assert f"secret={secret}" in body["barcode_uri"]
    pending = me.call("GET", started.headers["Location"]).json()
    assert pending["confirmed"] is False

    wrong = me.verify(
        started.headers["Location"], {"auth_session": body["auth_session"], "otp_code": "000000"}
    )
    assert_error(wrong, 400)
    assert error_fields(wrong) == {"otp_code"}
    code = pyotp.TOTP(secret).at(int(me.state.clock.now()))
    verified = me.verify(
        started.headers["Location"], {"auth_session": body["auth_session"], "otp_code": code}
    )

    assert verified.status_code == 201, verified.text
    assert verified.json()["confirmed"] is True and verified.json()["id"] == body["id"]
    assert me.state.users[me.sub].totp_secrets == [secret]


def test_deleting_a_totp_method_withdraws_the_login_factor(me: MyAccount) -> None:
    body = me.enroll({"type": "totp"}).json()
    code = pyotp.TOTP(body["manual_input_code"]).at(int(me.state.clock.now()))
    location = me.base + "/authentication-methods/" + urllib.parse.quote(body["id"], "")
    assert me.verify(location, {"auth_session": body["auth_session"], "otp_code": code}).status_code == 201

    assert me.call("DELETE", location).status_code == 204

    assert me.state.users[me.sub].totp_secrets == []
    assert_error(me.call("GET", location), 404)


def test_email_enrollment_confirms_with_the_code_sent(me: MyAccount) -> None:
    started = me.enroll({"type": "email", "email": "alice.mfa@example.com"})
    hook = me.http.get(me.emulator.url + "/_emulator/my-account/otp", params={"sub": me.sub}, timeout=10)
    code = hook.json()["otp_code"]
    assert len(code) == 6 and code.isdigit()
    assert me.state.my_account.last_otp(me.sub, "email") == code

    verified = me.verify(
        started.headers["Location"], {"auth_session": started.json()["auth_session"], "otp_code": code}
    )

    assert verified.status_code == 201, verified.text
    assert verified.json()["email"] == "alice.mfa@example.com" and verified.json()["confirmed"] is True


def test_phone_enrollment_rejects_a_wrong_code_then_confirms(me: MyAccount) -> None:
    started = me.enroll({"type": "phone", "phone_number": "+15551234567"})
    session = started.json()["auth_session"]
    code = me.state.my_account.last_otp(me.sub, "phone")
    wrong = "000000" if code != "000000" else "111111"
    assert_error(me.verify(started.headers["Location"], {"auth_session": session, "otp_code": wrong}), 400)

    verified = me.verify(started.headers["Location"], {"auth_session": session, "otp_code": code})

    assert verified.status_code == 201
    assert verified.json()["preferred_authentication_method"] == "sms"
    assert verified.json()["phone_number"] == "+15551234567"


@pytest.mark.parametrize(
    "number", ["5551234567", "+1 555 123 4567", "+1-555-1234567", "+05551234567", "+1", "+1234567890123456", "+1555abc"]
)
def test_a_phone_number_that_is_not_e164_is_refused(me: MyAccount, number: str) -> None:
    response = me.call("POST", "/authentication-methods", json={"type": "phone", "phone_number": number})
    assert_error(response, 400)
    assert error_fields(response) == {"phone_number"}
    with pytest.raises(LookupError):
        me.state.my_account.last_otp(me.sub, "phone")


def test_unknown_otp_hook_user_is_404(me: MyAccount) -> None:
    response = me.http.get(
        me.emulator.url + "/_emulator/my-account/otp", params={"sub": "nobody"}, timeout=10
    )
    assert response.status_code == 404


def test_recovery_code_enrollment_confirms_with_the_auth_session(me: MyAccount) -> None:
    started = me.enroll({"type": "recovery-code"})
    assert len(started.json()["recovery_code"]) == 24
    verified = me.verify(started.headers["Location"], {"auth_session": started.json()["auth_session"]})
    assert verified.status_code == 201 and verified.json()["type"] == "recovery-code"


def test_push_notification_enrollment_returns_a_barcode_and_confirms(me: MyAccount) -> None:
    started = me.enroll({"type": "push-notification"})
    assert started.json()["barcode_uri"].startswith("otpauth://")
    verified = me.verify(started.headers["Location"], {"auth_session": started.json()["auth_session"]})
    assert verified.status_code == 201 and verified.json()["confirmed"] is True


def test_password_enrollment_enforces_the_policy_and_sets_the_login_password(me: MyAccount) -> None:
    started = me.enroll({"type": "password"})
    assert started.headers["Location"].endswith("/authentication-methods/password%7Cnew")
    assert started.json()["policy"]["complexity"]["min_length"] == 8
    session = started.json()["auth_session"]
    weak = me.verify(started.headers["Location"], {"auth_session": session, "new_password": "abcdefgh"})
    assert_error(weak, 400)
    assert error_fields(weak) == {"new_password"}

    strong = me.verify(started.headers["Location"], {"auth_session": session, "new_password": "Tr0ub4dor&Z"})

    assert strong.status_code == 201, strong.text
    assert strong.json()["type"] == "password" and "last_password_reset" in strong.json()
    assert me.state.users[me.sub].password == "Tr0ub4dor&Z"


def test_an_expired_auth_session_is_rejected(me: MyAccount) -> None:
    started = me.enroll({"type": "recovery-code"})
    me.state.clock.advance(me.state.my_account.enrollment_lifetime + 1)
    response = me.verify(started.headers["Location"], {"auth_session": started.json()["auth_session"]})
    assert_error(response, 400)
    assert error_fields(response) == {"auth_session"}


def test_an_auth_session_only_verifies_its_own_method(me: MyAccount) -> None:
    first = me.enroll({"type": "recovery-code"})
    second = me.enroll({"type": "push-notification"})
    response = me.verify(second.headers["Location"], {"auth_session": first.json()["auth_session"]})
    assert_error(response, 400)


def test_verifying_an_unknown_method_is_the_declared_400(me: MyAccount) -> None:
    response = me.verify(me.base + "/authentication-methods/totp%7Cdev_nothing", {"auth_session": "x"})
    assert_error(response, 400)
    assert "does not exist" in response.json()["detail"]


# ----------------------------------------------------------------------- update and delete


def test_rename_and_phone_preference_are_updated(me: MyAccount) -> None:
    started = me.enroll({"type": "phone", "phone_number": "+15551234567"})
    code = me.state.my_account.last_otp(me.sub)
    me.verify(started.headers["Location"], {"auth_session": started.json()["auth_session"], "otp_code": code})

    response = me.call(
        "PATCH",
        started.headers["Location"],
        json={"name": "Work phone", "preferred_authentication_method": "voice"},
    )

    assert response.status_code == 200, response.text
    assert response.json()["name"] == "Work phone"
    assert me.call("GET", started.headers["Location"]).json()["preferred_authentication_method"] == "voice"


def test_update_rejects_properties_the_type_does_not_have(me: MyAccount) -> None:
    password = me.call("GET", "/authentication-methods").json()["authentication_methods"][0]["id"]
    location = me.base + "/authentication-methods/" + urllib.parse.quote(password, "")
    assert_error(me.call("PATCH", location, json={"name": "mine"}), 400)
    assert_error(me.call("PATCH", location, json={"nickname": "mine"}), 400)
    assert_error(me.call("PATCH", me.base + "/authentication-methods/email%7Cnone", json={"name": "x"}), 400)


def test_deleting_the_password_method_makes_the_login_form_refuse_the_password(stack: t.Any) -> None:
    from tests.support.browser import follow, submit_form

    def log_in(password: str) -> requests.Response:
        browser = stack.browser()
        started = browser.get(stack.bff_url + "/bff/login", allow_redirects=False, timeout=10)
        page = follow(browser, started, until=stack.bff_url)
        assert page.status_code == 200, page.text
        return submit_form(browser, page, {"email": "alice@example.com", "password": password})

    me = MyAccount(stack.emulator)
    me.state.my_account.seed_method(me.sub, "passkey", key_id="a2V5", credential_backed_up=False)
    password = next(m for m in me.call("GET", "/authentication-methods").json()["authentication_methods"]
                    if m["type"] == "password")
    assert log_in("alice").status_code == 302

    deleted = me.call("DELETE", "/authentication-methods/" + urllib.parse.quote(password["id"], ""))

    assert deleted.status_code == 204, deleted.text
    refused = log_in("alice")
    assert refused.status_code == 400 and "Wrong email or password." in refused.text
    assert me.call("GET", "/authentication-methods", params={"type": "password"}).json() == {
        "authentication_methods": []
    }
    # Enrolling a password again sets the one the login form accepts.
    started = me.enroll({"type": "password"})
    verified = me.verify(
        started.headers["Location"], {"auth_session": started.json()["auth_session"], "new_password": "Tr0ub4dor&Z"}
    )
    assert verified.status_code == 201, verified.text
    assert log_in("Tr0ub4dor&Z").status_code == 302
    assert log_in("alice").status_code == 400


def test_the_last_primary_method_cannot_be_deleted(me: MyAccount) -> None:
    password = me.call("GET", "/authentication-methods").json()["authentication_methods"][0]["id"]
    location = me.base + "/authentication-methods/" + urllib.parse.quote(password, "")
    assert_error(me.call("DELETE", location), 409)
    assert_error(me.call("DELETE", me.base + "/authentication-methods/passkey%7Cnone"), 400)
    assert_error(me.call("GET", me.base + "/authentication-methods/passkey%7Cnone"), 404)


# ----------------------------------------------------------------------- connected accounts


class ConsentForm(html.parser.HTMLParser):
    """The consent page's form: its action, hidden inputs and buttons."""

    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.fields: dict[str, str] = {}
        self.buttons: list[str] = []
        self.scopes: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.action = values["action"]
        elif tag == "input" and values.get("type") == "hidden":
            self.fields[values["name"]] = values["value"]
        elif tag == "button":
            self.buttons.append(values["value"])
        elif tag == "li" and "data-scope" in values:
            self.scopes.append(values["data-scope"])


def pkce_pair() -> tuple[str, str]:
    verifier = b64url(os.urandom(32))
    return verifier, b64url(hashlib.sha256(verifier.encode()).digest())


def start_connect(me: MyAccount, **body: t.Any) -> dict[str, t.Any]:
    body = {"connection": "google-oauth2", "redirect_uri": CALLBACK, **body}
    response = me.call("POST", "/connected-accounts/connect", json=body)
    assert response.status_code == 201, response.text
    return t.cast(dict[str, t.Any], response.json())


def completion(started: dict[str, t.Any], query: dict[str, str]) -> dict[str, t.Any]:
    """The /complete body for a connect flow that came back through the consent page."""
    return {"auth_session": started["auth_session"], "connect_code": query["connect_code"], "redirect_uri": CALLBACK}


def consent(me: MyAccount, started: dict[str, t.Any], decision: str = "allow") -> dict[str, str]:
    """Open the consent page like a browser, press a button, and return the redirect's query."""
    page = me.http.get(started["connect_uri"], params=started["connect_params"], timeout=10)
    assert page.status_code == 200, page.text
    form = ConsentForm()
    form.feed(page.text)
    assert decision in form.buttons
    action = urllib.parse.urljoin(page.url, form.action)
    answer = me.http.post(
        action, data={**form.fields, "decision": decision}, allow_redirects=False, timeout=10
    )
    assert answer.status_code == 302, answer.text
    target = urllib.parse.urlsplit(answer.headers["Location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == CALLBACK
    return dict(urllib.parse.parse_qsl(target.query))


def connect_account(
    me: MyAccount, connection: str = "google-oauth2", login_hint: str | None = None
) -> dict[str, t.Any]:
    """Connect ``connection``; ``login_hint`` picks the account at the provider (default: the user's email)."""
    extra = {"authorization_params": {"login_hint": login_hint}} if login_hint else {}
    started = start_connect(me, connection=connection, **extra)
    query = consent(me, started)
    body = completion(started, query)
    response = me.call("POST", "/connected-accounts/complete", json=body)
    assert response.status_code == 201, response.text
    return t.cast(dict[str, t.Any], response.json())


def test_connections_are_google_and_github(me: MyAccount) -> None:
    response = me.call("GET", "/connected-accounts/connections")
    assert response.status_code == 200
    connections = {c["name"]: c for c in response.json()["connections"]}
    assert connections["google-oauth2"]["strategy"] == "google-oauth2"
    assert "openid" in connections["google-oauth2"]["scopes"]
    assert connections["github"]["strategy"] == "github"
    first = me.call("GET", "/connected-accounts/connections", params={"take": 1}).json()
    second = me.call(
        "GET", "/connected-accounts/connections", params={"take": 1, "from": first["next"]}
    ).json()
    assert [c["name"] for c in first["connections"] + second["connections"]] == ["google-oauth2", "github"]
    assert "next" not in second


def test_connect_consent_complete_list_and_delete(me: MyAccount) -> None:
    verifier, challenge = pkce_pair()
    started = start_connect(
        me,
        state="xyz",
        scopes=["openid", "profile", "https://www.googleapis.com/auth/calendar"],
        code_challenge=challenge,
        code_challenge_method="S256",
    )
    assert started["connect_uri"] == me.state.issuer + "connect"
    assert started["expires_in"] > 0 and started["connect_params"]["ticket"]
    page = me.http.get(started["connect_uri"], params=started["connect_params"], timeout=10)
    form = ConsentForm()
    form.feed(page.text)
    assert "google-oauth2" in page.text
    assert form.scopes == ["openid", "profile", "https://www.googleapis.com/auth/calendar"]

    query = consent(me, started)
    assert query["state"] == "xyz"
    completed = me.call(
        "POST",
        "/connected-accounts/complete",
        json={**completion(started, query), "code_verifier": verifier},
    )

    assert completed.status_code == 201, completed.text
    account = completed.json()
    assert account["id"].startswith("cac_") and account["access_type"] == "offline"
    assert account["connection"] == "google-oauth2" and account["scopes"] == form.scopes
    listed = me.call("GET", "/connected-accounts/accounts").json()
    assert listed == {"accounts": [account]}
    assert me.call("DELETE", f"/connected-accounts/accounts/{account['id']}").status_code == 204
    assert me.call("GET", "/connected-accounts/accounts").json() == {"accounts": []}
    assert_error(me.call("DELETE", f"/connected-accounts/accounts/{account['id']}"), 400)
    assert_error(me.call("DELETE", "/connected-accounts/accounts/not-an-id"), 400)


def test_deny_redirects_with_access_denied(me: MyAccount) -> None:
    started = start_connect(me, state="s1")
    query = consent(me, started, "deny")
    assert query["error"] == "access_denied" and query["state"] == "s1" and query["error_description"]
    assert "connect_code" not in query
    again = me.http.get(started["connect_uri"], params=started["connect_params"], timeout=10)
    assert again.status_code == 400


def test_completing_twice_is_409(me: MyAccount) -> None:
    started = start_connect(me)
    query = consent(me, started)
    body = completion(started, query)
    assert me.call("POST", "/connected-accounts/complete", json=body).status_code == 201
    assert_error(me.call("POST", "/connected-accounts/complete", json=body), 409)


def test_a_wrong_code_verifier_is_rejected(me: MyAccount) -> None:
    _, challenge = pkce_pair()
    started = start_connect(me, code_challenge=challenge, code_challenge_method="S256")
    query = consent(me, started)
    body = completion(started, query)
    wrong = me.call("POST", "/connected-accounts/complete", json={**body, "code_verifier": pkce_pair()[0]})
    assert_error(wrong, 400)
    assert error_fields(wrong) == {"code_verifier"}
    assert error_fields(me.call("POST", "/connected-accounts/complete", json=body)) == {"code_verifier"}
    assert me.call("GET", "/connected-accounts/accounts").json() == {"accounts": []}


def test_the_same_external_account_cannot_be_connected_twice(me: MyAccount) -> None:
    first = connect_account(me)
    started = start_connect(me)
    page = me.http.get(started["connect_uri"], params=started["connect_params"], timeout=10)
    assert "alice@example.com" in page.text  # the provider's page names the account being connected
    body = completion(started, consent(me, started))

    duplicate = me.call("POST", "/connected-accounts/complete", json=body)

    assert "already connected" in assert_error(duplicate, 409, "A0E-409-0001")["detail"]
    assert me.call("GET", "/connected-accounts/accounts").json() == {"accounts": [first]}
    # Another account at the same provider, or the same one at another provider, or again once deleted.
    other = connect_account(me, login_hint="alice.work@example.com")
    github = connect_account(me, "github")
    assert me.call("DELETE", f"/connected-accounts/accounts/{first['id']}").status_code == 204
    again = connect_account(me)
    listed = me.call("GET", "/connected-accounts/accounts").json()["accounts"]
    assert [a["id"] for a in listed] == [other["id"], github["id"], again["id"]]


def test_complete_checks_code_and_redirect_uri(me: MyAccount) -> None:
    started = start_connect(me)
    query = consent(me, started)
    body = completion(started, query)
    wrong_code = me.call("POST", "/connected-accounts/complete", json={**body, "connect_code": "nope"})
    assert error_fields(wrong_code) == {"connect_code"}
    wrong_uri = me.call("POST", "/connected-accounts/complete", json={**body, "redirect_uri": CALLBACK + "x"})
    assert error_fields(wrong_uri) == {"redirect_uri"}
    assert me.call("POST", "/connected-accounts/complete", json=body).status_code == 201


def test_connect_rejects_foreign_redirects_unknown_connections_and_bad_bodies(me: MyAccount) -> None:
    def connect(**body: t.Any) -> requests.Response:
        return me.call(
            "POST",
            "/connected-accounts/connect",
            json={"connection": "github", "redirect_uri": CALLBACK, **body},
        )

    assert error_fields(connect(redirect_uri="https://evil.example/cb")) == {"redirect_uri"}
    assert error_fields(connect(redirect_uri="http://localhost:8001/bff/cb")) == {"redirect_uri"}
    assert error_fields(connect(connection="slack")) == {"connection"}
    assert error_fields(connect(code_challenge="x" * 43)) == {"code_challenge_method"}
    assert error_fields(connect(scopes=[])) == {"scopes"}
    assert error_fields(connect(authorization_params={"prompt": "always"})) == {"authorization_params.prompt"}


def test_tickets_and_auth_sessions_expire(me: MyAccount) -> None:
    started = start_connect(me)
    query = consent(me, started)
    late = start_connect(me)
    me.state.clock.advance(started["expires_in"] + 1)
    page = me.http.get(late["connect_uri"], params=late["connect_params"], timeout=10)
    assert page.status_code == 400 and "expired" in page.text
    body = completion(started, query)
    assert error_fields(me.call("POST", "/connected-accounts/complete", json=body)) == {"auth_session"}


def test_accounts_filter_by_connection_and_paginate(me: MyAccount) -> None:
    google = [connect_account(me)["id"], connect_account(me, login_hint="alice.work@example.com")["id"]]
    github = connect_account(me, "github")["id"]

    def ids(**params: t.Any) -> tuple[list[str], str | None]:
        page = me.call("GET", "/connected-accounts/accounts", params=params).json()
        return [a["id"] for a in page["accounts"]], page.get("next")

    assert ids(connection="google-oauth2") == (google, None)
    assert ids(connection=["google-oauth2", "github"]) == ([*google, github], None)
    first, cursor = ids(take=2)
    assert first == google and cursor is not None
    assert ids(take=2, **{"from": cursor}) == ([github], None)
    assert_error(me.call("GET", "/connected-accounts/accounts", params={"take": 21}), 400)
    assert_error(me.call("GET", "/connected-accounts/accounts", params={"take": 0}), 400)
    assert_error(me.call("GET", "/connected-accounts/accounts", params={"from": "!!"}), 400)


def test_accounts_of_one_user_are_invisible_to_another(me: MyAccount) -> None:
    account = connect_account(me)
    me.state.add_user("bob@example.com", "bob-password")
    bob = MyAccount(me.emulator, "bob@example.com")
    assert bob.call("GET", "/connected-accounts/accounts").json() == {"accounts": []}
    assert_error(bob.call("DELETE", f"/connected-accounts/accounts/{account['id']}"), 400)


# ----------------------------------------------------------------------- consents and organizations


def test_consents_and_organizations_are_empty_by_default(me: MyAccount) -> None:
    assert me.call("GET", "/consents").json() == {"consents": []}
    assert me.call("GET", "/organizations").json() == {"organizations": []}
    assert_error(me.call("GET", "/consents/cns_1"), 404)


def test_seeded_consents_and_organizations_are_returned(me: MyAccount) -> None:
    consent_obj = {
        "id": "cns_1",
        "client_id": CLIENT_ID,
        "created_at": "2025-01-01T00:00:00.000Z",
        "expires_at": "2026-01-01T00:00:00.000Z",
    }
    me.state.my_account.consents[me.sub] = [consent_obj]
    me.state.my_account.organizations[me.sub] = [{"id": f"org_{i}", "name": f"org-{i}"} for i in range(3)]
    assert me.call("GET", "/consents/cns_1").json() == consent_obj
    page = me.call("GET", "/organizations", params={"take": 2}).json()
    assert [o["id"] for o in page["organizations"]] == ["org_0", "org_1"]
    rest = me.call("GET", "/organizations", params={"from": page["next"]}).json()
    assert rest == {"organizations": [{"id": "org_2", "name": "org-2"}]}


# ----------------------------------------------------------------------- limits, faults, counters


def test_every_response_carries_rate_limit_headers(me: MyAccount) -> None:
    for response in (
        me.call("GET", "/factors"),
        me.call("GET", "/factors", token="bad"),
        me.call("GET", "/nope"),
    ):
        assert {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"} <= set(
            k.lower() for k in response.headers
        )


def test_the_tenant_rate_limit_answers_429_with_retry_after(me: MyAccount) -> None:
    me.state.my_account.rate_limit = 3
    # Start a fresh one-second window so the burst cannot straddle two.
    me.state.clock.set(float(int(time.time()) + 1000))
    remaining = [me.call("GET", "/factors").headers["x-ratelimit-remaining"] for _ in range(3)]
    limited = me.call("GET", "/factors")

    assert remaining == ["2", "1", "0"]
    assert_error(limited, 429)
    assert limited.headers["x-ratelimit-limit"] == "3" and limited.headers["x-ratelimit-remaining"] == "0"
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["x-auth0-error-kind"] == "global-rate-limit"
    assert int(limited.headers["x-ratelimit-reset"]) == int(me.state.clock.now()) + 1
    me.state.clock.advance(1)
    assert me.call("GET", "/factors").status_code == 200


def test_fail_next_answers_one_call_with_the_fault(me: MyAccount) -> None:
    me.state.my_account.fail_next(503, {"oops": True}, headers={"retry-after": "2"})
    me.state.my_account.fail_next(500)
    first = me.call("GET", "/factors")
    assert first.status_code == 503 and first.json() == {"oops": True} and first.headers["retry-after"] == "2"
    assert_error(me.call("GET", "/factors"), 500)
    assert me.call("GET", "/factors").status_code == 200


def test_calls_are_counted_per_route(me: MyAccount) -> None:
    me.call("GET", "/factors")
    me.call("GET", "/authentication-methods/totp%7Cdev_x")
    me.call("GET", "/authentication-methods/totp%7Cdev_y")
    calls = me.state.my_account.calls
    assert calls["GET /factors"] == 1
    assert calls["GET /authentication-methods/{authentication_method_id}"] == 2


def test_unknown_routes_are_404_error_responses(me: MyAccount) -> None:
    assert_error(me.call("GET", "/nothing-here"), 404, "A0E-404-0001")
    assert_error(me.call("PUT", "/nothing-here"), 404)
    assert_error(me.call("GET", "/factors/"), 404)
    assert_error(me.call("FOO", "/nothing-here"), 404)
    assert_error(me.http.get(me.emulator.url + "/me/v1", timeout=10), 404)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/factors", "GET"),
        ("POST", "/factors", "GET"),
        ("DELETE", "/authentication-methods", "GET, POST"),
        ("PUT", "/authentication-methods/totp%7Cdev_x", "GET, DELETE, PATCH"),
        ("GET", "/authentication-methods/totp%7Cdev_x/verify", "POST"),
        ("GET", "/connected-accounts/connect", "POST"),
        ("PATCH", "/connected-accounts/accounts/cac_x", "DELETE"),
        ("FOO", "/consents", "GET"),
    ],
)
def test_a_method_the_spec_does_not_declare_for_a_path_is_405_with_the_spec_methods_in_allow(
    me: MyAccount, method: str, path: str, allow: str
) -> None:
    # Refused before the token is looked at, like a route that does not exist.
    response = me.http.request(method, me.base + path, timeout=10)
    assert_error(response, 405, "A0E-405-0001")
    assert response.headers["Allow"] == allow
    assert response.headers["x-ratelimit-limit"]


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS"])
def test_head_and_options_are_405_because_the_spec_declares_neither(me: MyAccount, method: str) -> None:
    response = me.call(method, "/factors")
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET"
    assert me.state.my_account.calls["GET /factors"] == 0
