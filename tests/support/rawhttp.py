"""Send a request target byte for byte: HTTP clients normalise paths, which would hide attacks."""

from __future__ import annotations

import socket
import typing as t
from urllib.parse import urlsplit


def raw_request(
    base_url: str, method: str, target: bytes, headers: t.Mapping[str, str] | None = None, body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(base_url)
    lines = [method.encode() + b" " + target + b" HTTP/1.1", f"Host: {parts.netloc}".encode(), b"Connection: close"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}".encode())
    if body:
        lines.append(f"Content-Length: {len(body)}".encode())
    payload = b"\r\n".join(lines) + b"\r\n\r\n" + body
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(payload)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    response = b"".join(chunks)
    head, _, content = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ")[1])
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return status, parsed, content
