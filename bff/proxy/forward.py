"""Forwarding one allowed call to the My Account API over pooled keep-alive connections.

Header policy (security): only an allowlist of request headers is forwarded (content
negotiation, conditional requests, a request id); ``Cookie``, ``Authorization``, the CSRF header
and hop-by-hop headers never leave the BFF because they are not on the list. The token (Bearer,
or DPoP with its proof) is added here and nowhere else. On the way back only an allowlist of
response headers is passed: upstream ``Set-Cookie`` and hop-by-hop headers are dropped, ``Location`` pointing into
the My Account API is rewritten to the same resource on the BFF, an absolute URL as the spec declares
``Location`` a URI (``BFF_BASE_URL`` + ``/me/v1/...``), one pointing elsewhere is dropped, and
``Cache-Control`` is always ``no-store`` whatever the upstream says: a response made with a user's
token must never be kept by a shared cache.

urllib3 is used directly on this hot path: requests' high-level API costs measurably more per
call for features (cookies, redirects, hooks) a proxy must not use anyway.
"""

from __future__ import annotations

import json
import time
import typing as t
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

import urllib3
from urllib3 import BaseHTTPResponse
from urllib3.connectionpool import ConnectionPool
from urllib3.exceptions import HTTPError, ReadTimeoutError
from urllib3.util import Retry, Timeout

from .. import access, tracing
from ..settings import Settings

__all__ = ["BFF_PREFIX", "Forwarder", "UpstreamFailure", "UpstreamResponse"]

BFF_PREFIX = "/me/v1"

REQUEST_HEADERS = (
    "content-type",
    "accept",
    "accept-language",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "x-request-id",
    # The My Account API records the client's device (e.g. a passkey's name) from it.
    "user-agent",
)
RESPONSE_HEADERS = frozenset(
    {
        "content-type",
        "content-language",
        "etag",
        "last-modified",
        "retry-after",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "x-auth0-error-kind",
        "x-request-id",
    }
)


INSUFFICIENT_SCOPE = "A0E-403-0002"


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    #: The API's ``DPoP-Nonce`` header, kept for the next proof (never passed to the browser).
    dpop_nonce: str | None = None
    #: The API asked for a proof with its nonce (401, ``WWW-Authenticate: DPoP error="use_dpop_nonce"``).
    nonce_challenge: bool = False

    def error(self) -> tuple[str, str]:
        """The API error's ``type`` and ``detail`` (Auth0's ErrorResponse), empty when absent."""
        try:
            body = json.loads(self.body)
        except ValueError:
            return "", ""
        if not isinstance(body, dict):
            return "", ""
        kind, detail = body.get("type"), body.get("detail")
        return (kind if isinstance(kind, str) else ""), (detail[:300] if isinstance(detail, str) else "")

    @property
    def insufficient_scope(self) -> bool:
        """The API refused the token's scope (403 ``A0E-403-0002``): a new login may fix it."""
        return self.status == 403 and self.error()[0].endswith("/" + INSUFFICIENT_SCOPE)


@dataclass(frozen=True, slots=True)
class UpstreamFailure:
    """The upstream could not be reached or did not answer in time."""

    status: int  # 502 or 504
    kind: str
    detail: str


class _NoTimedOutRetry(Retry):
    """One retry for a connection that failed before the request was answered (a stale keep-alive
    connection, a refused connect), never for a read that timed out: the call's time budget is spent,
    and repeating it would hold the worker for twice the timeout."""

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        error: Exception | None = None,
        _pool: ConnectionPool | None = None,
        _stacktrace: TracebackType | None = None,
    ) -> t.Self:
        if isinstance(error, ReadTimeoutError):
            raise error
        return super().increment(method, url, response, error, _pool, _stacktrace)


class Forwarder:
    """A pooled client for ``BFF_MY_ACCOUNT_URL``; thread-safe, one per process."""

    def __init__(self, settings: Settings, *, pool_size: int = 64) -> None:
        base = urlsplit(settings.my_account_url)
        self._base_path = base.path.rstrip("/")
        self._absolute_base = settings.my_account_url.rstrip("/")
        self._bff_base = settings.base_url.rstrip("/") + BFF_PREFIX
        retries = _NoTimedOutRetry(total=1, connect=1, read=1, redirect=0, status=0, other=0, raise_on_status=False)
        self._pool = urllib3.connection_from_url(
            settings.my_account_url,
            maxsize=pool_size,
            block=False,
            timeout=Timeout(connect=settings.upstream_connect_timeout, read=settings.upstream_read_timeout),
            retries=retries,
        )

    def send(
        self,
        method: str,
        path: str,
        query: str,
        headers: t.Mapping[str, str],
        body: bytes | None,
        credentials: t.Mapping[str, str],
    ) -> UpstreamResponse | UpstreamFailure:
        """Forward; ``path`` is the validated raw path under the API base, sent as is; ``credentials``
        are the headers that authorize the call (``authorization``, and ``dpop`` with DPoP)."""
        outgoing = {name: headers[name] for name in REQUEST_HEADERS if name in headers}
        # The id this request is logged under (the client's only when it was a safe token), so the two
        # sides' logs meet; none outside a request.
        scope = access.current()
        outgoing.pop("x-request-id", None)
        if scope is not None:
            outgoing["x-request-id"] = scope.request_id
        outgoing.update(credentials)
        target = self.target(path, query)
        route = (scope.route if scope is not None else None) or access.UNMATCHED
        with tracing.span(f"My Account API {method}", client=True, **{"http.request.method": method,
                                                                      "http.route": route}) as span:
            tracing.inject(outgoing)
            started = time.perf_counter()
            try:
                response = self._pool.urlopen(
                    method,
                    target,
                    body=body,
                    headers=outgoing,
                    redirect=False,
                    assert_same_host=False,
                    preload_content=True,
                )
            except ReadTimeoutError:
                access.upstream_call("timeout", time.perf_counter() - started)
                span.set("error.type", "timeout")
                return UpstreamFailure(504, "upstream-timeout", "The My Account API did not answer in time.")
            except HTTPError as error:
                access.upstream_call("unreachable", time.perf_counter() - started)
                span.set("error.type", type(error).__name__)
                return UpstreamFailure(
                    502, "upstream-unavailable", f"The My Account API could not be reached ({type(error).__name__})."
                )
            access.upstream_call(str(response.status), time.perf_counter() - started)
            span.set("http.response.status_code", response.status)
        passed: list[tuple[str, str]] = []
        for name, value in response.headers.items():
            lower = name.lower()
            if lower == "location":
                rewritten = self._rewrite_location(value)
                if rewritten is not None:
                    passed.append(("Location", rewritten))
            elif lower in RESPONSE_HEADERS:
                passed.append((name, value))
        passed.append(("Cache-Control", "no-store"))
        nonce = response.headers.get("DPoP-Nonce")
        challenge = response.status == 401 and "use_dpop_nonce" in response.headers.get("WWW-Authenticate", "")
        return UpstreamResponse(response.status, passed, response.data, nonce, challenge)

    def target(self, path: str, query: str) -> str:
        """The request target sent upstream: the API's base path, then ``path`` and ``query`` as given."""
        return self._base_path + path + ("?" + query if query else "")

    def url(self, path: str) -> str:
        """The absolute URL of ``path`` under the API base (a DPoP proof's ``htu``)."""
        return self._absolute_base + path

    def _rewrite_location(self, value: str) -> str | None:
        """Map a Location inside the API to the same resource's absolute URL on the BFF; drop one that
        points elsewhere."""
        if value.startswith(self._absolute_base + "/"):
            return self._bff_base + value[len(self._absolute_base):]
        if value.startswith(self._base_path + "/") and self._base_path:
            return self._bff_base + value[len(self._base_path):]
        return None
