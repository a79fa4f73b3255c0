"""Fault drills: what twenty logged-in browsers see while the IdP, the store or the API misbehaves.

Each test logs in twenty sessions, runs a bounded load of proxied reads across them (a few client
threads, each session's calls one after another) while it injects one fault, then calls every session
once more until it answers. The BFF runs as real ``bff serve`` processes (gunicorn) on private
redis-servers; the emulator runs in this process, so the tests read what it saw (token calls, reuse
detection, requests processed after their client gave up) directly.

Each test prints one summary line of what it measured (counts, statuses, timings; nothing secret),
shown with ``pytest -s`` and with any failure.
"""

from __future__ import annotations

import math
import pathlib
import time
import typing as t

import pytest

from bff.clock import SystemClock
from bff.tokens.breaker import CircuitBreaker
from tests.support.faults import (
    FaultStack,
    HeldUpstream,
    Load,
    Outcome,
    families,
    log_in,
    lost_sessions,
    probe_latencies,
    recover,
    refresh_calls,
    replicated_with_sentinel,
    settle_token_requests,
    tally,
)
from tests.support.redis_server import RedisServer
from tests.support.upstream import RecordingUpstream, Reply

if t.TYPE_CHECKING:
    from tests.conftest import StackFactory

SESSIONS = 20
CLIENT_THREADS = 4
#: A breaker as each BFF process has one: its threshold and cooldown are the figures the bounds use.
BREAKER = CircuitBreaker(SystemClock())


def _summary(name: str, **figures: t.Any) -> str:
    line = f"[{name}] " + ", ".join(f"{key}={value}" for key, value in figures.items())
    print(line)
    return line


def _all_calls(load: t.Sequence[Outcome], recovered: t.Mapping[int, t.Sequence[Outcome]]) -> list[Outcome]:
    return [*load, *(outcome for calls in recovered.values() for outcome in calls)]


def _server_errors(outcomes: t.Iterable[Outcome]) -> dict[str, int]:
    """Answers a browser must never see in a drill: 500s, other 5xx than 503, and no answer at all."""
    return tally(o for o in outcomes if o.status == 0 or (o.status >= 500 and o.status != 503))


def _warm(clients: t.Sequence[t.Any]) -> None:
    for client in clients:
        outcome = client.get()
        assert outcome.status == 200, outcome


# a) A token endpoint that hangs, then processes the requests anyway ---------------------------------

#: The hang outlasts the BFF's token timeout several times over: every refresh presented during it times out
#: at the BFF (its outcome unknown there), and the IdP processes it all the same once the hang ends.
HANG = 6.0
TOKEN_TIMEOUT = 1.0


class HangDrill(t.NamedTuple):
    load: list[Outcome]
    recovered: dict[int, list[Outcome]]
    abandoned: int
    refreshes: int


def _hang_drill(stack: FaultStack, overlap: int) -> HangDrill:
    idp = stack.idp
    # Tokens good for two seconds in the BFF's eyes (it refreshes five seconds ahead of expiry): every
    # session needs a refresh early in the hang.
    idp.configure(leeway=overlap, access_token_lifetime=7)
    clients = stack.log_in(SESSIONS)
    _warm(clients)
    idp.reset_counters()
    idp.token_hang(HANG)  # requests that arrive meanwhile are held, then processed, their client gone or not
    outcomes = Load(clients, threads=CLIENT_THREADS, duration=HANG).start().join()
    # The breaker may still be open for a cooldown after the hang; recovering sessions retry past it.
    recovered = recover(clients, within=BREAKER.cooldown + 8)
    settle_token_requests(idp)
    for client in clients:
        client.close()
    return HangDrill(outcomes, recovered, idp.token_requests().abandoned, refresh_calls(idp))


@pytest.mark.slow
def test_a_hung_token_endpoint_that_rotates_anyway_loses_no_session_inside_the_rotation_overlap(
    redis_url: str, tmp_path: pathlib.Path
) -> None:
    with FaultStack(
        redis_url, tmp_path, token_timeout=TOKEN_TIMEOUT, refresh_lock_lease=3, token_refresh_margin=1,
        refresh_token_overlap=30,
    ) as stack:
        drill = _hang_drill(stack, overlap=30)
        found = families(stack.idp)
        calls = _all_calls(drill.load, drill.recovered)
        lost = lost_sessions(drill.recovered)
        line = _summary(
            "hang, overlap 30 s", sessions_lost=len(lost), reuse_detected=found.reuse_detected,
            families_revoked=found.revoked, abandoned_then_processed=drill.abandoned,
            refresh_calls=drill.refreshes, load=tally(drill.load),
            recovery=tally(o for c in drill.recovered.values() for o in c),
        )
        # The drill did what it is for: the IdP rotated tokens whose client had given up on the answer.
        assert drill.abandoned >= 1, line
        assert lost == {}, (line, lost, stack.log_lines("refresh-interrupted", '"level":"error"'))
        assert found.reuse_detected == 0 and found.revoked == 0, line
        assert _server_errors(calls) == {}, (line, stack.log_lines("traceback", '"level":"error"'))
        assert not [o for o in calls if o.status == 401], line
        assert {o.kind for o in calls if o.status == 503} <= {"idp-unavailable", "token-busy"}, line


@pytest.mark.slow
def test_without_an_overlap_a_hung_refresh_ends_only_its_own_session_cleanly_never_by_reuse_detection(
    redis_url: str, tmp_path: pathlib.Path
) -> None:
    with FaultStack(
        redis_url, tmp_path, token_timeout=TOKEN_TIMEOUT, refresh_lock_lease=3, token_refresh_margin=1,
        refresh_token_overlap=0,
    ) as stack:
        drill = _hang_drill(stack, overlap=0)
        found = families(stack.idp)
        calls = _all_calls(drill.load, drill.recovered)
        lost = lost_sessions(drill.recovered)
        first_401 = {
            index: next((o.kind for o in calls if o.session == index and o.status == 401), None)
            for index in range(SESSIONS)
        }
        interrupted = {index for index, kind in first_401.items() if kind == "refresh-interrupted"}
        line = _summary(
            "hang, no overlap", sessions_ended=len(lost), refresh_interrupted=len(interrupted),
            reuse_detected=found.reuse_detected, families_revoked=found.revoked,
            abandoned_then_processed=drill.abandoned, refresh_calls=drill.refreshes, load=tally(drill.load),
            recovery=tally(o for c in drill.recovered.values() for o in c),
        )
        assert drill.abandoned >= 1, line
        # Never reuse detection: the BFF presented no refresh token whose outcome it did not know again.
        assert found.reuse_detected == 0, line
        assert _server_errors(calls) == {}, (line, stack.log_lines("traceback", '"level":"error"'))
        # A session that hit the ambiguity ended with refresh-interrupted (first), and only those ended.
        assert {kind for kind in first_401.values() if kind is not None} <= {"refresh-interrupted"}, line
        assert set(lost) == interrupted, (line, lost)
        assert set(lost.values()) <= {"401 not-authenticated", "401 refresh-interrupted"}, line
        # Ending a session revokes its family at the IdP; the others are untouched.
        assert found.revoked == len(interrupted), line
        assert 1 <= len(interrupted) < SESSIONS, line


# b) A token endpoint that answers 503 for a while ---------------------------------------------------

OUTAGE = 6.0
INSTANCES = 2


def _breaker_bound(outage: float, concurrency: int) -> int:
    """The most token calls one instance's breaker lets through during an outage of ``outage`` seconds.

    Closed, it admits calls until ``threshold`` failures are counted, and the calls already in flight
    then (at most ``concurrency - 1`` more) fail after it opened; open, it admits one probe per cooldown.
    """
    return BREAKER.threshold + (concurrency - 1) + math.ceil(outage / BREAKER.cooldown)


@pytest.mark.slow
def test_a_failing_token_endpoint_gets_a_bounded_number_of_calls_while_valid_sessions_keep_working(
    redis_url: str, tmp_path: pathlib.Path
) -> None:
    with FaultStack(
        redis_url, tmp_path, instances=INSTANCES, token_timeout=2, refresh_lock_lease=3, token_refresh_margin=1
    ) as stack:
        idp = stack.idp
        clients = stack.log_in(SESSIONS)
        # Half the sessions hold tokens that are already too close to expiry to use (five seconds or
        # less left): every call of theirs needs a refresh. The other half hold tokens good for an hour.
        stale, fresh = clients[: SESSIONS // 2], clients[SESSIONS // 2 :]
        idp.configure(access_token_lifetime=5)
        _warm(stale)
        idp.configure(access_token_lifetime=3600)
        _warm(fresh)
        idp.reset_counters()
        idp.fail_tokens_for(OUTAGE, "temporarily_unavailable", 503)
        started = time.monotonic()
        outcomes = Load(clients, threads=CLIENT_THREADS, duration=OUTAGE - 1).start().join()
        recovered = recover(clients, within=OUTAGE + BREAKER.cooldown + 3)
        recovered_after = time.monotonic() - started
        during = idp.counters()["faulted_token_calls"]
        for client in clients:
            client.close()

        bound = INSTANCES * _breaker_bound(OUTAGE, CLIENT_THREADS)
        stale_ids = {client.index for client in stale}
        on_fresh = [o for o in outcomes if o.session not in stale_ids]
        on_stale = [o for o in outcomes if o.session in stale_ids]
        refused = [o for o in on_stale if o.status == 503]
        line = _summary(
            "token endpoint 503", token_calls_during_outage=during, bound=bound,
            per_second_per_instance=round(during / OUTAGE / INSTANCES, 2), calls=len(outcomes),
            fresh=tally(on_fresh), stale=tally(on_stale),
            slowest_refusal_ms=round(1000 * max((o.elapsed for o in refused), default=0)),
            lost=len(lost_sessions(recovered)), all_recovered_after_s=round(recovered_after, 1),
        )
        assert during <= bound, line
        assert tally(on_fresh) == {"200": len(on_fresh)}, line
        assert {o.label for o in on_stale} <= {"503 idp-unavailable"}, line
        assert all(o.retry_after for o in refused), line
        assert _server_errors(_all_calls(outcomes, recovered)) == {}, (line, stack.log_lines("traceback"))
        assert lost_sessions(recovered) == {}, line
        assert families(idp).revoked == 0, line


# c) The store goes away for a few seconds -----------------------------------------------------------

STORE_OUTAGE = 4.0


@pytest.mark.slow
def test_a_store_outage_answers_503_and_never_logs_a_session_out(tmp_path: pathlib.Path) -> None:
    server = RedisServer()
    server.start()
    try:
        with FaultStack(
            server.url, tmp_path, token_timeout=2, refresh_lock_lease=3, token_refresh_margin=1
        ) as stack:
            idp = stack.idp
            clients = stack.log_in(SESSIONS)
            # Half the sessions refresh two seconds into the load, and again and again; the other half
            # hold tokens good for an hour, so their calls go on (and meet the outage) meanwhile.
            idp.configure(access_token_lifetime=7)
            _warm(clients[::2])
            idp.configure(access_token_lifetime=3600)
            _warm(clients[1::2])
            idp.configure(access_token_lifetime=7)
            idp.reset_counters()
            idp.token_latency(0.5)  # exchanges take a while: the store goes away in the middle of some
            with Load(clients, threads=2 * CLIENT_THREADS, duration=30) as load:
                # Refreshes are at the IdP now: their results come back to a store that is gone for
                # longer than the BFF retries a write, so it keeps them in memory for the next request.
                idp.wait_for_token_requests(received=2, timeout=15)
                stopping = time.monotonic()
                server.stop()
                down = time.monotonic()
                time.sleep(STORE_OUTAGE)  # the outage itself: nothing to wait for but time
                restarting = time.monotonic()
                server.start()  # same port, same data (a clean stop keeps the append-only file)
                up = time.monotonic()
                load.wait_for_calls(60)
                load.stop()
            outcomes = load.join()
            idp.token_latency(0)
            recovered = recover(clients, within=10)
            for client in clients:
                client.close()

            # A call wholly inside the outage can only be told "try again".
            inside = [o for o in outcomes if o.started > down and o.started + o.elapsed < restarting]
            calls = _all_calls(outcomes, recovered)
            false_401 = [o for o in calls if o.status == 401]
            found = families(idp)
            line = _summary(
                "store outage", stop_took_s=round(down - stopping, 2), outage_s=round(restarting - down, 2),
                restart_took_s=round(up - restarting, 2),
                false_401=len(false_401), sessions_lost=len(lost_sessions(recovered)),
                inside_outage=tally(inside), load=tally(outcomes), refresh_calls=refresh_calls(idp),
                results_kept_in_memory=len(stack.log_lines("token.save_deferred", limit=1000)),
                reuse_detected=found.reuse_detected, families_revoked=found.revoked,
            )
            assert inside, line
            assert {o.label for o in inside} == {"503 store-unavailable"}, line
            assert false_401 == [], (line, stack.log_lines("refresh-interrupted", '"level":"error"'))
            assert _server_errors(calls) == {}, (line, stack.log_lines("traceback", '"level":"error"'))
            assert lost_sessions(recovered) == {}, line
            assert found.reuse_detected == 0 and found.revoked == 0, line
    finally:
        server.destroy()


# d) A Sentinel failover while refreshes are in flight -----------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("failover", ["planned", "primary-lost"])
def test_a_sentinel_failover_during_refreshes_loses_no_session_and_presents_no_token_twice(
    failover: str, tmp_path: pathlib.Path
) -> None:
    with replicated_with_sentinel() as cluster, FaultStack(
        cluster.sentinel.url, tmp_path, token_timeout=2, refresh_lock_lease=3, token_refresh_margin=1
    ) as stack:
        idp = stack.idp
        idp.configure(access_token_lifetime=7)  # no overlap: presenting a token twice would be reuse
        clients = stack.log_in(SESSIONS)
        _warm(clients)
        idp.reset_counters()
        idp.token_latency(0.3)  # exchanges take a while: the failover lands in the middle of some
        with Load(clients, threads=CLIENT_THREADS, duration=40) as load:
            _wait_for_refreshes(idp, 5)
            started = time.monotonic()
            if failover == "planned":
                # The replica is promoted while the old primary still runs (and takes writes) for a while.
                with cluster.sentinel.client() as sentinel:
                    assert sentinel.sentinel_failover(cluster.sentinel.service)
            else:
                cluster.primary.kill()  # the primary's host is lost
            cluster.sentinel.wait_for_primary(cluster.replica.port)
            promoted = time.monotonic() - started
            _wait_for_refreshes(idp, 10)
            load.stop()
        outcomes = load.join()
        idp.token_latency(0)
        recovered = recover(clients, within=10)
        for client in clients:
            client.close()

        calls = _all_calls(outcomes, recovered)
        found = families(idp)
        line = _summary(
            f"sentinel failover, {failover}", promoted_after_s=round(promoted, 2),
            sessions_lost=len(lost_sessions(recovered)), reuse_detected=found.reuse_detected,
            families_revoked=found.revoked, refresh_calls=refresh_calls(idp), load=tally(outcomes),
            results_kept_in_memory=len(stack.log_lines("token.save_deferred", limit=1000)),
        )
        assert lost_sessions(recovered) == {}, (line, stack.log_lines("refresh-interrupted", '"level":"error"'))
        assert found.reuse_detected == 0 and found.revoked == 0, line
        assert _server_errors(calls) == {}, (line, stack.log_lines("traceback", '"level":"error"'))
        assert not [o for o in calls if o.status == 401], line


def _wait_for_refreshes(idp: t.Any, count: int, timeout: float = 15.0) -> None:
    """Let the load make ``count`` more refreshes (a bounded poll of the emulator's counter)."""
    wanted = refresh_calls(idp) + count
    deadline = time.monotonic() + timeout
    while refresh_calls(idp) < wanted:
        assert time.monotonic() < deadline, f"fewer than {count} refreshes in {timeout}s"
        time.sleep(0.05)


# e) A slow My Account API ----------------------------------------------------------------------------

UPSTREAM_TIMEOUT = 1.0


def test_a_slow_my_account_api_sees_each_call_once_and_the_browser_gets_504_after_one_timeout(
    make_stack: StackFactory,
) -> None:
    upstream = RecordingUpstream()
    try:
        stack = make_stack(my_account_url=upstream.url + "/me/v1", upstream_read_timeout=UPSTREAM_TIMEOUT)
        clients = log_in(stack.bff_url, SESSIONS)
        for _ in range(2 * SESSIONS):  # room for a repeated request too, so that one would show
            upstream.reply_next(Reply(delay=3 * UPSTREAM_TIMEOUT))
        outcomes = Load(clients, threads=10, duration=30, max_calls=SESSIONS).start().join()
        for client in clients:
            client.close()

        elapsed = sorted(o.elapsed for o in outcomes)
        line = _summary(
            "slow upstream", calls=len(outcomes), upstream_requests=len(upstream.seen), outcomes=tally(outcomes),
            fastest_s=round(elapsed[0], 2), slowest_s=round(elapsed[-1], 2), timeout_s=UPSTREAM_TIMEOUT,
        )
        assert len(outcomes) == SESSIONS, line
        assert tally(outcomes) == {"504 upstream-timeout": SESSIONS}, line
        assert len(upstream.seen) == SESSIONS, line  # one request per call: a GET that timed out is not sent again
        assert elapsed[0] >= UPSTREAM_TIMEOUT and elapsed[-1] < 1.6 * UPSTREAM_TIMEOUT, line
    finally:
        upstream.stop()


# f) Health probes while every worker thread is stuck ------------------------------------------------

#: A bound on every probe's latency (the requirement), rather than on an average: one slow probe is
#: one failed health check.
PROBE_BOUND = 0.1
WORKER_THREADS = 4


@pytest.mark.slow
def test_health_and_readiness_answer_within_100ms_while_every_worker_thread_waits_on_a_hung_api(
    redis_url: str, tmp_path: pathlib.Path
) -> None:
    """``bff serve`` as deployed (its default worker class) with four threads, sixteen clients whose calls
    all hang at the My Account API: each of twenty probes of ``/healthz`` and of ``/readyz`` answers 200
    within 100 ms."""
    upstream = HeldUpstream(max_hold=20)
    try:
        with FaultStack(
            redis_url, tmp_path, threads=WORKER_THREADS, my_account_url=upstream.url + "/me/v1",
            upstream_read_timeout=15,
        ) as stack:
            clients = stack.log_in(SESSIONS)
            with Load(clients, threads=16, duration=30) as load:
                # At least as many calls as the process has threads are now waiting on the API.
                upstream.wait_for_held(WORKER_THREADS)
                health = probe_latencies(stack.urls[0] + "/healthz", 20, budget=3)
                ready = probe_latencies(stack.urls[0] + "/readyz", 20, budget=3)
                upstream.release()
                load.stop()
            outcomes = load.join()
            for client in clients:
                client.close()
            line = _summary(
                "health under stuck workers", healthz_max_ms=round(1000 * max(health)), healthz_probes=len(health),
                readyz_max_ms=round(1000 * max(ready)), readyz_probes=len(ready), held_upstream=upstream.arrived,
                load=tally(outcomes),
            )
            assert len(health) == 20 and max(health) < PROBE_BOUND, line
            assert len(ready) == 20 and max(ready) < PROBE_BOUND, line
    finally:
        upstream.stop()
