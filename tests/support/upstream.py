"""A recording stand-in for the My Account API, to see exactly what the BFF forwards."""

from __future__ import annotations

import json
import threading
import time
import typing as t
from dataclasses import dataclass, field

from tests.support.servers import ThreadedServer


@dataclass
class Seen:
    method: str
    raw_target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int = 200
    body: bytes = b'{"ok":true}'
    headers: list[tuple[str, str]] = field(default_factory=lambda: [("Content-Type", "application/json")])
    delay: float = 0.0


class RecordingUpstream:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.replies: list[Reply] = []
        self._lock = threading.Lock()
        self._server = ThreadedServer()
        self._server.serve(self._app)
        self.url = self._server.url()

    def reply_next(self, reply: Reply) -> None:
        with self._lock:
            self.replies.append(reply)

    def _app(self, environ: dict[str, t.Any], start_response: t.Callable[..., t.Any]) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        headers = {
            key[5:].replace("_", "-").lower(): value for key, value in environ.items() if key.startswith("HTTP_")
        }
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = environ["CONTENT_TYPE"]
        with self._lock:
            self.seen.append(Seen(environ["REQUEST_METHOD"], environ["REQUEST_URI"], headers, body))
            reply = self.replies.pop(0) if self.replies else Reply(body=json.dumps({"ok": True}).encode())
        if reply.delay:
            time.sleep(reply.delay)
        start_response(f"{reply.status} X", reply.headers)
        return [reply.body]

    def stop(self) -> None:
        self._server.stop()
