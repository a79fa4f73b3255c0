"""Per-user My Account data of the emulator: authentication methods, enrollments, connected accounts.

Everything here is guarded by one lock, because the emulator serves requests on several threads.
The methods raise :class:`~bff.emulator.myaccount_spec.ApiError` for the failures the API
reports to callers; the HTTP layer (``myaccount.py``) turns those into responses.

What the API does beyond the spec's schemas, as Auth0 does it: a phone number must be E.164
(``+`` and up to 15 digits) and an email an address; passkey creation options list the user's passkeys in
``excludeCredentials`` (unless the body sets ``use_exclude_credentials: false``), so one
authenticator is not registered twice; deleting the password method deletes the password the login
form accepts (:meth:`~bff.emulator.state.EmulatorState.remove_password`); and one external account
is connected at most once per user: completing a second flow for the same connection and external
account is a 409. The external account is the provider's user, which the emulator takes from the
connect request's ``authorization_params.login_hint``, else the user's email.

Test controls (all on ``state.my_account``): ``rate_limit``, ``calls``, ``fail_next``, ``last_otp``,
``seed_method``, ``enabled_factors``, ``connections``, ``consents``, ``organizations``,
``enrollment_lifetime`` and ``connect_lifetime``.
"""

from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import hashlib
import json
import re
import secrets
import string
import threading
import typing as t
import urllib.parse
from datetime import UTC, datetime

import pyotp
from webauthn import generate_registration_options, options_to_json, verify_registration_response
from webauthn.helpers import bytes_to_base64url
from webauthn.helpers.cose import COSEAlgorithmIdentifier
from webauthn.helpers.exceptions import InvalidRegistrationResponse
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from .myaccount_spec import ApiError, ApiSpec, bad_request, issue, validate
from .state import EmulatorState, User

__all__ = [
    "DEFAULT_CONNECTIONS",
    "DEFAULT_FACTORS",
    "E164",
    "EMAIL",
    "MFA_TYPES",
    "PASSWORD_POLICY",
    "PLACEHOLDER_IDS",
    "PRIMARY_TYPES",
    "RP_NAME",
    "TOTP_ISSUER",
    "UNLIMITED_REPORTED_LIMIT",
    "AuthenticationMethod",
    "ConnectRequest",
    "ConnectTicketError",
    "ConnectedAccount",
    "Connection",
    "Enrollment",
    "Fault",
    "MyAccountState",
    "RateLimitStatus",
    "decode_cursor",
    "encode_cursor",
    "iso8601",
    "paginate",
    "password_policy_problems",
]

#: Types whose method objects carry ``confirmed`` (``AuthenticationMethodMfaBase`` in the spec).
MFA_TYPES = frozenset(
    {"recovery-code", "push-notification", "totp", "webauthn-platform", "webauthn-roaming", "phone", "email"}
)
PRIMARY_TYPES = frozenset({"password", "passkey"})
#: E.164: a ``+``, then up to 15 digits of which the first (the country code's) is not 0.
E164 = re.compile(r"\+[1-9][0-9]{1,14}")
#: An address a one-time code can be sent to: one ``@`` between non-empty parts without spaces.
EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
#: Enrollments that have no id until verified answer with these placeholders (spec examples).
PLACEHOLDER_IDS = {"passkey": "passkey|new", "password": "password|new"}
RP_NAME = "bff emulator"
TOTP_ISSUER = "bff-emulator"

DEFAULT_FACTORS: dict[str, list[str]] = {
    "password": ["primary"],
    "passkey": ["primary"],
    "totp": ["secondary"],
    "phone": ["secondary"],
    "email": ["secondary"],
    "push-notification": ["secondary"],
    "recovery-code": ["secondary"],
}

#: The connections of seed 003's examples, plus GitHub. Scopes are what each offers for linking.
DEFAULT_CONNECTIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "google-oauth2",
        "google-oauth2",
        (
            "email",
            "profile",
            "https://www.googleapis.com/auth/calendar",
            "https://www.googleapis.com/auth/calendar.events",
            "https://www.googleapis.com/auth/calendar.addons.execute",
            "https://www.googleapis.com/auth/calendar.events.readonly",
            "https://www.googleapis.com/auth/calendar.settings.readonly",
            "openid",
        ),
    ),
    ("github", "github", ("read:user", "user:email", "repo")),
)

#: The password policy announced on password enrollment, and enforced on its verification.
PASSWORD_POLICY: dict[str, t.Any] = {
    "complexity": {
        "min_length": 8,
        "character_types": ["lowercase", "uppercase", "number", "special"],
        "character_type_rule": "three_of_four",
        "identical_characters": "block",
        "sequential_characters": "block",
        "max_length_exceeded": "truncate",
    },
    "profile_data": {"active": True, "blocked_fields": ["name", "email"]},
    "history": {"active": False, "size": 0},
    "dictionary": {"active": False, "default": "en_10k"},
}


@dataclasses.dataclass
class AuthenticationMethod:
    """An enrolled (or, for MFA types, enrolling) authentication method of one user."""

    id: str
    type: str
    created_at: float
    attributes: dict[str, t.Any]
    confirmed: bool = True
    #: The TOTP secret, so deleting the method also withdraws it as a login factor.
    totp_secret: str | None = None

    def to_json(self) -> dict[str, t.Any]:
        """The spec's ``AuthenticationMethod`` object."""
        body: dict[str, t.Any] = {"id": self.id, "type": self.type}
        if self.type in MFA_TYPES:
            body["confirmed"] = self.confirmed
        body.update(self.attributes)
        body["usage"] = ["primary"] if self.type in PRIMARY_TYPES else ["secondary"]
        body["created_at"] = iso8601(self.created_at)
        return body


@dataclasses.dataclass
class Enrollment:
    """A started enrollment, waiting for ``POST .../{id}/verify`` with its ``auth_session``."""

    auth_session: str
    sub: str
    type: str
    method_id: str
    expires_at: float
    #: The WebAuthn challenge (passkey), the TOTP secret, or the code sent by email or text.
    challenge: bytes = b""
    secret: str = ""
    attributes: dict[str, t.Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Connection:
    """A connection offered for Connected Accounts."""

    name: str
    strategy: str
    scopes: tuple[str, ...]

    def to_json(self) -> dict[str, t.Any]:
        return {"name": self.name, "strategy": self.strategy, "scopes": list(self.scopes)}


@dataclasses.dataclass
class ConnectRequest:
    """A Connected Accounts flow between ``/connect`` and ``/complete``."""

    auth_session: str
    ticket: str
    sub: str
    connection: Connection
    redirect_uri: str
    state: str | None
    code_challenge: str | None
    scopes: list[str]
    expires_at: float
    #: Who the user is at the provider: what is connected, at most once per user and connection.
    external_account: str = ""
    decided: bool = False
    connect_code: str | None = None
    completed: bool = False


@dataclasses.dataclass
class ConnectedAccount:
    id: str
    connection: str
    scopes: list[str]
    created_at: float
    #: Insertion order, the stable key of pagination cursors.
    seq: int
    #: The user at the provider (see :attr:`ConnectRequest.external_account`); not part of the API's object.
    external_account: str = ""

    def to_json(self) -> dict[str, t.Any]:
        return {
            "id": self.id,
            "connection": self.connection,
            "access_type": "offline",
            "scopes": list(self.scopes),
            "created_at": iso8601(self.created_at),
        }


@dataclasses.dataclass(frozen=True)
class Fault:
    """A canned response for the next My Account API call (see :meth:`MyAccountState.fail_next`)."""

    status: int
    body: t.Any
    headers: dict[str, str]


@dataclasses.dataclass(frozen=True)
class RateLimitStatus:
    """The tenant bucket after counting one request; ``limited`` means answer 429."""

    limited: bool
    limit: int
    remaining: int
    reset: int
    retry_after: int

    def headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-limit": str(self.limit),
            "x-ratelimit-remaining": str(self.remaining),
            "x-ratelimit-reset": str(self.reset),
        }


class ConnectTicketError(Exception):
    """The consent page was opened with an unknown, used or expired ticket."""


#: The bucket reported while no limit is enforced: a full one, so clients never throttle themselves.
UNLIMITED_REPORTED_LIMIT = 1000


def iso8601(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _random_id(length: int = 22) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def encode_cursor(key: int) -> str:
    return _b64url(str(key).encode("ascii"))


def decode_cursor(cursor: str) -> int:
    """The position a ``from`` cursor stands for; a 400 on anything this API did not hand out."""
    try:
        return int(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii"))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError(
            400, "Invalid pagination cursor", validation_errors=[issue("invalid cursor", ["from"], "query")]
        ) from None


def paginate(
    items: t.Sequence[tuple[int, dict[str, t.Any]]], cursor: str | None, take: int, key: str
) -> dict[str, t.Any]:
    """A page of ``(position, item)`` pairs from ``cursor``, with ``next`` when more remain."""
    start = decode_cursor(cursor) if cursor is not None else 0
    remaining = [(position, item) for position, item in items if position >= start]
    page: dict[str, t.Any] = {key: [item for _, item in remaining[:take]]}
    if len(remaining) > take:
        page["next"] = encode_cursor(remaining[take][0])
    return page


class MyAccountState:
    """The My Account API's per-user data, plus the controls tests use to steer and observe it."""

    def __init__(self, idp: EmulatorState, spec: ApiSpec) -> None:
        self.idp = idp
        self.spec = spec
        self.lock = threading.RLock()
        #: Tenant-wide requests per second, or ``None`` for no limit (the seeds state 25).
        self.rate_limit: int | None = None
        #: Requests received, keyed ``"METHOD /path"`` with the spec's path template.
        self.calls: collections.Counter[str] = collections.Counter()
        #: Factor type -> usage, as GET /factors reports them; enrolling any other type is refused.
        self.enabled_factors: dict[str, list[str]] = {k: list(v) for k, v in DEFAULT_FACTORS.items()}
        self.connections: list[Connection] = [Connection(n, s, sc) for n, s, sc in DEFAULT_CONNECTIONS]
        #: Consent and organization objects in the spec's shapes, by user.
        self.consents: dict[str, list[dict[str, t.Any]]] = {}
        self.organizations: dict[str, list[dict[str, t.Any]]] = {}
        self.enrollment_lifetime = 300.0
        self.connect_lifetime = 300
        self._methods: dict[str, dict[str, AuthenticationMethod]] = {}
        self._enrollments: dict[str, Enrollment] = {}
        self._sent_codes: list[tuple[str, str, str]] = []
        self._connect_requests: dict[str, ConnectRequest] = {}
        self._tickets: dict[str, str] = {}
        self._accounts: dict[str, dict[str, ConnectedAccount]] = {}
        self._account_seq = 0
        self._faults: collections.deque[Fault] = collections.deque()
        self._window = -1
        self._window_count = 0

    # ----------------------------------------------------------------- controls and accounting

    def fail_next(
        self, status: int, body: t.Any = None, *, headers: t.Mapping[str, str] | None = None
    ) -> None:
        """Answer the next My Account API call with ``status`` and ``body`` (JSON) instead.

        Without a body the answer is the spec's ``ErrorResponse`` for the status. Calls queue.
        """
        with self.lock:
            self._faults.append(Fault(status, body, dict(headers or {})))

    def take_fault(self) -> Fault | None:
        with self.lock:
            return self._faults.popleft() if self._faults else None

    def last_otp(self, sub: str, type: str | None = None) -> str:
        """The one-time code most recently sent to ``sub`` (by ``email`` or ``phone`` if given)."""
        with self.lock:
            for sent_sub, kind, code in reversed(self._sent_codes):
                if sent_sub == sub and type in (None, kind):
                    return code
        raise LookupError(f"no one-time code was sent to {sub}")

    def count_request(self, key: str) -> RateLimitStatus:
        """Count one request for ``calls`` and against the tenant's per-second bucket."""
        now = self.idp.clock.now()
        with self.lock:
            self.calls[key] += 1
            window = int(now)
            if window != self._window:
                self._window, self._window_count = window, 0
            reset = window + 1
            retry_after = max(1, int(reset - now + 0.999))
            if self.rate_limit is None:
                return RateLimitStatus(
                    False, UNLIMITED_REPORTED_LIMIT, UNLIMITED_REPORTED_LIMIT, reset, retry_after
                )
            limited = self._window_count >= self.rate_limit
            if not limited:
                self._window_count += 1
            remaining = self.rate_limit - self._window_count
            return RateLimitStatus(limited, self.rate_limit, remaining, reset, retry_after)

    def seed_method(self, sub: str, type: str, **attributes: t.Any) -> str:
        """Add a confirmed method directly, e.g. the read-only ``webauthn-roaming``; returns its id."""
        with self.lock:
            method = AuthenticationMethod(f"{type}|dev_{_random_id(16)}", type, self._now(), dict(attributes))
            self._user_methods(sub)[method.id] = method
            return method.id

    # ----------------------------------------------------------------- authentication methods

    def factors(self) -> dict[str, t.Any]:
        with self.lock:
            return {"factors": [{"type": k, "usage": list(v)} for k, v in self.enabled_factors.items()]}

    def list_methods(self, sub: str, type_filter: str | None) -> dict[str, t.Any]:
        with self.lock:
            methods = [m.to_json() for m in self._user_methods(sub).values() if type_filter in (None, m.type)]
        return {"authentication_methods": methods}

    def get_method(self, sub: str, method_id: str) -> dict[str, t.Any]:
        with self.lock:
            return self._method(sub, method_id, missing=404).to_json()

    def start_enrollment(self, sub: str, body: dict[str, t.Any]) -> tuple[dict[str, t.Any], str]:
        """Begin enrolling ``body['type']``; returns the 202 body and the id for ``Location``."""
        kind: str = body["type"]
        with self.lock:
            if kind not in self.enabled_factors:
                raise bad_request(f"The factor {kind} is not enabled for this tenant", "type")
            if kind == "email" and not EMAIL.fullmatch(body["email"]):
                raise bad_request("The email address is not valid", "email")
            if kind == "phone" and not E164.fullmatch(body["phone_number"]):
                raise bad_request(
                    "The phone number must be in E.164 format: '+', the country code and the number,"
                    " at most 15 digits (e.g. +15551234567)",
                    "phone_number",
                )
            methods = self._user_methods(sub)
            # A new attempt supersedes an abandoned one, so unconfirmed entries do not pile up.
            for stale in [m.id for m in methods.values() if m.type == kind and not m.confirmed]:
                del methods[stale]
            enrollment = Enrollment(
                auth_session=secrets.token_urlsafe(32),
                sub=sub,
                type=kind,
                method_id=PLACEHOLDER_IDS.get(kind, f"{kind}|dev_{_random_id(16)}"),
                expires_at=self._now() + self.enrollment_lifetime,
            )
            response: dict[str, t.Any] = {"auth_session": enrollment.auth_session}
            if kind == "passkey":
                response["authn_params_public_key"] = self._passkey_options(sub, body, enrollment)
            elif kind == "password":
                response["id"] = enrollment.method_id
                response["policy"] = PASSWORD_POLICY
            else:
                response["id"] = enrollment.method_id
                response.update(self._start_mfa(sub, kind, body, enrollment))
                methods[enrollment.method_id] = AuthenticationMethod(
                    enrollment.method_id, kind, self._now(), dict(enrollment.attributes), confirmed=False
                )
            self._enrollments[enrollment.auth_session] = enrollment
            return response, enrollment.method_id

    def verify_enrollment(
        self, sub: str, method_id: str, body: dict[str, t.Any], *, user_agent: str | None
    ) -> tuple[dict[str, t.Any], str]:
        """Confirm an enrollment; returns the final method and its id for ``Location``."""
        with self.lock:
            if method_id not in PLACEHOLDER_IDS.values():
                self._method(sub, method_id)
            auth_session = body.get("auth_session")
            enrollment = self._enrollments.get(auth_session) if isinstance(auth_session, str) else None
            if enrollment is None or enrollment.sub != sub or enrollment.method_id != method_id:
                raise bad_request(
                    "The auth_session is invalid for this authentication method", "auth_session"
                )
            if self._now() >= enrollment.expires_at:
                raise bad_request("The auth_session has expired", "auth_session")
            schema, _ = t.cast(
                tuple[dict[str, t.Any], bool],
                self.spec.request_schema("POST", "/authentication-methods/{authentication_method_id}/verify"),
            )
            errors = validate(self.spec, self.spec.variant_for(schema, enrollment.type), body)
            if errors:
                raise ApiError(400, "Payload validation error", validation_errors=errors)
            if enrollment.type == "passkey":
                method = self._verify_passkey(enrollment, body["authn_response"], user_agent)
            elif enrollment.type == "password":
                method = self._verify_password(enrollment, body["new_password"])
            else:
                method = self._verify_mfa(enrollment, body.get("otp_code"))
            del self._enrollments[enrollment.auth_session]
            return method.to_json(), method.id

    def update_method(self, sub: str, method_id: str, body: dict[str, t.Any]) -> dict[str, t.Any]:
        with self.lock:
            method = self._method(sub, method_id)
            # Only types whose schema has the property may take it (passkeys, for one, have no name).
            mapping = self.spec.schema("AuthenticationMethod")["discriminator"]["mapping"]
            allowed = self.spec.property_names({"$ref": mapping[method.type]})
            errors = [
                issue(f"cannot be set on a {method.type} authentication method", [name])
                for name in body
                if name not in allowed
            ]
            if errors:
                raise ApiError(400, "Payload validation error", validation_errors=errors)
            method.attributes.update(body)
            return method.to_json()

    def delete_method(self, sub: str, method_id: str) -> None:
        with self.lock:
            method = self._method(sub, method_id)
            methods = self._user_methods(sub)
            primaries = [m for m in methods.values() if m.type in PRIMARY_TYPES]
            if method.type in PRIMARY_TYPES and len(primaries) == 1:
                raise ApiError(409, "The last primary authentication method of a user cannot be deleted")
            del methods[method_id]
            if method.totp_secret is not None:
                self._withdraw_totp_secret(sub, method.totp_secret)
            if method.type == "password":
                # The login form refuses the deleted password from now on; verifying a new password
                # enrollment sets one again.
                self.idp.remove_password(sub)

    def _now(self) -> float:
        return self.idp.clock.now()

    def _user_methods(self, sub: str) -> dict[str, AuthenticationMethod]:
        """The user's methods, starting with the password every emulator user logs in with."""
        methods = self._methods.get(sub)
        if methods is None:
            password = AuthenticationMethod(
                f"password|{_b64url(sub.encode())}", "password", self._now(), {"identity_user_id": sub}
            )
            methods = self._methods[sub] = {password.id: password}
        return methods

    def _method(self, sub: str, method_id: str, *, missing: int = 400) -> AuthenticationMethod:
        """The user's method ``method_id``. An id the user has no method with is answered ``missing``:
        404 where the spec declares it (GET), else the declared 400, as the spec lists no 404 there."""
        method = self._user_methods(sub).get(method_id)
        if method is None:
            raise ApiError(missing, f"The authentication method {method_id} does not exist")
        return method

    def _user(self, sub: str) -> User | None:
        return self.idp.users.get(sub)

    def _passkey_options(self, sub: str, body: dict[str, t.Any], enrollment: Enrollment) -> dict[str, t.Any]:
        user = self._user(sub)
        user_name = (user.email if user else None) or sub
        options = generate_registration_options(
            rp_id=self._rp_id(),
            rp_name=RP_NAME,
            user_name=user_name,
            user_id=sub.encode(),
            user_display_name=(user.name if user else None) or user_name,
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.REQUIRED,
                user_verification=UserVerificationRequirement.PREFERRED,
            ),
            supported_pub_key_algs=[
                COSEAlgorithmIdentifier.ECDSA_SHA_256,
                COSEAlgorithmIdentifier.RSASSA_PKCS1_v1_5_SHA_256,
            ],
        )
        enrollment.challenge = options.challenge
        enrollment.attributes["identity_user_id"] = body.get("identity_user_id", sub)
        public_key: dict[str, t.Any] = json.loads(options_to_json(options))
        # The spec's AuthenticatorSelection admits only these two members.
        selection = public_key["authenticatorSelection"]
        public_key["authenticatorSelection"] = {
            k: selection[k] for k in ("residentKey", "userVerification") if k in selection
        }
        if body.get("use_exclude_credentials", True):
            # The user's passkeys, so the browser refuses to register one of their authenticators twice.
            # The key ids are base64url already, as the descriptors carry them.
            public_key["excludeCredentials"] = [
                _credential_descriptor(m) for m in self._user_methods(sub).values() if m.type == "passkey"
            ]
        else:
            public_key.pop("excludeCredentials", None)
        return public_key

    def _rp_id(self) -> str:
        return urllib.parse.urlsplit(self.idp.bff_base_url).hostname or "localhost"

    def _origin(self) -> str:
        parts = urllib.parse.urlsplit(self.idp.bff_base_url)
        return f"{parts.scheme}://{parts.netloc}"

    def _start_mfa(
        self, sub: str, kind: str, body: dict[str, t.Any], enrollment: Enrollment
    ) -> dict[str, t.Any]:
        if kind in ("totp", "push-notification"):
            enrollment.secret = pyotp.random_base32()
            label = self._user(sub)
            uri = pyotp.TOTP(enrollment.secret).provisioning_uri(
                name=(label.email if label else None) or sub, issuer_name=TOTP_ISSUER
            )
            return (
                {"barcode_uri": uri, "manual_input_code": enrollment.secret}
                if kind == "totp"
                else {"barcode_uri": uri}
            )
        if kind == "recovery-code":
            alphabet = string.ascii_uppercase + string.digits
            enrollment.secret = "".join(secrets.choice(alphabet) for _ in range(24))
            return {"recovery_code": enrollment.secret}
        if kind == "email":
            enrollment.attributes["email"] = body["email"]
        else:
            enrollment.attributes["phone_number"] = body["phone_number"]
            enrollment.attributes["preferred_authentication_method"] = body.get(
                "preferred_authentication_method", "sms"
            )
        enrollment.secret = f"{secrets.randbelow(10**6):06d}"
        self._sent_codes.append((sub, kind, enrollment.secret))
        if kind == "email":
            self.idp.deliver_code("email", enrollment.attributes["email"], enrollment.secret)
        else:
            channel = enrollment.attributes["preferred_authentication_method"]
            channel = channel if channel in ("sms", "voice") else "sms"
            self.idp.deliver_code(channel, enrollment.attributes["phone_number"], enrollment.secret)
        return {}

    def _verify_mfa(self, enrollment: Enrollment, otp_code: str | None) -> AuthenticationMethod:
        method = self._method(enrollment.sub, enrollment.method_id)
        if enrollment.type == "totp":
            totp = pyotp.TOTP(enrollment.secret)
            if not totp.verify(otp_code or "", for_time=int(self._now()), valid_window=1):
                raise bad_request("The one-time code is invalid", "otp_code")
            method.totp_secret = enrollment.secret
            with self.idp.lock:
                user = self._user(enrollment.sub)
                if user is not None and enrollment.secret not in user.totp_secrets:
                    user.totp_secrets.append(enrollment.secret)
        elif enrollment.type in ("email", "phone") and not secrets.compare_digest(
            (otp_code or "").encode(), enrollment.secret.encode()
        ):
            raise bad_request("The one-time code is invalid", "otp_code")
        elif enrollment.type == "recovery-code":
            # A user holds one recovery code; confirming a new one replaces the old.
            methods = self._user_methods(enrollment.sub)
            for old in [m.id for m in methods.values() if m.type == "recovery-code" and m.id != method.id]:
                del methods[old]
        method.confirmed = True
        return method

    def _withdraw_totp_secret(self, sub: str, secret: str) -> None:
        with self.idp.lock:
            user = self._user(sub)
            if user is not None and secret in user.totp_secrets:
                user.totp_secrets.remove(secret)

    def _verify_passkey(
        self, enrollment: Enrollment, authn_response: dict[str, t.Any], user_agent: str | None
    ) -> AuthenticationMethod:
        try:
            verified = verify_registration_response(
                credential=authn_response,
                expected_challenge=enrollment.challenge,
                expected_rp_id=self._rp_id(),
                expected_origin=self._origin(),
            )
        except InvalidRegistrationResponse as exc:
            raise bad_request(f"The passkey registration is invalid: {exc}", "authn_response") from None
        key_id = bytes_to_base64url(verified.credential_id)
        methods = self._user_methods(enrollment.sub)
        if any(m.type == "passkey" and m.attributes.get("key_id") == key_id for m in methods.values()):
            raise bad_request("This passkey is already enrolled", "authn_response.id")
        attributes: dict[str, t.Any] = {
            "credential_device_type": verified.credential_device_type.value,
            "credential_backed_up": verified.credential_backed_up,
            "identity_user_id": enrollment.attributes["identity_user_id"],
            "key_id": key_id,
            "public_key": bytes_to_base64url(verified.credential_public_key),
            "user_handle": bytes_to_base64url(enrollment.sub.encode()),
            "aaguid": verified.aaguid,
            "relying_party_id": self._rp_id(),
        }
        transports = authn_response["response"].get("transports")
        if transports:
            attributes["transports"] = transports
        if user_agent:
            attributes["user_agent"] = user_agent
        method = AuthenticationMethod(f"passkey|{secrets.token_hex(8)}", "passkey", self._now(), attributes)
        methods[method.id] = method
        return method

    def _verify_password(self, enrollment: Enrollment, new_password: str) -> AuthenticationMethod:
        problems = password_policy_problems(new_password, self._user(enrollment.sub))
        if problems:
            raise ApiError(
                400,
                "The password does not satisfy the password policy",
                validation_errors=[issue(p, ["new_password"]) for p in problems],
            )
        methods = self._user_methods(enrollment.sub)
        method = next((m for m in methods.values() if m.type == "password"), None)
        if method is None:
            method = AuthenticationMethod(
                f"password|{_b64url(enrollment.sub.encode())}",
                "password",
                self._now(),
                {"identity_user_id": enrollment.sub},
            )
            methods[method.id] = method
        method.attributes["last_password_reset"] = iso8601(self._now())
        with self.idp.lock:
            user = self._user(enrollment.sub)
            if user is not None:
                # The new password is the one the login page checks from now on.
                user.password = new_password
        return method

    # ----------------------------------------------------------------- connected accounts

    def list_connections(self, cursor: str | None, take: int) -> dict[str, t.Any]:
        with self.lock:
            items = [(i, c.to_json()) for i, c in enumerate(self.connections)]
        return paginate(items, cursor, take, "connections")

    def start_connect(self, sub: str, body: dict[str, t.Any]) -> dict[str, t.Any]:
        """Open a Connected Accounts flow: a ticket for the consent page and an ``auth_session``."""
        with self.lock:
            connection = next((c for c in self.connections if c.name == body["connection"]), None)
            if connection is None:
                raise bad_request(
                    f"The connection {body['connection']} is not enabled for connected accounts", "connection"
                )
            if not _is_under(body["redirect_uri"], self.idp.bff_base_url):
                raise bad_request("The redirect_uri is not an allowed callback URL", "redirect_uri")
            user = self._user(sub)
            hint = (body.get("authorization_params") or {}).get("login_hint")
            request = ConnectRequest(
                auth_session=secrets.token_urlsafe(32),
                ticket=secrets.token_urlsafe(24),
                sub=sub,
                connection=connection,
                redirect_uri=body["redirect_uri"],
                state=body.get("state"),
                code_challenge=body.get("code_challenge"),
                scopes=list(body.get("scopes") or connection.scopes),
                expires_at=self._now() + self.connect_lifetime,
                external_account=hint or (user.email if user is not None else sub),
            )
            self._connect_requests[request.auth_session] = request
            self._tickets[request.ticket] = request.auth_session
            return {
                "connect_uri": f"{self.idp.issuer}connect",
                "auth_session": request.auth_session,
                "connect_params": {"ticket": request.ticket},
                "expires_in": self.connect_lifetime,
            }

    def consent_request(self, ticket: str) -> ConnectRequest:
        """The flow a consent-page ticket belongs to, while it awaits the user's decision."""
        with self.lock:
            auth_session = self._tickets.get(ticket)
            request = self._connect_requests.get(auth_session) if auth_session else None
            if request is None or request.decided:
                raise ConnectTicketError("This link is invalid or has already been used.")
            if self._now() >= request.expires_at:
                raise ConnectTicketError("This link has expired.")
            return dataclasses.replace(request)

    def decide(self, ticket: str, *, allow: bool) -> str:
        """Record the user's decision on the consent page; returns where to send the browser."""
        with self.lock:
            request = self._connect_requests[self.consent_request(ticket).auth_session]
            request.decided = True
            params: dict[str, str]
            if allow:
                request.connect_code = secrets.token_urlsafe(24)
                params = {"connect_code": request.connect_code}
            else:
                params = {"error": "access_denied", "error_description": "The user denied the connection."}
            if request.state is not None:
                params["state"] = request.state
            separator = "&" if urllib.parse.urlsplit(request.redirect_uri).query else "?"
            return f"{request.redirect_uri}{separator}{urllib.parse.urlencode(params)}"

    def complete_connect(self, sub: str, body: dict[str, t.Any]) -> dict[str, t.Any]:
        """Finish a flow: check every parameter against the request, then link the account."""
        with self.lock:
            request = self._connect_requests.get(body["auth_session"])
            if request is None or request.sub != sub:
                raise bad_request("The auth_session is invalid", "auth_session")
            if request.completed:
                raise ApiError(409, "This connect request has already been completed")
            if self._now() >= request.expires_at:
                raise bad_request("The auth_session has expired", "auth_session")
            if request.connect_code is None or not secrets.compare_digest(
                request.connect_code.encode(), body["connect_code"].encode()
            ):
                raise bad_request("The connect_code is invalid", "connect_code")
            if body["redirect_uri"] != request.redirect_uri:
                raise bad_request("The redirect_uri does not match the connect request", "redirect_uri")
            verifier = body.get("code_verifier")
            if request.code_challenge is not None:
                if verifier is None:
                    raise bad_request("A code_verifier is required for this connect request", "code_verifier")
                computed = _b64url(hashlib.sha256(verifier.encode("ascii", "replace")).digest())
                if not secrets.compare_digest(computed.encode(), request.code_challenge.encode()):
                    raise bad_request("The code_verifier does not match the code_challenge", "code_verifier")
            elif verifier is not None:
                raise bad_request("No code_challenge was sent with the connect request", "code_verifier")
            # The connect_code is spent whatever the outcome below.
            request.completed = True
            accounts = self._accounts.get(sub, {}).values()
            if any(
                a.connection == request.connection.name and a.external_account == request.external_account
                for a in accounts
            ):
                raise ApiError(
                    409,
                    f"The {request.connection.name} account {request.external_account} is already connected",
                )
            self._account_seq += 1
            account = ConnectedAccount(
                f"cac_{_random_id()}",
                request.connection.name,
                request.scopes,
                self._now(),
                self._account_seq,
                external_account=request.external_account,
            )
            self._accounts.setdefault(sub, {})[account.id] = account
            return account.to_json()

    def list_accounts(
        self, sub: str, connections: list[str], cursor: str | None, take: int
    ) -> dict[str, t.Any]:
        with self.lock:
            items = [
                (a.seq, a.to_json())
                for a in self._accounts.get(sub, {}).values()
                if not connections or a.connection in connections
            ]
        return paginate(items, cursor, take, "accounts")

    def delete_account(self, sub: str, account_id: str) -> None:
        with self.lock:
            if self._accounts.get(sub, {}).pop(account_id, None) is None:
                # The spec declares no 404 for this DELETE: its 400, as for a malformed id.
                raise ApiError(400, f"The connected account {account_id} does not exist")

    # ----------------------------------------------------------------- consents and organizations

    def list_consents(self, sub: str) -> dict[str, t.Any]:
        with self.lock:
            return {"consents": list(self.consents.get(sub, []))}

    def get_consent(self, sub: str, consent_id: str) -> dict[str, t.Any]:
        with self.lock:
            for consent in self.consents.get(sub, []):
                if consent.get("id") == consent_id:
                    return dict(consent)
        raise ApiError(404, f"The consent {consent_id} does not exist")

    def list_organizations(self, sub: str, cursor: str | None, take: int) -> dict[str, t.Any]:
        with self.lock:
            items = list(enumerate(self.organizations.get(sub, [])))
        return paginate(items, cursor, take, "organizations")


def _credential_descriptor(passkey: AuthenticationMethod) -> dict[str, t.Any]:
    """The ``PublicKeyCredentialDescriptor`` of an enrolled passkey, for ``excludeCredentials``."""
    descriptor: dict[str, t.Any] = {"id": passkey.attributes.get("key_id", ""), "type": "public-key"}
    transports = passkey.attributes.get("transports")
    if transports:
        descriptor["transports"] = list(transports)
    return descriptor


def _is_under(url: str, base: str) -> bool:
    """Whether ``url`` has the origin of ``base`` and a path at or below ``base``'s path."""
    try:
        target, root = urllib.parse.urlsplit(url), urllib.parse.urlsplit(base)
    except ValueError:  # e.g. "http://[x" (an unclosed IPv6 literal) passes the schema's "uri" check
        return False
    if (target.scheme, target.netloc) != (root.scheme, root.netloc) or target.fragment:
        return False
    prefix = root.path.rstrip("/") + "/"
    return (target.path or "/").startswith(prefix) or target.path == root.path


def password_policy_problems(password: str, user: User | None) -> list[str]:
    """What ``password`` violates in :data:`PASSWORD_POLICY`; empty when it complies."""
    complexity = PASSWORD_POLICY["complexity"]
    problems = []
    if len(password) < complexity["min_length"]:
        problems.append(f"must be at least {complexity['min_length']} characters long")
    kinds = [
        any(c.islower() for c in password),
        any(c.isupper() for c in password),
        any(c.isdigit() for c in password),
        any(not c.isalnum() for c in password),
    ]
    if sum(kinds) < 3:
        problems.append("must contain three of: lowercase, uppercase, numbers, special characters")
    triples = [password[i : i + 3] for i in range(len(password) - 2)]
    if any(len(set(triple)) == 1 for triple in triples):
        problems.append("must not contain more than two identical characters in a row")
    if any(ord(tr[0]) + 1 == ord(tr[1]) and ord(tr[1]) + 1 == ord(tr[2]) for tr in triples):
        problems.append("must not contain sequential characters such as abc or 123")
    lowered = password.lower()
    if user is not None:
        blocked = [user.name or "", user.email or "", (user.email or "").split("@")[0]]
        if any(len(value) >= 3 and value.lower() in lowered for value in blocked):
            problems.append("must not contain the user's name or email")
    return problems
