"""Benchmark of the BFF's proxy hot path, side by side with the upstream alone, nginx and a bare forwarder.

One command starts everything on loopback (a private redis-server, the Auth0 emulator, an upstream
stub, an nginx reverse proxy, a bare Flask forwarder and the BFF under gunicorn), logs one session
in over real HTTP, warms the token cache, and puts identical load on

    (a) the stub itself          (b) nginx -> stub
    (c) bare forwarder -> stub   (d) BFF -> stub

in rounds (a, b, c, d, a, b, c, d, ...), so that a noisy machine disturbs all of them alike. It
prints a Markdown table of the medians and writes every figure to a JSON file. Everything it
started is stopped at the end, on failure and on Ctrl-C too. See docs/benchmark.md.

    python bench/run.py [--duration 10] [--rounds 3] [--connections 32] [--workers 2] [--threads 8]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import platform
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
from load import Request, run_load
from login import log_in
from stack import (
    FACTORS_BODY,
    STUB_PATH,
    BffProcess,
    GunicornProcess,
    NginxProcess,
    PythonStub,
    RedisProcess,
    ReferenceProcess,
    free_port,
    make_workdir,
)

from bff.emulator import EmulatorConfig, EmulatorServer

CLIENT_ID = "bff-bench-client"
CLIENT_SECRET = "bff-bench-client-secret-0123456789"  # noqa: S105 - a loopback-only benchmark secret
SECRET_KEY = "bff-bench-secret-key-0123456789-abcdefghijklmnop"  # noqa: S105

DEFAULT_WORKERS = 2
DEFAULT_THREADS = 8

TARGET_RPS = 3000.0
TARGET_P99_MS = 15.0
TARGET_ROUND_TRIPS = 1.0
SETTLE_S = 0.5

RESULTS = Path(__file__).resolve().parent / "results"


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


def _installed(binary: str) -> bool:
    return shutil.which(binary) is not None or Path("/usr/sbin", binary).exists()


def ensure_tool(binary: str, package: str, *, allow_install: bool) -> bool:
    """True if ``binary`` is there; as root (and if allowed), install ``package`` with apt-get first."""
    if _installed(binary):
        return True
    if not allow_install or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    print(f"installing {package} with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        try:
            subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=600, check=True)
        except (OSError, subprocess.SubprocessError):
            return False
    return _installed(binary)


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, to tell how loaded it was during a run."""
    values = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


# Redis counters ----------------------------------------------------------------------------------


def store_snapshot(client: redis.Redis) -> tuple[int, dict[str, int]]:
    """``total_reads_processed`` and the call count per command."""
    reads = int(client.info("stats")["total_reads_processed"])
    commands = client.info("commandstats")
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


@dataclass
class Target:
    """One thing put under load, and every round's figures for it."""

    key: str
    label: str
    url: str
    counts_store: bool = False
    counts_tokens: bool = False
    server: GunicornProcess | None = None
    rounds: list[dict[str, t.Any]] = field(default_factory=list)

    def summary(self) -> dict[str, t.Any]:
        rounds = self.rounds
        requests = sum(r["requests"] for r in rounds)
        row: dict[str, t.Any] = {
            "key": self.key,
            "label": self.label,
            "rounds": len(rounds),
            "requests": requests,
            "rps": statistics.median(r["rps"] for r in rounds),
            "rps_min": min(r["rps"] for r in rounds),
            "rps_max": max(r["rps"] for r in rounds),
            "p50_ms": statistics.median(r["p50_ms"] for r in rounds),
            "p99_ms": statistics.median(r["p99_ms"] for r in rounds),
            "p99_ms_max": max(r["p99_ms"] for r in rounds),
            "non_2xx": sum(r["non_2xx"] for r in rounds),
            "socket_errors": sum(r["socket_errors"] for r in rounds),
            "errors": sum(r["errors"] for r in rounds),
            "machine_busy": statistics.median(r["machine_busy"] for r in rounds),
        }
        if self.counts_store:
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
        if self.counts_tokens:
            row["token_calls"] = sum(r["token_calls"] for r in rounds)
        if self.server is not None:
            cpu = sum(r["server_cpu_s"] for r in rounds)
            row["server_cpu_ms_per_request"] = cpu * 1000 / requests if requests else None
            row["workers"], row["threads"] = self.server.workers, self.server.threads
            if all("server_log_problems" in r for r in rounds):
                row["server_log_problems"] = sum(r["server_log_problems"] for r in rounds)
            else:
                row["server_log_problems"] = self.server.problems()
        return row


class Bench:
    def __init__(self, args: argparse.Namespace, headers: dict[str, str], store: redis.Redis,
                 emulator: EmulatorServer, stub: NginxProcess | PythonStub) -> None:
        self.stub = stub if isinstance(stub, NginxProcess) else None
        self.args = args
        self.headers = headers
        self.store = store
        self.emulator = emulator

    def load(self, url: str, duration: float) -> dict[str, t.Any]:
        args = self.args
        return run_load(Request(url, self.headers), duration=duration, connections=args.connections,
                        threads=args.load_threads, generator=args.generator).as_dict()

    def warm(self, target: Target) -> None:
        if self.args.warmup > 0:
            self.load(target.url, self.args.warmup)

    def measure(self, target: Target) -> dict[str, t.Any]:
        time.sleep(SETTLE_S)  # the previous run's last requests finish before the counters are read
        tokens_before = self.emulator.state.counters()["token_calls"]
        store_before = store_snapshot(self.store) if target.counts_store else None
        forwarded_before = self.stub.requests_served() if self.stub and target.counts_store else None
        cpu_before = cpu_times()
        server_before = target.server.cpu_seconds() if target.server is not None else 0.0
        result = self.load(target.url, self.args.duration)
        server_cpu = target.server.cpu_seconds() - server_before if target.server is not None else None
        cpu_after = cpu_times()
        if server_cpu is not None:
            result["server_cpu_s"] = round(server_cpu, 3)
            result["server_cpu_ms_per_request"] = (
                round(server_cpu * 1000 / result["requests"], 4) if result["requests"] else None
            )
        result["machine_busy"] = round(
            (cpu_after[0] - cpu_before[0]) / max(1, cpu_after[1] - cpu_before[1]), 3
        )
        if store_before is not None:
            time.sleep(SETTLE_S)  # requests in flight when the load stopped are still served
            reads, commands = store_delta(self.store, store_before)
            result["store_reads"] = reads
            result["store_commands"] = commands
            # The calls that reached the upstream: the proxied requests, in flight ones included.
            result["proxied"] = result["requests"]
            if forwarded_before is not None and self.stub is not None:
                result["proxied"] = self.stub.requests_served() - forwarded_before - 1
        if target.counts_tokens:
            result["token_calls"] = self.emulator.state.counters()["token_calls"] - tokens_before
        target.rounds.append(result)
        print(f"  {target.label}: {result['rps']:,.0f} req/s, p50 {result['p50_ms']:.2f} ms, "
              f"p99 {result['p99_ms']:.2f} ms, errors {result['errors']}", flush=True)
        return result


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
        "PYTHONUNBUFFERED": "1",
    })
    return env


def parse_configs(text: str) -> list[tuple[int, int]]:
    configs = []
    for item in text.split(","):
        workers, _, threads = item.strip().lower().partition("x")
        configs.append((int(workers), int(threads)))
    if not configs or any(w < 1 or w > 64 or th < 1 or th > 256 for w, th in configs):
        raise ValueError(f"--sweep: expected WORKERSxTHREADS,..., got {text!r}")
    return configs


def prepare_tools(args: argparse.Namespace, notes: list[str]) -> bool:
    """Settle the load generator; return whether nginx is there."""
    if args.generator in ("auto", "wrk"):
        if ensure_tool("wrk", "wrk", allow_install=not args.no_install):
            args.generator = "wrk"
        elif args.generator == "wrk":
            raise SystemExit("wrk is not installed and could not be installed")
        else:
            args.generator = "python"
            notes.append("wrk is not installed: the Python (asyncio) load generator was used instead; it "
                         "spends CPU the servers would otherwise have, so every figure is lower than with wrk.")
    have_nginx = ensure_tool("nginx", "nginx", allow_install=not args.no_install)
    if not have_nginx:
        notes.append("nginx is not installed: the stub is a Python server and there is no nginx row.")
    for note in notes:
        print("NOTE: " + note, flush=True)
    return have_nginx


def run(args: argparse.Namespace) -> dict[str, t.Any]:
    notes: list[str] = []
    have_nginx = prepare_tools(args, notes)
    report: dict[str, t.Any] = {
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "connections": args.connections,
            "load_threads": args.load_threads,
            "workers": args.workers,
            "worker_class": args.worker_class,
            "threads": args.threads,
        },
        "tools": {
            "load_generator": args.generator,
            "wrk": _version(["wrk", "--version"]) if args.generator == "wrk" else None,
            "nginx": _version(["nginx", "-v"]) if have_nginx else None,
            "redis": _version(["redis-server", "--version"]),
        },
        "notes": notes,
    }

    workdir = make_workdir()
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, workdir, True)
        print(f"starting redis, {'nginx' if have_nginx else 'python'} stub, emulator, bff ...", flush=True)
        store_server = RedisProcess(workdir).start()
        cleanup.callback(store_server.stop)
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

        def restart_bff(old: GunicornProcess | None, workers: int, threads: int) -> GunicornProcess:
            if old is not None:
                old.stop()
                running.remove(old)
            return serve(BffProcess(workdir, bff_port, env, workers=workers, threads=threads,
                                    worker_class=args.worker_class))

        bff = restart_bff(None, args.workers, args.threads)
        http = log_in(bff_url)
        names = ("__Host-bff-session", "bff-session")
        cookie_name = next((name for name in names if name in http.cookies), None)
        if cookie_name is None:
            raise RuntimeError(f"login: no session cookie among {sorted(http.cookies.keys())}")
        warm = http.get(bff_url + STUB_PATH, timeout=10)
        if warm.status_code != 200 or warm.json() != json.loads(FACTORS_BODY):
            raise RuntimeError(f"the warming call answered {warm.status_code}: {warm.text[:300]}")
        headers = {"Cookie": f"{cookie_name}={http.cookies[cookie_name]}", "X-CSRF": "1",
                   "Accept": "application/json"}
        http.close()
        report["token_calls_at_login_and_warming"] = emulator.state.counters()["token_calls_by_grant_type"]

        reference: GunicornProcess | None = None
        if not args.no_reference:
            reference_env = {**env, "BENCH_REDIS_URL": store_server.url,
                             "BENCH_UPSTREAM_URL": stub.stub_url, "BENCH_COOKIE_NAME": cookie_name}
            reference = serve(ReferenceProcess(workdir, free_port(), reference_env,
                                               workers=args.workers, threads=args.threads,
                                               worker_class=args.worker_class))

        config = f"{args.workers}x{args.threads}"
        targets = [Target("stub", "(a) stub", stub.stub_url + STUB_PATH)]
        if isinstance(stub, NginxProcess):
            targets.append(Target("nginx", "(b) nginx -> stub", stub.proxy_url + STUB_PATH))
        if reference is not None:
            targets.append(Target("reference", f"(c) bare forwarder -> stub, {config}",
                                  reference.url + STUB_PATH, counts_store=True, server=reference))
        bff_target = Target("bff", f"(d) bff -> stub, {config}", bff_url + STUB_PATH,
                            counts_store=True, counts_tokens=True, server=bff)
        targets.append(bff_target)

        store_client = store_server.client()
        cleanup.callback(store_client.close)
        bench = Bench(args, headers, store_client, emulator, stub)
        print(f"load: {args.generator}, {args.connections} connections, {args.rounds} round(s) of "
              f"{args.duration:g} s per target (+{args.warmup:g} s warm-up)", flush=True)
        for target in targets:
            bench.warm(target)
        for number in range(args.rounds):
            print(f"round {number + 1}/{args.rounds}", flush=True)
            for target in targets:
                bench.measure(target)
        report["results"] = [target.summary() for target in targets]
        report["targets"] = check_targets(report["results"][-1])

        if args.sweep:
            if reference is not None:
                reference.stop()
                running.remove(reference)
            sweep = [Target(f"{w}x{th}", f"bff {w}x{th}", bff_url + STUB_PATH, counts_store=True,
                            counts_tokens=True) for w, th in parse_configs(args.sweep)]
            current: GunicornProcess | None = bff
            for number in range(args.rounds):
                print(f"sweep round {number + 1}/{args.rounds}", flush=True)
                for target in sweep:
                    workers, _, threads = target.key.partition("x")
                    current = restart_bff(current, int(workers), int(threads))
                    target.server = current
                    bench.warm(target)
                    bench.measure(target)["server_log_problems"] = current.problems()
            report["sweep"] = [target.summary() for target in sweep]

    report["machine"]["loadavg_at_end"] = [round(value, 2) for value in os.getloadavg()]
    return report


def check_targets(row: dict[str, t.Any]) -> dict[str, t.Any]:
    trips = row.get("store_round_trips_per_request")
    checks = {
        f"req/s >= {TARGET_RPS:,.0f}": row["rps"] >= TARGET_RPS,
        f"p99 < {TARGET_P99_MS:g} ms": row["p99_ms"] < TARGET_P99_MS,
        "no errors": row["errors"] == 0,
        # The sliding idle timeout adds one write per session per interval: allow that, not a second trip.
        f"store round trips per request <= {TARGET_ROUND_TRIPS:g}": trips is not None
        and trips <= TARGET_ROUND_TRIPS + 0.01,
        "no token-endpoint call": row.get("token_calls") == 0,
    }
    return {"checks": checks, "all_met": all(checks.values())}


# Output ------------------------------------------------------------------------------------------


def _fmt(value: t.Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(rows: list[dict[str, t.Any]], base: float) -> str:
    lines = [
        "| target | req/s (median) | req/s range | vs stub | p50 ms | p99 ms | errors | token calls "
        "| store round trips / req | server CPU ms / req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['label']} | {row['rps']:,.0f} | {row['rps_min']:,.0f}–{row['rps_max']:,.0f} "  # noqa: RUF001
            f"| {row['rps'] / base:.1%} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['errors']} "
            f"| {_fmt(row.get('token_calls'), 'd')} | {_fmt(row.get('store_round_trips_per_request'), '.3f')} "
            f"| {_fmt(row.get('server_cpu_ms_per_request'), '.3f')} |"
        )
    return "\n".join(lines)


def summary(report: dict[str, t.Any]) -> str:
    m, s = report["machine"], report["settings"]
    rows = report["results"]
    base = rows[0]["rps"] or 1.0
    parts = [
        f"{m['nproc']} CPU ({m['cpu']}), Python {m['python']}, load generator {report['tools']['load_generator']}, "
        f"{s['connections']} connections, {s['rounds']} x {s['duration_s']:g} s per target, "
        f"machine busy {rows[-1]['machine_busy']:.0%} during the bff runs (median)",
        "",
        markdown(rows, base),
    ]
    by_name = {row["key"]: row for row in rows}
    if "reference" in by_name:
        bff_row, ref_row = by_name["bff"], by_name["reference"]
        ratio = bff_row["rps"] / (ref_row["rps"] or 1.0)
        cpu_ratio = (bff_row["server_cpu_ms_per_request"] or 0) / (ref_row["server_cpu_ms_per_request"] or 1)
        parts += ["", f"bff vs bare forwarder: {ratio:.0%} of its throughput, {cpu_ratio:.2f}x its CPU per request"]
    commands = by_name["bff"].get("store_commands_per_request")
    if commands:
        parts += ["", "bff store commands per request: "
                  + ", ".join(f"{name} {count:g}" for name, count in commands.items())]
    if "sweep" in report:
        parts += ["", "Sweep (bff only):", "", markdown(report["sweep"], base)]
    checks = report["targets"]["checks"]
    parts += ["", "Targets (bff row):"] + [f"- [{'x' if ok else ' '}] {name}" for name, ok in checks.items()]
    return "\n".join(parts)


def main(argv: t.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="measured runs per target, interleaved (default 3)")
    parser.add_argument("--warmup", type=float, default=3.0,
                        help="seconds of unmeasured load per target before the first round (default 3)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections (default 32)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help=f"gunicorn workers (default {DEFAULT_WORKERS})")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help=f"threads per worker (default {DEFAULT_THREADS})")
    parser.add_argument("--load-threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--worker-class", choices=["gthread", "gevent"], default="gthread",
                        help="gunicorn worker class for the bff and the bare forwarder (default gthread)")
    parser.add_argument("--sweep", default="",
                        help="then measure these bff configurations too, e.g. 2x8,3x8,4x4 (workers x threads)")
    parser.add_argument("--no-reference", action="store_true", help="skip the bare-forwarder row")
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator (default: wrk, or the Python one if wrk is unavailable)")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install wrk or nginx")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON result file (default bench/results/<UTC time>.json)")
    args = parser.parse_args(argv)
    if not 0 < args.duration <= 600 or not 1 <= args.connections <= 10_000 or not 1 <= args.rounds <= 20:
        parser.error("--duration must be in (0, 600], --connections in [1, 10000], --rounds in [1, 20]")
    if not 1 <= args.workers <= 64 or not 1 <= args.threads <= 256 or not 1 <= args.load_threads <= 64:
        parser.error("--workers, --threads and --load-threads must be positive (and sane)")
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
    output = args.output or RESULTS / f"{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(summary(report))
    print(f"\nJSON: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
