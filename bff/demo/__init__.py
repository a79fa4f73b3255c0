"""``bff demo``: the emulator, the BFF and the demo SPA on loopback, with an embedded store.

Nothing but the installed package is needed: no Redis, no Auth0 tenant. The BFF's origin is
``http://localhost:PORT`` (a valid WebAuthn relying-party id, so passkeys work in a browser).
"""

from __future__ import annotations

import secrets
import sys
import tempfile
from importlib import resources

from werkzeug.serving import WSGIRequestHandler, make_server

__all__ = ["PathOnlyLogHandler", "demo_static_dir", "run_demo"]


class PathOnlyLogHandler(WSGIRequestHandler):
    """Log method, path and status only: query strings carry login codes and states."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = self.path.split("?", 1)[0]
        self.log("info", '"%s %s" %s %s', self.command, path, code, size)


def demo_static_dir() -> str:
    return str(resources.files("bff.demo") / "static")


def run_demo(*, host: str = "127.0.0.1", port: int = 8000, emulator_port: int = 0) -> None:
    from ..app import create_app
    from ..emulator import EmulatorConfig, EmulatorServer
    from ..settings import Settings

    base_url = f"http://localhost:{port}" if host in ("127.0.0.1", "localhost") else f"http://{host}:{port}"
    client_id = "bff-demo"
    client_secret = secrets.token_urlsafe(32)
    emulator = EmulatorServer(EmulatorConfig(client_id, client_secret, base_url), port=emulator_port)
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
    )
    app = create_app(settings)
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
