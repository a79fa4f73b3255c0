"""Everything a browser session receives or keeps, gathered as text to search for secrets.

Recorded: the URL of every request (each redirect hop included) and every address the tab shows;
the status, headers and body of every response (a redirect has no body, its ``Location`` header is
recorded); and, at each checkpoint, every cookie of the context and the current origin's
``localStorage``, ``sessionStorage`` and ``document.cookie``.

Bodies of the BFF's API answers (``/bff/…``, ``/me/…``) are taken at the DevTools ``Fetch`` domain's
response stage, before the page sees them: Chromium forgets a body once its page navigates away,
which the SPA does right after ``POST /bff/logout`` and ``POST /bff/connect`` answer.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import typing as t

from playwright.sync_api import BrowserContext, Error, Page, Request

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{2,}\.eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")
#: Names under which an OAuth token travels; none may reach the browser.
TOKEN_NAMES = re.compile(r"access_token|refresh_token|id_token")


@dataclasses.dataclass(frozen=True)
class Seen:
    """One place a value reached the browser: ``kind`` (url, header, body, cookie, storage), what it
    belongs to (``method`` and ``url`` of the exchange, or the checkpoint) and the text itself."""

    kind: str
    method: str
    url: str
    text: str

    def __str__(self) -> str:
        return f"{self.kind} of {self.method} {self.url}"


class Exposure:
    def __init__(self, context: BrowserContext, page: Page, api_origin: str) -> None:
        self.context = context
        self.page = page
        self.api_origin = api_origin
        self.seen: list[Seen] = []
        self.unread: list[str] = []
        context.on("request", self._request)
        context.on("requestfinished", self._finished)
        page.on("framenavigated", lambda frame: self._add("address", "SHOW", frame.url, frame.url))
        self._cdp = context.new_cdp_session(page)
        self._cdp.on("Fetch.requestPaused", self._paused)
        self._cdp.send(
            "Fetch.enable",
            {"patterns": [{"urlPattern": f"{api_origin}/{prefix}/*", "requestStage": "Response"}
                          for prefix in ("bff", "me")]},
        )

    def _is_api(self, url: str) -> bool:
        return url.startswith((self.api_origin + "/bff/", self.api_origin + "/me/"))

    def _paused(self, event: dict[str, t.Any]) -> None:
        request, status = event["request"], event.get("responseStatusCode", 0)
        try:
            if not 300 <= status < 400:
                answer = self._cdp.send("Fetch.getResponseBody", {"requestId": event["requestId"]})
                body = answer["body"]
                text = base64.b64decode(body).decode("utf-8", "replace") if answer["base64Encoded"] else body
                self._add("body", request["method"], request["url"], text)
        finally:
            self._cdp.send("Fetch.continueResponse", {"requestId": event["requestId"]})

    def _add(self, kind: str, method: str, url: str, text: str) -> None:
        self.seen.append(Seen(kind, method, url, text))

    def _request(self, request: Request) -> None:
        self._add("url", request.method, request.url, request.url)

    def _finished(self, request: Request) -> None:
        response = request.response()
        if response is None:
            return
        for header in response.headers_array():
            self._add("header", request.method, request.url, f"{header['name']}: {header['value']}")
        if 300 <= response.status < 400 or response.status in (204, 205) or self._is_api(request.url):
            return  # no body, or taken at the response stage
        try:
            body = response.body()
        except Error:
            self.unread.append(f"{request.method} {request.url}")
            return
        self._add("body", request.method, request.url, body.decode("utf-8", "replace"))

    def checkpoint(self, name: str) -> None:
        """Record what the browser holds now: cookies of every site, storage of the current origin."""
        for cookie in self.context.cookies():
            self._add("cookie", name, cookie["domain"], f"{cookie['name']}={cookie['value']}")
        held = self.page.evaluate(
            """() => ({
                localStorage: JSON.stringify(Object.entries(localStorage)),
                sessionStorage: JSON.stringify(Object.entries(sessionStorage)),
                "document.cookie": document.cookie,
            })"""
        )
        for kind, text in held.items():
            self._add(kind, name, self.page.url, text)

    # Queries -------------------------------------------------------------------------------------

    def containing(self, value: str) -> list[Seen]:
        return [item for item in self.seen if value in item.text]

    def bodies(self, method: str, url: str) -> list[str]:
        return [item.text for item in self.seen if item.kind == "body" and item.method == method and item.url == url]

    def urls(self) -> list[str]:
        return [item.url for item in self.seen if item.kind == "url"]


def jwt_claims(token: str) -> dict[str, t.Any]:
    payload = token.split(".")[1]
    return t.cast(dict[str, t.Any], json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))
