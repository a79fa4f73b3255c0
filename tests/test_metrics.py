"""Metrics: counters that move by exactly the calls made, across worker processes, on a listener of their own."""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import signal
import time
import typing as t

import pytest
import requests
from prometheus_client import REGISTRY
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from bff import metrics
from tests.conftest import CLIENT_ID, CLIENT_SECRET, SECRET_KEY, Stack
from tests.support.browser import bff_session, login
from tests.support.processes import BffProcess
from tests.support.redis_server import free_port

METHODS = "/me/v1/authentication-methods"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def in_process() -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in REGISTRY.collect()
        for sample in family.samples
    }


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


# --- In one process ------------------------------------------------------------------------------


def test_a_store_error_is_counted_once_and_a_refused_request_once(stack: Stack, redis_server: t.Any) -> None:
    http = stack.logged_in()
    before = in_process()
    redis_server.stop()
    try:
        assert http.get(stack.bff_url + "/bff/user").status_code == 503
    finally:
        redis_server.start()
    metrics.rate_limited("session")
    time.sleep(0.2)  # the access line and its counts are written once the response is sent
    after = in_process()

    assert delta(before, after, "bff_store_errors_total") == 1
    assert delta(before, after, "bff_requests_total", route="/bff/user", method="GET", status="503") == 1
    assert delta(before, after, "bff_rate_limited_total", limit="session") == 1


def test_labels_come_from_bounded_vocabularies(stack: Stack) -> None:
    before = in_process()
    assert requests.request("BREW", stack.bff_url + "/bff/user", timeout=10).status_code == 405
    assert requests.get(stack.bff_url + "/some/path/abc123?x=1", timeout=10).status_code == 404
    time.sleep(0.2)
    after = in_process()

    assert delta(before, after, "bff_requests_total", route="unmatched", method="other", status="405") == 1
    assert delta(before, after, "bff_requests_total", route="unmatched", method="GET", status="404") == 1
    assert not [key for key in after if any("abc123" in value or "BREW" in value for _, value in key[1])]


# --- Two worker processes ------------------------------------------------------------------------


class Served:
    """``bff serve --workers 2`` with ``BFF_METRICS_ADDRESS``, and the requests this test sent it."""

    def __init__(self, process: BffProcess, metrics_url: str, tmp: pathlib.Path) -> None:
        self.process = process
        self.metrics_url = metrics_url
        self.tmp = tmp
        self.ready_calls = 0

    def scrape(self) -> Samples:
        response = requests.get(self.metrics_url, timeout=10)
        assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
        return parse(response.text)

    def workers(self) -> list[int]:
        pid = self.process.process.pid
        children = pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return sorted(int(child) for child in children)

    def requests_counted_by(self, pid: int) -> float:
        """What worker ``pid`` counted in its own file (the multiprocess directory is under our TMPDIR)."""
        return sum(
            entry[1]
            for path in self.tmp.glob(f"bff-metrics-*/counter_{pid}.db")
            for entry in MmapedDict.read_all_values_from_file(str(path))
            if '"bff_requests_total"' in entry[0]
        )

    def ready(self, count: int) -> None:
        """``count`` readiness checks at once, each on a new connection (so the workers share them).

        ``/readyz``, not ``/healthz``: the test harness polls ``/healthz`` while the process starts, and a
        poll it gave up on may still be answered (and counted) later.
        """
        def call(_: int) -> int:
            return requests.get(self.process.url + "/readyz", timeout=10).status_code

        with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:
            statuses = list(pool.map(call, range(count)))
        self.ready_calls += count
        assert statuses == [200] * count

    def wait_until(self, before: Samples, name: str, value: float, **labels: str) -> None:
        """Until ``name`` moved by ``value``: a request is counted just after its response was sent."""
        deadline = time.monotonic() + 5
        while delta(before, self.scrape(), name, **labels) < value and time.monotonic() < deadline:
            time.sleep(0.05)


@pytest.fixture
def served(redis_url: str, tmp_path: pathlib.Path) -> t.Iterator[tuple[Served, t.Any]]:
    from bff.emulator import EmulatorConfig, EmulatorServer

    port, metrics_port = free_port(), free_port()
    base_url = f"http://127.0.0.1:{port}"
    emulator = EmulatorServer(EmulatorConfig(CLIENT_ID, CLIENT_SECRET, base_url))
    emulator.start()
    env = {
        "BFF_ISSUER_URL": emulator.url + "/",
        "BFF_CLIENT_ID": CLIENT_ID,
        "BFF_CLIENT_SECRET": CLIENT_SECRET,
        "BFF_BASE_URL": base_url,
        "BFF_SECRET_KEY": SECRET_KEY,
        "BFF_SESSION_STORE": redis_url,
        "BFF_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}",
        "TMPDIR": str(tmp_path),
    }
    process = None
    try:
        process = BffProcess(port, env, args=("--workers", "2"))
        yield Served(process, f"http://127.0.0.1:{metrics_port}/metrics", tmp_path), emulator.state
    finally:
        if process is not None:
            process.stop()
        emulator.stop()
    assert not list(tmp_path.glob("bff-metrics-*")), "bff serve leaves no metrics directory behind"


def _wait_for_workers(served: Served, gone: int) -> list[int]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        workers = served.workers()
        if len(workers) == 2 and gone not in workers:
            return workers
        time.sleep(0.1)
    raise AssertionError("gunicorn did not run two workers (or did not replace the killed one)")


@pytest.mark.slow
def test_counters_move_by_exactly_the_calls_made_across_two_workers_and_a_dead_one(
    served: tuple[Served, t.Any],
) -> None:
    bff, idp = served
    url = bff.process.url
    before = bff.scrape()
    workers = _wait_for_workers(bff, gone=-1)  # the second worker may still be booting

    # Readiness checks until both workers have answered some (bounded): each counts in its own file.
    for _ in range(20):
        bff.ready(10)
        if all(bff.requests_counted_by(pid) > 0 for pid in workers):
            break
    assert all(bff.requests_counted_by(pid) > 0 for pid in workers), "one worker answered everything"

    http = bff_session(url)
    assert login(http, url).status_code == 302
    for _ in range(3):
        assert http.get(url + METHODS).status_code == 200  # one exchange, then the cached token
    assert http.get(url + "/me/v1/nowhere").status_code == 404

    # A worker dies; gunicorn starts another. What the dead one counted still counts.
    bff.wait_until(before, "bff_requests_total", 1, route="/me/{rest}", method="GET", status="404")
    bff.wait_until(before, "bff_requests_total", bff.ready_calls, route="/readyz", method="GET", status="200")
    victim = workers[0]
    os.kill(victim, signal.SIGKILL)
    _wait_for_workers(bff, victim)
    bff.ready(5)
    for _ in range(2):
        assert http.get(url + METHODS).status_code == 200
    assert http.post(url + "/bff/logout").status_code == 200

    expected = {
        ("bff_requests_total", (("route", "/readyz"), ("method", "GET"), ("status", "200"))): bff.ready_calls,
        ("bff_requests_total", (("route", "/bff/login"), ("method", "GET"), ("status", "302"))): 1,
        ("bff_requests_total", (("route", "/bff/callback"), ("method", "GET"), ("status", "302"))): 1,
        ("bff_requests_total", (("route", METHODS), ("method", "GET"), ("status", "200"))): 5,
        ("bff_requests_total", (("route", "/me/{rest}"), ("method", "GET"), ("status", "404"))): 1,
        ("bff_requests_total", (("route", "/bff/logout"), ("method", "POST"), ("status", "200"))): 1,
        ("bff_request_duration_seconds_count", (("route", METHODS),)): 5,
        ("bff_upstream_request_duration_seconds_count", (("route", METHODS), ("status", "200"))): 5,
        ("bff_token_exchanges_total", (("result", "ok"),)): 1,
        ("bff_token_lock_wait_seconds_count", ()): 1,
        ("bff_sessions_started_total", ()): 1,
        ("bff_sessions_ended_total", (("reason", "logout"),)): 1,
        ("bff_store_errors_total", ()): 0,
    }

    def moved(after: Samples) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {(name, labels): delta(before, after, name, **dict(labels)) for name, labels in expected}

    deadline = time.monotonic() + 5
    while (found := moved(bff.scrape())) != expected and time.monotonic() < deadline:
        time.sleep(0.1)  # a request is counted once its response has been sent
    assert found == expected
    assert idp.counters()["token_calls_by_grant_type"].get("refresh_token", 0) == 1

    public = requests.get(url + "/metrics", timeout=10)
    assert public.status_code == 404 and "bff_requests_total" not in public.text
    assert requests.get(bff.metrics_url.replace("/metrics", "/other"), timeout=10).status_code == 404


def test_bff_serve_refuses_a_metrics_address_it_cannot_listen_on(tmp_path: pathlib.Path) -> None:
    import socket
    import subprocess
    import sys

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = free_port()
    env = {
        **os.environ,
        "BFF_ISSUER_URL": "http://127.0.0.1:9/",
        "BFF_CLIENT_ID": CLIENT_ID,
        "BFF_CLIENT_SECRET": CLIENT_SECRET,
        "BFF_BASE_URL": f"http://127.0.0.1:{port}",
        "BFF_SECRET_KEY": SECRET_KEY,
        "BFF_SESSION_STORE": f"sqlite:///{tmp_path}/sessions.db",
        "TMPDIR": str(tmp_path),
    }
    try:
        for address, problem in ((f"127.0.0.1:{taken.getsockname()[1]}", "cannot listen on"),
                                 (f"127.0.0.1:{port}", "must not be the public address")):
            result = subprocess.run(
                [sys.executable, "-m", "bff.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                env={**env, "BFF_METRICS_ADDRESS": address}, capture_output=True, text=True, timeout=60,
            )
            assert result.returncode == 2, result.stderr
            [line] = [line for line in result.stderr.splitlines() if line.startswith("bff: ")]
            assert line.startswith(f"bff: BFF_METRICS_ADDRESS: {problem}"), result.stderr
    finally:
        taken.close()
    assert not list(tmp_path.glob("bff-metrics-*"))
