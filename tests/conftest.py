"""Shared fixtures: a private Redis, the Auth0 emulator and the BFF, all over real HTTP."""

from __future__ import annotations

import dataclasses
import time
import typing as t

import pytest
import requests

from bff import Settings, create_app
from bff.clock import Clock
from bff.store import SessionStore, open_store
from tests.support.browser import bff_session, login
from tests.support.redis_server import RedisServer
from tests.support.servers import ThreadedServer

CLIENT_ID = "bff-test-client"
CLIENT_SECRET = "bff-test-client-secret-0123456789"
SECRET_KEY = "test-secret-key-0123456789-abcdefghijklmnop"


@pytest.fixture(scope="session")
def redis_server() -> t.Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    if redis_server.process is None:  # a test stopped it to simulate an outage
        redis_server.start()
    redis_server.flush()
    return redis_server.url


@dataclasses.dataclass
class Stack:
    """An emulator, a BFF served on a free port, and the BFF's store."""

    bff_url: str
    emulator: t.Any
    settings: Settings
    store: SessionStore
    app: t.Any

    @property
    def idp(self) -> t.Any:
        return self.emulator.state

    def browser(self) -> requests.Session:
        return bff_session(self.bff_url)

    def logged_in(self, **kwargs: t.Any) -> requests.Session:
        http = self.browser()
        response = login(http, self.bff_url, **kwargs)
        assert response.status_code == 302, response.text
        return http


StackFactory = t.Callable[..., Stack]


@pytest.fixture
def token_binding() -> str:
    """How a stack's tokens are bound: ``bearer``, or ``dpop`` (``BFF_DPOP`` on, and a tenant that
    requires sender-constrained tokens). A module that must hold in both modes overrides this fixture
    with ``params=TOKEN_BINDINGS``."""
    return "bearer"


TOKEN_BINDINGS = ["bearer", "dpop"]


@pytest.fixture
def make_stack(redis_url: str, tmp_path: t.Any, token_binding: str) -> t.Iterator[StackFactory]:
    started: list[tuple[ThreadedServer, t.Any, SessionStore]] = []

    def factory(
        *, store: str = "redis", host: str = "127.0.0.1", clock: Clock | None = None, **overrides: t.Any
    ) -> Stack:
        from bff.emulator import EmulatorConfig, EmulatorServer

        server = ThreadedServer()
        bff_url = server.url(host)
        emulator = EmulatorServer(EmulatorConfig(CLIENT_ID, CLIENT_SECRET, bff_url))
        emulator.start()
        # "redis", "sqlite", or a store URL (a Redis Cluster's, say).
        store_url = {"redis": redis_url, "sqlite": f"sqlite:///{tmp_path}/sessions.db"}.get(store, store)
        # Tests log in and call far more often than a person; a test about limits sets its own.
        overrides = {**{f"rate_limit_{kind}": "off" for kind in ("session", "address", "login", "connect")},
                     "dpop": token_binding == "dpop", **overrides}
        if overrides["dpop"]:
            emulator.state.configure(require_proof_of_possession=True)
        settings = Settings(
            issuer_url=emulator.url + "/",
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            base_url=bff_url,
            secret_keys=(SECRET_KEY,),
            session_store=store_url,
            **overrides,
        )
        session_store = open_store(store_url, prefix=settings.store_prefix, clock=clock.now if clock else time.time)
        app = create_app(settings, store=session_store, clock=clock)
        server.serve(app)
        started.append((server, emulator, session_store))
        return Stack(bff_url, emulator, settings, session_store, app)

    yield factory
    for server, emulator, session_store in started:
        server.stop()
        emulator.stop()
        session_store.close()


@pytest.fixture
def stack(make_stack: StackFactory) -> Stack:
    return make_stack()


@pytest.fixture(scope="session")
def redis_tls_server(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[RedisServer]:
    """A private TLS-only redis-server whose certificate a throwaway CA issued."""
    from tests.support.tls import make_ca

    directory = tmp_path_factory.mktemp("redis-tls")
    server = RedisServer(tls=make_ca(directory).issue_server_certificate(directory))
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def redis_sentinel() -> t.Iterator[t.Any]:
    """A Sentinel (``SentinelServer``) monitoring its own private primary as ``mymaster``."""
    from tests.support.redis_server import SentinelServer

    primary = RedisServer()
    sentinel = SentinelServer(primary)
    try:
        primary.start()
        sentinel.start()
        yield sentinel
    finally:
        sentinel.destroy()
        primary.destroy()


@pytest.fixture(scope="session")
def redis_cluster() -> t.Iterator[t.Any]:
    """A private Redis Cluster (``RedisCluster``): three primaries with one replica each, 1 s node timeout."""
    from tests.support.redis_server import RedisCluster

    cluster = RedisCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
