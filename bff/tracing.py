"""OpenTelemetry traces, with the optional extra ``bff[otel]``: a span for each request, each refresh-lock
wait, each token exchange and each My Account API call, and ``traceparent`` sent to the My Account API.

Security: spans follow the access line's rules (:mod:`bff.access`). Their names and attributes are route
templates, methods, statuses, results and the request id; never a path, a query string, a token, a
session id or a user. A trace is started by the BFF for each request: a browser's ``traceparent`` is not
continued, since it would let any client choose trace ids and force its requests to be sampled. Only
``traceparent`` (and ``tracestate``) are sent upstream, never baggage.

Without the extra every function here does nothing, and the BFF runs the same. With it, spans go to the
global tracer provider: configure the OpenTelemetry SDK and its exporter in the process (e.g. a
``TracerProvider`` set up by the embedding code or a gunicorn ``post_fork`` hook); until then the API's
provider records nothing.
"""

from __future__ import annotations

import contextlib
import typing as t

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace as otel_trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the extra is not installed
    ENABLED = False
else:
    ENABLED = True

__all__ = ["ENABLED", "RequestSpan", "Span", "inject", "span", "start_request"]

_NAME = "bff"


class Span:
    """A span in progress, or nothing when tracing is off."""

    def __init__(self, span: t.Any = None) -> None:
        self._span = span

    def set(self, key: str, value: str | int | float | bool) -> None:
        if self._span is not None:
            self._span.set_attribute(key, value)


_NOTHING = Span()


@contextlib.contextmanager
def span(name: str, *, client: bool = False, **attributes: str | int | float | bool) -> t.Iterator[Span]:
    """A child span of the current one for the block (``client``: a call to another service)."""
    if not ENABLED:
        yield _NOTHING
        return
    kind = otel_trace.SpanKind.CLIENT if client else otel_trace.SpanKind.INTERNAL
    with otel_trace.get_tracer(_NAME).start_as_current_span(name, kind=kind, attributes=attributes) as current:
        yield Span(current)


def inject(headers: dict[str, str]) -> None:
    """Add ``traceparent`` (and ``tracestate``) for the current span to outgoing ``headers``."""
    if ENABLED:
        TraceContextTextMapPropagator().inject(headers)


class RequestSpan:
    """The span of one request, current from :func:`start_request` until :meth:`end`."""

    def __init__(self, method: str) -> None:
        self._method = method
        # A new trace, whatever the client sent (see the module docstring).
        self._span = otel_trace.get_tracer(_NAME).start_span(
            method, context=otel_context.Context(), kind=otel_trace.SpanKind.SERVER,
            attributes={"http.request.method": method},
        )
        self._token = otel_context.attach(otel_trace.set_span_in_context(self._span))

    @property
    def trace_id(self) -> str | None:
        context = self._span.get_span_context()
        return format(context.trace_id, "032x") if context.is_valid else None

    def end(self, route: str, status: int, request_id: str) -> None:
        try:
            self._span.update_name(f"{self._method} {route}")
            self._span.set_attribute("http.route", route)
            self._span.set_attribute("http.response.status_code", status)
            self._span.set_attribute("bff.request_id", request_id)
            if status >= 500:
                self._span.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR))
            self._span.end()
        finally:
            otel_context.detach(self._token)


def start_request(method: str) -> RequestSpan | None:
    """The span of a request that starts now, current until it ends; ``None`` when tracing is off."""
    return RequestSpan(method) if ENABLED else None
