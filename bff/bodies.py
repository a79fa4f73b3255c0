"""Request bodies read within limits, and JSON parsed without surprises.

Security: a body is read only after the caller's checks that need no body (anti-forgery, allowlist,
session) passed, and never beyond ``BFF_MAX_BODY_BYTES`` whatever its framing: a ``Content-Length``
over the limit is refused before reading, and a chunked body is read up to the limit and refused as a
whole when it goes past it (never cut and forwarded). Transfer codings other than ``chunked`` are
refused (501): the BFF cannot vouch for what it cannot decode. A malformed chunked framing, invalid
JSON or JSON nested deeper than :data:`MAX_JSON_DEPTH` is a 400 problem, never a 500.
"""

from __future__ import annotations

import json
import typing as t

from flask import Request

from .errors import Problem, ProblemKind

__all__ = ["MAX_JSON_DEPTH", "check_framing", "parse_json", "read_body"]

MAX_JSON_DEPTH = 32
_CHUNK = 16 * 1024


def check_framing(request: Request, limit: int) -> bool:
    """Refuse a body that cannot be accepted from its headers alone; returns whether one is coming."""
    coding = request.headers.get("Transfer-Encoding")
    if coding is not None:
        codings = [part.strip().lower() for part in coding.split(",")]
        if codings != ["chunked"]:
            raise Problem(ProblemKind.UNSUPPORTED_TRANSFER_CODING,
                          "Only the chunked transfer coding is accepted.", headers={"Connection": "close"})
        return True
    length = request.content_length
    if length is not None and length > limit:
        raise Problem(ProblemKind.PAYLOAD_TOO_LARGE, f"The body is larger than {limit} bytes.",
                      headers={"Connection": "close"})
    return bool(length)


def read_body(request: Request, limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes; a 413 problem beyond it, a 400 one if it is malformed."""
    if not check_framing(request, limit):
        return b""
    stream = t.cast(t.IO[bytes], request.environ["wsgi.input"])
    chunked = request.headers.get("Transfer-Encoding") is not None
    if chunked and not request.environ.get("wsgi.input_terminated"):
        # The server did not decode the chunked framing for us: the end of the body is unknowable.
        raise Problem(ProblemKind.MALFORMED_BODY, "This server cannot read a chunked body; send Content-Length.",
                      headers={"Connection": "close"})
    expected = None if chunked else request.content_length
    parts: list[bytes] = []
    size = 0
    try:
        while expected is None or size < expected:
            want = _CHUNK if expected is None else min(_CHUNK, expected - size)
            part = stream.read(min(want, limit + 1 - size))
            if not part:
                break
            parts.append(part)
            size += len(part)
            if size > limit:
                raise Problem(ProblemKind.PAYLOAD_TOO_LARGE, f"The body is larger than {limit} bytes.",
                              headers={"Connection": "close"})
    except Problem:
        raise
    except Exception as error:
        # Whatever the server raises for a broken framing (werkzeug: OSError/ValueError, gunicorn: its
        # own parse errors): the client sent something unreadable.
        raise Problem(ProblemKind.MALFORMED_BODY, f"The body could not be read ({type(error).__name__}).",
                      headers={"Connection": "close"}) from error
    if expected is not None and size < expected:
        raise Problem(ProblemKind.MALFORMED_BODY, "The body is shorter than its Content-Length.",
                      headers={"Connection": "close"})
    return b"".join(parts)


def _depth(value: t.Any) -> int:
    deepest = 0
    stack: list[tuple[t.Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_json(body: bytes) -> t.Any:
    """The JSON value of ``body``; a 400 problem when it is not JSON or is nested too deeply."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise Problem(ProblemKind.MALFORMED_BODY, "The body is not valid JSON.") from error
    if _depth(value) > MAX_JSON_DEPTH:
        raise Problem(ProblemKind.MALFORMED_BODY, f"The JSON body is nested deeper than {MAX_JSON_DEPTH} levels.")
    return value
