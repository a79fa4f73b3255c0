"""Deploying: the compose file, the Kubernetes manifests and nginx.conf, checked offline and run for real.

No container engine runs here. The deploy files are validated offline (the manifests against the
Kubernetes schemas, the compose file parsed and checked for what the deployment relies on), and the
topology they describe runs as local processes: the system's nginx with ``deploy/nginx.conf``, BFF
instances as ``bff serve`` processes, a private Redis and the emulator.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import ipaddress
import json
import pathlib
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import typing as t

import kubernetes_validate
import pytest
import requests
import yaml
from flask import Flask, request

from bff import proxies
from bff.settings import variables
from tests.conftest import CLIENT_ID, CLIENT_SECRET, SECRET_KEY
from tests.support.browser import bff_session, login
from tests.support.nginx import DEPLOY_CONF, NginxProcess, nginx_version
from tests.support.processes import BffProcess
from tests.support.redis_server import free_port
from tests.support.servers import ThreadedServer
from tests.support.tls import ServerCertificate, make_ca
from tests.support.upstream import RecordingUpstream, Reply

REPO = pathlib.Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose.yaml"
READ = "/me/v1/authentication-methods"
GRACEFUL_TIMEOUT = 20  # bff/cli.py: gunicorn's graceful_timeout
# What `bff serve` cannot start without.
REQUIRED = {name for name, spec in variables().items() if spec.metadata["required"]} | {"BFF_SESSION_STORE"}
VARIABLE = re.compile(r"\bBFF_[A-Z0-9_]+\b")


# --- The files, offline ---------------------------------------------------------------------------


def manifests() -> list[dict[str, t.Any]]:
    documents = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return documents


def manifest(kind: str) -> dict[str, t.Any]:
    (found,) = [doc for doc in manifests() if doc["kind"] == kind]
    return found


def compose() -> dict[str, t.Any]:
    return t.cast("dict[str, t.Any]", yaml.safe_load(COMPOSE.read_text()))


def bff_services() -> dict[str, dict[str, t.Any]]:
    return {name: service for name, service in compose()["services"].items() if name.startswith("bff-")}


_NGINX_TOKEN = re.compile(r"""#[^\n]*|"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|([;{}])|([^\s;{}"'#]+)""")


def nginx_directives() -> list[tuple[tuple[str, ...], list[str]]]:
    """deploy/nginx.conf's directives: the blocks each stands in (``("http", "upstream")``) and its words."""
    found: list[tuple[tuple[str, ...], list[str]]] = []
    blocks: list[str] = []
    words: list[str] = []
    for match in _NGINX_TOKEN.finditer(DEPLOY_CONF.read_text()):
        double, single, punctuation, word = match.groups()
        if punctuation == ";":
            found.append((tuple(blocks), words))
            words = []
        elif punctuation == "{":
            found.append((tuple(blocks), words))
            blocks.append(words[0])
            words = []
        elif punctuation == "}":
            blocks.pop()
        elif match.group(0).startswith("#"):
            continue
        else:
            words.append(double if double is not None else single if single is not None else word)
    assert not blocks and not words
    return found


def directives(name: str, within: str | None = None) -> list[list[str]]:
    """The arguments of each ``name`` directive (inside a ``within`` block, if given)."""
    return [
        words[1:] for blocks, words in nginx_directives()
        if words and words[0] == name and (within is None or blocks[-1:] == (within,))
    ]


def kubernetes_variables() -> set[str]:
    deployment = manifest("Deployment")
    config_maps = {doc["metadata"]["name"]: doc for doc in manifests() if doc["kind"] == "ConfigMap"}
    names = set()
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        names |= {entry["name"] for entry in container.get("env", [])}
        for source in container.get("envFrom", []):
            names |= set(config_maps[source["configMapRef"]["name"]]["data"])
    return names


def compose_variables(service: dict[str, t.Any]) -> set[str]:
    environment = service.get("environment", {})
    names = set(environment) if isinstance(environment, dict) else {item.split("=", 1)[0] for item in environment}
    exported = "\n".join(service.get("entrypoint", []))
    return names | set(re.findall(r"^(BFF_[A-Z0-9_]+)=", exported, re.MULTILINE))


def test_every_bff_variable_the_deploy_files_name_is_a_setting() -> None:
    known = set(variables())
    files = [path for path in DEPLOY.rglob("*") if path.is_file()] + [REPO / "Dockerfile"]
    named = {(str(path.relative_to(REPO)), name) for path in files for name in VARIABLE.findall(path.read_text())}
    assert sorted((path, name) for path, name in named if name not in known) == []
    assert {name for _, name in named} >= REQUIRED


def test_each_deployment_sets_every_variable_bff_serve_requires_and_nothing_unknown() -> None:
    known = set(variables())
    sets = {"kubernetes": kubernetes_variables()} | {name: compose_variables(s) for name, s in bff_services().items()}
    assert set(sets) == {"kubernetes", "bff-1", "bff-2"}
    for where, names in sets.items():
        assert names <= known, (where, names - known)
        assert names >= REQUIRED, (where, REQUIRED - names)


@pytest.mark.parametrize("version", ["1.29.0", kubernetes_validate.latest_version()])
def test_kubernetes_manifests_validate_against_the_schemas_offline(version: str) -> None:
    documents = manifests()
    assert {doc["kind"] for doc in documents} >= {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap"}
    for doc in documents:
        kubernetes_validate.validate(doc, version, strict=True)


def test_kubernetes_validation_is_not_vacuous() -> None:
    deployment = manifest("Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


def test_the_deployment_keeps_serving_through_rollouts_drains_and_restarts() -> None:
    deployment = manifest("Deployment")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    pause = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep" and int(pause[1]) > 0
    assert pod["terminationGracePeriodSeconds"] > int(pause[1]) + GRACEFUL_TIMEOUT
    assert container["command"][:2] == ["bff", "serve"]
    assert container["command"][container["command"].index("--port") + 1] == "8000"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["http"] == 8000
    config = manifest("ConfigMap")["data"]
    assert ports["metrics"] == int(config["BFF_METRICS_ADDRESS"].rpartition(":")[2])
    for network in config["BFF_TRUSTED_PROXIES"].split(","):
        ipaddress.ip_network(network.strip())

    labels = spec["template"]["metadata"]["labels"]
    service = manifest("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= set(ports)
    budget = manifest("PodDisruptionBudget")["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert 1 <= budget["minAvailable"] < spec["replicas"]  # a drain keeps one, and can still proceed


def test_the_bff_pod_runs_as_non_root_on_a_read_only_root_file_system_with_requests() -> None:
    pod = manifest("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert "emptyDir" in next(volume for volume in pod["volumes"] if volume["name"] == mounts["/tmp"])


def test_compose_runs_nginx_before_two_healthy_bff_instances_sharing_redis() -> None:
    document = compose()
    services = document["services"]
    assert set(services) == {"nginx", "bff-1", "bff-2", "redis"}
    for name, service in services.items():
        assert service["healthcheck"]["test"][0] == "CMD", name
    assert services["nginx"]["depends_on"] == {name: {"condition": "service_healthy"} for name in bff_services()}
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in services["nginx"]["volumes"]
    # nginx.conf's upstream names exactly the compose services, on the port they serve.
    upstream = [words[0] for words in directives("server", within="upstream")]
    assert sorted(upstream) == [f"{name}:8000" for name in sorted(bff_services())]

    nginx_address = services["nginx"]["networks"]["edge"]["ipv4_address"]
    (subnet,) = document["networks"]["edge"]["ipam"]["config"]
    assert ipaddress.ip_address(nginx_address) in ipaddress.ip_network(subnet["subnet"])
    assert document["networks"]["store"]["internal"] is True
    assert services["redis"]["networks"] == ["store"] and "ports" not in services["redis"]
    assert "noeviction" in services["redis"]["command"]
    for name, service in bff_services().items():
        command = service["command"]
        assert command[:2] == ["bff", "serve"] and command[command.index("--port") + 1] == "8000", name
        assert service["environment"]["BFF_TRUSTED_PROXIES"] == nginx_address, name
        assert service["depends_on"] == {"redis": {"condition": "service_healthy"}}, name
        assert set(service["networks"]) == {"edge", "store"}, name
        assert "/readyz" in service["healthcheck"]["test"][-1], name
        assert service["user"].split(":")[0] not in ("0", "root") and service["read_only"] is True, name
        assert int(service["stop_grace_period"].rstrip("s")) > GRACEFUL_TIMEOUT, name


def test_compose_secrets_come_from_the_environment_or_files() -> None:
    document = compose()
    declared = document["secrets"]
    for name, source in declared.items():
        assert set(source) in ({"environment"}, {"file"}), name
    for name, service in document["services"].items():
        assert set(service.get("secrets", [])) <= set(declared), name
        environment = service.get("environment", {})
        assert not any("SECRET" in key for key in environment), name  # secrets are files, not entries here
    for service in bff_services().values():
        read = set(re.findall(r"/run/secrets/(\w+)", "\n".join(service["entrypoint"])))
        assert read == set(service["secrets"])
    for words in directives("ssl_certificate") + directives("ssl_certificate_key"):
        assert words[0].removeprefix("/run/secrets/") in compose()["services"]["nginx"]["secrets"]


def test_compose_entrypoint_exports_the_secret_files_and_execs_the_command(tmp_path: pathlib.Path) -> None:
    entrypoint = next(iter(bff_services().values()))["entrypoint"]
    script = entrypoint[2].replace("$$", "$").replace("/run/secrets/", f"{tmp_path}/")
    (tmp_path / "bff_client_secret").write_text("the-client-secret")
    (tmp_path / "bff_secret_key").write_text("the-secret-key")
    names = "'BFF_CLIENT_SECRET', 'BFF_SECRET_KEY'"
    show = f"import json, os; print(json.dumps([os.getpid(), *map(os.environ.get, [{names}])]))"
    argv = [*entrypoint[:2], script, *entrypoint[3:], sys.executable, "-c", show]
    shell = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    out, _ = shell.communicate(timeout=10)
    pid, client_secret, secret_key = json.loads(out)
    assert (client_secret, secret_key) == ("the-client-secret", "the-secret-key")
    assert pid == shell.pid  # exec: the server is the process that receives the container's SIGTERM

    (tmp_path / "bff_secret_key").unlink()
    missing = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    assert missing.returncode == 2 and missing.stdout == ""


def test_the_image_serves_as_a_non_root_user_with_the_production_command() -> None:
    instructions = [
        line.split(None, 1) for line in (REPO / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    last = {word.upper(): rest.strip() for word, rest in instructions}
    uid = last["USER"].split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    assert json.loads(last["CMD"]) == ["bff", "serve", "--host", "0.0.0.0", "--port", "8000"]  # noqa: S104
    assert last["EXPOSE"] == "8000" and "/readyz" in last["HEALTHCHECK"]


def test_nginx_conf_passes_the_raw_target_and_retries_only_what_cannot_have_been_done() -> None:
    passes = directives("proxy_pass")
    assert passes and all(words == ["http://bff"] for words in passes)  # no URI part: the raw target goes on
    assert not directives("rewrite") and "$uri" not in str(passes)
    (retry,) = directives("proxy_next_upstream")
    assert {"error", "timeout", "http_502", "http_503"} <= set(retry) and "non_idempotent" not in retry
    servers = directives("server", within="upstream")
    assert servers and all(any(word.startswith("max_fails=") for word in words) for words in servers)
    headers = {words[0].lower(): words[1] for words in directives("proxy_set_header")}
    assert headers["x-forwarded-for"] == "$proxy_add_x_forwarded_for"
    assert headers["x-forwarded-proto"] == "$scheme"
    # Valid from nginx 1.22 on: no "http2 on;" (1.25.1) and no deprecated "listen ... http2".
    assert not directives("http2") and not any("http2" in words for words in directives("listen"))
    (upstream_idle,) = directives("keepalive_timeout", within="upstream")[0]
    assert int(upstream_idle.rstrip("s")) < 5  # below gunicorn's keep-alive: nginx closes idle ones first


# --- Trusted proxies, in the application ----------------------------------------------------------


def forwarded(networks: str, peer: str, **headers: str) -> dict[str, t.Any]:
    """The environ the application sees behind :class:`bff.proxies.TrustedProxies`."""
    seen: dict[str, t.Any] = {}

    def app(environ: dict[str, t.Any], start_response: t.Callable[..., t.Any]) -> list[bytes]:
        seen.update(environ)
        return []

    environ = {"REMOTE_ADDR": peer, "wsgi.url_scheme": "http"}
    environ |= {"HTTP_" + name.upper(): value for name, value in headers.items()}
    nets = [ipaddress.ip_network(part) for part in networks.split(",") if part]
    proxies.TrustedProxies(app, nets)(environ, lambda *args: None)
    return seen


def test_a_trusted_proxys_forwarded_headers_give_the_client_address_and_scheme() -> None:
    seen = forwarded("10.0.0.0/8", "10.1.2.3", x_forwarded_for="198.51.100.7", x_forwarded_proto="https")
    assert (seen["REMOTE_ADDR"], seen["wsgi.url_scheme"], seen[proxies.PEER_ADDR_KEY]) == (
        "198.51.100.7", "https", "10.1.2.3")


def test_an_untrusted_peers_forwarded_headers_are_ignored() -> None:
    seen = forwarded("10.0.0.0/8", "192.0.2.50", x_forwarded_for="198.51.100.7", x_forwarded_proto="https")
    assert (seen["REMOTE_ADDR"], seen["wsgi.url_scheme"]) == ("192.0.2.50", "http")
    nobody = forwarded("", "127.0.0.1", x_forwarded_for="198.51.100.7", x_forwarded_proto="https")
    assert (nobody["REMOTE_ADDR"], nobody["wsgi.url_scheme"]) == ("127.0.0.1", "http")


def test_a_spoofed_left_most_forwarded_for_entry_is_ignored() -> None:
    # The client sent "203.0.113.9"; the trusted proxy appended the address it saw.
    seen = forwarded("10.0.0.0/8", "10.1.2.3", x_forwarded_for="203.0.113.9, 198.51.100.7")
    assert seen["REMOTE_ADDR"] == "198.51.100.7"


def test_the_walk_passes_trusted_hops_and_stops_at_the_first_untrusted_or_malformed_one() -> None:
    chain = "203.0.113.9, 198.51.100.7, 10.9.9.9, 10.8.8.8"
    assert forwarded("10.0.0.0/8", "10.1.2.3", x_forwarded_for=chain)["REMOTE_ADDR"] == "198.51.100.7"
    # Every hop trusted: the left-most one is the client.
    assert forwarded("10.0.0.0/8", "10.1.2.3", x_forwarded_for="10.7.7.7, 10.8.8.8")["REMOTE_ADDR"] == "10.7.7.7"
    # Not an address: nothing left of it counts, the last trusted hop is all that is known.
    assert forwarded("10.0.0.0/8", "10.1.2.3", x_forwarded_for="198.51.100.7, junk, 10.8.8.8")[
        "REMOTE_ADDR"] == "10.8.8.8"
    # Ports and brackets, and IPv4-mapped peers of a dual-stack listener.
    assert forwarded("10.0.0.0/8", "::ffff:10.1.2.3", x_forwarded_for="198.51.100.7:4711")[
        "REMOTE_ADDR"] == "198.51.100.7"
    assert forwarded("2001:db8::/32", "2001:db8::1", x_forwarded_for="[2001:db9::5]:443")[
        "REMOTE_ADDR"] == "2001:db9::5"
    # Only http or https, and only the value the trusted peer wrote (the right-most).
    assert forwarded("10.0.0.0/8", "10.1.2.3", x_forwarded_proto="javascript")["wsgi.url_scheme"] == "http"
    assert forwarded("10.0.0.0/8", "10.1.2.3", x_forwarded_proto="http, https")["wsgi.url_scheme"] == "https"


def test_the_application_reads_the_client_address_from_request_remote_addr() -> None:
    app = Flask(__name__)

    @app.get("/")
    def who() -> dict[str, t.Any]:
        return {"address": request.remote_addr, "scheme": request.scheme}

    proxies.init_app(app, [ipaddress.ip_network("127.0.0.1")])
    client = app.test_client()
    headers = {"X-Forwarded-For": "203.0.113.9, 198.51.100.7", "X-Forwarded-Proto": "https"}
    trusted = client.get("/", headers=headers, environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert trusted.json == {"address": "198.51.100.7", "scheme": "https"}
    untrusted = client.get("/", headers=headers, environ_base={"REMOTE_ADDR": "192.0.2.50"})
    assert untrusted.json == {"address": "192.0.2.50", "scheme": "http"}


# --- Over the wire --------------------------------------------------------------------------------


def send(
    port: int,
    target: bytes,
    headers: t.Sequence[tuple[str, str]] = (),
    *,
    source: str = "127.0.0.1",
    ca: pathlib.Path | None = None,
) -> tuple[int, bytes]:
    """One request, byte for byte (repeated headers allowed), from ``source``; plain or TLS (``ca``)."""
    lines = [b"GET " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [f"{name}: {value}".encode() for name, value in headers]
    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), 10, (source, 0)))
        if ca is not None:
            context = ssl.create_default_context(cafile=str(ca))
            sock = stack.enter_context(context.wrap_socket(sock, server_hostname="127.0.0.1"))
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        chunks = []
        with contextlib.suppress(ssl.SSLEOFError, ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def session_cookie(http: requests.Session) -> str:
    return "; ".join(f"{c.name}={c.value}" for c in http.cookies if c.name.endswith("bff-session"))


def bff_env(emulator_url: str, base_url: str, store: str, **changes: str) -> dict[str, str]:
    return {
        "BFF_ISSUER_URL": emulator_url + "/",
        "BFF_CLIENT_ID": CLIENT_ID,
        "BFF_CLIENT_SECRET": CLIENT_SECRET,
        "BFF_BASE_URL": base_url,
        "BFF_SECRET_KEY": SECRET_KEY,
        "BFF_SESSION_STORE": store,
        **changes,
    }


@pytest.fixture
def certificate(tmp_path: pathlib.Path) -> ServerCertificate:
    return make_ca(tmp_path / "ca").issue_server_certificate(tmp_path)


@dataclasses.dataclass
class Served:
    """One ``bff serve`` process beside the emulator, My Account being a recording upstream."""

    bff: BffProcess
    upstream: RecordingUpstream
    log: pathlib.Path

    @property
    def url(self) -> str:
        return self.bff.url

    def logged_in(self) -> requests.Session:
        http = bff_session(self.url)
        assert login(http, self.url).status_code == 302
        return http


@pytest.fixture
def serve(redis_url: str, tmp_path: pathlib.Path) -> t.Iterator[t.Callable[..., Served]]:
    """Start ``bff serve`` (more ``BFF_*`` as keywords); the emulator and upstream stop with the test."""
    from bff.emulator import EmulatorConfig, EmulatorServer

    started: list[tuple[BffProcess, RecordingUpstream, EmulatorServer]] = []

    def start(*, args: t.Sequence[str] = (), **changes: str) -> Served:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        emulator = EmulatorServer(EmulatorConfig(CLIENT_ID, CLIENT_SECRET, url)).start()
        upstream = RecordingUpstream()
        log = tmp_path / f"bff-{port}.log"
        env = bff_env(emulator.url, url, redis_url, BFF_MY_ACCOUNT_URL=upstream.url + "/me/v1", **changes)
        try:
            bff = BffProcess(port, env, log=log, args=args)
        except BaseException:
            upstream.stop()
            emulator.stop()
            raise
        started.append((bff, upstream, emulator))
        return Served(bff, upstream, log)

    yield start
    for bff, upstream, emulator in started:
        bff.stop()
        upstream.stop()
        emulator.stop()


def test_sigterm_lets_the_request_in_flight_finish_refuses_new_ones_and_exits_zero(
    serve: t.Callable[..., Served],
) -> None:
    served = serve()
    http = served.logged_in()
    assert http.get(served.url + READ).status_code == 200
    served.upstream.reply_next(Reply(delay=3.0))
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        in_flight = pool.submit(http.get, served.url + READ, timeout=30)
        served.upstream.wait_for_delayed_reply(timeout=10)
        signalled = time.monotonic()
        exit_code = pool.submit(served.bff.terminate)

        refused_after = None
        while refused_after is None and time.monotonic() < signalled + 5:
            try:
                socket.create_connection(("127.0.0.1", served.bff.port), timeout=1).close()
                time.sleep(0.05)
            except ConnectionRefusedError:
                refused_after = time.monotonic() - signalled
        response = in_flight.result(timeout=30)
        assert exit_code.result(timeout=40) == 0
        exited_after = time.monotonic() - signalled
    assert refused_after is not None, "still accepting 5 s after SIGTERM"
    assert response.status_code == 200 and response.json() == {"ok": True}
    assert exited_after < GRACEFUL_TIMEOUT
    print(f"\nSIGTERM: refusing after {refused_after:.2f}s, the 3 s request answered 200, exit 0 after "
          f"{exited_after:.2f}s")


def test_slow_clients_leave_health_and_proxied_calls_answering_within_a_second(
    serve: t.Callable[..., Served],
) -> None:
    served = serve()
    http = served.logged_in()
    cookies = {c.name: c.value for c in http.cookies if c.name.endswith("bff-session")}
    assert http.get(served.url + READ).status_code == 200  # the My Account token is in the session
    slow = [socket.create_connection(("127.0.0.1", served.bff.port), timeout=5) for _ in range(150)]
    try:
        for sock in slow:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: ")
        time.sleep(0.5)  # accepted and parked, each waiting for the rest of its header

        started = time.perf_counter()
        health = requests.get(served.url + "/healthz", timeout=5)
        health_seconds = time.perf_counter() - started
        started = time.perf_counter()
        proxied = requests.get(served.url + READ, cookies=cookies, headers={"X-CSRF": "1"}, timeout=5)
        proxied_seconds = time.perf_counter() - started

        assert health.status_code == 200 and proxied.status_code == 200
        assert health_seconds < 1.0 and proxied_seconds < 1.0
        for sock in slow:  # all still open, none answered
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)

        # The server's deadline for a request header (gunicorn's keep-alive, 5 s) closes them.
        deadline = time.monotonic() + 15
        open_ = list(slow)
        while open_ and time.monotonic() < deadline:
            still = []
            for sock in open_:
                try:
                    if sock.recv(1):
                        raise AssertionError("a half-sent request was answered")
                except BlockingIOError:
                    still.append(sock)
                except ConnectionResetError:
                    pass
            open_ = still
            time.sleep(0.1)
        assert not open_, f"{len(open_)} slow connections still open after 15 s"
    finally:
        for sock in slow:
            sock.close()
    print(f"\n150 slow connections open: /healthz {health_seconds * 1000:.1f} ms, "
          f"proxied call {proxied_seconds * 1000:.1f} ms")


def test_bff_serve_gives_the_proxy_the_raw_request_target(serve: t.Callable[..., Served]) -> None:
    served = serve()
    cookie = session_cookie(served.logged_in())
    headers = [("X-CSRF", "1"), ("Cookie", cookie)]
    status, _ = send(served.bff.port, b"/me/v1/authentication-methods/passkey%7Cnew", headers)
    assert status == 200
    assert served.upstream.seen[-1].raw_target == "/me/v1/authentication-methods/passkey%7Cnew"
    before = len(served.upstream.seen)
    status, _ = send(served.bff.port, b"/me/v1/authentication-methods/..%2Ffactors", headers)
    assert status == 400 and len(served.upstream.seen) == before


def login_starts(
    port: int, forwarded_for: t.Sequence[str], *, source: str = "127.0.0.1", ca: pathlib.Path | None = None
) -> list[int]:
    """The status of ``GET /bff/login`` from ``source`` with each ``X-Forwarded-For`` value in turn (asking
    for JSON, so that a refusal is the 429 problem rather than a navigation back with an error)."""
    return [send(port, b"/bff/login", [("X-Forwarded-For", hops), ("Accept", "application/json")],
                 source=source, ca=ca)[0]
            for hops in forwarded_for]


# With BFF_RATE_LIMIT_LOGIN at 2/day, the third login start of one client address is refused: the limits
# show which address the BFF took for the client. (Per day: a fixed window's boundary is midnight.)
TWO_LOGINS = {"BFF_RATE_LIMIT_LOGIN": "2/day"}


def test_bff_serve_takes_forwarded_headers_from_trusted_proxies_only(serve: t.Callable[..., Served]) -> None:
    served = serve(BFF_TRUSTED_PROXIES="127.0.0.1", **TWO_LOGINS)
    port = served.bff.port
    # From the trusted proxy, the client is the hop it appended; a forged left-most hop changes nothing.
    forged = [f"203.0.113.{i}, 198.51.100.7" for i in range(3)]
    assert login_starts(port, forged) == [302, 302, 429]
    assert login_starts(port, ["198.51.100.8"]) == [302]  # another client, its own count
    # From anyone else the headers count for nothing: the peer is the client, whatever it claims.
    assert login_starts(port, [f"198.51.100.{i}" for i in range(10, 13)], source="127.0.0.2") == [302, 302, 429]

    # gunicorn takes the scheme from the same list: two different values from the trusted peer are a 400,
    # from anyone else they are ignored.
    mixed = [("X-Forwarded-Proto", "https"), ("X-Forwarded-Proto", "http")]
    assert send(port, b"/healthz", mixed)[0] == 400
    assert send(port, b"/healthz", mixed, source="127.0.0.2")[0] == 200


def test_bff_serve_trusts_no_peer_not_even_loopback_without_trusted_proxies(serve: t.Callable[..., Served]) -> None:
    served = serve(**TWO_LOGINS)
    port = served.bff.port
    assert login_starts(port, [f"198.51.100.{i}" for i in range(3)]) == [302, 302, 429]
    # gunicorn's own default (forwarded_allow_ips 127.0.0.1) would take these from loopback: a 400.
    mixed = [("X-Forwarded-Proto", "https"), ("X-Forwarded-Proto", "http")]
    assert send(port, b"/healthz", mixed)[0] == 200


# --- nginx ----------------------------------------------------------------------------------------


def test_nginx_accepts_the_deploy_configuration(certificate: ServerCertificate) -> None:
    nginx = NginxProcess([f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"], certificate)
    try:
        checked = nginx.check()
    finally:
        nginx.destroy()
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr
    print(f"\n{nginx_version(nginx.binary)}: nginx -t passes")


class Stub:
    """An upstream that answers every request with ``status`` and keeps each request's method and id."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.seen: list[tuple[str, str]] = []
        self._server = ThreadedServer()
        self._server.serve(self._app)
        self.address = f"127.0.0.1:{self._server.port}"

    def _app(self, environ: dict[str, t.Any], start_response: t.Callable[..., t.Any]) -> list[bytes]:
        self.seen.append((environ["REQUEST_METHOD"], environ.get("HTTP_X_TEST_ID", "")))
        start_response(f"{self.status} X", [("Content-Type", "text/plain")])
        return [str(self.status).encode()]

    def ids(self, method: str) -> set[str]:
        return {test_id for seen_method, test_id in self.seen if seen_method == method}

    def stop(self) -> None:
        self._server.stop()


@pytest.fixture
def stubs() -> t.Iterator[t.Callable[[int], Stub]]:
    started: list[Stub] = []

    def start(status: int) -> Stub:
        started.append(Stub(status))
        return started[-1]

    yield start
    for stub in started:
        stub.stop()


@contextlib.contextmanager
def running_nginx(upstreams: t.Sequence[str], certificate: ServerCertificate) -> t.Iterator[NginxProcess]:
    nginx = NginxProcess(upstreams, certificate)
    try:
        yield nginx.start()
    finally:
        nginx.destroy()


def test_nginx_sends_an_idempotent_request_that_failed_on_one_instance_to_the_other(
    certificate: ServerCertificate, stubs: t.Callable[[int], Stub],
) -> None:
    going, staying = stubs(503), stubs(200)
    with running_nginx([going.address, staying.address], certificate) as nginx:
        http = nginx.session()
        statuses = [http.get(nginx.url + "/bff/user", headers={"X-Test-Id": str(i)}).status_code for i in range(4)]
    assert statuses == [200] * 4
    assert going.ids("GET"), "no GET reached the failing instance"
    assert going.ids("GET") <= staying.ids("GET")  # each was answered by the other instance


def test_nginx_never_repeats_a_post_that_reached_an_instance(
    certificate: ServerCertificate, stubs: t.Callable[[int], Stub],
) -> None:
    going, staying = stubs(503), stubs(200)
    with running_nginx([going.address, staying.address], certificate) as nginx:
        http = nginx.session()
        statuses = [
            http.post(nginx.url + "/bff/logout", data=b"{}", headers={"X-Test-Id": str(i)}).status_code
            for i in range(3)
        ]
    assert 503 in statuses  # the first choice is the first instance: its answer came back as it was
    assert statuses.count(503) == len(going.ids("POST"))
    assert not going.ids("POST") & staying.ids("POST")  # no POST reached both
    assert len(going.ids("POST") | staying.ids("POST")) == 3


def test_nginx_sends_a_post_that_was_refused_a_connection_to_the_other_instance(
    certificate: ServerCertificate, stubs: t.Callable[[int], Stub],
) -> None:
    staying = stubs(200)
    gone = f"127.0.0.1:{free_port()}"  # nothing listens: the request never left nginx
    with running_nginx([gone, staying.address], certificate) as nginx:
        http = nginx.session()
        statuses = [
            http.post(nginx.url + "/bff/logout", data=b"{}", headers={"X-Test-Id": str(i)}).status_code
            for i in range(3)
        ]
        retried = [line for line in nginx.access_lines() if f"upstream={gone}, {staying.address}" in line]
    assert statuses == [200] * 3 and staying.ids("POST") == {"0", "1", "2"}
    assert retried


# --- The topology: nginx in front of two BFF instances sharing Redis -------------------------------


WORKERS = ["--workers", "2"]  # as deployed


@dataclasses.dataclass
class Edge:
    nginx: NginxProcess
    bffs: list[BffProcess]
    env: dict[str, str]
    logs: pathlib.Path
    upstream: RecordingUpstream | None

    def logged_in(self) -> requests.Session:
        http = bff_session(self.nginx.url)
        http.verify = str(self.nginx.ca)
        response = login(http, self.nginx.url)
        assert response.status_code == 302, response.text
        return http

    def restart(self, index: int) -> tuple[int, float]:
        """SIGTERM instance ``index``, wait for its exit, start it again; its exit code and stop time."""
        old = self.bffs[index]
        started = time.monotonic()
        code = old.terminate()
        stopped = time.monotonic() - started
        log = self.logs / f"bff-{old.port}-{time.monotonic_ns()}.log"
        self.bffs[index] = BffProcess(old.port, self.env, log=log, args=WORKERS)
        return code, stopped

    def wait_until_serving(self, index: int, *, since: int) -> None:
        """Until nginx has had a 200 from instance ``index`` (alone) after log offset ``since``."""
        port = self.bffs[index].port
        self.nginx.wait_for_line(rf" 200 .*upstream=127\.0\.0\.1:{port} upstream_status=200 ", since=since, timeout=20)


@pytest.fixture
def make_edge(
    redis_url: str, tmp_path: pathlib.Path, certificate: ServerCertificate,
) -> t.Iterator[t.Callable[..., Edge]]:
    from bff.emulator import EmulatorConfig, EmulatorServer

    started: list[t.Any] = []
    edges: list[Edge] = []

    def build(*, recording: bool = False, **changes: str) -> Edge:
        ports = [free_port(), free_port()]
        nginx = NginxProcess([f"127.0.0.1:{port}" for port in ports], certificate)
        started.append(nginx)
        emulator = EmulatorServer(EmulatorConfig(CLIENT_ID, CLIENT_SECRET, nginx.url)).start()
        started.append(emulator)
        upstream = RecordingUpstream() if recording else None
        changes = {"BFF_TRUSTED_PROXIES": "127.0.0.1", **changes}
        if upstream is not None:
            started.append(upstream)
            changes["BFF_MY_ACCOUNT_URL"] = upstream.url + "/me/v1"
        env = bff_env(emulator.url, nginx.url, redis_url, **changes)
        edges.append(Edge(nginx, [], env, tmp_path, upstream))
        for port in ports:  # the edge's list, so that instances it restarts are stopped too
            edges[-1].bffs.append(BffProcess(port, env, log=tmp_path / f"bff-{port}.log", args=WORKERS))
        nginx.start()
        return edges[-1]

    yield build
    for edge in edges:
        for bff in edge.bffs:
            bff.stop()
    for thing in reversed(started):
        if isinstance(thing, NginxProcess):
            thing.destroy()
        else:
            thing.stop()


def test_behind_nginx_the_bff_judges_the_raw_target_and_sees_the_client_not_a_spoofed_hop(
    make_edge: t.Callable[..., Edge],
) -> None:
    edge = make_edge(recording=True, **TWO_LOGINS)
    assert edge.upstream is not None
    http = edge.logged_in()
    headers = [("X-CSRF", "1"), ("Cookie", session_cookie(http))]
    port, ca = edge.nginx.https_port, edge.nginx.ca

    # Decoded and normalised, this would be /me/v1/factors, which the allowlist allows.
    status, _ = send(port, b"/me/v1/authentication-methods/..%2Ffactors", headers, ca=ca)
    assert status == 400 and edge.upstream.seen == []
    status, _ = send(port, b"/me/v1/authentication-methods/passkey%7Cnew", headers, ca=ca)
    assert status == 200
    assert edge.upstream.seen[-1].raw_target == "/me/v1/authentication-methods/passkey%7Cnew"

    # From 127.0.0.2 with forged hops: nginx appends the address it saw, and the BFF trusts nginx alone, so
    # the forged hops count for nothing (the login rate limit counts 127.0.0.2: the third start is refused).
    forged = [f"203.0.113.{i}" for i in range(3)]
    assert login_starts(port, forged, source="127.0.0.2", ca=ca) == [302, 302, 429]
    assert login_starts(port, forged[:1], ca=ca) == [302]  # 127.0.0.1 has its own count (one login so far)

    # And the SPA, with its fallback for client-side routes.
    page = edge.nginx.session().get(edge.nginx.url + "/settings/security")
    assert page.status_code == 200 and "<title>spa</title>" in page.text


class Load:
    """Logged-in sessions calling the My Account proxy through nginx without pause, each in a thread."""

    def __init__(self, url: str, sessions: list[requests.Session]) -> None:
        self.url = url
        self.outcomes: list[int | str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(http,), daemon=True) for http in sessions]

    def _run(self, http: requests.Session) -> None:
        while not self._stop.is_set():
            try:
                outcome: int | str = http.get(self.url + READ, timeout=30).status_code
            except requests.RequestException as error:
                outcome = type(error).__name__
            self.outcomes.append(outcome)
            time.sleep(0.005)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    @property
    def failures(self) -> list[int | str]:
        return [outcome for outcome in self.outcomes if outcome != 200]


@pytest.mark.slow
def test_restarting_each_instance_in_turn_behind_nginx_fails_no_request(make_edge: t.Callable[..., Edge]) -> None:
    edge = make_edge()
    sessions = [edge.logged_in() for _ in range(4)]
    for http in sessions:  # each session's My Account token, before the clock starts
        assert http.get(edge.nginx.url + READ).status_code == 200
    restarts = []
    with Load(edge.nginx.url, sessions) as load:
        since = edge.nginx.log_size()
        edge.wait_until_serving(0, since=since)
        edge.wait_until_serving(1, since=since)
        for index in (0, 1):
            code, stopped = edge.restart(index)
            restarts.append((code, stopped))
            edge.wait_until_serving(index, since=edge.nginx.log_size())
        time.sleep(1.0)
    retried = [line for line in edge.nginx.access_lines() if READ in line and "upstream=127.0.0.1:" in line
               and ", 127.0.0.1:" in line]
    print(f"\nrolling restart behind {nginx_version(edge.nginx.binary)}: {len(load.outcomes)} requests, "
          f"{len(load.failures)} failed, {len(retried)} sent on to the other instance by nginx; exit codes "
          f"{[code for code, _ in restarts]}, stopped after {', '.join(f'{sec:.2f}s' for _, sec in restarts)}")
    assert [code for code, _ in restarts] == [0, 0]
    assert load.failures == []
    assert len(load.outcomes) > 200
