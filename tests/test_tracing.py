"""Traces (the ``otel`` extra): spans for the request, the lock wait, the token exchange and the upstream
call, ``traceparent`` sent to the My Account API, and a BFF that runs the same without the extra."""

from __future__ import annotations

import subprocess
import sys
import time
import typing as t

import pytest

from tests.conftest import Stack, StackFactory
from tests.support.upstream import RecordingUpstream

sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="the otel extra is not installed")

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

_EXPORTER = InMemorySpanExporter()


class _WhileTesting(SimpleSpanProcessor):
    """Exports only while a test here runs: the global provider outlives it, and the tests after it."""

    active = False

    def on_end(self, span: t.Any) -> None:
        if self.active:
            super().on_end(span)


_PROCESSOR = _WhileTesting(_EXPORTER)


@pytest.fixture
def spans() -> t.Iterator[InMemorySpanExporter]:
    """The process's tracer provider exports to memory (a global provider can be set only once)."""
    if not isinstance(trace.get_tracer_provider(), sdk.TracerProvider):
        provider = sdk.TracerProvider()
        provider.add_span_processor(_PROCESSOR)
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    _PROCESSOR.active = True
    try:
        yield _EXPORTER
    finally:
        _PROCESSOR.active = False
        _EXPORTER.clear()


def finished_span(spans: InMemorySpanExporter, name: str) -> t.Any:
    """The span ``name``, once it has ended (a request's span ends once its response is sent)."""
    deadline = time.monotonic() + 5
    while True:
        found = [span for span in spans.get_finished_spans() if span.name == name]
        if found or time.monotonic() > deadline:
            assert len(found) == 1, [span.name for span in spans.get_finished_spans()]
            return found[0]
        time.sleep(0.02)


def test_a_proxied_call_is_one_trace_of_request_lock_wait_exchange_and_upstream_call(
    make_stack: StackFactory, spans: InMemorySpanExporter
) -> None:
    upstream = RecordingUpstream()
    try:
        stack: Stack = make_stack(my_account_url=upstream.url + "/me/v1")
        http = stack.logged_in()
        sid = http.cookies[stack.settings.session_cookie_name]
        spans.clear()
        response = http.get(stack.bff_url + "/me/v1/factors", headers={"X-Request-Id": "req-7"})
        assert response.status_code == 200
        finished_span(spans, "GET /me/v1/factors")
    finally:
        upstream.stop()

    finished = {span.name: span for span in spans.get_finished_spans()}
    server = finished["GET /me/v1/factors"]
    lock_wait, exchange, call = finished["token.lock_wait"], finished["token.exchange"], finished["My Account API GET"]
    assert server.kind == trace.SpanKind.SERVER and server.parent is None
    assert server.attributes is not None and dict(server.attributes) == {
        "http.request.method": "GET", "http.route": "/me/v1/factors", "http.response.status_code": 200,
        "bff.request_id": "req-7",
    }
    trace_id = server.context.trace_id
    for child in (lock_wait, exchange, call):
        assert child.context.trace_id == trace_id
        assert child.parent is not None and child.parent.span_id == server.context.span_id
    assert exchange.attributes is not None and exchange.attributes["result"] == "ok"
    assert call.kind == trace.SpanKind.CLIENT
    assert call.attributes is not None and call.attributes["http.response.status_code"] == 200

    traceparent = upstream.seen[-1].headers["traceparent"]
    head, _, flags = traceparent.rpartition("-")
    assert head == f"00-{trace_id:032x}-{call.context.span_id:016x}" and int(flags, 16) & 1  # sampled
    for span in finished.values():
        text = repr(dict(span.attributes or {})) + span.name
        assert sid not in text and "Bearer" not in text and "ey" not in text.replace("key", "")


def test_a_browsers_traceparent_is_not_continued(stack: Stack, spans: InMemorySpanExporter) -> None:
    foreign = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert stack.browser().get(stack.bff_url + "/healthz", headers={"traceparent": foreign}).status_code == 200
    server = finished_span(spans, "GET /healthz")
    assert server.parent is None and f"{server.context.trace_id:032x}" != "0af7651916cd43dd8448eb211c80319c"


def test_the_bff_runs_the_same_without_the_extra(tmp_path: t.Any) -> None:
    script = f"""
import sys
sys.modules.update({{"opentelemetry": None}})
from bff import Settings, create_app
from bff import tracing
assert not tracing.ENABLED
settings = Settings(issuer_url="http://127.0.0.1:9/", client_id="c", client_secret="s" * 32,
                    base_url="http://127.0.0.1:8000", secret_keys=("k" * 32,),
                    session_store="sqlite:///{tmp_path}/s.db")
client = create_app(settings).test_client()
with client.get("/healthz") as response:
    assert response.status_code == 200 and response.headers["X-Request-Id"]
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
