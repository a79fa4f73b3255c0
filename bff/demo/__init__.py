"""``bff demo``: the emulator, the BFF and the demo SPA on loopback, with an embedded store.

Nothing but the installed package is needed: no Redis, no Auth0 tenant. The BFF's origin is
``http://localhost:PORT`` (a valid WebAuthn relying-party id, so passkeys work in a browser).
"""

from __future__ import annotations

import json
import secrets
import sys
import tempfile
import typing as t
from importlib import resources

from werkzeug.serving import WSGIRequestHandler, make_server

__all__ = [
    "DEMO_CONFIG_PATH",
    "PathOnlyLogHandler",
    "demo_content_security_policy",
    "demo_static_dir",
    "run_demo",
    "with_demo_config",
]

#: Where the demo SPA reads what it needs to know about the demo (the emulator's inbox).
DEMO_CONFIG_PATH = "/demo-config.json"


class PathOnlyLogHandler(WSGIRequestHandler):
    """Log method, path and status only: query strings carry login codes and states."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = self.path.split("?", 1)[0]
        self.log("info", '"%s %s" %s %s', self.command, path, code, size)


def demo_static_dir() -> str:
    return str(resources.files("bff.demo") / "static")


def demo_content_security_policy(emulator_url: str) -> str:
    """The SPA's default policy, with the emulator's origin added to ``img-src``: the emulator serves the
    avatars of the ``picture`` claim itself, over plain http on loopback by default, which the default's
    ``https:`` does not allow."""
    from ..spa import SPA_CONTENT_SECURITY_POLICY

    origin = emulator_url.rstrip("/")
    directives = [directive.strip() for directive in SPA_CONTENT_SECURITY_POLICY.split(";")]
    return "; ".join(f"{d} {origin}" if d.startswith("img-src ") else d for d in directives)


def with_demo_config(wsgi_app: t.Any, emulator_url: str) -> t.Any:
    """``wsgi_app`` plus ``GET /demo-config.json``: ``{"inbox_url": ...}``, the emulator's page of one-time
    codes, so the SPA can link it from an email or phone enrollment (same origin: the CSP is untouched)."""
    body = json.dumps({"inbox_url": emulator_url.rstrip("/") + "/inbox"}).encode()

    def app(environ: dict[str, t.Any], start_response: t.Any) -> t.Any:
        if environ.get("PATH_INFO") == DEMO_CONFIG_PATH and environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
            start_response(
                "200 OK",
                [
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(body))),
                    ("Cache-Control", "no-store"),
                    ("X-Content-Type-Options", "nosniff"),
                ],
            )
            return [body]
        return wsgi_app(environ, start_response)

    return app


def run_demo(*, host: str = "127.0.0.1", port: int = 8000, emulator_port: int = 0) -> None:
    from ..app import create_app
    from ..emulator import EmulatorConfig, EmulatorServer
    from ..settings import Settings

    base_url = f"http://localhost:{port}" if host in ("127.0.0.1", "localhost") else f"http://{host}:{port}"
    client_id = "bff-demo"
    client_secret = secrets.token_urlsafe(32)
    config = EmulatorConfig(client_id, client_secret, base_url, show_demo_credentials=True)
    emulator = EmulatorServer(config, port=emulator_port)
    emulator.start()
    workdir = tempfile.mkdtemp(prefix="bff-demo-")
    settings = Settings(
        issuer_url=emulator.url + "/",
        client_id=client_id,
        client_secret=client_secret,
        base_url=base_url,
        secret_keys=(secrets.token_urlsafe(48),),
        session_store=f"sqlite:///{workdir}/sessions.db",
        static_dir=demo_static_dir(),
        content_security_policy=demo_content_security_policy(emulator.url),
    )
    app = create_app(settings)
    app.wsgi_app = with_demo_config(app.wsgi_app, emulator.url)  # type: ignore[method-assign]
    try:
        server = make_server(host, port, app, threaded=True, request_handler=PathOnlyLogHandler)
    except OSError as error:
        emulator.stop()
        print(f"bff demo: cannot listen on {host}:{port} ({error.strerror}); try --port", file=sys.stderr)
        raise SystemExit(1) from error
    print(f"bff demo: open {base_url}/", flush=True)
    print("          log in as alice@example.com / alice", flush=True)
    print(f"          (Auth0 emulator at {emulator.url}; Ctrl+C stops both)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        emulator.stop()
