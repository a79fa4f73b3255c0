"""Per request: its id, its one access line, its metrics, and the route template it matched.

Security: the access line and the metrics name a request by its route *template* (the Flask rule, or
the My Account route the proxy matched, e.g. ``/me/v1/authentication-methods/{authentication_method_id}``),
never by its path or query string, which carry ids, login codes and states; the session by its
:func:`~bff.logs.session_tag`, never its id. The request id is taken from ``X-Request-Id`` only when it
is a short token of safe characters, because it is echoed in the response, written to every log line
and forwarded to the My Account API: anything else (a header or log-line injection, an unbounded value)
is replaced by a fresh random id.

The middleware (:class:`AccessLog`) wraps the whole WSGI app, so the duration and status are what the
client got, error handlers included, and the line is written once the response is complete. The
request's fields live in a context variable (:func:`current`), which is per thread and per gevent
greenlet alike, so code below the views (the proxy's forwarder) can report to it without knowing Flask.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import time
import typing as t
from dataclasses import dataclass, field

from flask import Flask, Response, request, session
from werkzeug.wsgi import ClosingIterator

from . import logs, metrics, tracing
from .errors import PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_PREFIX

__all__ = [
    "REQUEST_ID_HEADER",
    "UNMATCHED",
    "AccessLog",
    "RequestScope",
    "current",
    "init_app",
    "note_route",
    "request_id_from",
    "route_template",
    "upstream_call",
]

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
#: The route of a request no rule matched (one label value, whatever the path).
UNMATCHED = "unmatched"
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_RULE_VARIABLE = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")
_ENVIRON_KEY = "bff.access"
_TAG_CACHE_SIZE = 4096


@dataclass(slots=True)
class RequestScope:
    """What the access line will say about the request in flight."""

    request_id: str
    route: str | None = None
    problem: str | None = None
    store_error: bool = False
    upstream: list[tuple[str, float]] = field(default_factory=list)


_current: contextvars.ContextVar[RequestScope | None] = contextvars.ContextVar("bff_request", default=None)


def current() -> RequestScope | None:
    """The request being handled in this thread or greenlet, if any."""
    return _current.get()


def request_id_from(header: str | None) -> str:
    """The client's ``X-Request-Id`` if it is a short token of safe characters, else a new random id."""
    if header is not None and _SAFE_REQUEST_ID.fullmatch(header):
        return header
    return secrets.token_hex(16)


def route_template(rule: str) -> str:
    """A Flask rule as a template: ``/bff/sessions/<sid>`` -> ``/bff/sessions/{sid}``."""
    return _RULE_VARIABLE.sub(r"{\1}", rule)


def note_route(template: str) -> None:
    """The request matched ``template`` (more precise than its Flask rule: the proxy's My Account route)."""
    scope = _current.get()
    if scope is not None:
        scope.route = template


def upstream_call(status: str, seconds: float) -> None:
    """A call to the My Account API finished: ``status`` is its HTTP status, or ``timeout``/``unreachable``."""
    scope = _current.get()
    if scope is not None:
        scope.upstream.append((status, seconds))
    metrics.upstream_call((scope.route if scope else None) or UNMATCHED, status, seconds)


class AccessLog:
    """WSGI middleware: request id in and out, one access line and the request metrics per request."""

    def __init__(self, app: t.Callable[..., t.Iterable[bytes]]) -> None:
        self._app = app

    def __call__(self, environ: dict[str, t.Any], start_response: t.Callable[..., t.Any]) -> t.Iterable[bytes]:
        started = time.perf_counter()
        scope = RequestScope(request_id_from(environ.get("HTTP_X_REQUEST_ID")))
        environ[_ENVIRON_KEY] = scope
        _current.set(scope)
        logs.bind(request_id=scope.request_id)
        traced = tracing.start_request(metrics.method_label(str(environ.get("REQUEST_METHOD", ""))))
        if traced is not None and traced.trace_id is not None:
            logs.bind(trace_id=traced.trace_id)
        status: list[int] = []

        def start(code: str, headers: list[tuple[str, str]], exc_info: t.Any = None) -> t.Any:
            # Ours replaces any the upstream sent: the client correlates with the id the BFF logged.
            headers = [(name, value) for name, value in headers if name.lower() != "x-request-id"]
            headers.append((REQUEST_ID_HEADER, scope.request_id))
            status[:] = [int(code.split(" ", 1)[0])]
            return start_response(code, headers, exc_info)

        def finish() -> None:
            self._finish(environ, scope, status[0] if status else 500, time.perf_counter() - started, traced)

        try:
            body = self._app(environ, start)
        except BaseException:
            finish()
            raise
        return ClosingIterator(body, finish)

    def _finish(
        self,
        environ: dict[str, t.Any],
        scope: RequestScope,
        status: int,
        seconds: float,
        traced: tracing.RequestSpan | None,
    ) -> None:
        try:
            method = metrics.method_label(str(environ.get("REQUEST_METHOD", "")))
            route = scope.route or UNMATCHED
            fields: dict[str, t.Any] = {
                "event": "request",
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 1),
            }
            if scope.upstream:
                fields["upstream_status"] = scope.upstream[-1][0]
                fields["upstream_ms"] = round(sum(took for _, took in scope.upstream) * 1000, 1)
                if len(scope.upstream) > 1:
                    fields["upstream_calls"] = len(scope.upstream)
            if scope.problem:
                fields["problem"] = scope.problem
            log.info("%s %s %s", method, route, status, extra=fields)
            metrics.request_finished(route, method, status, seconds)
            if scope.store_error:
                metrics.store_error()
        finally:
            if traced is not None:
                traced.end(scope.route or UNMATCHED, status, scope.request_id)
            _current.set(None)
            logs.unbind()


def init_app(app: Flask, mac: t.Callable[[str], str]) -> None:
    """Wrap ``app`` in :class:`AccessLog`; note each request's route template, session tag and problem.

    ``mac`` is the app's keyed hash (``SecretBox.mac``), for :func:`~bff.logs.session_tag`.
    """
    metrics.ensure_created()
    app.wsgi_app = AccessLog(app.wsgi_app)  # type: ignore[method-assign]
    # The tags of recent sessions: a session makes many requests, each tagged twice (before and after).
    tags: dict[str, str] = {}

    def tag_session() -> None:
        sid = getattr(session, "sid", "")
        if sid:
            tag = tags.get(sid)
            if tag is None:
                if len(tags) >= _TAG_CACHE_SIZE:
                    tags.clear()
                tag = tags[sid] = logs.session_tag(mac, sid)
            logs.bind(session=tag)

    @app.before_request
    def _session_known() -> None:
        tag_session()

    @app.after_request
    def _note(response: Response) -> Response:
        scope = request.environ.get(_ENVIRON_KEY)
        if not isinstance(scope, RequestScope):
            return response
        if scope.route is None:
            scope.route = route_template(request.url_rule.rule) if request.url_rule is not None else UNMATCHED
        # After the view: a login has adopted its new session, a logout still names the ended one.
        tag_session()
        if response.mimetype == PROBLEM_CONTENT_TYPE:
            try:
                kind = json.loads(response.get_data()).get("type", "")
            except (ValueError, AttributeError):
                kind = ""
            if isinstance(kind, str) and kind.startswith(PROBLEM_TYPE_PREFIX):
                scope.problem = kind[len(PROBLEM_TYPE_PREFIX):]
        if getattr(session, "unavailable", False) and scope.problem != "store-unavailable":
            # The session could not be read, yet the request was answered (it did not need it): still a
            # store failure to count (a 503 store-unavailable was counted by its handler).
            scope.store_error = True
            log.warning("the session could not be read: the store is unavailable",
                        extra={"event": "store.error", "operation": "open-session"})
        return response
