"""The session store on a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``).

The store contract runs on the cluster too (``test_store_contract``); here, what only a cluster has:
a session's keys share one slot while sessions spread over the shards, a guarded write waits for a
replica of the shard that owns the session, the store follows a failover, back-channel logout ends
sessions on several shards, and a primary killed under load costs neither a session nor a refresh
token redeemed twice. Every cluster here is private, on free loopback ports.
"""

from __future__ import annotations

import collections
import concurrent.futures
import copy
import datetime
import ipaddress
import json
import pathlib
import threading
import time
import typing as t

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bff.session.record import connect_slot, refresh_lock
from bff.store import SessionStore, StoreUnavailable, open_store
from tests.conftest import Stack, StackFactory
from tests.support.browser import login
from tests.support.redis_server import RedisCluster, free_port
from tests.support.tls import ServerCertificate, make_ca

PROXIED = "/me/v1/authentication-methods"


def record_key(sid: str) -> str:
    return f"bff:s:{{{sid}}}"


def session_id(http: requests.Session) -> str:
    return next(str(c.value) for c in http.cookies if c.name == "bff-session" and c.value)


@pytest.fixture
def cluster(redis_cluster: RedisCluster) -> RedisCluster:
    """The shared cluster, whole again (a test may have killed a node) and empty."""
    redis_cluster.heal()
    redis_cluster.flush()
    return redis_cluster


@pytest.fixture
def store(cluster: RedisCluster) -> t.Iterator[SessionStore]:
    opened = open_store(cluster.url)
    yield opened
    opened.close()


def repeat_until_acknowledged(write: t.Callable[[], bool], timeout: float = 5.0) -> bool:
    """What the token manager does with a guarded write that raised: repeat it for a while."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return write()
        except StoreUnavailable:
            assert time.monotonic() < deadline, "the write was never acknowledged"
            time.sleep(0.05)


def sids_on_distinct_shards(cluster: RedisCluster, count: int) -> list[str]:
    """Session ids whose records live on ``count`` different shards."""
    found: dict[int, str] = {}
    for n in range(1000):
        sid = f"session-{n}"
        found.setdefault(cluster.primary_of(record_key(sid)).port, sid)
        if len(found) == count:
            return list(found.values())
    raise AssertionError("no session ids spread over the shards")


# Key layout ---------------------------------------------------------------------------------------


def test_a_sessions_keys_share_its_slot_and_sessions_spread_over_every_shard(
    cluster: RedisCluster, store: SessionStore
) -> None:
    shards = set()
    for n in range(30):
        sid = f"s{n}"
        store.write(sid, {"doc": b"{}"}, ttl=60)
        assert store.acquire(refresh_lock(sid), "me", lease=60)
        assert store.acquire(connect_slot(sid, 2), "state", lease=60)
        slots = {cluster.keyslot(key) for key in (
            record_key(sid), f"bff:l:{refresh_lock(sid)}", f"bff:l:{connect_slot(sid, 2)}")}
        assert len(slots) == 1, f"the keys of {sid} are in slots {slots}"
        owner = cluster.primary_of(record_key(sid))
        with owner.client() as client:  # all three really are on the shard that owns the record
            assert client.exists(record_key(sid), f"bff:l:refresh:{{{sid}}}", f"bff:l:connect-slot:{{{sid}}}:2") == 3
        shards.add(owner.port)
    assert len(shards) == 3


def test_a_brace_in_the_prefix_is_refused_on_a_cluster(cluster: RedisCluster) -> None:
    # A hash tag in the prefix would put every session of the deployment in one slot.
    with pytest.raises(ValueError, match="braces"):
        open_store(cluster.url, prefix="{bff}:")


# Durable writes -------------------------------------------------------------------------------------


def test_a_guarded_write_waits_for_a_replica_of_the_sessions_own_shard(
    cluster: RedisCluster, store: SessionStore
) -> None:
    stalled_sid, other_sid = sids_on_distinct_shards(cluster, 2)
    for sid in (stalled_sid, other_sid):
        store.write(sid, {"rt": b"old"}, ttl=60)
    replica = cluster.replica_of(cluster.primary_of(record_key(stalled_sid)))
    replica.freeze()  # connected, but it acknowledges nothing
    try:
        began = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.update_cas(stalled_sid, {"rt": b"new"}, guard="rt", expected=b"old")
        assert time.monotonic() - began >= 0.4, "the write did not wait for the replica"
        # The other shard's replica is not the stalled one: its write is acknowledged at once.
        assert store.update_cas(other_sid, {"rt": b"new"}, guard="rt", expected=b"old") is True
    finally:
        replica.thaw()
    cluster.wait_healthy()
    # Repeating the write that raised is safe, and once it returns the replica has it.
    assert repeat_until_acknowledged(lambda: store.update_cas(stalled_sid, {"rt": b"new"}, guard="rt", expected=b"old"))
    with replica.client() as client:
        client.execute_command("READONLY")
        assert client.hget(record_key(stalled_sid), "rt") == "new"


def test_after_a_planned_failover_the_store_writes_to_the_new_primary(
    cluster: RedisCluster, store: SessionStore
) -> None:
    store.write("s1", {"doc": b"before", "rt": b"old"}, ttl=60)  # also leaves pooled connections open
    old_primary = cluster.primary_of(record_key("s1"))
    new_primary = cluster.replica_of(old_primary)
    cluster.failover(new_primary)

    deadline = time.monotonic() + 5
    while True:
        try:
            assert store.update("s1", {"doc": b"after"}) is True, "the session vanished"
            break
        except StoreUnavailable:
            assert time.monotonic() < deadline, "the store never reached the new primary"
            time.sleep(0.05)
    assert store.update_cas("s1", {"rt": b"new"}, guard="rt", expected=b"old") is True
    assert old_primary.role() == "slave"
    with new_primary.client() as client:
        assert client.hgetall(record_key("s1")) == {"doc": "after", "rt": "new"}


@pytest.mark.slow
def test_a_guarded_write_repeated_through_a_lost_primary_lands_on_its_heir(
    cluster: RedisCluster, store: SessionStore
) -> None:
    # As the token manager does with a rotated refresh token: only the write, repeated, with no
    # other command that would make the client read the new layout.
    store.write("s1", {"rt": b"old"}, ttl=60)
    victim = cluster.primary_of(record_key("s1"))
    heir = cluster.replica_of(victim)
    cluster.kill(victim)
    assert repeat_until_acknowledged(lambda: store.update_cas("s1", {"rt": b"new"}, guard="rt", expected=b"old"),
                                     timeout=15)
    assert heir.role() == "master"
    with heir.client() as client:
        assert client.hget(record_key("s1"), "rt") == "new"


# Connections ----------------------------------------------------------------------------------------


def test_an_unreachable_cluster_is_unavailable_not_an_error_at_startup() -> None:
    store = open_store(f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()}")
    try:
        with pytest.raises(StoreUnavailable):
            store.load("s1")
        with pytest.raises(StoreUnavailable):
            store.ping()
    finally:
        store.close()


def _node_certificate(directory: pathlib.Path) -> ServerCertificate:
    """A certificate for server *and* client use: cluster nodes authenticate each other on the bus."""
    ca = make_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    cert, private = directory / "node.pem", directory / "node.key"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ServerCertificate(cert=cert, key=private, ca=ca.pem)


def test_rediss_cluster_speaks_tls_to_every_node_and_refuses_an_untrusted_one(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    tls_cluster = RedisCluster(replicas=0, tls=_node_certificate(tmp_path_factory.mktemp("cluster-tls")))
    try:
        tls_cluster.start()
        store = open_store(tls_cluster.url)
        try:
            for sid in sids_on_distinct_shards(tls_cluster, 3):  # one session on each node
                store.write(sid, {"doc": b"over-tls"}, ttl=60)
                record = store.load(sid)
                assert record is not None and record.fields == {"doc": b"over-tls"}
            store.ping()
        finally:
            store.close()
        untrusted = open_store(tls_cluster.url.split("?", 1)[0])  # the system trust store: not our CA
        try:
            with pytest.raises(StoreUnavailable):
                untrusted.load("s1")
        finally:
            untrusted.close()
    finally:
        tls_cluster.destroy()


# The BFF on a cluster -------------------------------------------------------------------------------


def test_back_channel_logout_ends_the_sessions_of_an_idp_session_on_every_shard(
    make_stack: StackFactory, cluster: RedisCluster
) -> None:
    stack = make_stack(store=cluster.url)
    # Several browsers share one IdP session (its cookie), each with a BFF session of its own, until
    # those sessions live on every shard; the sid index lives on yet another slot.
    first = stack.logged_in()
    sso = next(cookie for cookie in first.cookies if cookie.name == "auth0")
    browsers = [first]
    while len({cluster.primary_of(record_key(session_id(http))).port for http in browsers}) < 3:
        assert len(browsers) < 30, "the sessions never spread over the shards"
        http = stack.browser()
        http.cookies.set_cookie(copy.copy(sso))
        assert login(http, stack.bff_url).status_code == 302  # no form: the IdP session is reused
        browsers.append(http)
    sids = [session_id(http) for http in browsers]
    documents = [json.loads(t.cast(t.Any, stack.store.load(sid)).fields["doc"]) for sid in sids]
    (idp_sid,) = {document["idp_sid"] for document in documents}
    sub = documents[0]["sub"]
    assert stack.store.index_members(f"idp-sid:{idp_sid}") == set(sids)

    assert stack.idp.end_sso_session(idp_sid)
    assert [delivery.status_code for delivery in stack.idp.wait_for_backchannel(1)] == [200]

    for http, sid in zip(browsers, sids, strict=True):
        assert http.get(stack.bff_url + "/bff/user").status_code == 401
        assert stack.store.load(sid) is None
    assert stack.store.index_members(f"idp-sid:{idp_sid}") == set()
    assert stack.store.index_members(f"sub:{sub}") & set(sids) == set()


@pytest.mark.slow
def test_a_primary_killed_under_load_loses_no_session_and_redeems_no_refresh_token_twice(
    make_stack: StackFactory, cluster: RedisCluster
) -> None:
    began = time.monotonic()
    # A refresh lock whose release failed during the failover is held until its lease ends (the
    # session answers 503 token-busy meanwhile): a short lease keeps the test short.
    lease = 4.0
    stack = make_stack(store=cluster.url, token_refresh_margin=1, token_timeout=2, refresh_lock_lease=lease)
    stack.idp.configure(access_token_lifetime=2)  # every session refreshes about once a second
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        browsers = list(pool.map(lambda _: stack.logged_in(), range(20)))
    sids = [session_id(http) for http in browsers]
    families = [_family(stack, sid) for sid in sids]
    shards = collections.Counter(cluster.primary_of(record_key(sid)).port for sid in sids)
    victim = cluster.node_at(shards.most_common(1)[0][0])
    heir = cluster.replica_of(victim)
    refreshes_before = _refresh_calls(stack)

    seen: list[tuple[float, int, str]] = []  # when, status, problem type
    stop = threading.Event()

    def use(http: requests.Session) -> None:
        for n in range(10**6):
            if stop.is_set():
                return
            response = http.get(stack.bff_url + (PROXIED if n % 2 else "/bff/user"), timeout=30)
            kind = ""
            if response.headers.get("Content-Type", "").startswith("application/problem+json"):
                kind = str(response.json().get("type", "")).removeprefix("urn:bff:problem:")
            seen.append((time.monotonic(), response.status_code, kind))

    threads = [threading.Thread(target=use, args=(http,)) for http in browsers]
    for thread in threads:
        thread.start()
    try:
        time.sleep(2)
        killed_at = time.monotonic()
        cluster.kill(victim)  # the host of the shard with most sessions is lost
        cluster.wait_for_primary(heir)
        promoted_at = time.monotonic()
        time.sleep(3)
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    during = collections.Counter((status, kind) for when, status, kind in seen if when >= killed_at)
    last_503 = max((when for when, status, _ in seen if status == 503), default=killed_at)
    print(
        f"\n20 sessions on shards {dict(shards)}; killed port {victim.port} ({shards[victim.port]} sessions); "
        f"promoted after {promoted_at - killed_at:.1f} s; {len(seen)} requests, "
        f"{_refresh_calls(stack) - refreshes_before} refreshes; since the kill: {dict(during)}; "
        f"last 503 {last_503 - promoted_at:+.1f} s after the promotion"
    )
    # Only "try again" answers: the store was unreachable, or (rarely) a refresh held up by the
    # failover outlasted another request's wait for it. Never a 500, never a 401 (a session lost).
    assert set(during) <= {(200, ""), (503, "store-unavailable"), (503, "token-busy")}, during
    assert all(status == 200 for when, status, _ in seen if when < killed_at)
    assert _refresh_calls(stack) - refreshes_before >= 20, "the tokens were not being refreshed"

    # Every session survived and its tokens still work: 200 for each, at the latest once the lease of
    # a lock orphaned by the failover has run out; never a 401 (lost) or a 500 on the way.
    checked = time.monotonic()
    deadline = checked + lease + 2
    for http in browsers:
        for path in ("/bff/user", PROXIED):
            while (status := http.get(stack.bff_url + path).status_code) == 503 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert status == 200, f"{path} answered {status} after the failover"
    settled = time.monotonic() - checked
    for family in families:
        assert not stack.idp.reuse_detected(family), "a refresh token was presented twice"
        assert not stack.idp.family_revoked(family)
    print(f"lost sessions: 0; reuse detections: 0; the 40 checks afterwards took {settled:.1f} s; "
          f"the test took {time.monotonic() - began:.1f} s")


def _family(stack: Stack, sid: str) -> str:
    record = stack.store.load(sid)
    assert record is not None
    return t.cast(str, stack.idp.family_of(stack.app.extensions["bff"].box.open(record.fields["rt"]).decode()))


def _refresh_calls(stack: Stack) -> int:
    return int(stack.idp.counters()["token_calls_by_grant_type"].get("refresh_token", 0))
