"""A bare forwarder, the floor the BFF is compared with: Flask + one Redis read + urllib3.

It does the least a session-holding proxy must do on each call: read the session hash named by
the cookie (one ``HGETALL``), and forward the call with a bearer token over a pooled keep-alive
connection. No anti-forgery check, no allowlist, no decryption, no header policy. Served by the
same gunicorn configuration as the BFF, under the same load, it tells how much of the BFF's cost
is the stack (gunicorn, Flask, redis-py, urllib3, the GIL) and how much is the BFF's own work.

Configured by ``BENCH_REDIS_URL``, ``BENCH_UPSTREAM_URL`` and ``BENCH_COOKIE_NAME``.
"""

from __future__ import annotations

import os

import redis
import urllib3
from flask import Flask, Response, request

app = Flask(__name__)
_store = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"], max_connections=64)
_upstream = urllib3.connection_from_url(os.environ["BENCH_UPSTREAM_URL"], maxsize=64, block=False)
_cookie = os.environ.get("BENCH_COOKIE_NAME", "bff-session")


@app.get("/me/v1/<path:rest>")
def forward(rest: str) -> Response:
    sid = request.cookies.get(_cookie)
    fields = _store.hgetall("bff:s:{" + sid + "}") if sid else None
    if not fields:
        return Response(b'{"status":401}', status=401, content_type="application/json")
    upstream = _upstream.urlopen(
        "GET", "/me/v1/" + rest, headers={"authorization": "Bearer reference"}, preload_content=True
    )
    return Response(upstream.data, status=upstream.status,
                    content_type=upstream.headers.get("content-type", "application/json"))
