"""Prometheus metrics: what the BFF counts, and the listener that serves them (``BFF_METRICS_ADDRESS``).

Security: the metrics listener is a socket of its own, bound to ``BFF_METRICS_ADDRESS``, never a route
on the public port, so what the BFF counts is seen only by whoever can reach that address. Every label
is a bounded vocabulary (a route template, a method from a fixed list, a status, a reason, a result):
no path, id, address, token or user ever becomes a label value, so neither a secret nor an attacker's
choice of URLs can reach Prometheus or inflate its series.

Several worker processes (``bff serve``): each counts in files of its own in a private directory
(prometheus_client's multiprocess mode, :func:`enable_multiprocess`, set up by the master before any
worker forks) and the listener, in the master, adds them up at every scrape. A worker that exits leaves
its counts behind, so totals never go back; :func:`process_exited` does the bookkeeping the client
needs for it. Without :func:`enable_multiprocess` (``bff demo``, an embedded app) the metrics are
ordinary in-process ones.

The metrics are created on first use, not at import: the multiprocess mode has to be chosen before the
first metric exists, and importing :mod:`bff` must not decide it.
"""

from __future__ import annotations

import os
import socket
import threading
import typing as t
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, multiprocess, values
from prometheus_client.exposition import make_wsgi_app

__all__ = [
    "METHODS",
    "MetricsListener",
    "enable_multiprocess",
    "ensure_created",
    "listen",
    "lock_waited",
    "method_label",
    "process_exited",
    "rate_limited",
    "request_finished",
    "session_cache_invalidated",
    "session_cache_lookup",
    "session_ended",
    "session_started",
    "store_error",
    "token_exchange",
    "upstream_call",
]

_ENV = "PROMETHEUS_MULTIPROC_DIR"
_FAST_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The methods a label may name; any other is counted as ``other`` (a client chooses the method).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _Metrics:
    def __init__(self) -> None:
        self.requests = Counter(
            "bff_requests", "Requests answered, by route template, method and status.", ["route", "method", "status"]
        )
        self.request_duration = Histogram(
            "bff_request_duration_seconds", "Time to answer a request, by route template.", ["route"],
            buckets=_FAST_BUCKETS,
        )
        self.upstream_duration = Histogram(
            "bff_upstream_request_duration_seconds",
            "Calls to the My Account API, by the BFF route that made them and the upstream status "
            "(timeout or unreachable when there was none).",
            ["route", "status"],
            buckets=_FAST_BUCKETS,
        )
        self.token_exchanges = Counter(
            "bff_token_exchanges", "Refresh-token exchanges at the token endpoint, by result.", ["result"]
        )
        self.lock_wait = Histogram(
            "bff_token_lock_wait_seconds", "Time spent waiting for a session's refresh lock.", buckets=_FAST_BUCKETS
        )
        self.store_errors = Counter("bff_store_errors", "Session store failures the BFF noticed.")
        self.sessions_started = Counter("bff_sessions_started", "Sessions started (successful logins).")
        self.sessions_ended = Counter("bff_sessions_ended", "Sessions ended, by reason.", ["reason"])
        self.rate_limited = Counter("bff_rate_limited", "Requests refused by a rate limit, by limit.", ["limit"])
        self.session_cache_lookups = Counter(
            "bff_session_cache_lookups",
            "Session reads that could use the process-local session cache, by result (hit, miss, bypass: "
            "the cache was not listening).",
            ["result"],
        )
        self.session_cache_invalidations = Counter(
            "bff_session_cache_invalidations",
            "Session changes announced by any process and received by this one's session cache.",
        )


_created: _Metrics | None = None
_creating = threading.Lock()


def _metrics() -> _Metrics:
    global _created
    if _created is None:
        with _creating:
            if _created is None:
                _created = _Metrics()
    return _created


# What the app and the domain report -----------------------------------------------------------------


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


def request_finished(route: str, method: str, status: int, seconds: float) -> None:
    metrics = _metrics()
    metrics.requests.labels(route, method_label(method), str(status)).inc()
    metrics.request_duration.labels(route).observe(seconds)


def upstream_call(route: str, status: str, seconds: float) -> None:
    _metrics().upstream_duration.labels(route, status).observe(seconds)


def token_exchange(result: str) -> None:
    _metrics().token_exchanges.labels(result).inc()


def lock_waited(seconds: float) -> None:
    _metrics().lock_wait.observe(max(0.0, seconds))


def store_error() -> None:
    _metrics().store_errors.inc()


def session_started() -> None:
    _metrics().sessions_started.inc()


def session_ended(reason: str) -> None:
    _metrics().sessions_ended.labels(reason).inc()


def session_cache_lookup(result: str) -> None:
    """Count one session read through the cache: ``hit``, ``miss`` or ``bypass``."""
    _metrics().session_cache_lookups.labels(result).inc()


def session_cache_invalidated(count: int) -> None:
    _metrics().session_cache_invalidations.inc(count)


def rate_limited(limit: str = "other") -> None:
    """Count a request a rate limit refused; ``limit`` is its kind (session, address, login, connect)."""
    _metrics().rate_limited.labels(limit).inc()


def ensure_created() -> None:
    """Create the metrics now (the factory calls this, so every series exists from the first scrape)."""
    _metrics()


# Several processes ----------------------------------------------------------------------------------


def enable_multiprocess(directory: str) -> None:
    """Count in files under ``directory``, shared by every process forked from here on.

    Must run before any metric exists. prometheus_client decides its value storage from the
    environment when it is first imported; it may already be imported (this module imports it), so the
    decision is taken again here, once the variable is set.
    """
    if _created is not None:
        raise RuntimeError("the metrics already exist; multiprocess mode must be enabled first")
    os.environ[_ENV] = directory
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def process_exited(pid: int) -> None:
    """A worker died: drop its live-gauge files (its counters stay, so totals never go back)."""
    if os.environ.get(_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


# The listener ---------------------------------------------------------------------------------------


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: t.Any) -> None:
        return None


def _app(registry: CollectorRegistry) -> t.Callable[..., t.Iterable[bytes]]:
    exposition = make_wsgi_app(registry)

    def app(environ: dict[str, t.Any], start_response: t.Callable[..., t.Any]) -> t.Iterable[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"metrics are at /metrics\n"]
        return t.cast(t.Iterable[bytes], exposition(environ, start_response))

    return app


class MetricsListener:
    """``/metrics`` on its own socket, served by a daemon thread."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        if os.environ.get(_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        else:
            registry = REGISTRY
        server_class = _Server6 if ":" in host else _Server
        self._server = make_server(host, int(port), _app(registry), server_class, handler_class=_Quiet)
        self._thread = threading.Thread(target=self._server.serve_forever, name="bff-metrics", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def close_inherited(self) -> None:
        """In a forked worker: close the copy of the listening socket (only the master serves it)."""
        self._server.socket.close()


def listen(address: str) -> MetricsListener:
    """Serve ``/metrics`` on ``address`` (``host:port``); ``OSError`` if it cannot be bound."""
    return MetricsListener(address)
