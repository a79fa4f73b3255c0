"""Reverse-proxy offload (``BFF_OFFLOAD=nginx``): nginx makes an authorized read call itself.

Security: the BFF's answer to nginx carries the session's access token, so the BFF gives one only to
a request that carries :data:`PROOF_HEADER` with ``BFF_OFFLOAD_SECRET`` (compared in constant time),
which the configured nginx sets on every request it sends and replaces on every request a client
sends. A request that reached the BFF any other way is forwarded as usual, so no client ever receives
a token-bearing header. nginx never passes those headers to the client: it consumes them, and hides
them should it ever not follow the redirect.

The BFF decides everything as it does for a call it forwards (anti-forgery, the allowlist on the raw
path and query, the session, the rate limits, the token with its single-flight refresh), then answers
nginx with an internal redirect instead of calling the My Account API: ``X-Accel-Redirect`` to
:data:`INTERNAL_LOCATION`, the upstream request target in :data:`TARGET_HEADER` and the headers that
authorize the call (:meth:`~bff.myaccount.MyAccountClient.credentials`: ``Authorization``, and
``DPoP`` with a sender-constrained token) each in its ``X-Bff-Upstream-<Name>`` header. nginx copies
them into variables, makes the call with them and applies the BFF's response policy (see
``deploy/nginx-offload.conf``).

Only reads are offloaded (:data:`METHODS`): nginx turns an internal redirect into a ``GET``, so a body
cannot follow. When the API refuses the token (401, or 403 for a scope), nginx sends the call back
with :data:`FALLBACK_HEADER` (trusted only with the secret) and the BFF makes it itself, with its own
refresh-and-retry-once policy.
"""

from __future__ import annotations

import hmac
import typing as t

from flask import Request, Response

from ..settings import Settings

__all__ = [
    "FALLBACK_HEADER",
    "INTERNAL_LOCATION",
    "METHODS",
    "PROOF_HEADER",
    "TARGET_HEADER",
    "UPSTREAM_HEADERS",
    "Verdict",
    "handoff",
    "verdict",
]

#: Set by nginx, with ``BFF_OFFLOAD_SECRET``, on every request it sends to the BFF.
PROOF_HEADER = "X-Bff-Offload"
#: Set by nginx (to ``1``) when it sends back a call the API refused: the BFF makes this one itself.
FALLBACK_HEADER = "X-Bff-Offload-Fallback"
#: nginx's internal location that makes the call (``internal``: no client can request it).
INTERNAL_LOCATION = "/_offload/my-account"
#: The request target to send upstream: the API's base path, the validated raw path and query.
TARGET_HEADER = "X-Bff-Upstream-Target"
#: The credential headers nginx knows how to send upstream, and the answer headers that carry them.
#: nginx sends exactly these (``deploy/nginx-offload.conf`` has one line each; a test holds the two
#: together), so a call whose credentials need another header is forwarded by the BFF instead.
UPSTREAM_HEADERS: t.Mapping[str, str] = {
    "authorization": "X-Bff-Upstream-Authorization",
    "dpop": "X-Bff-Upstream-Dpop",
}
Verdict = t.Literal["hand-off", "fallback", "forward"]
#: The methods nginx can offload: an internal redirect keeps ``HEAD`` and makes anything else a ``GET``.
METHODS = frozenset({"GET", "HEAD"})


def verdict(request: Request, settings: Settings) -> Verdict:
    """What to do with a call that passed every check: ``hand-off`` to nginx (offload mode is on, the
    method is a read, nginx proved itself with the secret), make it here as nginx asked (``fallback``),
    or simply ``forward`` it here (anything else)."""
    if settings.offload is None or request.method not in METHODS:
        return "forward"
    presented = request.headers.get(PROOF_HEADER)
    if presented is None:
        return "forward"
    # Header values arrive as latin-1 text (WSGI): compare their bytes, in constant time.
    if not hmac.compare_digest(presented.encode("latin-1", "replace"), settings.offload_secret.encode()):
        return "forward"
    return "fallback" if FALLBACK_HEADER in request.headers else "hand-off"


def handoff(target: str, credentials: t.Mapping[str, str]) -> Response | None:
    """The internal redirect that has nginx send ``target`` (the upstream request target) with
    ``credentials``; ``None`` if a credential header is one nginx would not send (the BFF forwards that
    call itself)."""
    if not credentials.keys() <= UPSTREAM_HEADERS.keys():
        return None
    response = Response(status=200)
    # nginx keeps a few headers of an internal redirect's answer (Content-Type, Cache-Control,
    # Set-Cookie among them) on the response it then makes: this answer carries none.
    del response.headers["Content-Type"]
    response.headers["X-Accel-Redirect"] = INTERNAL_LOCATION
    response.headers[TARGET_HEADER] = target
    for name, value in credentials.items():
        response.headers[UPSTREAM_HEADERS[name]] = value
    return response
