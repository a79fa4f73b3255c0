"""Browser-facing security: the anti-forgery rule, return-URL validation and secrets at rest.

* Anti-forgery: every state-changing BFF endpoint and every proxied call needs ``X-CSRF: 1``.
  A cross-origin page cannot add that header without a CORS preflight, which the BFF never
  grants; an ``Origin`` header, when present, must be the configured origin, and a browser's
  ``Sec-Fetch-Site`` must say ``same-origin`` (SameSite alone is not enough: sibling
  subdomains share a site).
* Return URLs: only local paths survive, or a login becomes an open redirect.
* Secrets at rest: tokens are encrypted before they reach the store (a dump of Redis holds no
  usable token), with key rotation through ``BFF_SECRET_KEY``'s comma-separated list.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from urllib.parse import unquote, urlsplit

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import Flask, Request, Response, request

from .errors import Problem, ProblemKind
from .settings import Settings

__all__ = ["CSRF_HEADER", "SecretBox", "check_anti_forgery", "init_app", "safe_return_to"]

CSRF_HEADER = "X-CSRF"
_MAX_RETURN_TO = 2048
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_anti_forgery(request: Request, settings: Settings) -> None:
    """Raise a 403 problem unless the request is provably from the BFF's own origin."""
    if request.headers.get(CSRF_HEADER) != "1":
        raise Problem(ProblemKind.CSRF, f"The request must carry the header {CSRF_HEADER}: 1.")
    origin = request.headers.get("Origin")
    if origin is not None and origin != settings.origin:
        raise Problem(ProblemKind.CSRF, "The request's Origin is not this site.")
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        raise Problem(ProblemKind.CSRF, "The browser reports this request as cross-origin.")


def safe_return_to(value: str | None, default: str = "/") -> str:
    """Return ``value`` if it is a local path, else raise a 400 problem.

    Rejects absolute and scheme-relative URLs (``//host``, ``/\\host``), schemes
    (``https:``, ``javascript:``), backslashes, control characters (CR/LF: header injection)
    and the percent-encoded forms of all of these, decoded up to three times.
    """
    if value is None or value == "":
        return default

    def reject(why: str) -> Problem:
        return Problem(ProblemKind.INVALID_RETURN_URL, f"returnTo {why}; use a local path.")

    if len(value) > _MAX_RETURN_TO:
        raise reject("is too long")
    candidate = value
    for _ in range(4):
        if _CONTROL.search(candidate) or "\\" in candidate:
            raise reject("contains a control character or a backslash")
        if not candidate.startswith("/") or candidate.startswith("//"):
            raise reject("is not a local path")
        parts = urlsplit(candidate)
        if parts.scheme or parts.netloc:
            raise reject("is not a local path")
        decoded = unquote(candidate)
        if decoded == candidate:
            break
        candidate = decoded
    else:
        raise reject("is encoded too many times")
    return value


def _derive(secret: str, purpose: str) -> bytes:
    return hmac.new(secret.encode(), purpose.encode(), hashlib.sha256).digest()


class SecretBox:
    """Authenticated encryption (Fernet) and HMAC with key rotation.

    The first configured secret encrypts and signs; all of them decrypt and verify, so a key
    can be rotated without logging everybody out.
    """

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self._fernet = MultiFernet(
            [Fernet(base64.urlsafe_b64encode(_derive(secret, "bff/encrypt"))) for secret in secrets]
        )
        self._mac_keys = [_derive(secret, "bff/mac") for secret in secrets]
        self._first = secrets[0]

    def derived(self, purpose: str) -> bytes:
        """A key for ``purpose`` derived from the current secret (never the secret itself)."""
        return _derive(self._first, purpose)

    def seal(self, plaintext: bytes) -> bytes:
        return self._fernet.encrypt(plaintext)

    def open(self, sealed: bytes, *, ttl: int | None = None) -> bytes | None:
        """Decrypt, or ``None`` when no configured key opens it (tampered or rotated away) or, with
        ``ttl``, when it was sealed more than ``ttl`` seconds ago."""
        try:
            return self._fernet.decrypt(sealed, ttl=ttl)
        except InvalidToken:
            return None

    def mac(self, message: str) -> str:
        digest = hmac.new(self._mac_keys[0], message.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def verify_mac(self, message: str, tag: str) -> bool:
        for key in self._mac_keys:
            digest = hmac.new(key, message.encode(), hashlib.sha256).digest()
            expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
            if hmac.compare_digest(expected, tag):
                return True
        return False


def init_app(app: Flask) -> None:
    """Headers every response carries: no sniffing, no framing, no referrer to other sites, and no
    caching of the BFF's own JSON."""

    @app.after_request
    def _security_headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("X-Frame-Options", "DENY")
        if request.path.startswith("/bff/") and response.mimetype in ("application/json", "application/problem+json"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response
