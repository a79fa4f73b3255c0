"""Load generators: ``wrk`` with a Lua script, or a Python (asyncio) fallback when wrk is missing.

Both keep ``connections`` keep-alive connections busy for ``duration`` seconds with the same
request (the session cookie and ``X-CSRF: 1``), and report the same figures: requests, requests
per second, latency percentiles, non-2xx answers and socket errors.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
import typing as t
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["LoadResult", "Request", "run_load", "wrk_available"]

#: A hard cap on the Python generator's requests per run, whatever the duration.
MAX_REQUESTS = 5_000_000


@dataclass(frozen=True)
class Request:
    """One request, repeated: the URL and the headers every call carries."""

    url: str
    headers: dict[str, str]


@dataclass
class LoadResult:
    generator: str
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int
    socket_errors: int

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors

    def as_dict(self) -> dict[str, t.Any]:
        return {**asdict(self), "errors": self.errors}


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_load(
    request: Request, *, duration: float, connections: int, threads: int, generator: str
) -> LoadResult:
    if generator == "wrk":
        return _run_wrk(request, duration=duration, connections=connections, threads=threads)
    return asyncio.run(_run_python(request, duration=duration, connections=connections))


# wrk -----------------------------------------------------------------------------------------

_LUA = """
wrk.method = "GET"
wrk.headers = @HEADERS@

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non2xx = 0
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("non2xx")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "non_2xx": %d, "socket_errors": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50.0), latency:percentile(90.0),
    latency:percentile(99.0), latency.max, bad, e.connect + e.read + e.write + e.timeout))
end
"""


def _lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid Lua string literal for these values


def _run_wrk(request: Request, *, duration: float, connections: int, threads: int) -> LoadResult:
    headers = ", ".join(f"[{_lua_string(k)}] = {_lua_string(v)}" for k, v in request.headers.items())
    with tempfile.TemporaryDirectory(prefix="bff-bench-wrk-") as tmp:
        script = Path(tmp) / "bench.lua"
        script.write_text(_LUA.replace("@HEADERS@", "{" + headers + "}"))
        seconds = max(1, round(duration))
        completed = subprocess.run(
            ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--timeout", "5s",
             "-s", str(script), request.url],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=False,
        )
    line = next((ln for ln in completed.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if completed.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({completed.returncode}):\n{completed.stdout}\n{completed.stderr}")
    data = json.loads(line.removeprefix("BENCH_RESULT "))
    elapsed = data["duration_us"] / 1e6
    return LoadResult(
        generator="wrk",
        requests=data["requests"],
        duration_s=round(elapsed, 3),
        rps=data["requests"] / elapsed if elapsed else 0.0,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        non_2xx=data["non_2xx"],
        socket_errors=data["socket_errors"],
    )


# Python fallback -------------------------------------------------------------------------------


class _Counters:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.non_2xx = 0
        self.socket_errors = 0
        self.requests = 0


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP/1.1 response; ``(status, keep_alive)``."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length: int | None = None
    chunked = False
    keep_alive = True
    for header in lines[1:]:
        name, _, value = header.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
        elif name == "connection" and value.strip().lower() == "close":
            keep_alive = False
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length is not None:
        await reader.readexactly(length)
    else:
        await reader.read()
        keep_alive = False
    return status, keep_alive


async def _connection(request: Request, deadline: float, counters: _Counters) -> None:
    parts = urlsplit(request.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    head = f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in request.headers.items()
    ) + "\r\n"
    payload = head.encode("latin-1")
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    while time.monotonic() < deadline and counters.requests < MAX_REQUESTS:
        try:
            if writer is None or reader is None:
                reader, writer = await asyncio.open_connection(host, port)
            started = time.perf_counter()
            writer.write(payload)
            status, keep_alive = await asyncio.wait_for(_read_response(reader), timeout=5)
            counters.latencies.append(time.perf_counter() - started)
            counters.requests += 1
            if not 200 <= status <= 299:
                counters.non_2xx += 1
            if not keep_alive:
                writer.close()
                writer = reader = None
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError, IndexError):
            counters.socket_errors += 1
            if writer is not None:
                writer.close()
            writer = reader = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    index = min(len(values) - 1, max(0, round(fraction * len(values)) - 1))
    return values[index]


async def _run_python(request: Request, *, duration: float, connections: int) -> LoadResult:
    counters = _Counters()
    started = time.monotonic()
    deadline = started + duration
    await asyncio.gather(*(_connection(request, deadline, counters) for _ in range(connections)))
    elapsed = time.monotonic() - started
    latencies = sorted(counters.latencies)
    return LoadResult(
        generator="python",
        requests=counters.requests,
        duration_s=round(elapsed, 3),
        rps=counters.requests / elapsed if elapsed else 0.0,
        p50_ms=_percentile(latencies, 0.50) * 1000,
        p90_ms=_percentile(latencies, 0.90) * 1000,
        p99_ms=_percentile(latencies, 0.99) * 1000,
        max_ms=(latencies[-1] if latencies else 0.0) * 1000,
        non_2xx=counters.non_2xx,
        socket_errors=counters.socket_errors,
    )
