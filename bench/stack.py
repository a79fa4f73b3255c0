"""The processes a benchmark run needs, each on a free loopback port, each stopped on exit.

* :class:`RedisProcess` — a private ``redis-server`` (never the machine's own), no persistence.
* :class:`NginxProcess` — the upstream stub (``return 200`` with a small JSON body) and a plain
  reverse proxy in front of it, from a generated configuration in a temporary directory.
* :class:`FrontProcess` — nginx in front of a BFF as deployed: one port as ``deploy/nginx.conf``
  (the BFF makes every call), one with the offload of ``deploy/nginx-offload.conf`` (the BFF authorizes a
  read, nginx makes it), the latter's locations taken from that file.
* :class:`PythonStub` — the stub's fallback when nginx is not installed: a small keep-alive
  HTTP/1.1 server in its own process.
* :class:`BffProcess` — ``bff serve`` (gunicorn, gevent workers by default) pointed at the stub.
* :class:`ApacheProcess` — Apache httpd 2.4 with mod_auth_openidc: an OpenID Connect relying party
  (code flow, sessions in the private Redis) that proxies to the stub with the session's access token.

Every process is started by this module and stopped by its own id: terminate, wait, then kill.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import typing as t
from pathlib import Path
from urllib.parse import quote

import redis
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = [
    "APACHE_SESSION_COOKIE",
    "ECHO_PATH",
    "FACTORS_BODY",
    "OFFLOAD_SECRET",
    "STUB_PATH",
    "ApacheProcess",
    "BffProcess",
    "FrontProcess",
    "GunicornProcess",
    "NginxProcess",
    "PythonStub",
    "RedisProcess",
    "ReferenceProcess",
    "apache_available",
    "free_port",
    "self_signed_certificate",
    "wait_for_http",
]

#: What the stub answers for ``GET /me/v1/factors``: the shape of the My Account API's answer.
FACTORS_BODY = (
    '{"factors":[{"type":"passkey","usage":["primary"]},{"type":"totp","usage":["secondary"]},'
    '{"type":"email","usage":["secondary"]},{"type":"recovery-code","usage":["secondary"]}]}'
)
STUB_PATH = "/me/v1/factors"
#: A check location of the stub: it answers with the ``Authorization`` header it received (used once,
#: to see that a proxy sends the session's bearer token upstream; never under load).
ECHO_PATH = "/me/v1/_bench/authorization"
#: What the front nginx proves itself to the offloading BFF with (BFF_OFFLOAD_SECRET); loopback only.
OFFLOAD_SECRET = "bff-bench-offload-secret-0123456789-abcdefghijklmnop"  # noqa: S105
OFFLOAD_CONF = Path(__file__).resolve().parent.parent / "deploy" / "nginx-offload.conf"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_http(url: str, *, timeout: float = 20.0, process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``url`` until it answers at all (any status), the process dies, or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with code {process.returncode} before answering")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException as error:
            last = error
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s ({last})")


def stop_process(process: subprocess.Popen[bytes] | None, *, grace: float = 10.0) -> None:
    """Terminate a process this module started (its own process group), then kill it if it lingers."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
        return
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the group was created for this process alone
    except (ProcessLookupError, PermissionError):
        process.kill()
    process.wait(timeout=5)


def _stat(pid: str) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) of a process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its direct children (gunicorn's master and workers)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _stat(entry)
        if stat is not None and (int(entry) == pid or stat[0] == pid):
            total += stat[1]
    return total


def _spawn(argv: list[str], *, log: Path, env: t.Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class RedisProcess:
    """A private redis-server on a free loopback port: no persistence, no protected-mode surprises."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
        self.binary = binary
        self.port = free_port()
        self.dir = workdir / "redis"
        self.dir.mkdir()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> RedisProcess:
        self.process = _spawn(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--protected-mode", "yes"],
            log=self.dir / "redis.log",
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("redis-server exited at start:\n" + _tail(self.dir / "redis.log"))
            try:
                if self.client().ping():
                    return self
            except redis.RedisError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start within 10 s")

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None


class NginxProcess:
    """nginx in the foreground with a generated configuration: the stub and a reverse proxy to it."""

    def __init__(self, workdir: Path, *, workers: int = 1) -> None:
        binary = shutil.which("nginx") or next(
            (path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(path, os.X_OK)), None
        )
        if binary is None:
            raise FileNotFoundError("nginx")
        self.binary = binary
        self.dir = workdir / "nginx"
        self.dir.mkdir()
        self.stub_port = free_port()
        self.proxy_port = free_port()
        self.workers = workers
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def stub_url(self) -> str:
        return f"http://127.0.0.1:{self.stub_port}"

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    def config(self) -> str:
        d = self.dir
        user = "user root root;" if os.geteuid() == 0 else ""
        body = FACTORS_BODY.replace("'", "\\'")
        return textwrap.dedent(f"""\
            {user}
            worker_processes {self.workers};
            daemon off;
            master_process on;
            pid {d}/nginx.pid;
            error_log {d}/error.log warn;
            events {{ worker_connections 4096; }}
            http {{
                access_log off;
                client_body_temp_path {d}/body;
                proxy_temp_path {d}/proxy;
                fastcgi_temp_path {d}/fastcgi;
                uwsgi_temp_path {d}/uwsgi;
                scgi_temp_path {d}/scgi;
                keepalive_requests 1000000;
                keepalive_timeout 60s;
                upstream stub {{
                    server 127.0.0.1:{self.stub_port};
                    keepalive 64;
                }}
                server {{
                    listen 127.0.0.1:{self.stub_port};
                    location = {STUB_PATH} {{
                        default_type application/json;
                        return 200 '{body}';
                    }}
                    location = {ECHO_PATH} {{
                        default_type text/plain;
                        return 200 '$http_authorization';
                    }}
                    location = /nginx-status {{ stub_status; }}
                    location / {{ return 404; }}
                }}
                server {{
                    listen 127.0.0.1:{self.proxy_port};
                    location /me/ {{
                        proxy_pass http://stub;
                        proxy_http_version 1.1;
                        proxy_set_header Connection "";
                        proxy_set_header Cookie "";
                        proxy_buffering on;
                    }}
                }}
            }}
            """)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the master and its worker (which serves both servers)."""
        return 0.0 if self.process is None else process_tree_cpu(self.process.pid)

    def problems(self) -> int:
        """Error-level lines in nginx's error log."""
        try:
            text = (self.dir / "error.log").read_text(errors="replace")
        except OSError:
            return 0
        return sum(text.count(level) for level in ("[error]", "[crit]", "[alert]", "[emerg]"))

    def requests_served(self) -> int:
        """nginx's count of requests handled so far (all servers), this status request included."""
        text = requests.get(self.stub_url + "/nginx-status", timeout=5).text
        return int(text.splitlines()[2].split()[2])

    def start(self) -> NginxProcess:
        conf = self.dir / "nginx.conf"
        conf.write_text(self.config())
        argv = [self.binary, "-p", str(self.dir), "-c", str(conf)]
        self.process = _spawn(argv, log=self.dir / "stdout.log")
        try:
            wait_for_http(self.stub_url + STUB_PATH, timeout=10, process=self.process)
            wait_for_http(self.proxy_url + STUB_PATH, timeout=10, process=self.process)
        except RuntimeError as error:
            detail = _tail(self.dir / "error.log") or _tail(self.dir / "stdout.log")
            raise RuntimeError(f"{error}\n{detail}") from error
        return self

    def stop(self) -> None:
        # SIGTERM is nginx's fast shutdown; the workers go with the master.
        stop_process(self.process)
        self.process = None


def _between(text: str, start: str, end: str) -> str:
    """The part of ``text`` from the line holding ``start`` up to (not including) the line holding ``end``."""
    first = text.find(start)
    last = text.find(end, first)
    if first < 0 or last < 0:
        raise RuntimeError(f"{OFFLOAD_CONF.name} no longer has {start!r} ... {end!r}")
    return text[text.rfind("\n", 0, first) + 1:text.rfind("\n", 0, last) + 1]


def offload_parts(api: str, public: str) -> tuple[str, str]:
    """deploy/nginx-offload.conf's Location map and its offload locations (the internal one and the named
    ones), for a plain-http My Account API at ``api`` (``host:port``) and the public origin ``public``.

    Only what plain http to the API removes is changed (the ``proxy_ssl_*`` lines); everything nginx does
    per call (the headers it sets, hides and adds, the error pages) is the deploy file's.
    """
    text = OFFLOAD_CONF.read_text()
    location_map = _between(text, "map $upstream_http_location $bff_offload_location {", "    server {")
    locations = _between(text, "location = /_offload/my-account {", "# The SPA:")
    location_map = location_map.replace("https://tenant\\.us\\.auth0\\.com", "http://" + api.replace(".", "\\."))
    location_map = location_map.replace("https://app.example.com", public)
    locations = "\n".join(line for line in locations.splitlines() if "proxy_ssl_" not in line)
    locations = locations.replace("https://my_account", "http://my_account").replace("tenant.us.auth0.com", api)
    for name in ("tenant.us.auth0.com", "tenant\\.us\\.auth0\\.com", "app.example.com", "https://"):
        if name in location_map + locations:
            raise RuntimeError(f"{OFFLOAD_CONF.name}: {name} is left where the benchmark does not expect it")
    return location_map, locations


class FrontProcess:
    """nginx in front of one BFF, as deployed, on two ports (plain http, keep-alive on both sides).

    :attr:`plain_url`: ``/me/`` proxied to the BFF, which makes every call (deploy/nginx.conf).
    :attr:`offload_url`: the same with ``X-Bff-Offload`` set (deploy/nginx-offload.conf): the BFF, started
    with ``BFF_OFFLOAD=nginx`` and :data:`OFFLOAD_SECRET`, hands each read back, and nginx calls the stub.
    """

    def __init__(self, workdir: Path, *, bff_port: int, stub_port: int, workers: int = 1) -> None:
        binary = shutil.which("nginx") or next(
            (path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(path, os.X_OK)), None
        )
        if binary is None:
            raise FileNotFoundError("nginx")
        self.binary = binary
        self.dir = workdir / "front"
        self.dir.mkdir()
        self.bff_port = bff_port
        self.stub_port = stub_port
        self.plain_port = free_port()
        self.offload_port = free_port()
        self.workers = workers
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def plain_url(self) -> str:
        return f"http://127.0.0.1:{self.plain_port}"

    @property
    def offload_url(self) -> str:
        return f"http://127.0.0.1:{self.offload_port}"

    def config(self) -> str:
        d = self.dir
        user = "user root root;" if os.geteuid() == 0 else ""
        location_map, locations = offload_parts(f"127.0.0.1:{self.stub_port}", self.offload_url)
        return textwrap.dedent(f"""\
            {user}
            worker_processes {self.workers};
            daemon off;
            master_process on;
            pid {d}/nginx.pid;
            error_log {d}/error.log warn;
            events {{ worker_connections 4096; }}
            http {{
                access_log off;
                client_body_temp_path {d}/body;
                proxy_temp_path {d}/proxy;
                fastcgi_temp_path {d}/fastcgi;
                uwsgi_temp_path {d}/uwsgi;
                scgi_temp_path {d}/scgi;
                keepalive_requests 1000000;
                keepalive_timeout 60s;
                map "" $bff_offload_secret {{ default "{OFFLOAD_SECRET}"; }}
                upstream bff {{
                    server 127.0.0.1:{self.bff_port};
                    keepalive 32;
                    keepalive_timeout 4s;
                }}
                upstream my_account {{
                    server 127.0.0.1:{self.stub_port};
                    keepalive 16;
                }}
            """) + location_map + textwrap.dedent(f"""\
                server {{
                    listen 127.0.0.1:{self.plain_port};
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                    proxy_set_header Host $host;
                    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
                    proxy_set_header X-Forwarded-Proto $scheme;
                    proxy_set_header X-Request-Id $request_id;
                    proxy_set_header X-Bff-Offload "";
                    location /me/ {{ proxy_pass http://bff; }}
                    location / {{ return 404; }}
                }}
                server {{
                    listen 127.0.0.1:{self.offload_port};
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                    proxy_set_header Host $host;
                    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
                    proxy_set_header X-Forwarded-Proto $scheme;
                    proxy_set_header X-Request-Id $request_id;
                    proxy_set_header X-Bff-Offload $bff_offload_secret;
                    proxy_set_header X-Bff-Offload-Fallback "";
                    location /me/ {{
                        proxy_pass http://bff;
                        proxy_hide_header X-Bff-Upstream-Target;
                        proxy_hide_header X-Bff-Upstream-Authorization;
                        proxy_hide_header X-Bff-Upstream-Dpop;
                    }}
                    location / {{ return 404; }}
            """) + locations + "    }\n}\n"

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the master and its worker."""
        return 0.0 if self.process is None else process_tree_cpu(self.process.pid)

    def problems(self) -> int:
        """Error-level lines in nginx's error log."""
        try:
            text = (self.dir / "error.log").read_text(errors="replace")
        except OSError:
            return 0
        return sum(text.count(level) for level in ("[error]", "[crit]", "[alert]", "[emerg]"))

    def start(self) -> FrontProcess:
        conf = self.dir / "nginx.conf"
        conf.write_text(self.config())
        self.process = _spawn([self.binary, "-p", str(self.dir), "-c", str(conf)], log=self.dir / "stdout.log")
        try:
            wait_for_http(self.plain_url + "/", timeout=10, process=self.process)
            wait_for_http(self.offload_url + "/", timeout=10, process=self.process)
        except RuntimeError as error:
            detail = _tail(self.dir / "error.log") or _tail(self.dir / "stdout.log")
            raise RuntimeError(f"{error}\n{detail}") from error
        return self

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None


_PYTHON_STUB = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = sys.argv[2].encode()
PATH = sys.argv[3]
ECHO = sys.argv[4]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == PATH:
            status, body = 200, BODY
        elif path == ECHO:
            status, body = 200, self.headers.get("Authorization", "").encode("latin-1")
        else:
            status, body = 404, b'{"error":"not found"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
server.daemon_threads = True
server.serve_forever()
"""


class PythonStub:
    """The upstream stub when nginx is missing: keep-alive HTTP/1.1 from the standard library."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "stub"
        self.dir.mkdir()
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def stub_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PythonStub:
        self.process = _spawn(
            [sys.executable, "-c", _PYTHON_STUB, str(self.port), FACTORS_BODY, STUB_PATH, ECHO_PATH],
            log=self.dir / "stub.log",
        )
        wait_for_http(self.stub_url + STUB_PATH, timeout=10, process=self.process)
        return self

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None


#: Where Debian's apache2 packages put the binary and the loadable modules.
APACHE_MODULES = Path("/usr/lib/apache2/modules")
#: The session cookie mod_auth_openidc sets (its default name).
APACHE_SESSION_COOKIE = "mod_auth_openidc_session"


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A throw-away certificate and key for ``127.0.0.1`` (PEM files in ``directory``), valid for a day.

    For the emulator that Apache's relying party talks to: mod_auth_openidc takes provider endpoints
    written in its configuration only as https URLs.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = directory / "tls.crt", directory / "tls.key"
    certfile.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    keyfile.chmod(0o600)
    return certfile, keyfile


def _apache_binary() -> str | None:
    return shutil.which("apache2") or next(
        (path for path in ("/usr/sbin/apache2", "/usr/sbin/httpd") if os.access(path, os.X_OK)), None
    )


def apache_available() -> bool:
    """Whether Apache httpd and mod_auth_openidc (built with Redis support) are installed."""
    return _apache_binary() is not None and (APACHE_MODULES / "mod_auth_openidc.so").exists()


class ApacheProcess:
    """Apache httpd 2.4 with mod_auth_openidc, a private instance: the same job as the BFF's proxy path.

    An OpenID Connect relying party (code flow with PKCE, confidential client) against the emulator;
    its sessions live in the benchmark's private Redis (``OIDCCacheType redis``, server-side sessions,
    encrypted by the module); ``/me/`` is protected (``AuthType openid-connect``) and proxied to the
    stub with ``Authorization: Bearer`` set from the session's access token and the browser's cookies
    removed. Its own ServerRoot, configuration, pid file and error log live in a temporary directory;
    it runs in the foreground (``apache2 -f <conf> -DFOREGROUND``), never as the system's service.

    The redirect URI is ``<url>/bff/callback``: the emulator's one client accepts ``<base>/bff/callback``,
    so an emulator configured with this server's URL as its base URL serves it. ``static_provider``
    writes the provider's endpoints into the configuration (the module takes them only as https
    URLs, so the issuer must be served over https) instead of ``OIDCProviderMetadataURL``.
    """

    redirect_path = "/bff/callback"

    def __init__(
        self,
        workdir: Path,
        *,
        stub_url: str,
        issuer: str,
        audience: str,
        client_id: str,
        client_secret: str,
        redis_port: int,
        port: int | None = None,
        processes: int = 2,
        threads: int = 32,
        static_provider: bool = True,
    ) -> None:
        binary = _apache_binary()
        if binary is None or not apache_available():
            raise FileNotFoundError("apache2 with mod_auth_openidc")
        self.binary = binary
        self.dir = workdir / "apache"
        self.dir.mkdir()
        self.port = port or free_port()
        self.stub_url = stub_url
        self.issuer = issuer
        self.audience = audience
        self.client_id = client_id
        self.client_secret = client_secret
        self.redis_port = redis_port
        self.processes = processes
        self.threads = threads
        self.static_provider = static_provider
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.dir / "error.log"

    def config(self) -> str:
        d, mods = self.dir, APACHE_MODULES
        user = ""
        if os.geteuid() == 0:
            # Apache refuses to serve as root: the children switch to an unprivileged user.
            account = "www-data" if _user_exists("www-data") else "nobody"
            group = "www-data" if account == "www-data" else "nogroup"
            user = f"User {account}\nGroup {group}"
        modules = "\n".join(
            f"LoadModule {name}_module {mods}/mod_{name}.so"
            for name in ("mpm_event", "authn_core", "authz_core", "authz_user", "headers", "proxy", "proxy_http",
                         "auth_openidc")
        )
        workers = self.processes * self.threads
        return textwrap.dedent(f"""\
            ServerRoot "{d}"
            ServerName 127.0.0.1
            Listen 127.0.0.1:{self.port}
            PidFile "{d}/httpd.pid"
            DefaultRuntimeDir "{d}/run"
            ErrorLog "{d}/error.log"
            LogLevel warn
            """) + user + "\n" + modules + "\n" + textwrap.dedent(f"""\
            # event MPM, a fixed pool: {self.processes} processes x {self.threads} threads, never shrunk or grown.
            StartServers {self.processes}
            ServerLimit {self.processes}
            ThreadLimit {self.threads}
            ThreadsPerChild {self.threads}
            MaxRequestWorkers {workers}
            MinSpareThreads {self.threads}
            MaxSpareThreads {workers}
            MaxConnectionsPerChild 0
            KeepAlive On
            MaxKeepAliveRequests 0
            KeepAliveTimeout 60
            Timeout 30
            # No access log (nginx has none either); errors only.

            @PROVIDER@
            OIDCClientID {self.client_id}
            OIDCClientSecret {self.client_secret}
            OIDCProviderTokenEndpointAuth client_secret_basic
            OIDCRedirectURI {self.url}{self.redirect_path}
            OIDCCryptoPassphrase {secrets.token_urlsafe(32)}
            OIDCScope "openid profile email offline_access read:me:factors"
            OIDCAuthRequestParams audience={quote(self.audience, safe="")}
            OIDCPKCEMethod S256
            OIDCCacheType redis
            OIDCRedisCacheServer 127.0.0.1:{self.redis_port}
            OIDCSessionType server-cache
            OIDCSessionInactivityTimeout 28800
            OIDCSessionMaxDuration 604800
            OIDCPassClaimsAs environment
            # The emulator's certificate is a throw-away one on loopback (its children cannot read the
            # root-owned work directory to load it as a CA bundle anyway).
            OIDCSSLValidateServer Off

            <Location {self.redirect_path}>
                AuthType openid-connect
                Require valid-user
            </Location>
            <Location /me/>
                AuthType openid-connect
                Require valid-user
                RequestHeader set Authorization "Bearer %{{OIDC_access_token}}e" env=OIDC_access_token
                RequestHeader unset Cookie
                ProxyPass {self.stub_url}/me/
            </Location>
            """).replace("@PROVIDER@", self.provider())

    def provider(self) -> str:
        """The provider's endpoints, written out: with ``OIDCProviderMetadataURL`` the module reads the
        cached discovery document from the store on every request, a second round trip."""
        if not self.static_provider:
            return f"OIDCProviderMetadataURL {self.issuer}.well-known/openid-configuration"
        issuer = self.issuer
        return "\n".join((
            f"OIDCProviderIssuer {issuer}",
            f"OIDCProviderAuthorizationEndpoint {issuer}authorize",
            f"OIDCProviderTokenEndpoint {issuer}oauth/token",
            f"OIDCProviderUserInfoEndpoint {issuer}userinfo",
            f"OIDCProviderJwksUri {issuer}.well-known/jwks.json",
            f"OIDCProviderEndSessionEndpoint {issuer}oidc/logout",
        ))

    def start(self) -> ApacheProcess:
        (self.dir / "run").mkdir(exist_ok=True)
        conf = self.dir / "httpd.conf"
        conf.write_text(self.config())
        # Not through apache2ctl: no system environment file, no system configuration, no service.
        self.process = _spawn([self.binary, "-f", str(conf), "-DFOREGROUND"], log=self.dir / "stdout.log",
                              env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LANG": "C"})
        try:
            wait_for_http(self.url + "/", timeout=15, process=self.process)
        except RuntimeError as error:
            self.stop()
            detail = _tail(self.log) or _tail(self.dir / "stdout.log")
            raise RuntimeError(f"{error}\n{detail}") from error
        return self

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the parent and its child processes."""
        return 0.0 if self.process is None else process_tree_cpu(self.process.pid)

    def problems(self) -> int:
        """Error-level lines in the error log (mod_auth_openidc logs its failures there)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return 0
        return sum(1 for line in text.splitlines() if ":error]" in line or ":crit]" in line or ":emerg]" in line)

    def stop(self) -> None:
        # SIGTERM: the parent stops its children and exits.
        stop_process(self.process)
        self.process = None


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


class GunicornProcess:
    """A WSGI app under gunicorn (gevent or gthread workers) on a free port, configured through the environment."""

    name = "app"
    health_path = "/"

    def __init__(
        self, workdir: Path, port: int, env: t.Mapping[str, str], *, workers: int, threads: int,
        worker_class: str = "gevent",
    ) -> None:
        self.worker_class = worker_class
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-{workers}x{threads}-", dir=workdir))
        self.port = port
        self.env = dict(env)
        self.workers = workers
        self.threads = threads
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.dir / "server.log"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> t.Self:
        self.process = _spawn(self.argv(), log=self.log, env=self.env)
        try:
            wait_for_http(self.url + self.health_path, timeout=30, process=self.process)
            self._wait_for_workers(timeout=30)
        except RuntimeError as error:
            self.stop()
            raise RuntimeError(f"{error}\n{_tail(self.log)}") from error
        return self

    def _wait_for_workers(self, *, timeout: float) -> None:
        """The master answers as soon as one worker has booted; wait until every worker has."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            booted = self.log.read_text(errors="replace").count("Booting worker")
            if booted >= self.workers:
                return
            time.sleep(0.05)
        raise RuntimeError(f"only some of {self.workers} gunicorn workers booted within {timeout:.0f} s")

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the master and its live workers."""
        if self.process is None:
            return 0.0
        return process_tree_cpu(self.process.pid)

    def problems(self) -> int:
        """Tracebacks, critical lines and worker timeouts in the server's log."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return 0
        return text.count("Traceback") + text.count("[CRITICAL]") + text.count("WORKER TIMEOUT")

    def stop(self) -> None:
        # SIGTERM: gunicorn's graceful stop, bounded by its graceful_timeout; then the kill.
        stop_process(self.process, grace=25.0)
        self.process = None


class BffProcess(GunicornProcess):
    """``bff serve``: the product's own gunicorn setup."""

    name = "bff"
    health_path = "/healthz"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "bff.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--workers", str(self.workers), "--threads", str(self.threads),
                "--worker-class", self.worker_class]


class ReferenceProcess(GunicornProcess):
    """``bench/reference_app.py`` (a bare forwarder) with the same gunicorn settings as ``bff serve``."""

    name = "reference"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "gunicorn", "--chdir", str(Path(__file__).resolve().parent),
                "--worker-class", self.worker_class, "--workers", str(self.workers), "--threads", str(self.threads),
                "--bind", f"127.0.0.1:{self.port}", "--keep-alive", "5", "--timeout", "60",
                "--no-control-socket", "reference_app:app"]


def make_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="bff-bench-"))
