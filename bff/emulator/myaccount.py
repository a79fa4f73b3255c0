"""The emulator's My Account API under ``/me/v1``, driven by the official OpenAPI document.

Security first: requests are authenticated as Auth0 does it. An access token is required (401
without), its signature, issuer and expiry are checked by the IdP state, its ``aud`` must be
``{issuer}me/`` (401 otherwise) and its ``scope`` must hold the scope the spec names for the
operation (403 ``insufficient_scope`` otherwise). The user is the token's ``sub``. The API accepts
DPoP-bound tokens, as Auth0's does by default (connected-accounts-for-token-vault.md): a bound token
(``cnf.jkt``) only with ``Authorization: DPoP`` and a proof for this very request made with its key
(:func:`~bff.emulator.dpop_check.check_resource_request`); every refusal is a 401 ``ErrorResponse`` with a
``WWW-Authenticate: DPoP error=...`` challenge (RFC 9449 section 7.1). With the ``dpop_api_nonce`` setting
a proof must also carry the API's nonce: without it, 401 ``use_dpop_nonce`` and a ``DPoP-Nonce`` header,
which every API answer then carries. Unbound tokens keep working with ``Bearer``.

Every operation of the spec is served; :func:`register` refuses to start if one lacks a handler.
Request bodies are validated against the spec's schemas, a body of the wrong JSON shape is a 400 and
never a server error, errors use its ``ErrorResponse`` shape, and every response carries the
``x-ratelimit-*`` headers. A path of the spec asked with a method the spec does not declare for it
(``HEAD`` and ``OPTIONS`` included) is a 405 whose ``Allow`` lists the spec's methods for that path;
any other path is a 404. The data and the test controls live in
:class:`~bff.emulator.myaccount_state.MyAccountState`, attached to the IdP state as
``state.my_account``; the consent page of Connected Accounts is in :mod:`bff.emulator.connect`.
"""

from __future__ import annotations

import json
import re
import typing as t
import urllib.parse

from flask import Blueprint, Flask, Response, g, jsonify, request
from flask.typing import ResponseReturnValue

from . import connect
from .dpop_check import ResourceAuthError, check_resource_request
from .myaccount_spec import (
    INSUFFICIENT_SCOPE_CODE,
    INVALID_TOKEN_CODE,
    ApiError,
    ApiSpec,
    error_body,
    issue,
    validate,
)
from .myaccount_state import Fault, MyAccountState
from .state import EmulatorState, InvalidAccessToken

__all__ = ["API_PREFIX", "register"]

API_PREFIX = "/me/v1"
OTP_HOOK_PATH = "/_emulator/my-account/otp"

Handler = t.Callable[..., ResponseReturnValue]

#: Page sizes the spec's parameter descriptions allow: "Number of results to return (1-20)", "(1-100)".
MAX_TAKE = 20
MAX_ORGANIZATIONS_TAKE = 100


def register(app: Flask, state: EmulatorState) -> None:
    """Serve the My Account API, its consent page and its test hooks from the emulator's ``app``."""
    spec = ApiSpec.load()
    store = MyAccountState(state, spec)
    # The IdP state does not declare this attribute: it never reads it, tests and pages do.
    setattr(state, "my_account", store)  # noqa: B010
    app.register_blueprint(_MyAccountApi(state, store, spec).blueprint())
    app.register_blueprint(connect.blueprint(store))
    app.register_blueprint(_controls_blueprint(store))


class _MyAccountApi:
    """The ``/me/v1`` routes: authentication, body validation and the per-operation handlers."""

    def __init__(self, idp: EmulatorState, store: MyAccountState, spec: ApiSpec) -> None:
        self.idp = idp
        self.store = store
        self.spec = spec
        # Each path template of the spec, as a pattern over the (decoded) path under ``/me/v1``, with the
        # methods the spec declares for it, in the spec's order.
        self.paths: list[tuple[re.Pattern[str], str, list[str]]] = []
        for method, path in spec.operations():
            known = next((entry for entry in self.paths if entry[1] == path), None)
            if known is None:
                parts = re.split(r"(\{\w+\})", path)
                pattern = "".join("[^/]+" if part.startswith("{") else re.escape(part) for part in parts)
                known = (re.compile(pattern), path, [])
                self.paths.append(known)
            known[2].append(method)

    def handlers(self) -> dict[str, Handler]:
        """The handler of each spec ``operationId``."""
        return {
            "getFactors": self.get_factors,
            "getAuthenticationMethods": self.list_methods,
            "createAuthenticationMethod": self.create_method,
            "getAuthenticationMethod": self.get_method,
            "deleteAuthenticationMethod": self.delete_method,
            "updateAuthenticationMethod": self.update_method,
            "confirmAuthenticationMethod": self.verify_method,
            "createConnectedAccountRequest": self.connect,
            "completeConnectedAccountRequest": self.complete,
            "getConnectedAccounts": self.list_accounts,
            "getConnectedAccountsConnections": self.list_connections,
            "deleteConnectedAccount": self.delete_account,
            "getConsents": self.list_consents,
            "getConsent": self.get_consent,
            "getOrganizations": self.list_organizations,
        }

    def blueprint(self) -> Blueprint:
        bp = Blueprint("myaccount", __name__, url_prefix=API_PREFIX)
        # App-wide hooks that act on API paths only: unlike a blueprint's own hooks they also run for a
        # request no rule matches (an unknown path, a method no rule has), which must get the API's
        # answers too, not Flask's HTML pages.
        bp.before_app_request(self.before_request)
        bp.after_app_request(self.after_request)
        handlers = self.handlers()
        for method, path in self.spec.operations():
            operation_id = self.spec.operation(method, path)["operationId"]
            if operation_id not in handlers:
                raise RuntimeError(f"the emulator does not implement {method} {path} ({operation_id})")
            rule = re.sub(r"\{(\w+)\}", r"<\1>", path)
            view = self.guard(method, path, handlers[operation_id])
            # No automatic OPTIONS answer: the spec declares none (before_request answers 405 first anyway).
            bp.add_url_rule(
                rule, endpoint=operation_id, view_func=view, methods=[method], provide_automatic_options=False
            )
        return bp

    # ----------------------------------------------------------------- around every request

    def before_request(self) -> ResponseReturnValue | None:
        """Count the call, then answer the rate limit, an injected fault, 404 or 405 before any handler."""
        if request.path != API_PREFIX and not request.path.startswith(API_PREFIX + "/"):
            return None
        relative = request.path.removeprefix(API_PREFIX)
        found = next(((path, methods) for pattern, path, methods in self.paths if pattern.fullmatch(relative)), None)
        # ``store.calls`` counts by the spec's path template, unknown paths by the path itself.
        key = f"{request.method} {found[0] if found is not None else relative}"
        status = self.store.count_request(key)
        g.my_account_rate = status
        if status.limited:
            raise ApiError(
                429,
                "Global limit has been reached",
                headers={"retry-after": str(status.retry_after), "x-auth0-error-kind": "global-rate-limit"},
            )
        fault = self.store.take_fault()
        if fault is not None:
            return _fault_response(fault)
        if found is None:
            raise ApiError(404, f"The requested resource {request.method} {request.path} was not found.")
        path, methods = found
        if request.method not in methods:
            raise ApiError(
                405,
                f"The method {request.method} is not allowed for {API_PREFIX}{path}",
                headers={"Allow": ", ".join(methods)},
            )
        return None

    def after_request(self, response: Response) -> Response:
        status = g.get("my_account_rate")
        if status is not None:
            for name, value in status.headers().items():
                response.headers.setdefault(name, value)
            # While the API wants nonces, every answer names the current one (RFC 9449 section 9).
            if self.idp.settings.dpop_api_nonce:
                response.headers.setdefault("DPoP-Nonce", self.idp.dpop_nonce("my_account"))
        return response

    def guard(self, method: str, path: str, handler: Handler) -> Handler:
        """Wrap ``handler`` with the token check and, for operations with a body, body validation."""
        scopes = self.spec.required_scopes(method, path)
        body_spec = self.spec.request_schema(method, path)
        # Verify bodies differ by the type being enrolled, which only the enrollment knows.
        validate_body = self.spec.operation(method, path)["operationId"] != "confirmAuthenticationMethod"

        def view(**path_args: str) -> ResponseReturnValue:
            sub = self.authenticate(scopes)
            if body_spec is None:
                return handler(sub, **path_args)
            body = _read_json_object()
            if validate_body:
                errors = validate(self.spec, body_spec[0], body)
                if errors:
                    raise ApiError(400, "Payload validation error", validation_errors=errors)
            return handler(sub, body, **path_args)

        return view

    def authenticate(self, scopes: list[str]) -> str:
        """The ``sub`` of a valid access token for this API holding ``scopes``; raises 401/403.

        ``Bearer`` or ``DPoP`` (then with a proof, see the module's docstring); challenges name the scheme
        the request used.
        """
        settings = self.idp.settings
        algorithms = settings.dpop_signing_algs
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        scheme, token = scheme.lower(), token.strip()
        if scheme not in ("bearer", "dpop") or not token:
            raise ApiError(
                401,
                "Missing or invalid Authorization header",
                headers={"WWW-Authenticate": f'Bearer, DPoP algs="{" ".join(algorithms)}"'},
            )
        challenge = "DPoP" if scheme == "dpop" else "Bearer"
        dpop_params = f', algs="{" ".join(algorithms)}"' if scheme == "dpop" else ""
        invalid_token = {"WWW-Authenticate": f'{challenge} error="invalid_token"{dpop_params}'}
        try:
            claims = self.idp.verify_access_token(token)
        except InvalidAccessToken as exc:
            raise ApiError(
                401, f"Invalid Token: {exc}", code=INVALID_TOKEN_CODE, headers=invalid_token
            ) from None
        audience = claims.get("aud")
        audiences = (
            [audience] if isinstance(audience, str) else audience if isinstance(audience, list) else []
        )
        if self.idp.my_account_audience not in audiences:
            detail = "Invalid Token: the audience is not this API"
            raise ApiError(401, detail, code=INVALID_TOKEN_CODE, headers=invalid_token)
        sub = claims.get("sub")
        with self.idp.lock:
            known = isinstance(sub, str) and sub in self.idp.users
        if not known:
            detail = "Invalid Token: the subject is not a user of this tenant"
            raise ApiError(401, detail, code=INVALID_TOKEN_CODE, headers=invalid_token)
        try:
            check_resource_request(
                self.idp.dpop_guards["my_account"],
                scheme=scheme,
                token=token,
                claims=claims,
                proofs=request.headers.getlist("DPoP"),
                method=request.method,
                url=self.idp.issuer + request.path.lstrip("/"),
                algorithms=algorithms,
                nonce_required=settings.dpop_api_nonce,
            )
        except ResourceAuthError as exc:
            raise ApiError(
                401, f"Invalid Token: {exc.description}", code=INVALID_TOKEN_CODE, headers=exc.headers(algorithms)
            ) from None
        granted = str(claims.get("scope", "")).split()
        missing = [scope for scope in scopes if scope not in granted]
        if missing:
            raise ApiError(
                403,
                f"insufficient_scope: the access token lacks the scope {' '.join(missing)}",
                code=INSUFFICIENT_SCOPE_CODE,
                headers={
                    "WWW-Authenticate": f'{challenge} error="insufficient_scope", scope="{" ".join(scopes)}"'
                    + dpop_params
                },
            )
        return t.cast(str, sub)

    # ----------------------------------------------------------------- handlers

    def get_factors(self, sub: str) -> ResponseReturnValue:
        return jsonify(self.store.factors())

    def list_methods(self, sub: str) -> ResponseReturnValue:
        kind = request.args.get("type")
        if kind is not None:
            errors = validate(self.spec, self.spec.schema("FactorTypeEnum"), kind, "query", ["type"])
            if errors:
                raise ApiError(400, "Invalid query parameter", validation_errors=errors)
        return jsonify(self.store.list_methods(sub, kind))

    def create_method(self, sub: str, body: dict[str, t.Any]) -> ResponseReturnValue:
        created, method_id = self.store.start_enrollment(sub, body)
        return jsonify(created), 202, {"Location": self.location(method_id)}

    def get_method(self, sub: str, authentication_method_id: str) -> ResponseReturnValue:
        return jsonify(self.store.get_method(sub, authentication_method_id))

    def update_method(
        self, sub: str, body: dict[str, t.Any], authentication_method_id: str
    ) -> ResponseReturnValue:
        return jsonify(self.store.update_method(sub, authentication_method_id, body))

    def delete_method(self, sub: str, authentication_method_id: str) -> ResponseReturnValue:
        self.store.delete_method(sub, authentication_method_id)
        return "", 204

    def verify_method(
        self, sub: str, body: dict[str, t.Any], authentication_method_id: str
    ) -> ResponseReturnValue:
        user_agent = request.headers.get("User-Agent")
        method, method_id = self.store.verify_enrollment(
            sub, authentication_method_id, body, user_agent=user_agent
        )
        return jsonify(method), 201, {"Location": self.location(method_id)}

    def connect(self, sub: str, body: dict[str, t.Any]) -> ResponseReturnValue:
        return jsonify(self.store.start_connect(sub, body)), 201

    def complete(self, sub: str, body: dict[str, t.Any]) -> ResponseReturnValue:
        return jsonify(self.store.complete_connect(sub, body)), 201

    def list_accounts(self, sub: str) -> ResponseReturnValue:
        names = request.args.getlist("connection")
        if names:
            value: str | list[str] = names[0] if len(names) == 1 else names
            schema = {"$ref": "#/components/schemas/ConnectionNamesFilter"}
            errors = validate(self.spec, schema, value, "query", ["connection"])
            if errors:
                raise ApiError(400, "Invalid query parameter", validation_errors=errors)
        page = self.store.list_accounts(sub, names, request.args.get("from"), _take(10, MAX_TAKE))
        return jsonify(page)

    def list_connections(self, sub: str) -> ResponseReturnValue:
        return jsonify(self.store.list_connections(request.args.get("from"), _take(10, MAX_TAKE)))

    def delete_account(self, sub: str, id: str) -> ResponseReturnValue:
        errors = validate(self.spec, self.spec.schema("ConnectedAccountId"), id, "path", ["id"])
        if errors:
            raise ApiError(400, "Invalid path parameter", validation_errors=errors)
        self.store.delete_account(sub, id)
        return "", 204

    def list_consents(self, sub: str) -> ResponseReturnValue:
        return jsonify(self.store.list_consents(sub))

    def get_consent(self, sub: str, consent_id: str) -> ResponseReturnValue:
        return jsonify(self.store.get_consent(sub, consent_id))

    def list_organizations(self, sub: str) -> ResponseReturnValue:
        take = _take(50, MAX_ORGANIZATIONS_TAKE)
        return jsonify(self.store.list_organizations(sub, request.args.get("from"), take))

    def location(self, method_id: str) -> str:
        """The absolute URL of a method; ids hold ``|``, which is percent-encoded as Auth0 does."""
        quoted = urllib.parse.quote(method_id, safe="")
        return f"{self.idp.issuer}{API_PREFIX.lstrip('/')}/authentication-methods/{quoted}"


def _read_json_object() -> dict[str, t.Any]:
    """The request's JSON object; an empty body reads as ``{}`` so schema checks name what is missing."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        return {}
    if not request.is_json:
        raise ApiError(415, "The request body must be application/json")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # nested deeper than the parser goes: as malformed
        raise ApiError(400, "The request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise ApiError(400, "Payload validation error", validation_errors=[issue("must be object", [])])
    return value


def _take(default: int, maximum: int) -> int:
    raw = request.args.get("take")
    if raw is None:
        return default
    # ASCII digits only: str.isdigit() also holds for digits int() refuses, such as "²".
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= maximum:
        detail = f"must be an integer from 1 to {maximum}"
        raise ApiError(400, "Invalid query parameter", validation_errors=[issue(detail, ["take"], "query")])
    return int(raw)


def _fault_response(fault: Fault) -> Response:
    body = fault.body if fault.body is not None else error_body(fault.status, "Injected fault")
    response = Response(json.dumps(body), status=fault.status, mimetype="application/json")
    response.headers.update(fault.headers)
    return response


def _controls_blueprint(store: MyAccountState) -> Blueprint:
    """Hooks for tests and the demo: read the one-time code "sent" by email or text message."""
    bp = Blueprint("myaccount_controls", __name__)

    @bp.get(OTP_HOOK_PATH)
    def last_otp() -> ResponseReturnValue:
        sub = request.args.get("sub")
        if not sub:
            return jsonify({"error": "the sub query parameter is required"}), 400
        try:
            code = store.last_otp(sub, request.args.get("type"))
        except LookupError as exc:
            return jsonify({"error": str(exc)}), 404
        return jsonify({"sub": sub, "otp_code": code})

    return bp
