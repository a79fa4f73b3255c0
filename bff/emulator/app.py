"""The emulator's Flask application: the IdP, its test controls, the demo inbox and the My Account API.

Security first: the ``/_emulator`` control endpoints have no authentication (they exist so tests in other
processes can turn the same knobs as :class:`~bff.emulator.state.EmulatorState`), and ``/inbox`` shows the
one-time codes "sent" by email or text message; serve this app on loopback only, as
:class:`~bff.emulator.server.EmulatorServer` does (``/inbox`` also refuses any other peer itself).

``GET /inbox`` is an HTML page for a person at the demo: the codes sent, newest first, so an email or phone
enrollment can be finished without a mailbox or a phone (:meth:`~bff.emulator.state.EmulatorState.deliver_code`).

Control endpoints (JSON in, JSON out; bad input answers 400 ``{"error": ...}``):

- ``GET /_emulator/clock``, ``POST /_emulator/clock`` ``{"advance": seconds}`` or ``{"set": timestamp}``
- ``GET /_emulator/settings``, ``PATCH /_emulator/settings`` with :class:`~bff.emulator.state.TokenSettings`
  fields
- ``POST /_emulator/faults`` ``{"error", "status"?, "count"?, "description"?}``, or with ``"seconds"`` instead
  of ``"count"`` an outage of that many seconds (status 503 unless given); ``DELETE /_emulator/faults`` (drops
  faults, outage, latency and hang)
- ``POST /_emulator/latency`` ``{"seconds", "count"?, "process_abandoned"?}``
- ``POST /_emulator/hang`` ``{"seconds", "process_abandoned"?}``, ``DELETE /_emulator/hang``
- ``GET /_emulator/counters``, ``DELETE /_emulator/counters`` (reset)
- ``POST /_emulator/families/lookup`` ``{"refresh_token"}`` (the token stays out of URLs and logs)
- ``POST /_emulator/users`` ``{"email", "password", "name"?, "totp_secret"?}``
- ``POST /_emulator/logout`` ``{"sub"}`` or ``{"sid"}``: ends SSO sessions with back-channel logout
- ``GET /_emulator/backchannel``: the back-channel deliveries so far
- ``GET /_emulator/outbox``: the one-time codes sent by email or text message, newest first
- ``GET /_emulator/dpop``: each DPoP server's (``token_endpoint``, ``my_account``) current nonce and the
  ``use_dpop_nonce`` challenges it gave; ``POST /_emulator/dpop/nonce`` ``{"server"?}`` rotates that server's
  nonce (both without ``server``). Nonces are required per the ``dpop_nonce`` / ``dpop_api_nonce`` settings.
- ``GET /_emulator/tokens`` (``?sub=`` optional): the token responses given, newest first, tokens included
"""

from __future__ import annotations

import dataclasses
import ipaddress
import typing as t
from datetime import UTC, datetime

from flask import Blueprint, Flask, Response, jsonify, render_template, request

from bff.emulator import idp, myaccount
from bff.emulator.state import DPOP_SERVERS, EmulatorState

__all__ = [
    "create_emulator_app",
]


def _body() -> dict[str, t.Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body


def _controls_blueprint(state: EmulatorState) -> Blueprint:
    bp = Blueprint("emulator_controls", __name__, url_prefix="/_emulator")

    @bp.errorhandler(KeyError)
    def missing_field(exc: KeyError) -> tuple[Response, int]:
        return jsonify(error=f"missing field {exc}"), 400

    @bp.errorhandler(ValueError)
    @bp.errorhandler(TypeError)
    def bad_request(exc: Exception) -> tuple[Response, int]:
        return jsonify(error=str(exc)), 400

    @bp.route("/clock", methods=["GET", "POST"])
    def clock() -> Response:
        if request.method == "POST":
            body = _body()
            if "set" in body:
                state.clock.set(float(body["set"]))
            else:
                state.clock.advance(float(body.get("advance", 0)))
        return jsonify(now=state.clock.now())

    @bp.route("/settings", methods=["GET", "PATCH"])
    def settings() -> Response:
        current = state.configure(**_body()) if request.method == "PATCH" else state.settings
        return jsonify(current.to_json())

    @bp.post("/faults")
    def add_fault() -> tuple[str, int]:
        body = _body()
        if "seconds" in body:
            state.fail_tokens_for(
                float(body["seconds"]), str(body["error"]), int(body.get("status", 503)), body.get("description")
            )
            return "", 204
        state.fail_next_token(
            str(body["error"]),
            int(body.get("status", 400)),
            int(body.get("count", 1)),
            body.get("description"),
        )
        return "", 204

    @bp.delete("/faults")
    def clear_faults() -> tuple[str, int]:
        state.clear_faults()
        return "", 204

    @bp.post("/latency")
    def latency() -> tuple[str, int]:
        body = _body()
        count = body.get("count")
        state.token_latency(
            float(body["seconds"]),
            None if count is None else int(count),
            process_abandoned=bool(body.get("process_abandoned", False)),
        )
        return "", 204

    @bp.post("/hang")
    def hang() -> tuple[str, int]:
        body = _body()
        state.token_hang(float(body["seconds"]), process_abandoned=bool(body.get("process_abandoned", True)))
        return "", 204

    @bp.delete("/hang")
    def end_hang() -> tuple[str, int]:
        state.end_token_hang()
        return "", 204

    @bp.get("/counters")
    def counters() -> Response:
        return jsonify(state.counters())

    @bp.delete("/counters")
    def reset_counters() -> tuple[str, int]:
        state.reset_counters()
        return "", 204

    @bp.post("/families/lookup")
    def family() -> tuple[Response, int]:
        try:
            family_id = state.family_of(str(_body().get("refresh_token")))
        except KeyError:
            return jsonify(error="unknown refresh token"), 404
        return jsonify(family=family_id, **state.counters()["families"][family_id]), 200

    @bp.post("/users")
    def add_user() -> tuple[Response, int]:
        body = _body()
        user = state.add_user(
            str(body["email"]),
            str(body["password"]),
            name=body.get("name"),
            totp_secret=body.get("totp_secret"),
        )
        return jsonify(sub=user.sub, email=user.email, name=user.name), 201

    @bp.post("/logout")
    def logout() -> Response:
        body = _body()
        if "sid" in body:
            ended = [body["sid"]] if state.end_sso_session(str(body["sid"])) else []
        else:
            ended = state.logout_user(str(body["sub"]))
        return jsonify(ended=ended)

    @bp.get("/backchannel")
    def backchannel() -> Response:
        with state.lock:
            deliveries = [dataclasses.asdict(d) for d in state.backchannel_deliveries]
        return jsonify(deliveries=deliveries)

    def dpop_servers() -> Response:
        return jsonify(
            {
                name: {"nonce": state.dpop_nonce(name), "nonce_challenges": state.dpop_nonce_challenges(name)}
                for name in DPOP_SERVERS
            }
        )

    @bp.get("/dpop")
    def dpop() -> Response:
        return dpop_servers()

    @bp.post("/dpop/nonce")
    def rotate_dpop_nonce() -> Response:
        body = request.get_json(silent=True)
        server = body.get("server") if isinstance(body, dict) else None
        if server is not None and server not in DPOP_SERVERS:
            raise ValueError(f"server must be one of {list(DPOP_SERVERS)}")
        state.rotate_dpop_nonce(server)
        return dpop_servers()

    @bp.get("/tokens")
    def issued_tokens() -> Response:
        response = jsonify(tokens=[dataclasses.asdict(i) for i in state.issued_tokens(request.args.get("sub"))])
        response.headers["Cache-Control"] = "no-store"
        return response

    @bp.get("/outbox")
    def outbox() -> Response:
        response = jsonify(deliveries=[dataclasses.asdict(d) for d in state.outbox()])
        response.headers["Cache-Control"] = "no-store"
        return response

    return bp


_CHANNEL_LABELS = {"email": "Email", "sms": "Text message", "voice": "Voice call"}


def _from_loopback() -> bool:
    try:
        return ipaddress.ip_address(request.remote_addr or "").is_loopback
    except ValueError:
        return False


def _inbox_blueprint(state: EmulatorState) -> Blueprint:
    bp = Blueprint("emulator_inbox", __name__)

    @bp.get("/inbox")
    def inbox() -> Response:
        """The demo inbox: one-time codes sent by email or text message, newest first.

        Shows the codes and where they went, nothing else; refuses peers that are not on loopback, as the
        codes are second factors of the demo's users.
        """
        if not _from_loopback():
            return Response("Forbidden", status=403, mimetype="text/plain")
        messages = [
            {
                "channel": _CHANNEL_LABELS.get(d.channel, d.channel),
                "address": d.address,
                "code": d.code,
                "sent_at": datetime.fromtimestamp(d.sent_at, UTC).strftime("%H:%M:%S UTC"),
            }
            for d in state.outbox()
        ]
        response = Response(render_template("inbox.html", messages=messages))
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    return bp


def create_emulator_app(state: EmulatorState) -> Flask:
    """The emulator's WSGI app, serving ``state``."""
    app = Flask(__name__)
    idp.register(app, state)
    app.register_blueprint(_controls_blueprint(state))
    app.register_blueprint(_inbox_blueprint(state))
    myaccount.register(app, state)
    return app
