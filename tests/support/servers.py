"""Run WSGI apps on free loopback ports in background threads, for real-HTTP tests."""

from __future__ import annotations

import threading
import typing as t

from werkzeug.serving import BaseWSGIServer, make_server


def _placeholder(environ: dict[str, t.Any], start_response: t.Callable[..., t.Any]) -> list[bytes]:
    start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
    return [b"starting"]


class ThreadedServer:
    """Bind first (so the URL is known before the app is built), then serve in a thread."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.server: BaseWSGIServer = make_server(host, 0, _placeholder, threaded=True)
        self.port = self.server.server_port
        self.thread: threading.Thread | None = None

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}"

    def serve(self, app: t.Callable[..., t.Any]) -> None:
        self.server.app = app
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
