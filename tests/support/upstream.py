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
    """Records each request and answers with the queued replies, else ``{"ok": true}``.

    Tests order their steps on what has arrived here (:meth:`wait_for_requests`,
    :meth:`wait_for_delayed_reply`) rather than on sleeps that only usually last long enough.
    """

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.replies: list[Reply] = []
        self.delayed: list[Seen] = []  # the requests whose reply is delayed, each added as its delay starts
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._server = ThreadedServer()
        self._server.serve(self._app)
        self.url = self._server.url()

    def reply_next(self, reply: Reply) -> None:
        with self._lock:
            self.replies.append(reply)

    def wait_for_requests(self, count: int = 1, timeout: float = 5.0) -> list[Seen]:
        """Block until ``count`` requests have arrived in all; ``TimeoutError`` naming what did otherwise."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.seen) >= count, timeout):
                raise TimeoutError(f"waited {timeout}s for {count} upstream requests, {len(self.seen)} arrived")
            return list(self.seen)

    def wait_for_delayed_reply(self, count: int = 1, timeout: float = 5.0) -> Seen:
        """Block until the ``count``-th delayed reply has started its delay; returns the request it answers.

        At that moment the request is held here: whatever the BFF did before forwarding it is done.
        """
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.delayed) >= count, timeout):
                raise TimeoutError(
                    f"waited {timeout}s for delayed reply {count}, {len(self.delayed)} started"
                )
            return self.delayed[count - 1]

    def _app(self, environ: dict[str, t.Any], start_response: t.Callable[..., t.Any]) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        headers = {
            key[5:].replace("_", "-").lower(): value for key, value in environ.items() if key.startswith("HTTP_")
        }
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = environ["CONTENT_TYPE"]
        with self._arrived:
            seen = Seen(environ["REQUEST_METHOD"], environ["REQUEST_URI"], headers, body)
            self.seen.append(seen)
            reply = self.replies.pop(0) if self.replies else Reply(body=json.dumps({"ok": True}).encode())
            if reply.delay:
                self.delayed.append(seen)
            self._arrived.notify_all()
        if reply.delay:
            time.sleep(reply.delay)
        start_response(f"{reply.status} X", reply.headers)
        return [reply.body]

    def stop(self) -> None:
        self._server.stop()
