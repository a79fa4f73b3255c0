"""Private redis-server processes for the test session, on free loopback ports.

The machine may run a shared Redis; tests never touch it. Every server here is started from the
``redis-server`` binary, binds 127.0.0.1 only and keeps its files in a private directory:

* :class:`RedisServer` — a standalone server, optionally TLS-only (``rediss://``) or a replica of
  another one; it can be stopped and restarted on the same port to simulate an outage.
* :class:`SentinelServer` — a Sentinel (the same binary with ``--sentinel``) monitoring one primary,
  reached through ``redis+sentinel://``.
* :class:`RedisCluster` — a Redis Cluster of :class:`ClusterNodeServer` nodes (three primaries with one
  replica each by default), reached through ``redis+cluster://`` (``rediss+cluster://`` with TLS), with
  helpers to kill a primary, fail over and heal.

Every wait has a deadline; a process that exits early is reported with the tail of its log.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import typing as t
from urllib.parse import quote

import redis

from tests.support.tls import ServerCertificate

_START_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: t.Callable[[], bool], *, timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll ``condition`` until it holds; Redis errors count as "not yet"."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError):
            if condition():
                return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def _binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (the README's test command installs it)")
    return binary


class _Process:
    """A redis-server process with a private directory and log file."""

    name = "redis-server"

    def __init__(self, prefix: str) -> None:
        self.binary = _binary()
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix=prefix)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> pathlib.Path:
        return pathlib.Path(self.dir) / "server.log"

    def client(self) -> redis.Redis:
        raise NotImplementedError

    def _ready(self, client: redis.Redis) -> bool:
        return bool(client.ping())

    def _spawn(self, args: list[str]) -> None:
        self.process = subprocess.Popen(
            [self.binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise RuntimeError(f"{self.name} exited with status {code}:\n{self.log_tail()}")
            try:
                with self.client() as client:
                    if self._ready(client):
                        return
            except redis.RedisError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready on port {self.port}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM and wait (a clean shutdown; with persistence the data survives a restart)."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None

    def kill(self) -> None:
        """SIGKILL: the server dies at once, as in a crash or a lost host."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def freeze(self) -> None:
        """SIGSTOP: the process keeps its connections but answers nothing (a stalled host)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after :meth:`freeze`."""
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGCONT)

    def destroy(self) -> None:
        """Stop the process and remove its directory."""
        try:
            self.thaw()  # a frozen process would not act on SIGTERM
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class RedisServer(_Process):
    """A standalone redis-server; with ``tls`` it listens on a TLS port only.

    With ``replica_of`` it starts as a replica of that server (plain TCP between them).
    """

    def __init__(
        self, *, tls: ServerCertificate | None = None, replica_of: RedisServer | None = None
    ) -> None:
        super().__init__("bff-redis-")
        if tls is not None and replica_of is not None:
            raise ValueError("a TLS replica is not supported by this helper")
        self.tls = tls
        self.replica_of = replica_of

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={quote(str(self.tls.ca))}"
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        if self.tls is not None:
            return redis.Redis(
                host="127.0.0.1", port=self.port, socket_timeout=2, ssl=True, ssl_ca_certs=str(self.tls.ca)
            )
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def start(self) -> None:
        args = ["--bind", "127.0.0.1", "--save", "", "--dir", self.dir, "--logfile", str(self.log)]
        if self.tls is None:
            args += ["--port", str(self.port)]
        else:
            args += [
                "--port", "0", "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key),
                "--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "no",
            ]
        args += [
            "--protected-mode", "yes",
            # Replicas sync at once instead of after the default five-second batching delay.
            "--repl-diskless-sync-delay", "0",
        ]
        if self.replica_of is None:
            # An append-only file in a private directory: a stop and restart (an outage) keeps
            # the data, as a production Redis with persistence would.
            args += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            # No append-only file: a replica rewrites it after every sync and refuses to shut
            # down while it does.
            args += ["--appendonly", "no", "--replicaof", "127.0.0.1", str(self.replica_of.port)]
        self._spawn(args)

    def flush(self) -> None:
        with self.client() as client:
            client.flushall()

    def role(self) -> str:
        with self.client() as client:
            return str(client.info("replication")["role"])

    def wait_until_synced(self, timeout: float = 10.0) -> None:
        """For a replica: wait until its link to the primary is up and the initial sync is done."""

        def synced() -> bool:
            with self.client() as client:
                info = client.info("replication")
            return info.get("master_link_status") == "up" and not info.get("master_sync_in_progress")

        wait_until(synced, timeout=timeout, what=f"replica on port {self.port} to sync")


class SentinelServer(_Process):
    """A Sentinel monitoring ``primary`` as ``service`` (quorum 1), with short failover timings."""

    name = "redis-sentinel"

    def __init__(
        self,
        primary: RedisServer,
        *,
        service: str = "mymaster",
        down_after_ms: int = 400,
        failover_timeout_ms: int = 2000,
    ) -> None:
        super().__init__("bff-sentinel-")
        self.primary = primary
        self.service = service
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.expected_replicas = 0

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service}"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, decode_responses=True)

    def start(self, *, replicas: int = 0) -> None:
        """Start and wait until the sentinel sees the primary up and ``replicas`` replicas linked."""
        self.expected_replicas = replicas
        conf = pathlib.Path(self.dir) / "sentinel.conf"  # Sentinel rewrites it: it must be writable.
        conf.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    "bind 127.0.0.1",
                    f"dir {self.dir}",
                    f"logfile {self.log}",
                    f"sentinel monitor {self.service} 127.0.0.1 {self.primary.port} 1",
                    f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}",
                    f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}",
                    f"sentinel parallel-syncs {self.service} 1",
                    "",
                ]
            )
        )
        self._spawn([str(conf), "--sentinel"])

    def _ready(self, client: redis.Redis) -> bool:
        # A Sentinel answers PING before it has reached the primary: wait until it reports the
        # primary as up (no "disconnected"/"s_down" flags) and has discovered the replicas.
        state = t.cast("dict[str, t.Any]", client.sentinel_master(self.service))
        if _flags(state) != {"master"} or state.get("role-reported") != "master":
            return False
        return len(self.linked_replicas(client)) >= self.expected_replicas

    def linked_replicas(self, client: redis.Redis) -> list[dict[str, t.Any]]:
        replicas = client.sentinel_slaves(self.service)
        return [
            replica for replica in replicas
            if _flags(replica) == {"slave"} and replica.get("master-link-status") == "ok"
        ]

    def master_address(self) -> tuple[str, int]:
        with self.client() as client:
            host, port = client.sentinel_get_master_addr_by_name(self.service)
        return str(host), int(port)

    def wait_for_primary(self, port: int, timeout: float = 15.0) -> None:
        """Wait until the sentinel names the server on ``port`` as the (healthy) primary."""

        def promoted() -> bool:
            with self.client() as client:
                state = t.cast("dict[str, t.Any]", client.sentinel_master(self.service))
            return int(state["port"]) == port and _flags(state) == {"master"}

        wait_until(promoted, timeout=timeout, what=f"sentinel to name port {port} the primary", interval=0.05)


def _flags(state: t.Mapping[str, t.Any]) -> set[str]:
    flags = state["flags"]
    return set(flags.split(",")) if isinstance(flags, str) else set(flags)


class ClusterNodeServer(_Process):
    """One redis-server in cluster mode: its own port, cluster-bus port and ``nodes.conf``.

    The bus port is chosen too (``--cluster-port``): the default, port + 10000, may be taken or beyond
    65535. A node that is killed and started again keeps its ``nodes.conf`` and rejoins the cluster.
    """

    name = "redis-server (cluster node)"

    def __init__(self, *, node_timeout_ms: int, tls: ServerCertificate | None = None) -> None:
        super().__init__("bff-cluster-")
        self.bus_port = free_port()
        while self.bus_port == self.port:
            self.bus_port = free_port()
        self.node_timeout_ms = node_timeout_ms
        self.tls = tls

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        if self.tls is not None:
            return redis.Redis(
                host="127.0.0.1", port=self.port, socket_timeout=2, ssl=True, ssl_ca_certs=str(self.tls.ca),
                decode_responses=True,
            )
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, decode_responses=True)

    def start(self) -> None:
        args = [
            "--bind", "127.0.0.1", "--protected-mode", "yes", "--save", "", "--appendonly", "no",
            "--dir", self.dir, "--logfile", str(self.log),
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-port", str(self.bus_port),
            # A short node timeout: a dead primary is noticed and its replica promoted in seconds.
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--repl-diskless-sync-delay", "0",
            # CLUSTER SLOTS lists a replica only once its replication offset is not zero, which on an
            # idle primary happens at its next ping to the replica (every 10 s by default).
            "--repl-ping-replica-period", "1",
        ]
        if self.tls is None:
            args += ["--port", str(self.port)]
        else:
            args += [
                "--port", "0", "--tls-port", str(self.port), "--tls-cluster", "yes", "--tls-replication", "yes",
                "--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key),
                "--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "no",
            ]
        self._spawn(args)

    def node_id(self) -> str:
        with self.client() as client:
            return str(client.execute_command("CLUSTER", "MYID"))

    def role(self) -> str:
        with self.client() as client:
            return str(client.info("replication")["role"])



class RedisCluster:
    """A Redis Cluster of private nodes: ``primaries`` shards with ``replicas`` replicas each.

    Formed with CLUSTER ADDSLOTSRANGE / MEET / REPLICATE (slots split evenly, replicas assigned in
    order), then :meth:`wait_healthy`. Failover helpers: :meth:`kill` a primary and
    :meth:`wait_for_primary` until its replica took over, or :meth:`failover` (a planned
    CLUSTER FAILOVER); :meth:`heal` restarts what was killed and waits until the cluster is whole again.
    """

    SLOTS = 16384

    def __init__(
        self,
        *,
        primaries: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 1000,
        tls: ServerCertificate | None = None,
    ) -> None:
        self.shards = primaries
        self.replicas_per_shard = replicas
        self.tls = tls
        self.nodes = [
            ClusterNodeServer(node_timeout_ms=node_timeout_ms, tls=tls) for _ in range(primaries * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        """Every node as a startup node: whichever is up lets the client find the others."""
        scheme = "redis+cluster" if self.tls is None else "rediss+cluster"
        url = f"{scheme}://" + ",".join(node.address for node in self.nodes)
        return url if self.tls is None else f"{url}?ssl_ca_certs={quote(str(self.tls.ca))}"

    def start(self, timeout: float = 30.0) -> None:
        with concurrent.futures.ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda node: node.start(), self.nodes))
        primaries = self.nodes[: self.shards]
        for epoch, node in enumerate(self.nodes, start=1):
            with node.client() as client:
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
        for index, node in enumerate(primaries):
            first = index * self.SLOTS // self.shards
            last = (index + 1) * self.SLOTS // self.shards - 1
            with node.client() as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        with self.nodes[0].client() as client:
            for node in self.nodes[1:]:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)

        def all_met() -> bool:
            return all(self._known_nodes(node) == len(self.nodes) for node in self.nodes)

        wait_until(all_met, timeout=timeout, what="cluster nodes to meet", interval=0.05)
        for index, node in enumerate(self.nodes[self.shards:]):
            primary_id = primaries[index % self.shards].node_id()
            with node.client() as client:
                client.execute_command("CLUSTER", "REPLICATE", primary_id)
        self.wait_healthy(timeout)

    def _known_nodes(self, node: ClusterNodeServer) -> int:
        with node.client() as client:
            return len([line for line in str(client.execute_command("CLUSTER", "NODES")).splitlines() if line])

    def running(self) -> list[ClusterNodeServer]:
        return [node for node in self.nodes if node.process is not None]

    def node_at(self, port: int) -> ClusterNodeServer:
        return next(node for node in self.nodes if node.port == port)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every node runs, sees ``cluster_state:ok``, and every shard has its replicas linked."""

        def healthy() -> bool:
            for node in self.nodes:
                if node.process is None:
                    return False
                with node.client() as client:
                    info = client.execute_command("CLUSTER", "INFO")
                    if "cluster_state:ok" not in str(info):
                        return False
                    slots = client.execute_command("CLUSTER", "SLOTS")
                    replication = client.info("replication")
                # Every slot range lists its primary and all its replicas, as every node sees it.
                if sum(int(entry[1]) - int(entry[0]) + 1 for entry in slots) != self.SLOTS:
                    return False
                if any(len(entry) - 3 != self.replicas_per_shard for entry in slots):
                    return False
                if replication["role"] == "slave" and (
                    replication.get("master_link_status") != "up" or replication.get("master_sync_in_progress")
                ):
                    return False
            return len(self.primaries()) == self.shards

        wait_until(healthy, timeout=timeout, what="the cluster to be healthy", interval=0.1)

    def primaries(self) -> list[ClusterNodeServer]:
        """Running nodes that are primaries serving slots."""
        with self.running()[0].client() as client:
            slots = client.execute_command("CLUSTER", "SLOTS")
        return sorted({self.node_at(int(entry[2][1])) for entry in slots}, key=lambda node: node.port)

    def primary_of(self, key: str) -> ClusterNodeServer:
        """The node serving ``key``'s slot, as the cluster sees it now."""
        with self.running()[0].client() as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            slots = client.execute_command("CLUSTER", "SLOTS")
        entry = next(entry for entry in slots if int(entry[0]) <= slot <= int(entry[1]))
        return self.node_at(int(entry[2][1]))

    def replica_of(self, primary: ClusterNodeServer) -> ClusterNodeServer:
        with primary.client() as client:
            info = client.info("replication")
        return self.node_at(int(info["slave0"]["port"]))

    def keyslot(self, key: str) -> int:
        with self.running()[0].client() as client:
            return int(client.execute_command("CLUSTER", "KEYSLOT", key))

    def kill(self, node: ClusterNodeServer) -> None:
        """SIGKILL a node (a lost host); the cluster promotes its replica after the node timeout."""
        node.kill()

    def failover(self, replica: ClusterNodeServer, timeout: float = 15.0) -> None:
        """A planned failover: the replica catches up with its primary, then takes over (no write lost)."""
        with replica.client() as client:
            client.execute_command("CLUSTER", "FAILOVER")
        self.wait_for_primary(replica, timeout)

    def wait_for_primary(self, node: ClusterNodeServer, timeout: float = 15.0) -> None:
        """Until ``node`` is a primary and every running node sees the cluster as ``ok``."""

        def promoted() -> bool:
            if node.role() != "master":
                return False
            for other in self.running():
                with other.client() as client:
                    if "cluster_state:ok" not in str(client.execute_command("CLUSTER", "INFO")):
                        return False
            return True

        wait_until(promoted, timeout=timeout, what=f"node {node.port} to be promoted", interval=0.05)

    def heal(self, timeout: float = 30.0) -> None:
        """Restart any stopped node (it rejoins as a replica of its former replica) and wait until whole."""
        for node in self.nodes:
            if node.process is None:
                node.start()
        self.wait_healthy(timeout)

    def flush(self) -> None:
        for node in self.primaries():
            with node.client() as client:
                client.flushall()

    def client(self) -> t.Any:
        """A redis-py cluster client, for tests that look at keys directly."""
        from redis.cluster import RedisCluster as ClusterClient

        node = self.running()[0]
        options: dict[str, t.Any] = {"socket_timeout": 2}
        if self.tls is not None:
            options.update(ssl=True, ssl_ca_certs=str(self.tls.ca))
        return ClusterClient(host="127.0.0.1", port=node.port, **options)

    def destroy(self) -> None:
        for node in self.nodes:
            node.destroy()
