"""nginx (the system's binary, Debian's package) running ``deploy/nginx.conf`` on free loopback ports.

The deploy file runs as written, except for the addresses and paths it names for its containers, which
:func:`render` replaces on directive lines only: the two BFF instances, the two listening ports, the
SPA's directory, the directory of the TLS certificate and key, and the directory for the pid file and
temporary files. Each must be found, so a deploy file that no longer names one fails loudly here rather
than running something else.

With :class:`Offload`, it runs ``deploy/nginx-offload.conf`` instead, which also names the My Account API
(its host, and the CAs its certificate is checked against), the public origin (in its Location map) and
the file of the shared secret: those are replaced too (the API stands on ``127.0.0.1`` with a certificate
for ``localhost``), and the secret file is written.

Each :class:`NginxProcess` has a private directory (``-p``, ``-c``, ``-e``: no root path is used); nginx
runs in the foreground, its access log (stdout) and error log (stderr) going to files there. Started as
root, nginx runs its workers as ``nobody``, so the directory and the SPA's files are world-readable (the
private key is read by the master only).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shutil
import signal
import subprocess
import tempfile
import time
import typing as t

import requests

from tests.support.redis_server import free_port
from tests.support.tls import ServerCertificate

REPO = pathlib.Path(__file__).resolve().parents[2]
DEPLOY_CONF = REPO / "deploy" / "nginx.conf"
OFFLOAD_CONF = REPO / "deploy" / "nginx-offload.conf"
#: The names deploy/nginx-offload.conf gives the My Account API's host and the public origin's.
API_HOST = "tenant.us.auth0.com"
PUBLIC_HOST = "app.example.com"
_START_TIMEOUT = 10.0


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(path, os.X_OK)), None
    )


def nginx_version(binary: str) -> str:
    """``nginx/1.22.1``: what ``nginx -v`` reports."""
    output = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10).stderr
    return output.strip().rpartition(" ")[2]


@dataclasses.dataclass(frozen=True)
class Offload:
    """What ``deploy/nginx-offload.conf`` needs: the My Account API (an https server on ``127.0.0.1:port``
    whose certificate, for ``localhost``, ``ca`` issued) and the secret nginx proves itself with."""

    api_port: int
    ca: pathlib.Path
    secret: str


def render(
    text: str,
    *,
    upstreams: t.Sequence[str],
    http_port: int,
    https_port: int,
    spa_dir: pathlib.Path,
    secrets_dir: pathlib.Path,
    run_dir: pathlib.Path,
    offload: Offload | None = None,
) -> str:
    """A deploy file with its container addresses and paths replaced (comments untouched)."""
    if len(upstreams) != 2:
        raise ValueError("the deploy files name two BFF instances")
    replacements = [
        # First: the paths put in below lie under the system's temporary directory themselves.
        (re.compile(r"(\s)/tmp/"), rf"\g<1>{run_dir}/"),
        (re.compile(r"^(\s*server )bff-1:8000\b"), rf"\g<1>{upstreams[0]}"),
        (re.compile(r"^(\s*server )bff-2:8000\b"), rf"\g<1>{upstreams[1]}"),
        (re.compile(r"^(\s*listen )8443 ssl;"), rf"\g<1>127.0.0.1:{https_port} ssl;"),
        (re.compile(r"^(\s*listen )8080;"), rf"\g<1>127.0.0.1:{http_port};"),
        (re.compile(r"(\s)/srv/spa;"), rf"\g<1>{spa_dir};"),
        (re.compile(r"(\s)/run/secrets/"), rf"\g<1>{secrets_dir}/"),
    ]
    if offload is not None:
        api = f"localhost:{offload.api_port}"
        replacements += [
            (re.compile(rf"^(\s*server ){re.escape(API_HOST)}:443;"), rf"\g<1>127.0.0.1:{offload.api_port};"),
            (re.compile(rf"(\sproxy_ssl_name ){re.escape(API_HOST)};"), r"\g<1>localhost;"),
            (re.compile(rf"(\sproxy_set_header Host ){re.escape(API_HOST)};"), rf"\g<1>{api};"),
            # In the Location map, within a regular expression: "tenant\.us\.auth0\.com".
            (re.compile(re.escape(re.escape(API_HOST))), api),
            (re.compile(re.escape(f"https://{PUBLIC_HOST}/")), f"https://127.0.0.1:{https_port}/"),
            (re.compile(r"(\s)/etc/ssl/certs/ca-certificates\.crt;"), rf"\g<1>{offload.ca};"),
        ]
    used = [0] * len(replacements)
    lines = []
    for line in text.splitlines(keepends=True):
        if not line.lstrip().startswith("#"):
            for index, (pattern, replacement) in enumerate(replacements):
                line, count = pattern.subn(replacement, line)
                used[index] += count
        lines.append(line)
    missing = [pattern.pattern for (pattern, _), count in zip(replacements, used, strict=True) if not count]
    if missing:
        raise AssertionError(f"the deploy file no longer has: {missing}")
    rendered = "".join(lines)
    directives = [line.partition("#")[0] for line in rendered.splitlines()]
    left = [line for line in directives if any(name in line for name in (API_HOST, re.escape(API_HOST), PUBLIC_HOST))]
    if left:
        raise AssertionError(f"the deploy file names the API or the public origin where it is not replaced: {left}")
    return rendered


_TOKEN = re.compile(r"""#[^\n]*|"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|([;{}])|([^\s;{}"'#]+)""")


def directives(text: str) -> list[tuple[tuple[str, ...], list[str]]]:
    """A configuration's directives, each with the blocks it stands in (``("http", "server", "location /me/")``:
    each block's words) and its own words, quotes removed."""
    found: list[tuple[tuple[str, ...], list[str]]] = []
    blocks: list[str] = []
    words: list[str] = []
    for match in _TOKEN.finditer(text):
        double, single, punctuation, word = match.groups()
        if punctuation == ";":
            found.append((tuple(blocks), words))
            words = []
        elif punctuation == "{":
            found.append((tuple(blocks), words))
            blocks.append(" ".join(words))
            words = []
        elif punctuation == "}":
            blocks.pop()
        elif match.group(0).startswith("#"):
            continue
        else:
            words.append(double if double is not None else single if single is not None else word)
    if blocks or words:
        raise ValueError("unbalanced braces or an unterminated directive")
    return found


class NginxProcess:
    """``deploy/nginx.conf`` in front of ``upstreams`` (two ``host:port``), serving ``spa`` (name -> text);
    with ``offload``, ``deploy/nginx-offload.conf``."""

    def __init__(
        self,
        upstreams: t.Sequence[str],
        certificate: ServerCertificate,
        *,
        spa: t.Mapping[str, str] | None = None,
        offload: Offload | None = None,
    ) -> None:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed (the README's test command installs it)")
        self.binary = binary
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="bff-nginx-"))
        self.dir.chmod(0o755)
        self.http_port = free_port()
        self.https_port = free_port()
        self.ca = certificate.ca
        spa_dir = self.dir / "spa"
        spa_dir.mkdir(mode=0o755)
        for name, content in (spa or {"index.html": "<!doctype html><title>spa</title>"}).items():
            (spa_dir / name).write_text(content)
            (spa_dir / name).chmod(0o644)
        secrets_dir = self.dir / "secrets"
        secrets_dir.mkdir(mode=0o700)
        shutil.copyfile(certificate.cert, secrets_dir / "tls_certificate")
        shutil.copyfile(certificate.key, secrets_dir / "tls_key")
        (secrets_dir / "tls_key").chmod(0o600)
        if offload is not None:
            secret = secrets_dir / "bff_offload.conf"
            secret.write_text(f'map "" $bff_offload_secret {{ default "{offload.secret}"; }}\n')
            secret.chmod(0o600)
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(render(
            (DEPLOY_CONF if offload is None else OFFLOAD_CONF).read_text(), upstreams=upstreams,
            http_port=self.http_port, https_port=self.https_port, spa_dir=spa_dir, secrets_dir=secrets_dir,
            run_dir=self.dir, offload=offload,
        ))
        self.access_log = self.dir / "access.log"
        self.error_log = self.dir / "error.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The https origin (BFF_BASE_URL); its certificate is issued by :attr:`ca`."""
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _argv(self, *extra: str) -> list[str]:
        return [self.binary, "-p", f"{self.dir}/", "-c", str(self.conf), "-e", "stderr", *extra]

    def check(self) -> subprocess.CompletedProcess[str]:
        """``nginx -t`` on the rendered file."""
        return subprocess.run(self._argv("-t"), capture_output=True, text=True, timeout=30)

    def start(self) -> NginxProcess:
        with self.access_log.open("ab") as stdout, self.error_log.open("ab") as stderr:
            self.process = subprocess.Popen(
                self._argv("-g", "daemon off;"), stdout=stdout, stderr=stderr, start_new_session=True
            )
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with status {self.process.returncode}:\n{self.error_tail()}")
            try:
                if requests.get(self.http_url + "/nginx-health", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not start:\n{self.error_tail()}")

    def session(self) -> requests.Session:
        """A requests session that trusts this nginx's certificate and ignores proxy variables."""
        http = requests.Session()
        http.trust_env = False
        http.verify = str(self.ca)
        return http

    def log_size(self) -> int:
        return self.access_log.stat().st_size if self.access_log.exists() else 0

    def access_lines(self, since: int = 0) -> list[str]:
        """Access log lines written after byte offset ``since`` (see :meth:`log_size`)."""
        with self.access_log.open("rb") as log:
            log.seek(since)
            return log.read().decode(errors="replace").splitlines()

    def wait_for_line(self, pattern: str, *, since: int = 0, timeout: float = 15.0) -> str:
        """The first access log line after ``since`` that matches ``pattern``; AssertionError after ``timeout``."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.access_lines(since):
                if compiled.search(line):
                    return line
            if time.monotonic() >= deadline:
                raise AssertionError(f"no access log line matching {pattern!r} within {timeout:g}s")
            time.sleep(0.05)

    def error_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.error_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no error log)"

    def stop(self) -> None:
        """SIGTERM (nginx's fast shutdown) to the master, which takes its workers with it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
