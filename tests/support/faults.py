"""Fault drills: logged-in sessions, a bounded load on them, and a tally of what the browsers saw.

A fault test starts real servers (the emulator in this process, BFF processes, private redis-servers),
logs in a set of sessions, runs a :class:`Load` of proxied calls across them while it injects a fault,
then checks every session once more with :func:`recover`. What the browsers saw is kept as
:class:`Outcome` values (status, problem kind, timing), never a token or a session id, so a summary
can be printed and quoted safely.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import http.cookiejar
import pathlib
import threading
import time
import typing as t

import requests

from tests.conftest import CLIENT_ID, CLIENT_SECRET, SECRET_KEY
from tests.support.browser import bff_session, login
from tests.support.processes import BffProcess
from tests.support.redis_server import RedisServer, SentinelServer, free_port
from tests.support.servers import ThreadedServer

if t.TYPE_CHECKING:
    from bff.emulator import EmulatorServer, EmulatorState

READ = "/me/v1/authentication-methods"
PROBLEM_PREFIX = "urn:bff:problem:"


# Outcomes ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One call as the browser saw it: which session, the status and problem kind, when and how long.

    ``status`` is 0 when no answer came (``kind`` then names the client error); ``kind`` is the problem
    slug of a problem+json answer, ``None`` for anything else.
    """

    session: int
    status: int
    kind: str | None
    retry_after: str | None
    started: float
    elapsed: float

    @property
    def label(self) -> str:
        return f"{self.status} {self.kind}" if self.kind else str(self.status)


def tally(outcomes: t.Iterable[Outcome]) -> dict[str, int]:
    """How many calls ended each way, e.g. ``{"200": 412, "503 idp-unavailable": 17}``."""
    return dict(sorted(collections.Counter(outcome.label for outcome in outcomes).items()))


def _problem_kind(response: requests.Response) -> str | None:
    if not response.headers.get("Content-Type", "").startswith("application/problem+json"):
        return None
    try:
        kind = response.json().get("type", "")
    except ValueError:
        return None
    return kind.removeprefix(PROBLEM_PREFIX) if isinstance(kind, str) else None


class SessionClient:
    """Calls the BFF as the SPA of one logged-in session: the session cookie and ``X-CSRF: 1``.

    The cookie is sent by hand and the jar refuses every cookie, so an answer that deletes the cookie
    cannot change which session later calls present: each call says what became of that session.
    """

    def __init__(self, index: int, base_url: str, sid: str, *, timeout: float = 10.0) -> None:
        self.index = index
        self.base_url = base_url
        self.timeout = timeout
        self._sid = sid
        self._http = requests.Session()
        self._http.trust_env = False
        self._http.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))

    def get(self, path: str = READ) -> Outcome:
        headers = {"X-CSRF": "1", "Cookie": f"bff-session={self._sid}"}
        started = time.monotonic()
        try:
            response = self._http.get(self.base_url + path, headers=headers, timeout=self.timeout)
        except requests.RequestException as error:
            return Outcome(self.index, 0, type(error).__name__, None, started, time.monotonic() - started)
        return Outcome(
            self.index,
            response.status_code,
            _problem_kind(response),
            response.headers.get("Retry-After"),
            started,
            time.monotonic() - started,
        )

    def close(self) -> None:
        self._http.close()


def log_in(login_url: str, count: int, call_urls: t.Sequence[str] | None = None) -> list[SessionClient]:
    """``count`` sessions logged in through ``login_url``; session ``i`` then calls ``call_urls[i % n]``."""
    urls = list(call_urls or [login_url])
    clients = []
    for index in range(count):
        with bff_session(login_url) as browser:
            response = login(browser, login_url)
            assert response.status_code == 302, response.text[:300]
            sid = next(c.value for c in browser.cookies if c.name == "bff-session" and c.value)
        assert sid is not None
        clients.append(SessionClient(index, urls[index % len(urls)], sid))
    return clients


class Load:
    """A few client threads looping over the sessions with proxied GETs, stopping by themselves.

    Thread ``k`` calls sessions ``k``, ``k + threads``, ... in turn, so no two calls of one session
    overlap (a session's calls come one after another, as from one browser tab). The load stops at
    ``duration`` seconds, after ``max_calls`` calls in all, or at :meth:`stop`, whichever comes first.
    """

    def __init__(
        self,
        clients: t.Sequence[SessionClient],
        *,
        threads: int = 4,
        duration: float,
        max_calls: int = 5000,
        pause: float = 0.0,
    ) -> None:
        self.clients = list(clients)
        self.threads = min(threads, len(self.clients))
        self.duration = duration
        self.max_calls = max_calls
        self.pause = pause
        self.outcomes: list[Outcome] = []
        self._issued = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self.started = 0.0

    def start(self) -> Load:
        self.started = time.monotonic()
        deadline = self.started + self.duration
        for k in range(self.threads):
            worker = threading.Thread(target=self._run, args=(k, deadline), name=f"fault-load-{k}", daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def _run(self, k: int, deadline: float) -> None:
        mine = self.clients[k :: self.threads]
        turn = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if self._issued >= self.max_calls:
                    return
                self._issued += 1
            outcome = mine[turn % len(mine)].get()
            turn += 1
            with self._lock:
                self.outcomes.append(outcome)
            if self.pause:
                self._stop.wait(self.pause)

    def stop(self) -> None:
        self._stop.set()

    def so_far(self) -> list[Outcome]:
        """The outcomes of the calls that have ended until now."""
        with self._lock:
            return list(self.outcomes)

    def wait_for_calls(self, count: int, timeout: float = 10.0) -> None:
        """Block until ``count`` more calls than now have ended (a bounded poll: the load is running)."""
        wanted = len(self.so_far()) + count
        deadline = time.monotonic() + timeout
        while len(self.so_far()) < wanted:
            assert time.monotonic() < deadline, f"the load made fewer than {count} calls in {timeout}s"
            time.sleep(0.02)

    def join(self, timeout: float = 60.0) -> list[Outcome]:
        """Wait for the threads to stop by themselves; the outcomes in the order they ended."""
        end = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(0.0, end - time.monotonic()))
        assert not any(worker.is_alive() for worker in self._workers), "the load did not stop by itself"
        with self._lock:
            return list(self.outcomes)

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        """Leaving the block waits for the load to end by itself; on an error it is stopped first."""
        if exc_type is not None:
            self.stop()
        self.join()


def recover(clients: t.Sequence[SessionClient], *, within: float, pause: float = 0.2) -> dict[int, list[Outcome]]:
    """Call every session until it answers 200 or 401 (or ``within`` seconds have passed for all).

    A 503 means "retry", so it is retried; a 401 means the session is gone. Returns each session's
    calls; the last one says whether the session survived.
    """
    deadline = time.monotonic() + within
    seen: dict[int, list[Outcome]] = {client.index: [] for client in clients}
    pending = list(clients)
    while pending:
        retry = []
        for client in pending:
            outcome = client.get()
            seen[client.index].append(outcome)
            if outcome.status not in (200, 401):
                retry.append(client)
        pending = retry
        if pending:
            if time.monotonic() >= deadline:
                break
            time.sleep(pause)
    return seen


def lost_sessions(recovered: t.Mapping[int, t.Sequence[Outcome]]) -> dict[int, str]:
    """The sessions whose last call was not a 200, with how it ended."""
    return {index: calls[-1].label for index, calls in recovered.items() if calls[-1].status != 200}


# The IdP -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Families:
    """What became of the refresh-token families (one per login) at the emulator."""

    total: int
    revoked: int
    reuse_detected: int


def families(idp: EmulatorState) -> Families:
    found = idp.counters()["families"].values()
    return Families(
        len(found),
        sum(1 for family in found if family["revoked"]),
        sum(1 for family in found if family["reuse_detected"]),
    )


def settle_token_requests(idp: EmulatorState, timeout: float = 15.0) -> None:
    """Wait until every token request the emulator received is over (held ones included)."""
    deadline = time.monotonic() + timeout
    while True:
        reached = idp.token_requests()
        if reached.done >= reached.received:
            return
        idp.wait_for_token_requests(done=reached.received, timeout=max(0.01, deadline - time.monotonic()))


def refresh_calls(idp: EmulatorState) -> int:
    return int(idp.counters()["token_calls_by_grant_type"].get("refresh_token", 0))


# Servers -------------------------------------------------------------------------------------------


def bff_env(idp_url: str, base_url: str, store_url: str, **settings: str | float) -> dict[str, str]:
    """``BFF_*`` variables for a BFF process; keyword names are the variables' suffixes in lower case."""
    env = {
        "BFF_ISSUER_URL": idp_url + "/",
        "BFF_CLIENT_ID": CLIENT_ID,
        "BFF_CLIENT_SECRET": CLIENT_SECRET,
        "BFF_BASE_URL": base_url,
        "BFF_SECRET_KEY": SECRET_KEY,
        "BFF_SESSION_STORE": store_url,
        # The drills log in and call far more often than a person would.
        "BFF_RATE_LIMIT_SESSION": "off",
        "BFF_RATE_LIMIT_ADDRESS": "off",
        "BFF_RATE_LIMIT_LOGIN": "off",
        "BFF_RATE_LIMIT_CONNECT": "off",
    }
    env.update({f"BFF_{name.upper()}": str(value) for name, value in settings.items()})
    return env


class FaultStack:
    """The emulator in this process and ``instances`` BFF processes sharing ``store_url``.

    Every instance shares the first one's base URL (the emulator's registered callback), as instances
    behind one load balancer do. Each process's log goes to ``log_dir``, so a test can quote its lines.
    """

    def __init__(
        self,
        store_url: str,
        log_dir: pathlib.Path,
        *,
        instances: int = 1,
        threads: int = 16,
        **settings: str | float,
    ) -> None:
        from bff.emulator import EmulatorConfig, EmulatorServer

        ports = [free_port() for _ in range(instances)]
        self.base_url = f"http://127.0.0.1:{ports[0]}"
        self.emulator: EmulatorServer = EmulatorServer(EmulatorConfig(CLIENT_ID, CLIENT_SECRET, self.base_url))
        self.emulator.start()
        self.processes: list[BffProcess] = []
        try:
            env = bff_env(self.emulator.url, self.base_url, store_url, **settings)
            for index, port in enumerate(ports):
                self.processes.append(BffProcess(port, env, threads=threads, log=log_dir / f"bff-{index}.log"))
        except BaseException:
            self.close()
            raise

    @property
    def idp(self) -> EmulatorState:
        return self.emulator.state

    @property
    def urls(self) -> list[str]:
        return [process.url for process in self.processes]

    def log_in(self, count: int) -> list[SessionClient]:
        """``count`` sessions, spread over the instances (session ``i`` calls instance ``i % n``)."""
        return log_in(self.base_url, count, self.urls)

    def log_lines(self, *needles: str, limit: int = 20) -> list[str]:
        """Log lines of every instance that contain one of ``needles``, in any case (for failure messages
        and counts of events)."""
        wanted = [needle.lower() for needle in needles]
        lines = []
        for process in self.processes:
            if process.log is not None and process.log.exists():
                lines += [
                    line for line in process.log.read_text(errors="replace").splitlines()
                    if any(needle in line.lower() for needle in wanted)
                ]
        return lines[:limit]

    def close(self) -> None:
        for process in self.processes:
            process.stop()
        self.emulator.state.clear_faults()  # releases any request a hang still holds
        self.emulator.stop()

    def __enter__(self) -> FaultStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclasses.dataclass
class Replicated:
    """A private primary, one replica and a Sentinel watching them (quorum 1, quick failover)."""

    primary: RedisServer
    replica: RedisServer
    sentinel: SentinelServer


@contextlib.contextmanager
def replicated_with_sentinel() -> t.Iterator[Replicated]:
    primary = RedisServer()
    replica = RedisServer(replica_of=primary)
    sentinel = SentinelServer(primary)
    try:
        primary.start()
        replica.start()
        replica.wait_until_synced()
        sentinel.start(replicas=1)
        yield Replicated(primary, replica, sentinel)
    finally:
        sentinel.destroy()
        replica.destroy()
        primary.destroy()


class HeldUpstream:
    """A My Account API stand-in that holds every request until :meth:`release` (or ``max_hold`` seconds),
    then answers 200: a hung upstream that the test can let go of at once.
    """

    def __init__(self, *, max_hold: float = 30.0) -> None:
        self.max_hold = max_hold
        self.arrived = 0
        self._released = False
        self._changed = threading.Condition()
        self._server = ThreadedServer()
        self._server.serve(self._app)
        self.url = self._server.url()

    def wait_for_held(self, count: int, timeout: float = 10.0) -> None:
        """Block until ``count`` requests have arrived (and are held); ``TimeoutError`` otherwise."""
        with self._changed:
            if not self._changed.wait_for(lambda: self.arrived >= count, timeout):
                raise TimeoutError(f"waited {timeout}s for {count} held upstream requests, {self.arrived} arrived")

    def release(self) -> None:
        """Answer every held request now, and every later one at once."""
        with self._changed:
            self._released = True
            self._changed.notify_all()

    def _app(self, environ: dict[str, t.Any], start_response: t.Callable[..., t.Any]) -> list[bytes]:
        with self._changed:
            self.arrived += 1
            self._changed.notify_all()
            self._changed.wait_for(lambda: self._released, self.max_hold)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"[]"]

    def stop(self) -> None:
        self.release()
        self._server.stop()


def probe_latencies(url: str, count: int, *, timeout: float = 1.0, budget: float = 6.0) -> list[float]:
    """Seconds each of ``count`` sequential GETs of ``url`` took to answer 200.

    A probe that times out, fails or answers otherwise counts as ``timeout`` seconds; probing stops
    early once ``budget`` seconds have gone, so a stuck server cannot hold the test for long.
    """
    latencies: list[float] = []
    end = time.monotonic() + budget
    for _ in range(count):
        if time.monotonic() >= end:
            break
        started = time.monotonic()
        try:
            # A new connection per probe, as an orchestrator's probe makes.
            ok = requests.get(url, timeout=timeout).status_code == 200
        except requests.RequestException:
            ok = False
        latencies.append(time.monotonic() - started if ok else max(timeout, time.monotonic() - started))
    return latencies
