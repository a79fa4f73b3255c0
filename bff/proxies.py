"""Whose ``X-Forwarded-For`` and ``X-Forwarded-Proto`` count: the proxies in ``BFF_TRUSTED_PROXIES``, nobody else.

Anyone can send these headers. If every peer's counted, a client would pick the address its rate limits
and log lines are kept under, and a spoofed scheme could pass for TLS. So they count only when the
direct peer (the TCP connection's address) is a trusted proxy, and even then only the hops the trusted
proxies appended: the client is the right-most ``X-Forwarded-For`` hop that is not itself a trusted
proxy, found by walking from the right while the hops are trusted. Whatever stands further left was
written by the client and is ignored; a hop that is not an address ends the walk.

:class:`TrustedProxies` applies this as WSGI middleware before Flask sees the request: ``REMOTE_ADDR``
(``request.remote_addr``) becomes the client address, ``wsgi.url_scheme`` follows the right-most
``X-Forwarded-Proto`` value written by the trusted peer, and the direct peer stays in
``environ["bff.peer_addr"]``. Code that needs the client's address reads ``request.remote_addr``, never
the headers. ``bff serve`` gives gunicorn's own ``forwarded_allow_ips`` the same list (empty when none).
"""

from __future__ import annotations

import ipaddress
import typing as t

if t.TYPE_CHECKING:
    from flask import Flask

__all__ = ["PEER_ADDR_KEY", "TrustedProxies", "init_app"]

PEER_ADDR_KEY = "bff.peer_addr"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
WSGIApp = t.Callable[[dict[str, t.Any], t.Callable[..., t.Any]], t.Iterable[bytes]]


def _address(text: str) -> Address | None:
    """An address from a hop or peer: ``192.0.2.1``, ``192.0.2.1:5000``, ``[2001:db8::1]:443``, ``::ffff:192.0.2.1``.

    IPv4-mapped IPv6 addresses (a dual-stack listener) are read as IPv4, so an IPv4 network matches them.
    """
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """WSGI middleware: the client address and scheme, from forwarding headers of trusted peers only."""

    def __init__(self, app: WSGIApp, networks: t.Iterable[Network]) -> None:
        self.app = app
        self.networks = tuple(networks)

    def trusted(self, address: Address) -> bool:
        return any(address in network for network in self.networks)

    def client(self, peer: str, forwarded_for: str) -> str:
        """The client's address: ``peer`` unless it is trusted, else the right-most untrusted hop."""
        address = _address(peer)
        if address is None:
            return peer
        if not self.trusted(address):
            return str(address)
        for hop in reversed(forwarded_for.split(",") if forwarded_for.strip() else []):
            parsed = _address(hop)
            if parsed is None:
                break  # not written by a proxy we trust: the last trusted hop is all that is known
            address = parsed
            if not self.trusted(parsed):
                break
        return str(address)

    def __call__(self, environ: dict[str, t.Any], start_response: t.Callable[..., t.Any]) -> t.Iterable[bytes]:
        peer = str(environ.get("REMOTE_ADDR") or "")
        environ[PEER_ADDR_KEY] = peer
        environ["REMOTE_ADDR"] = self.client(peer, str(environ.get("HTTP_X_FORWARDED_FOR") or ""))
        peer_address = _address(peer)
        if peer_address is not None and self.trusted(peer_address):
            proto = str(environ.get("HTTP_X_FORWARDED_PROTO") or "").rpartition(",")[2].strip().lower()
            if proto in ("http", "https"):
                environ["wsgi.url_scheme"] = proto
        return self.app(environ, start_response)


def init_app(app: Flask, networks: t.Iterable[Network]) -> None:
    """Wrap ``app.wsgi_app``; with no trusted proxy every peer is the client and no header counts."""
    app.wsgi_app = TrustedProxies(app.wsgi_app, networks)  # type: ignore[method-assign]
