"""Benchmark of the BFF's proxy hot path, side by side with the upstream alone, nginx, Apache httpd with
mod_auth_openidc and a bare Python forwarder.

One command starts everything on loopback (private redis-servers, the Auth0 emulator, an upstream
stub, an nginx reverse proxy, Apache with mod_auth_openidc, a bare Flask forwarder and the BFF under
gunicorn), logs sessions in over real HTTP, and puts identical load on

    (a) the stub itself                      (b) nginx -> stub
    (c) Apache + mod_auth_openidc -> stub    (d) bare forwarder -> stub
    (e) BFF -> stub                          (f) BFF -> stub, 100,000 sessions in its store
    (g) nginx -> BFF -> stub                 (h) nginx -> BFF (authorizes) -> nginx -> stub: offload
    (i) BFF with DPoP on -> stub

in rounds (a, b, c, ..., a, b, c, ...), so that a noisy machine disturbs all of them alike; then the
same at one connection (the latency each hop adds). Then it measures a proxied call that has to
refresh its token (an MRRT exchange), the Redis memory a logged-in session takes and, with
``--profile``, where the BFF's CPU time goes (py-spy). It prints
Markdown tables and writes every figure to a JSON file; with ``--docs`` it also rewrites the results
section of docs/benchmark.md, docs/benchmark-run.json and the chart docs/benchmark.png. Everything
it started is stopped at the end, on failure and on Ctrl-C too. See docs/benchmark.md.

Rows (g) and (h) are the BFF as deployed behind nginx, without and with reverse-proxy offload
(``BFF_OFFLOAD=nginx``, deploy/nginx-offload.conf's locations); their server CPU is the BFF's and that
nginx's together.

    python bench/run.py [--duration 10] [--rounds 3] [--connections 32] [--workers 2] [--profile] [--docs]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
import typing as t
from dataclasses import dataclass, field
from pathlib import Path

import redis
import requests
from cpu_profile import read_profile
from load import Request, run_load
from login import log_in, log_in_relying_party
from sessions import copy_session, memory_usage, session_keys, used_memory, write_sessions
from stack import (
    APACHE_SESSION_COOKIE,
    ECHO_PATH,
    FACTORS_BODY,
    OFFLOAD_SECRET,
    STUB_PATH,
    ApacheProcess,
    BffProcess,
    FrontProcess,
    GunicornProcess,
    NginxProcess,
    PythonStub,
    RedisProcess,
    ReferenceProcess,
    apache_available,
    free_port,
    make_workdir,
    self_signed_certificate,
)

from bff.emulator import EmulatorConfig, EmulatorServer
from bff.emulator.state import InvalidAccessToken
from bff.security import SecretBox
from bff.session.cache import CHANNEL, digest
from bff.session.record import ACCESS_PREFIX
from bff.settings import Settings

CLIENT_ID = "bff-bench-client"
CLIENT_SECRET = "bff-bench-client-secret-0123456789"  # noqa: S105 - a loopback-only benchmark secret
SECRET_KEY = "bff-bench-secret-key-0123456789-abcdefghijklmnop"  # noqa: S105
USER_PASSWORD = "bench-user-password"  # noqa: S105 - users the benchmark adds to its own emulator

DEFAULT_WORKERS = 2
DEFAULT_THREADS = 8
DEFAULT_WORKER_CLASS = "gevent"
SMALL_STORE_SESSIONS = 100
LARGE_STORE_SESSIONS = 100_000
SESSION_COOKIES = ("__Host-bff-session", "bff-session")

TARGET_RPS = 3000.0
TARGET_P99_MS = 15.0
TARGET_ROUND_TRIPS = 1.0
SETTLE_S = 0.5

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"
DOC_PAGE = DOCS / "benchmark.md"
DOC_JSON = DOCS / "benchmark-run.json"
DOC_CHART = DOCS / "benchmark.png"
BEGIN_MARK = "<!-- bench:results:begin (written by bench/run.py --docs; edits here are overwritten) -->"
END_MARK = "<!-- bench:results:end -->"

_SETTINGS_DEFAULTS = Settings.__dataclass_fields__
IDLE_TIMEOUT = float(t.cast(int, _SETTINGS_DEFAULTS["session_idle_timeout"].default))
LIFETIME = float(t.cast(int, _SETTINGS_DEFAULTS["session_lifetime"].default))


# Machine and tools ---------------------------------------------------------------------------


def machine() -> dict[str, t.Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(value, 2) for value in os.getloadavg()],
    }


def _version(argv: list[str]) -> str | None:
    try:
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (completed.stdout + completed.stderr).strip().splitlines()
    return text[0] if text else None


def _package_version(package: str) -> str | None:
    return _version(["dpkg-query", "-W", "-f", "${Version}", package])


def _installed(binary: str) -> bool:
    return shutil.which(binary) is not None or Path("/usr/sbin", binary).exists()


def ensure_packages(present: t.Callable[[], bool], packages: list[str], *, allow_install: bool) -> bool:
    """True if ``present()``; as root (and if allowed), install ``packages`` with apt-get first.

    Debian's maintainer scripts do not start a service where ``policy-rc.d`` forbids it (containers);
    either way the benchmark runs its own instances from its own configurations, never the service.
    """
    if present():
        return True
    if not allow_install or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    print(f"installing {' '.join(packages)} with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        try:
            subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=600, check=True)
        except (OSError, subprocess.SubprocessError):
            return False
    return present()


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, to tell how loaded it was during a run."""
    values = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


# Redis counters ----------------------------------------------------------------------------------


def store_snapshot(client: redis.Redis) -> tuple[int, dict[str, int]]:
    """``total_reads_processed`` and the call count per command."""
    reads = int(t.cast("dict[str, t.Any]", client.info("stats"))["total_reads_processed"])
    commands = t.cast("dict[str, dict[str, t.Any]]", client.info("commandstats"))
    calls = {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in commands.items()}
    return reads, calls


def store_delta(client: redis.Redis, before: tuple[int, dict[str, int]]) -> tuple[int, dict[str, int]]:
    """Reads and commands since ``before``, less the two ``INFO`` calls of the second snapshot."""
    reads, calls = store_snapshot(client)
    # The first snapshot's INFO calls were counted before it read the figures; the second's
    # two (stats, then commandstats) are counted in it: one read event and one INFO call each.
    delta = {name: count - before[1].get(name, 0) for name, count in calls.items()}
    delta["info"] = delta.get("info", 0) - 2
    return reads - before[0] - 2, {name: count for name, count in delta.items() if count}


# Targets and measurements -------------------------------------------------------------------------


class Server(t.Protocol):
    """A server process whose CPU time the benchmark reads, and whose log it checks."""

    def cpu_seconds(self) -> float: ...

    def problems(self) -> int: ...


class Together:
    """Processes whose CPU time counts as one server's: the offload rows' BFF and the nginx in front of it."""

    def __init__(self, **parts: Server) -> None:
        self.parts = parts

    def cpu_seconds(self) -> float:
        return sum(part.cpu_seconds() for part in self.parts.values())

    def part_seconds(self) -> dict[str, float]:
        return {name: part.cpu_seconds() for name, part in self.parts.items()}

    def problems(self) -> int:
        return sum(part.problems() for part in self.parts.values())


def _median(values: t.Iterable[float]) -> float:
    return statistics.median(list(values))


@dataclass
class Target:
    """One thing put under load, and every round's figures for it.

    ``store``: count the round trips to this Redis during its runs; ``emulator``: count the calls to
    this emulator's token endpoint; ``server``: read this process tree's CPU time.
    """

    key: str
    label: str
    url: str
    headers: dict[str, str]
    store: redis.Redis | None = None
    emulator: EmulatorServer | None = None
    server: Server | None = None
    one_connection: bool = True
    rounds: list[dict[str, t.Any]] = field(default_factory=list)
    latency_rounds: list[dict[str, t.Any]] = field(default_factory=list)

    def summary(self) -> dict[str, t.Any]:
        rounds = self.rounds
        requests_ = sum(r["requests"] for r in rounds)
        row: dict[str, t.Any] = {
            "key": self.key,
            "label": self.label,
            "rounds": len(rounds),
            "requests": requests_,
            "rps": _median(r["rps"] for r in rounds),
            "rps_min": min(r["rps"] for r in rounds),
            "rps_max": max(r["rps"] for r in rounds),
            "p50_ms": _median(r["p50_ms"] for r in rounds),
            "p99_ms": _median(r["p99_ms"] for r in rounds),
            "p99_ms_max": max(r["p99_ms"] for r in rounds),
            "non_2xx": sum(r["non_2xx"] for r in rounds),
            "socket_errors": sum(r["socket_errors"] for r in rounds),
            "errors": sum(r["errors"] for r in rounds),
            "machine_busy": _median(r["machine_busy"] for r in rounds),
        }
        if self.store is not None:
            reads = sum(r["store_reads"] for r in rounds)
            proxied = sum(r["proxied"] for r in rounds)
            row["proxied_requests"] = proxied
            commands: dict[str, int] = {}
            for r in rounds:
                for name, count in r["store_commands"].items():
                    commands[name] = commands.get(name, 0) + count
            row["store_reads"] = reads
            row["store_round_trips_per_request"] = reads / proxied if proxied else None
            row["store_commands_per_request"] = {
                name: round(count / proxied, 4) for name, count in sorted(commands.items())
            } if proxied else {}
        if self.emulator is not None:
            row["token_calls"] = sum(r["token_calls"] for r in rounds)
        if self.server is not None:
            cpu = sum(r["server_cpu_s"] for r in rounds)
            row["server_cpu_ms_per_request"] = cpu * 1000 / requests_ if requests_ else None
            row["server_log_problems"] = self.server.problems()
        if isinstance(self.server, Together) and requests_:
            row["server_cpu_ms_per_request_by_process"] = {
                name: round(sum(r["server_cpu_parts_s"][name] for r in rounds) * 1000 / requests_, 4)
                for name in self.server.parts
            }
        if isinstance(self.server, GunicornProcess):
            row["workers"], row["threads"] = self.server.workers, self.server.threads
            row["worker_class"] = self.server.worker_class
        if self.latency_rounds:
            row["one_connection"] = {
                "rounds": len(self.latency_rounds),
                "rps": _median(r["rps"] for r in self.latency_rounds),
                "p50_ms": _median(r["p50_ms"] for r in self.latency_rounds),
                "p90_ms": _median(r["p90_ms"] for r in self.latency_rounds),
                "p99_ms": _median(r["p99_ms"] for r in self.latency_rounds),
                "errors": sum(r["errors"] for r in self.latency_rounds),
            }
        return row


class Bench:
    """Runs the load generator against targets and reads the counters around each run."""

    def __init__(self, args: argparse.Namespace, stub: NginxProcess | PythonStub) -> None:
        self.stub = stub if isinstance(stub, NginxProcess) else None
        self.args = args

    def load(self, target: Target, duration: float, connections: int) -> dict[str, t.Any]:
        args = self.args
        return run_load(Request(target.url, target.headers), duration=duration, connections=connections,
                        threads=min(args.load_threads, connections), generator=args.generator).as_dict()

    def warm(self, target: Target) -> None:
        if self.args.warmup > 0:
            self.load(target, self.args.warmup, self.args.connections)

    def measure(self, target: Target, *, connections: int, duration: float) -> dict[str, t.Any]:
        time.sleep(SETTLE_S)  # the previous run's last requests finish before the counters are read
        tokens_before = target.emulator.state.counters()["token_calls"] if target.emulator else 0
        store_before = store_snapshot(target.store) if target.store is not None else None
        forwarded_before = self.stub.requests_served() if self.stub and target.store is not None else None
        cpu_before = cpu_times()
        server_before = target.server.cpu_seconds() if target.server is not None else 0.0
        parts_before = target.server.part_seconds() if isinstance(target.server, Together) else {}
        result = self.load(target, duration, connections)
        server_cpu = target.server.cpu_seconds() - server_before if target.server is not None else None
        if isinstance(target.server, Together):
            result["server_cpu_parts_s"] = {name: round(seconds - parts_before[name], 3)
                                            for name, seconds in target.server.part_seconds().items()}
        cpu_after = cpu_times()
        result["connections"] = connections
        if server_cpu is not None:
            result["server_cpu_s"] = round(server_cpu, 3)
            result["server_cpu_ms_per_request"] = (
                round(server_cpu * 1000 / result["requests"], 4) if result["requests"] else None
            )
        result["machine_busy"] = round(
            (cpu_after[0] - cpu_before[0]) / max(1, cpu_after[1] - cpu_before[1]), 3
        )
        if store_before is not None and target.store is not None:
            time.sleep(SETTLE_S)  # requests in flight when the load stopped are still served
            reads, commands = store_delta(target.store, store_before)
            result["store_reads"] = reads
            result["store_commands"] = commands
            # The calls that reached the upstream: the proxied requests, in flight ones included.
            result["proxied"] = result["requests"]
            if forwarded_before is not None and self.stub is not None:
                result["proxied"] = self.stub.requests_served() - forwarded_before - 1
        if target.emulator is not None:
            result["token_calls"] = target.emulator.state.counters()["token_calls"] - tokens_before
        (target.rounds if connections == self.args.connections else target.latency_rounds).append(result)
        print(f"  {target.label} @{connections}: {result['rps']:,.0f} req/s, p50 {result['p50_ms']:.2f} ms, "
              f"p99 {result['p99_ms']:.2f} ms, errors {result['errors']}", flush=True)
        return result


# The refresh (MRRT) cost and the memory per session -----------------------------------------------


def _timed_calls(http: requests.Session, url: str, count: int) -> list[float]:
    """Milliseconds per call, one call after the other on one keep-alive connection."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        response = http.get(url, timeout=30)
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:300]}")
        times.append(elapsed)
    return times


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    ninety = ordered[min(len(ordered) - 1, max(0, round(0.9 * len(ordered)) - 1))]
    return {"p50_ms": round(statistics.median(ordered), 3), "p90_ms": round(ninety, 3),
            "mean_ms": round(statistics.fmean(ordered), 3), "max_ms": round(ordered[-1], 3)}


def _log_events(path: Path, offset: int, event: str) -> list[dict[str, t.Any]]:
    """The BFF's JSON log lines of ``event`` written after ``offset`` bytes."""
    found = []
    with path.open("rb") as log:
        log.seek(offset)
        for line in log:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("event") == event:
                    found.append(record)
    return found


def measure_refresh(
    bff_url: str, headers: dict[str, str], sid: str, emulator: EmulatorServer, store: redis.Redis,
    bff: GunicornProcess, calls: int,
) -> dict[str, t.Any]:
    """A proxied call that has to refresh its token first, and the next one, served from the cache.

    ``calls`` pairs, one call after the other on one keep-alive connection. Before each pair the
    session record's cached access tokens are removed, as their expiry would make them useless: the
    first call of the pair then does the whole refresh (refresh lock, durable attempt mark,
    ``grant_type=refresh_token`` with the My Account audience and scope at the emulator, rotation,
    compare-and-set write, unlock) before proxying; the second finds the new token in the record.
    Pairing the two kinds of call keeps a machine whose speed drifts from favouring either.
    """
    url = bff_url + STUB_PATH
    http = requests.Session()
    http.trust_env = False
    http.headers.update(headers)
    record = session_keys(store, sid).record
    _timed_calls(http, url, 5)  # the connection and the worker are warm

    def drop_cached_tokens() -> None:
        stale = [name for name in t.cast("list[bytes]", store.hkeys(record))
                 if name.decode().startswith(ACCESS_PREFIX)]
        if stale:
            store.hdel(record, *t.cast("list[str]", stale))
        # As every writer does: announce the change, so no process serves the record from its cache.
        store.publish(f"bff:p:{CHANNEL}", digest(sid) + b":bench")
        time.sleep(0.05)  # delivered within a millisecond or two; generously, before the timed call

    tokens_before = emulator.state.counters()["token_calls"]
    log_offset = bff.log.stat().st_size
    refreshing: list[float] = []
    cached: list[float] = []
    reads = 0
    commands: dict[str, int] = {}
    for _ in range(calls):
        drop_cached_tokens()
        before = store_snapshot(store)
        refreshing += _timed_calls(http, url, 1)
        # The calls' own store traffic only (this client's HKEYS, HDEL and INFO calls are left out).
        trips, used = store_delta(store, before)
        reads += trips
        for name, count in used.items():
            commands[name] = commands.get(name, 0) + count
        cached += _timed_calls(http, url, 1)
    token_calls = emulator.state.counters()["token_calls"] - tokens_before
    http.close()
    time.sleep(SETTLE_S)
    exchanges = [float(line["duration_ms"]) for line in _log_events(bff.log, log_offset, "token.exchange")
                 if line.get("result") == "ok" and "duration_ms" in line]
    cached_p = _percentiles(cached)
    refreshing_p = _percentiles(refreshing)
    return {
        "calls": calls,
        "cached": cached_p,
        "refreshing": refreshing_p,
        "added_p50_ms": round(refreshing_p["p50_ms"] - cached_p["p50_ms"], 3),
        "token_calls": token_calls,
        "token_exchange_ms": _percentiles(exchanges) if exchanges else None,
        "store_round_trips_per_call": round(reads / calls, 3),
        "store_commands_per_call": {name: round(count / calls, 3) for name, count in sorted(commands.items())},
    }


def _key_group(key: str) -> str:
    """A key's kind: ``bff:s``, ``bff:i:sub``, ... for the BFF's keys, the first segment for others."""
    parts = key.split(":")
    if parts[0] == "bff" and len(parts) > 2:
        return ":".join(parts[:3] if parts[1] in ("i", "k", "l", "c") else parts[:2])
    return parts[0] if len(parts) > 1 else "(other)"


def _all_keys(client: redis.Redis) -> set[str]:
    return {key.decode() for key in t.cast("t.Iterator[bytes]", client.scan_iter(count=1000))}


def _new_keys(client: redis.Redis, before: set[str]) -> dict[str, dict[str, t.Any]]:
    """The keys created since ``before``, by kind: how many, their mean ``MEMORY USAGE`` and TTL."""
    groups: dict[str, list[tuple[int, int]]] = {}
    for key in sorted(_all_keys(client) - before):
        groups.setdefault(_key_group(key), []).append((memory_usage(client, key), int(t.cast(int, client.ttl(key)))))
    return {
        name: {"keys": len(items), "mean_bytes": round(statistics.fmean(b for b, _ in items)),
               "ttl_s": max(ttl for _, ttl in items)}
        for name, items in groups.items()
    }


def measure_bff_memory(
    bff_url: str, emulator: EmulatorServer, store: redis.Redis, logins: int
) -> dict[str, t.Any]:
    """Redis memory per BFF session: ``logins`` users log in and make one proxied call each."""
    users = [f"bench-user-{number}@example.com" for number in range(logins)]
    for email in users:
        emulator.state.add_user(email, USER_PASSWORD)
    time.sleep(SETTLE_S)
    keys_before = _all_keys(store)
    before = used_memory(store)
    sid = ""
    for email in users:
        http = log_in(bff_url, email=email, password=USER_PASSWORD)
        cookie = next(name for name in SESSION_COOKIES if name in http.cookies)
        sid = http.cookies[cookie]
        response = http.get(bff_url + STUB_PATH, headers={"X-CSRF": "1", "Accept": "application/json"}, timeout=10)
        if response.status_code != 200:
            raise RuntimeError(f"memory: the first call answered {response.status_code}: {response.text[:200]}")
        http.close()
    time.sleep(SETTLE_S)
    after = used_memory(store)
    keys = session_keys(store, sid)
    record = memory_usage(store, keys.record)
    index = memory_usage(store, keys.sub_index) + (memory_usage(store, keys.idp_sid_index)
                                                    if keys.idp_sid_index else 0)
    fields = {name: int(t.cast(int, store.hstrlen(keys.record, name)))
              for name in (raw.decode() for raw in t.cast("list[bytes]", store.hkeys(keys.record)))}
    return {
        "logins": logins,
        "record_bytes": record,
        "index_bytes": index,
        "session_bytes": record + index,
        "record_field_lengths": fields,
        "used_memory_per_login": round((after - before) / logins),
        "new_keys": _new_keys(store, keys_before),
    }


def measure_apache_memory(
    apache: ApacheProcess, emulator: EmulatorServer, store: redis.Redis, logins: int, verify: str
) -> dict[str, t.Any]:
    """Redis memory per mod_auth_openidc session: ``logins`` users log in and make one call each."""
    users = [f"bench-user-{number}@example.com" for number in range(logins)]
    for email in users:
        emulator.state.add_user(email, USER_PASSWORD)
    time.sleep(SETTLE_S)
    keys_before = _all_keys(store)
    before = used_memory(store)
    for email in users:
        http = log_in_relying_party(apache.url, STUB_PATH, redirect_path=apache.redirect_path, email=email,
                                    password=USER_PASSWORD, verify=verify)
        response = http.get(apache.url + STUB_PATH, allow_redirects=False, timeout=10)
        if response.status_code != 200:
            raise RuntimeError(f"memory: Apache's first call answered {response.status_code}")
        http.close()
    time.sleep(SETTLE_S)
    after = used_memory(store)
    new = _new_keys(store, keys_before)
    # The session ("s") and its index by the provider's session id ("d") last as long as the session;
    # nonces ("n") and ID-token ids ("j") are replay guards that expire within the hour.
    lasting = sum(group["mean_bytes"] * group["keys"] for name, group in new.items() if name in ("s", "d"))
    return {
        "logins": logins,
        "session_bytes": round(lasting / logins),
        "used_memory_per_login": round((after - before) / logins),
        "new_keys": new,
    }


def py_spy() -> str | None:
    """The py-spy binary: beside this Python (a virtual environment's), or on the PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def profile_under_load(bench: Bench, target: Target, pid: int, output: Path, seconds: float) -> dict[str, t.Any]:
    """Record the BFF with py-spy (every worker, GIL holder only) while the target is under load."""
    binary = py_spy()
    if binary is None:
        raise RuntimeError("--profile needs py-spy (pip install py-spy)")
    output.parent.mkdir(parents=True, exist_ok=True)
    recorder = subprocess.Popen(
        [binary, "record", "--pid", str(pid), "--subprocesses", "--gil", "--format", "raw", "--rate", "200",
         "--duration", str(max(1, round(seconds))), "--output", str(output), "--nonblocking"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        time.sleep(1.0)  # py-spy attaches to every process first
        bench.load(target, seconds + 1.5, bench.args.connections)
        _, errors = recorder.communicate(timeout=60)
    finally:
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait()
    if recorder.returncode != 0 or not output.exists():
        raise RuntimeError(f"py-spy failed ({recorder.returncode}): {errors.decode(errors='replace')[-500:]}")
    profile = read_profile(output)
    total = profile.total or 1
    return {
        "file": str(output),
        "samples": profile.total,
        "groups": {name: round(samples / total, 4) for name, samples in profile.group_shares().items()},
        "top_self": [[frame, round(samples / total, 4)] for frame, samples in profile.self_shares().most_common(15)],
        "top_inclusive": [[frame, round(samples / total, 4)]
                          for frame, samples in profile.inclusive_shares().most_common(40)],
    }


# The run ------------------------------------------------------------------------------------------


def bff_env(redis_url: str, emulator_url: str, bff_url: str, stub_url: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("BFF_", "BENCH_"))}
    env.update({
        "BFF_ISSUER_URL": emulator_url + "/",
        "BFF_CLIENT_ID": CLIENT_ID,
        "BFF_CLIENT_SECRET": CLIENT_SECRET,
        "BFF_BASE_URL": bff_url,
        "BFF_SECRET_KEY": SECRET_KEY,
        "BFF_SESSION_STORE": redis_url,
        "BFF_MY_ACCOUNT_URL": stub_url + "/me/v1",
        # One session and one address send every request: the per-session and per-address limits
        # would answer 429 after the first few hundred. The login limit would stop the memory phase,
        # which logs users in from one address.
        "BFF_RATE_LIMIT_SESSION": "off",
        "BFF_RATE_LIMIT_ADDRESS": "off",
        "BFF_RATE_LIMIT_LOGIN": "off",
        # The production format: one JSON line per request (the access line) on stderr, which the
        # benchmark sends to a file (the server's log in its work directory).
        "BFF_LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def parse_configs(text: str) -> list[tuple[int, int]]:
    configs = []
    for item in text.split(","):
        workers, _, threads = item.strip().lower().partition("x")
        configs.append((int(workers), int(threads or DEFAULT_THREADS)))
    if not configs or any(w < 1 or w > 64 or th < 1 or th > 256 for w, th in configs):
        raise ValueError(f"--sweep: expected WORKERS[xTHREADS],..., got {text!r}")
    return configs


def server_config(worker_class: str, workers: int, threads: int) -> str:
    return f"{workers} gevent workers" if worker_class == "gevent" else f"{workers}x{threads} gthread"


def prepare_tools(args: argparse.Namespace, notes: list[str]) -> tuple[bool, bool]:
    """Settle the load generator; return whether nginx and Apache with mod_auth_openidc are there."""
    allow = not args.no_install
    if args.generator in ("auto", "wrk"):
        if ensure_packages(lambda: _installed("wrk"), ["wrk"], allow_install=allow):
            args.generator = "wrk"
        elif args.generator == "wrk":
            raise SystemExit("wrk is not installed and could not be installed")
        else:
            args.generator = "python"
            notes.append("wrk is not installed: the Python (asyncio) load generator was used instead; it "
                         "spends CPU the servers would otherwise have, so every figure is lower than with wrk.")
    have_nginx = ensure_packages(lambda: _installed("nginx"), ["nginx"], allow_install=allow)
    if not have_nginx:
        notes.append("nginx is not installed: the stub is a Python server and there is no nginx row.")
    have_apache = False
    if not args.no_apache:
        have_apache = ensure_packages(apache_available, ["apache2", "libapache2-mod-auth-openidc"],
                                      allow_install=allow)
        if not have_apache:
            notes.append("Apache httpd or mod_auth_openidc is not installed: there is no Apache row.")
    for note in notes:
        print("NOTE: " + note, flush=True)
    return have_nginx, have_apache


def _command() -> str:
    python = Path(sys.executable)
    with contextlib.suppress(ValueError):
        python = python.relative_to(ROOT)
    return shlex.join([str(python), *sys.argv])


def check_bearer(url: str, headers: dict[str, str], emulator: EmulatorServer) -> dict[str, t.Any]:
    """What the stub received as ``Authorization`` through a proxy: a valid My Account token?"""
    response = requests.get(url, headers=headers, allow_redirects=False, timeout=10)
    if response.status_code != 200 or not response.text.startswith("Bearer "):
        raise RuntimeError(f"bearer check: the stub saw no bearer token ({response.status_code}: "
                           f"{response.text[:100]})")
    try:
        claims = emulator.state.verify_access_token(response.text.removeprefix("Bearer ").strip())
    except InvalidAccessToken as error:
        raise RuntimeError(f"bearer check: the token the stub received is not valid: {error}") from error
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    if emulator.state.my_account_audience not in audiences:
        raise RuntimeError(f"bearer check: the token is not for the My Account API: {audiences}")
    return {"valid": True, "audience": audiences, "scope": claims.get("scope"),
            "expires_in_s": round(claims["exp"] - time.time())}


def check_dpop(emulator: EmulatorServer) -> dict[str, t.Any]:
    """The DPoP session's tokens, as the emulator issued them: bound to the session's key (the stub checks
    neither proofs nor signatures, for this row as for the others)."""
    issued = emulator.state.issued_tokens()[:2]  # newest first: the warming call's MRRT exchange, the login
    if len(issued) < 2 or any(item.token_type.lower() != "dpop" or not item.jkt for item in issued):
        raise RuntimeError(f"DPoP check: the session's tokens are not DPoP-bound: {issued}")
    if issued[0].jkt != issued[1].jkt:
        raise RuntimeError("DPoP check: the login and the MRRT exchange were proved with different keys")
    return {"bound": True, "grants": [item.grant_type for item in issued]}


def run(args: argparse.Namespace) -> dict[str, t.Any]:
    notes: list[str] = []
    have_nginx, have_apache = prepare_tools(args, notes)
    config = server_config(args.worker_class, args.workers, args.threads)
    report: dict[str, t.Any] = {
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": _command(),
        "machine": machine(),
        "settings": {
            "duration_s": args.duration,
            "latency_duration_s": args.latency_duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "connections": args.connections,
            "load_threads": args.load_threads,
            "workers": args.workers,
            "worker_class": args.worker_class,
            "threads": args.threads,
            "large_store_sessions": args.sessions,
            "refresh_calls": args.refresh_calls,
            "logins": args.logins,
            "apache_processes": args.apache_processes,
            "apache_threads": args.apache_threads,
        },
        "tools": {
            "load_generator": args.generator,
            "wrk": _version(["wrk", "--version"]) if args.generator == "wrk" else None,
            "nginx": _version(["nginx", "-v"]) if have_nginx else None,
            "redis": _version(["redis-server", "--version"]),
            "apache": _version([shutil.which("apache2") or "/usr/sbin/apache2", "-v"]) if have_apache else None,
            "mod_auth_openidc": _package_version("libapache2-mod-auth-openidc") if have_apache else None,
        },
        "notes": notes,
    }

    workdir = make_workdir()
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, workdir, True)
        print("starting redis, the stub, the emulator, the bff ...", flush=True)
        store_server = RedisProcess(workdir).start()
        cleanup.callback(store_server.stop)
        store = store_server.client()
        cleanup.callback(store.close)
        stub: NginxProcess | PythonStub = NginxProcess(workdir) if have_nginx else PythonStub(workdir)
        cleanup.callback(stub.stop)
        stub.start()

        bff_port = free_port()
        bff_url = f"http://127.0.0.1:{bff_port}"
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per emulator request
        emulator = EmulatorServer(EmulatorConfig(CLIENT_ID, CLIENT_SECRET, bff_url)).start()
        cleanup.callback(emulator.stop)
        env = bff_env(store_server.url, emulator.url, bff_url, stub.stub_url)

        running: list[GunicornProcess] = []

        def stop_servers() -> None:
            for server in running:
                server.stop()

        cleanup.callback(stop_servers)

        def serve(server: GunicornProcess) -> GunicornProcess:
            running.append(server)
            return server.start()

        def start_bff(port: int, environment: dict[str, str], workers: int, threads: int) -> GunicornProcess:
            return serve(BffProcess(workdir, port, environment, workers=workers, threads=threads,
                                    worker_class=args.worker_class))

        bff = start_bff(bff_port, env, args.workers, args.threads)
        http = log_in(bff_url)
        cookie_name = next((name for name in SESSION_COOKIES if name in http.cookies), None)
        if cookie_name is None:
            raise RuntimeError(f"login: no session cookie among {sorted(http.cookies.keys())}")
        sid = str(http.cookies[cookie_name])
        warm = http.get(bff_url + STUB_PATH, timeout=10)
        if warm.status_code != 200 or warm.json() != json.loads(FACTORS_BODY):
            raise RuntimeError(f"the warming call answered {warm.status_code}: {warm.text[:300]}")
        headers = {"Cookie": f"{cookie_name}={sid}", "X-CSRF": "1", "Accept": "application/json"}
        http.close()
        report["token_calls_at_login_and_warming"] = emulator.state.counters()["token_calls_by_grant_type"]

        # The store holds SMALL_STORE_SESSIONS sessions of the BFF: the logged-in one and copies.
        box = SecretBox((SECRET_KEY,))
        template = t.cast("dict[bytes, bytes]", store.hgetall(session_keys(store, sid).record))
        write_sessions(store, SMALL_STORE_SESSIONS - 1, template, box, idle_timeout=IDLE_TIMEOUT, lifetime=LIFETIME)

        apache: ApacheProcess | None = None
        apache_emulator: EmulatorServer | None = None
        apache_headers: dict[str, str] = {}
        certfile = ""
        if have_apache:
            print("starting apache with mod_auth_openidc ...", flush=True)
            apache_port = free_port()
            cert, key = self_signed_certificate(workdir)
            certfile = str(cert)
            # An emulator of its own: its one client's callback is <base>/bff/callback, here Apache's.
            apache_emulator = EmulatorServer(
                EmulatorConfig(CLIENT_ID, CLIENT_SECRET, f"http://127.0.0.1:{apache_port}"),
                certfile=cert, keyfile=key,
            ).start()
            cleanup.callback(apache_emulator.stop)
            apache = ApacheProcess(
                workdir, stub_url=stub.stub_url, issuer=apache_emulator.url + "/",
                audience=apache_emulator.state.my_account_audience, client_id=CLIENT_ID,
                client_secret=CLIENT_SECRET, redis_port=store_server.port, port=apache_port,
                processes=args.apache_processes, threads=args.apache_threads,
            )
            cleanup.callback(apache.stop)
            apache.start()
            rp = log_in_relying_party(apache.url, STUB_PATH, redirect_path=apache.redirect_path, verify=certfile)
            apache_headers = {"Cookie": f"{APACHE_SESSION_COOKIE}={rp.cookies[APACHE_SESSION_COOKIE]}",
                              "Accept": "application/json"}
            rp.close()
            report["apache_bearer_check"] = check_bearer(apache.url + ECHO_PATH, apache_headers, apache_emulator)
            print(f"  the stub received a valid bearer token through Apache: {report['apache_bearer_check']}",
                  flush=True)

        reference: GunicornProcess | None = None
        if not args.no_reference:
            reference_env = {**env, "BENCH_REDIS_URL": store_server.url,
                             "BENCH_UPSTREAM_URL": stub.stub_url, "BENCH_COOKIE_NAME": cookie_name}
            reference = serve(ReferenceProcess(workdir, free_port(), reference_env,
                                               workers=args.workers, threads=args.threads,
                                               worker_class=args.worker_class))

        large_bff: GunicornProcess | None = None
        large_store: redis.Redis | None = None
        if args.sessions:
            print(f"writing {args.sessions:,} sessions into a second store ...", flush=True)
            large_dir = workdir / "large"
            large_dir.mkdir()
            large_redis = RedisProcess(large_dir).start()
            cleanup.callback(large_redis.stop)
            large_store = large_redis.client()
            cleanup.callback(large_store.close)
            empty = used_memory(large_store)
            started = time.monotonic()
            copy_session(store, large_store, sid)
            write_sessions(large_store, args.sessions - 1, template, box, idle_timeout=IDLE_TIMEOUT,
                           lifetime=LIFETIME)
            report["large_store"] = {
                "sessions": args.sessions,
                "keys": int(t.cast(int, large_store.dbsize())),
                "write_s": round(time.monotonic() - started, 1),
                "used_memory_bytes": used_memory(large_store),
                "used_memory_per_session": round((used_memory(large_store) - empty) / args.sessions),
            }
            large_env = {**env, "BFF_SESSION_STORE": large_redis.url}
            large_bff = start_bff(free_port(), large_env, args.workers, args.threads)

        dpop_bff: GunicornProcess | None = None
        dpop_headers: dict[str, str] = {}
        if not args.no_dpop:
            # The same BFF with DPoP on (its base URL the first one's, the emulator's one callback) and a
            # session of its own, with a key: the cost of a proof per proxied call.
            dpop_bff = start_bff(free_port(), {**env, "BFF_DPOP": "true"}, args.workers, args.threads)
            dpop_http = log_in(bff_url, via=dpop_bff.url)
            dpop_sid = str(dpop_http.cookies[cookie_name])
            dpop_http.close()
            dpop_headers = {**headers, "Cookie": f"{cookie_name}={dpop_sid}"}
            warmed = requests.get(dpop_bff.url + STUB_PATH, headers=dpop_headers, timeout=10)
            if warmed.status_code != 200:
                raise RuntimeError(f"the DPoP BFF's warming call answered {warmed.status_code}: {warmed.text[:300]}")
            report["dpop_check"] = check_dpop(emulator)
            print(f"  {report['dpop_check']}", flush=True)

        front: FrontProcess | None = None
        if isinstance(stub, NginxProcess) and not args.no_offload:
            print("starting nginx in front of an offloading bff ...", flush=True)
            offload_port = free_port()
            front = FrontProcess(workdir, bff_port=offload_port, stub_port=stub.stub_port)
            cleanup.callback(front.stop)
            offload_env = {**env, "BFF_BASE_URL": front.offload_url, "BFF_TRUSTED_PROXIES": "127.0.0.1",
                           "BFF_OFFLOAD": "nginx", "BFF_OFFLOAD_SECRET": OFFLOAD_SECRET}
            offload_bff = start_bff(offload_port, offload_env, args.workers, args.threads)
            front.start()
            report["offload_check"] = check_offload(front, offload_bff, headers)
            print(f"  {report['offload_check']}", flush=True)

        targets = [Target("stub", "(a) stub", stub.stub_url + STUB_PATH, headers,
                          server=stub if isinstance(stub, NginxProcess) else None)]
        if isinstance(stub, NginxProcess):
            targets.append(Target("nginx", "(b) nginx -> stub", stub.proxy_url + STUB_PATH, headers, server=stub))
        if apache is not None:
            targets.append(Target(
                "apache", f"(c) Apache + mod_auth_openidc -> stub, {args.apache_processes}x{args.apache_threads}",
                apache.url + STUB_PATH, apache_headers, store=store, emulator=apache_emulator, server=apache,
            ))
        if reference is not None:
            targets.append(Target("reference", f"(d) bare forwarder -> stub, {config}", reference.url + STUB_PATH,
                                  headers, store=store, server=reference))
        targets.append(Target("bff", f"(e) BFF -> stub, {config}", bff_url + STUB_PATH, headers, store=store,
                              emulator=emulator, server=bff))
        if large_bff is not None and large_store is not None:
            targets.append(Target("bff_large", f"(f) BFF, {args.sessions:,} sessions in store, {config}",
                                  large_bff.url + STUB_PATH, headers, store=large_store, emulator=emulator,
                                  server=large_bff, one_connection=False))
        if dpop_bff is not None:
            targets.append(Target("bff_dpop", f"(i) BFF with DPoP -> stub, {config}", dpop_bff.url + STUB_PATH,
                                  dpop_headers, store=store, emulator=emulator, server=dpop_bff))
        if front is not None:
            deployed = Together(bff=offload_bff, nginx=front)
            targets.append(Target("bff_nginx", f"(g) nginx -> BFF -> stub, {config}", front.plain_url + STUB_PATH,
                                  headers, store=store, emulator=emulator, server=deployed))
            targets.append(Target("bff_offload", f"(h) nginx -> BFF (authorizes) -> nginx -> stub, {config}",
                                  front.offload_url + STUB_PATH, headers, store=store, emulator=emulator,
                                  server=deployed))

        bench = Bench(args, stub)
        print(f"load: {args.generator}, {args.connections} connections, {args.rounds} round(s) of "
              f"{args.duration:g} s per target (+{args.warmup:g} s warm-up); then 1 connection, "
              f"{args.rounds} round(s) of {args.latency_duration:g} s", flush=True)
        for target in targets:
            bench.warm(target)
        for number in range(args.rounds):
            print(f"round {number + 1}/{args.rounds}", flush=True)
            for target in targets:
                bench.measure(target, connections=args.connections, duration=args.duration)
        if args.latency_duration > 0:
            for number in range(args.rounds):
                print(f"one-connection round {number + 1}/{args.rounds}", flush=True)
                for target in targets:
                    if target.one_connection:
                        bench.measure(target, connections=1, duration=args.latency_duration)
        report["results"] = [target.summary() for target in targets]
        by_key = {row["key"]: row for row in report["results"]}
        report["targets"] = check_targets(by_key["bff"], by_key.get("apache"))

        if args.refresh_calls:
            print(f"refresh cost: {args.refresh_calls} pairs of a refreshing and a cached call", flush=True)
            report["refresh"] = measure_refresh(bff_url, headers, sid, emulator, store, bff, args.refresh_calls)
        if args.logins:
            print(f"memory: {args.logins} logins per relying party", flush=True)
            report["memory"] = {"bff": measure_bff_memory(bff_url, emulator, store, args.logins)}
            if apache is not None and apache_emulator is not None:
                report["memory"]["apache"] = measure_apache_memory(apache, apache_emulator, store, args.logins,
                                                                   certfile)

        if args.profile and bff.process is not None:
            print(f"profile: py-spy on the BFF for {args.duration:g} s under load", flush=True)
            bff_target = next(target for target in targets if target.key == "bff")
            stacks = args.profile_output or workdir / "bff-pyspy.txt"
            report["profile"] = profile_under_load(bench, bff_target, bff.process.pid, stacks, args.duration)
            if args.profile_output is None:
                report["profile"]["file"] = None  # in the work directory, removed at the end

        if args.sweep:
            for server in [reference, large_bff, bff]:
                if server is not None:
                    server.stop()
                    running.remove(server)
            sweep = [Target(f"{w}x{th}", f"bff {server_config(args.worker_class, w, th)}", bff_url + STUB_PATH,
                            headers, store=store, emulator=emulator) for w, th in parse_configs(args.sweep)]
            current: GunicornProcess | None = None
            for number in range(args.rounds):
                print(f"sweep round {number + 1}/{args.rounds}", flush=True)
                for target in sweep:
                    if current is not None:
                        current.stop()
                        running.remove(current)
                    workers, _, threads = target.key.partition("x")
                    current = start_bff(bff_port, env, int(workers), int(threads))
                    target.server = current
                    bench.warm(target)
                    bench.measure(target, connections=args.connections, duration=args.duration)
            report["sweep"] = [target.summary() for target in sweep]

    report["machine"]["loadavg_at_end"] = [round(value, 2) for value in os.getloadavg()]
    return report


def check_offload(front: FrontProcess, bff: GunicornProcess, headers: dict[str, str]) -> dict[str, t.Any]:
    """One call through each port of the front nginx: the right body, and the BFF's access line saying
    whether it handed the call to nginx (offload) or made it itself."""
    seen: dict[str, t.Any] = {}
    for name, url in (("plain", front.plain_url), ("offload", front.offload_url)):
        offset = bff.log.stat().st_size
        response = requests.get(url + STUB_PATH, headers=headers, timeout=10)
        if response.status_code != 200 or response.json() != json.loads(FACTORS_BODY):
            raise RuntimeError(f"offload check: {name} answered {response.status_code}: {response.text[:300]}")
        time.sleep(SETTLE_S)  # the access line is written once the answer has gone
        lines = _log_events(bff.log, offset, "request")
        seen[name] = lines[-1].get("offload") if lines else None
    if seen != {"plain": None, "offload": "nginx"}:
        raise RuntimeError(f"offload check: the BFF's access lines say {seen}")
    return {"offloaded": True, "bff_access_line": seen}


def check_targets(row: dict[str, t.Any], apache: dict[str, t.Any] | None) -> dict[str, t.Any]:
    trips = row.get("store_round_trips_per_request")
    if trips is not None:
        # redis-py's health checks (a PING on a pooled connection idle for 30 s) come with the pauses
        # between runs, not with the requests.
        trips -= row.get("store_commands_per_request", {}).get("ping", 0.0)
    checks = {
        f"req/s >= {TARGET_RPS:,.0f}": row["rps"] >= TARGET_RPS,
        f"p99 < {TARGET_P99_MS:g} ms": row["p99_ms"] < TARGET_P99_MS,
        "no errors": row["errors"] == 0,
        # The sliding idle timeout adds one write per session per interval: allow that, not a second trip.
        f"store round trips per request <= {TARGET_ROUND_TRIPS:g} (health-check PINGs aside)": trips is not None
        and trips <= TARGET_ROUND_TRIPS + 0.01,
        "no token-endpoint call": row.get("token_calls") == 0,
    }
    if apache is not None:
        checks["req/s >= Apache + mod_auth_openidc's"] = row["rps"] >= apache["rps"]
    return {"checks": checks, "all_met": all(checks.values())}


# Output ------------------------------------------------------------------------------------------


def _fmt(value: t.Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _bytes(value: float) -> str:
    return f"{value:,.0f}"


def main_table(rows: list[dict[str, t.Any]]) -> str:
    lines = [
        "| target | req/s (median) | req/s range | p50 ms | p99 ms | errors | server CPU ms / req "
        "| store round trips / req | token calls |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['label']} | {row['rps']:,.0f} | {row['rps_min']:,.0f}–{row['rps_max']:,.0f} "  # noqa: RUF001
            f"| {_ms(row['p50_ms'])} | {_ms(row['p99_ms'])} | {row['errors']} "
            f"| {_fmt(row.get('server_cpu_ms_per_request'), '.3f')} "
            f"| {_fmt(row.get('store_round_trips_per_request'), '.3f')} | {_fmt(row.get('token_calls'), 'd')} |"
        )
    return "\n".join(lines)


def latency_table(rows: list[dict[str, t.Any]]) -> str:
    measured = [row for row in rows if "one_connection" in row]
    if not measured:
        return ""
    base = measured[0]["one_connection"]["p50_ms"]
    lines = ["| target | p50 ms | p99 ms | req/s | added over the stub (p50) |", "|---|---:|---:|---:|---:|"]
    for row in measured:
        one = row["one_connection"]
        added = "-" if row is measured[0] else f"+{one['p50_ms'] - base:.2f} ms"
        lines.append(f"| {row['label']} | {_ms(one['p50_ms'])} | {_ms(one['p99_ms'])} | {one['rps']:,.0f} "
                     f"| {added} |")
    return "\n".join(lines)


def comparisons(rows: list[dict[str, t.Any]]) -> list[str]:
    by_key = {row["key"]: row for row in rows}
    bff = by_key["bff"]
    lines = []
    for key, name in (("apache", "Apache + mod_auth_openidc"), ("reference", "the bare forwarder")):
        other = by_key.get(key)
        if other is None:
            continue
        ratio = bff["rps"] / (other["rps"] or 1.0)
        cpu = (bff.get("server_cpu_ms_per_request") or 0) / (other.get("server_cpu_ms_per_request") or 1)
        lines.append(f"BFF vs {name}: {ratio:.0%} of its throughput, {cpu:.2f}x its CPU per request.")
    plain, offloaded = by_key.get("bff_nginx"), by_key.get("bff_offload")
    if plain and offloaded:
        def cpu(row: dict[str, t.Any]) -> str:
            parts = row.get("server_cpu_ms_per_request_by_process") or {}
            return (f"{_fmt(row.get('server_cpu_ms_per_request'), '.3f')} ms ("
                    + ", ".join(f"{name} {ms:.3f}" for name, ms in parts.items()) + ")")
        lines.append(f"Offload (h) vs the BFF behind nginx (g): {offloaded['rps'] / (plain['rps'] or 1.0):.0%} of its "
                     f"throughput; CPU per request {cpu(offloaded)} vs {cpu(plain)}.")
    dpop = by_key.get("bff_dpop")
    if dpop:
        extra = (dpop.get("server_cpu_ms_per_request") or 0) - (bff.get("server_cpu_ms_per_request") or 0)
        one = (dpop.get("one_connection") or {}).get("p50_ms")
        base = (bff.get("one_connection") or {}).get("p50_ms")
        latency = f", {one - base:+.2f} ms at one connection (p50)" if one is not None and base is not None else ""
        lines.append(f"DPoP on (i) vs off (e): {dpop['rps'] / (bff['rps'] or 1.0):.0%} of the throughput, "
                     f"{extra:+.3f} ms of server CPU per proxied call{latency}.")
    commands = bff.get("store_commands_per_request")
    if commands:
        lines.append("BFF store commands per proxied request: "
                     + ", ".join(f"`{name}` {count:g}" for name, count in commands.items()) + ".")
    apache = by_key.get("apache")
    if apache and apache.get("store_commands_per_request"):
        lines.append("Apache + mod_auth_openidc store commands per proxied request: "
                     + ", ".join(f"`{name}` {count:g}" for name, count in apache["store_commands_per_request"].items())
                     + ".")
    return lines


def refresh_section(refresh: dict[str, t.Any]) -> str:
    cached, fresh = refresh["cached"], refresh["refreshing"]
    exchange = refresh.get("token_exchange_ms") or {}
    lines = [
        f"{refresh['calls']} pairs of calls, one after the other on one connection: the session's cached "
        f"token removed, a call that refreshes it, a call served from the cache "
        f"({refresh['token_calls']} token-endpoint calls in all):",
        "",
        "| proxied call | p50 ms | p90 ms | mean ms |",
        "|---|---:|---:|---:|",
        f"| token from the session's cache | {_ms(cached['p50_ms'])} | {_ms(cached['p90_ms'])} "
        f"| {_ms(cached['mean_ms'])} |",
        f"| token refreshed first (MRRT exchange) | {_ms(fresh['p50_ms'])} | {_ms(fresh['p90_ms'])} "
        f"| {_ms(fresh['mean_ms'])} |",
    ]
    if exchange:
        lines.append(f"| of which the token endpoint's answer (BFF log `duration_ms`) | {_ms(exchange['p50_ms'])} "
                     f"| {_ms(exchange['p90_ms'])} | {_ms(exchange['mean_ms'])} |")
    commands = ", ".join(f"`{name}` {count:g}" for name, count in refresh["store_commands_per_call"].items())
    lines += ["", f"A refreshing call: +{refresh['added_p50_ms']:.2f} ms at the median; "
              f"{refresh['store_round_trips_per_call']:.2f} store round trips ({commands})."]
    return "\n".join(lines)


def sessions_section(report: dict[str, t.Any]) -> str:
    by_key = {row["key"]: row for row in report["results"]}
    small, large = by_key.get("bff"), by_key.get("bff_large")
    if small is None or large is None:
        return ""
    info = report.get("large_store", {})
    lines = [
        "| BFF, sessions in its store | req/s (median) | req/s range | p50 ms | p99 ms | errors "
        "| server CPU ms / req | store round trips / req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for count, row in ((SMALL_STORE_SESSIONS, small), (info.get("sessions", 0), large)):
        lines.append(
            f"| {count:,} | {row['rps']:,.0f} | {row['rps_min']:,.0f}–{row['rps_max']:,.0f} "  # noqa: RUF001
            f"| {_ms(row['p50_ms'])} | {_ms(row['p99_ms'])} | {row['errors']} "
            f"| {_fmt(row.get('server_cpu_ms_per_request'), '.3f')} "
            f"| {_fmt(row.get('store_round_trips_per_request'), '.3f')} |"
        )
    cpu_ratio = (large.get("server_cpu_ms_per_request") or 0) / (small.get("server_cpu_ms_per_request") or 1)
    lines += ["", f"With {info.get('sessions', 0):,} sessions: {large['rps'] / (small['rps'] or 1):.0%} of the "
              f"throughput with {SMALL_STORE_SESSIONS} in the same rounds, {cpu_ratio:.2f}x the CPU per request. "
              f"Writing the {info.get('sessions', 0):,} records ({info.get('keys', 0):,} keys with the indexes) "
              f"took {info.get('write_s', 0):g} s; that store's `used_memory` was "
              f"{info.get('used_memory_bytes', 0) / 2**20:,.1f} MiB."]
    return "\n".join(lines)


def memory_section(report: dict[str, t.Any]) -> str:
    memory = report.get("memory")
    if not memory:
        return ""
    bff = memory["bff"]
    fields = ", ".join(f"`{name}` {length}" for name, length in sorted(bff["record_field_lengths"].items()))
    lines = [
        "| relying party | `MEMORY USAGE` of a session's lasting keys | `used_memory` per login "
        "(N logins, short-lived keys included) |",
        "|---|---:|---:|",
        f"| BFF (record {_bytes(bff['record_bytes'])} + its two index entries {_bytes(bff['index_bytes'])}) "
        f"| {_bytes(bff['session_bytes'])} | {_bytes(bff['used_memory_per_login'])} (N = {bff['logins']}) |",
    ]
    apache = memory.get("apache")
    if apache:
        lines.append(f"| Apache + mod_auth_openidc (session and its `d:` index) | {_bytes(apache['session_bytes'])} "
                     f"| {_bytes(apache['used_memory_per_login'])} (N = {apache['logins']}) |")
    large = report.get("large_store")
    if large:
        lines.append(f"| BFF, {large['sessions']:,} written sessions (`used_memory` / sessions) | - "
                     f"| {_bytes(large['used_memory_per_session'])} |")
    lines += ["", f"The BFF record's fields (bytes): {fields}."]
    for name, groups in (("BFF", bff["new_keys"]), ("Apache", (apache or {}).get("new_keys", {}))):
        if groups:
            lines.append(f"Keys the {name} logins added: " + "; ".join(
                f"`{group}` {g['keys']} x {g['mean_bytes']:,} B (TTL {g['ttl_s']:,} s)" for group, g in groups.items()
            ) + ".")
    return "\n".join(lines)


def profile_section(profile: dict[str, t.Any]) -> str:
    lines = [f"{profile['samples']:,} samples (py-spy, 200 a second) of the thread holding the GIL in either "
             "worker, under the throughput phase's load. Each sample is counted once, in the first of the "
             "groups of [`bench/cpu_profile.py`](../bench/cpu_profile.py) whose frames are on its stack, so the "
             "shares add up to the whole:", "",
             "| cost group | share of the CPU samples |", "|---|---:|"]
    for name, share in sorted(profile["groups"].items(), key=lambda item: -item[1]):
        lines.append(f"| {name} | {share:.1%} |")
    lines += ["", "| function (self: its own code only) | share |", "|---|---:|"]
    for frame, share in profile["top_self"][:10]:
        lines.append(f"| `{_short_frame(frame)}` | {share:.1%} |")
    return "\n".join(lines)


def _short_frame(frame: str) -> str:
    function, _, location = frame.partition(" (")
    parts = location.rstrip(")").split("/")
    for anchor in ("site-packages", "python3.11", "main"):
        if anchor in parts:
            parts = parts[parts.index(anchor) + 1:]
            break
    return f"{function} ({'/'.join(parts)})"


def results_markdown(report: dict[str, t.Any], *, chart: str | None = None) -> str:
    m, s, tools = report["machine"], report["settings"], report["tools"]
    rows = report["results"]
    by_key = {row["key"]: row for row in rows}
    parts = [
        f"Command: `{report['command']}` ({report.get('wall_time_s', 0) / 60:.1f} minutes, "
        f"{report['started_at']}). Every figure is in [`{DOC_JSON.name}`]({DOC_JSON.name}).",
        "",
        f"{m['nproc']} CPUs ({m['cpu']}), load averages {m['loadavg_at_start']} at the start; load generator "
        f"{tools['load_generator']}, {s['connections']} connections, {s['rounds']} x {s['duration_s']:g} s per "
        f"target, interleaved; the machine was {by_key['bff']['machine_busy']:.0%} busy during the BFF runs "
        "(median).",
        "",
    ]
    if chart:
        parts += [f"![Throughput and p99 per target]({chart})", ""]
    parts += [main_table(rows), ""]
    parts += comparisons(rows)
    checks = report["targets"]["checks"]
    parts += ["", "Targets (BFF row): " + "; ".join(f"{name}: {'met' if ok else 'not met'}"
                                                    for name, ok in checks.items()) + "."]
    check = report.get("apache_bearer_check")
    if check:
        parts += ["", f"Apache's bearer check: the stub received a valid My Account token "
                      f"(audience {', '.join(check['audience'])}; scope `{check['scope']}`)."]
    latency = latency_table(rows)
    if latency:
        parts += ["", f"#### One connection ({s['rounds']} x {s['latency_duration_s']:g} s per target)", "", latency]
    if report.get("refresh"):
        parts += ["", "#### A call that has to refresh its token", "", refresh_section(report["refresh"])]
    sessions = sessions_section(report)
    if sessions:
        parts += ["", "#### 100 vs 100,000 sessions in the store", "", sessions]
    memory = memory_section(report)
    if memory:
        parts += ["", "#### Redis memory per session", "", memory]
    if report.get("profile"):
        parts += ["", "#### Where the BFF's CPU time goes (py-spy)", "", profile_section(report["profile"])]
    if report.get("sweep"):
        parts += ["", "#### Configuration sweep (BFF only)", "", main_table(report["sweep"])]
    if report["notes"]:
        parts += [""] + [f"Note: {note}" for note in report["notes"]]
    return "\n".join(parts)


def write_chart(report: dict[str, t.Any], path: Path) -> bool:
    """A PNG with throughput (median and range) and p99 per target; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("NOTE: matplotlib is not installed (pip install -e '.[bench]'): no chart", flush=True)
        return False
    rows = list(reversed(report["results"]))
    labels = [row["label"] for row in rows]
    colours = ["#635dff" if row["key"].startswith("bff") else "#9aa0a6" for row in rows]
    positions = range(len(rows))
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 0.55 * len(rows) + 1.6), sharey=True)
    rps = [row["rps"] for row in rows]
    spread = [[row["rps"] - row["rps_min"] for row in rows], [row["rps_max"] - row["rps"] for row in rows]]
    left.barh(positions, rps, xerr=spread, color=colours, capsize=3)
    left.set_xscale("log")
    left.set_xlabel(f"requests/s (median, range of {report['settings']['rounds']} rounds; log scale)")
    left.set_yticks(list(positions), labels)
    left.set_xlim(right=max(row["rps_max"] for row in rows) * 5)
    for position, row in zip(positions, rows, strict=True):
        left.text(row["rps_max"] * 1.15, position, f"{row['rps']:,.0f}", va="center", fontsize=8)
    p99 = [row["p99_ms"] for row in rows]
    right.barh(positions, p99, color=colours)
    right.set_xlim(0, max(p99) * 1.25)
    right.set_xlabel("p99 latency, ms (median of the rounds)")
    for position, value in zip(positions, p99, strict=True):
        right.text(value + max(p99) * 0.02, position, f"{value:.1f}", va="center", fontsize=8)
    s = report["settings"]
    figure.suptitle(f"GET /me/v1/factors, {s['connections']} connections, {s['duration_s']:g} s rounds "
                    f"({report['started_at'][:10]})", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def update_docs(report: dict[str, t.Any]) -> None:
    """Rewrite the generated part of docs/benchmark.md; write the JSON and the chart beside it."""
    DOC_JSON.write_text(json.dumps(report, indent=2) + "\n")
    chart = DOC_CHART.name if write_chart(report, DOC_CHART) else None
    page = DOC_PAGE.read_text()
    begin, end = page.find(BEGIN_MARK), page.find(END_MARK)
    if begin < 0 or end < begin:
        raise SystemExit(f"{DOC_PAGE}: the markers {BEGIN_MARK!r} and {END_MARK!r} are missing")
    generated = results_markdown(report, chart=chart)
    DOC_PAGE.write_text(page[: begin + len(BEGIN_MARK)] + "\n\n" + generated + "\n\n" + page[end:])


def main(argv: t.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="measured runs per target, interleaved (default 3)")
    parser.add_argument("--warmup", type=float, default=3.0,
                        help="seconds of unmeasured load per target before the first round (default 3)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections (default 32)")
    parser.add_argument("--latency-duration", type=float, default=4.0,
                        help="seconds per run at one connection (default 4; 0 leaves that phase out)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help=f"gunicorn workers (default {DEFAULT_WORKERS})")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help=f"threads per gthread worker (default {DEFAULT_THREADS})")
    parser.add_argument("--worker-class", choices=["gevent", "gthread"], default=DEFAULT_WORKER_CLASS,
                        help="gunicorn worker class for the bff and the bare forwarder (default gevent, "
                             "as bff serve)")
    parser.add_argument("--load-threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--apache-processes", type=int, default=2, help="Apache event MPM processes (default 2)")
    parser.add_argument("--apache-threads", type=int, default=32, help="threads per Apache process (default 32)")
    parser.add_argument("--sessions", type=int, default=LARGE_STORE_SESSIONS,
                        help=f"sessions in the second store of row (f) (default {LARGE_STORE_SESSIONS:,}; "
                             "0 leaves the row out)")
    parser.add_argument("--refresh-calls", type=int, default=30,
                        help="pairs of calls timed, one refreshing its token, one served from the cache "
                             "(default 30; 0: none)")
    parser.add_argument("--logins", type=int, default=20,
                        help="logins per relying party for the memory figures (default 20; 0: none)")
    parser.add_argument("--sweep", default="",
                        help="then measure these bff configurations too, e.g. 2,3,4 or 2x8,4x4 (workers[xthreads])")
    parser.add_argument("--profile", action="store_true",
                        help="then record the BFF under load with py-spy (pip install py-spy) for --duration "
                             "seconds and summarise where its CPU time goes")
    parser.add_argument("--profile-output", type=Path, default=None, metavar="FILE",
                        help="keep py-spy's raw stacks in FILE (python bench/cpu_profile.py FILE reads them)")
    parser.add_argument("--no-reference", action="store_true", help="leave out the bare forwarder")
    parser.add_argument("--no-apache", action="store_true", help="leave out Apache with mod_auth_openidc")
    parser.add_argument("--no-dpop", action="store_true", help="leave out the BFF with DPoP on (row i)")
    parser.add_argument("--no-offload", action="store_true",
                        help="leave out the BFF behind nginx, without and with offload (rows g and h)")
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator (default: wrk, or the Python one if wrk is unavailable)")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install wrk, nginx or apache2")
    parser.add_argument("--docs", action="store_true",
                        help="write the results into docs/benchmark.md (between its markers), "
                             "docs/benchmark-run.json and docs/benchmark.png")
    parser.add_argument("--render-docs", type=Path, default=None, metavar="JSON",
                        help="measure nothing: write the docs (as --docs does) from a result file of an earlier run")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON result file (default docs/benchmark-run.json with --docs, "
                             "else bench/results/<UTC time>.json)")
    args = parser.parse_args(argv)
    if args.render_docs is not None:
        update_docs(json.loads(args.render_docs.read_text()))
        print(f"{DOC_PAGE.relative_to(ROOT)}, {DOC_JSON.name} and {DOC_CHART.name} written from {args.render_docs}")
        return 0
    if not 0 < args.duration <= 600 or not 1 <= args.connections <= 10_000 or not 1 <= args.rounds <= 20:
        parser.error("--duration must be in (0, 600], --connections in [1, 10000], --rounds in [1, 20]")
    if not 1 <= args.workers <= 64 or not 1 <= args.threads <= 256 or not 1 <= args.load_threads <= 64:
        parser.error("--workers, --threads and --load-threads must be positive (and sane)")
    if not 0 <= args.latency_duration <= 600 or not 0 <= args.sessions <= 10_000_000:
        parser.error("--latency-duration must be in [0, 600], --sessions in [0, 10000000]")
    if args.sessions and args.sessions < SMALL_STORE_SESSIONS:
        parser.error(f"--sessions must be 0 or at least {SMALL_STORE_SESSIONS}")
    if not 0 <= args.refresh_calls <= 1000 or not 0 <= args.logins <= 1000:
        parser.error("--refresh-calls and --logins must be in [0, 1000]")
    if not 1 <= args.apache_processes <= 16 or not 1 <= args.apache_threads <= 256:
        parser.error("--apache-processes must be in [1, 16], --apache-threads in [1, 256]")
    if args.sweep:
        try:
            parse_configs(args.sweep)
        except ValueError as error:
            parser.error(str(error))

    def stop(signum: int, frame: t.Any) -> t.NoReturn:
        raise SystemExit(128 + signum)  # unwinds the cleanup stack

    signal.signal(signal.SIGTERM, stop)
    started = time.monotonic()
    report = run(args)
    report["wall_time_s"] = round(time.monotonic() - started, 1)
    output = args.output
    if output is None:
        output = DOC_JSON if args.docs else RESULTS / f"{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    if args.docs:
        update_docs(report)  # the JSON beside the page too
    if output != DOC_JSON or not args.docs:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(results_markdown(report))
    print(f"\nJSON: {output}" + (f"; {DOC_PAGE.relative_to(ROOT)} and {DOC_CHART.name} updated" if args.docs else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
