"""Structured logs: every line one JSON object (``BFF_LOG_FORMAT=json``) or one ``key=value`` text line.

Security: logs are read by more people, shipped to more places and kept longer than anything else the
BFF writes, so nothing in a log line may let its reader act as a user or as the BFF. No line carries a
token, an authorization code, a session id, a cookie, a secret or a query string:

* the access line (:mod:`bff.access`) names the route *template*, never the path or the query;
* a session is named by :func:`session_tag`, a short keyed hash that identifies it across lines but
  cannot be turned back into the id (a log reader cannot present it as a cookie);
* domain code logs events with fixed fields (``extra={"event": ..., ...}``), never a token or a
  provider's free text;
* as a last line of defence every formatted line, whatever logger produced it (gunicorn's, the HTTP
  libraries', an exception's traceback), is passed through :func:`scrub`, which masks anything shaped
  like a JWT, a bearer credential, credentials in a URL or a query string.

Every line has ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``event`` (``log`` for lines that are
not one of the BFF's events) and ``message``; lines written while a request is handled also carry its
``request_id`` and, once known, its ``session`` tag (:func:`bind`). The formatters are plain
computation over the record: they hold no lock of their own and never yield, so they are safe under
gunicorn's gevent workers.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import re
import sys
import typing as t

__all__ = [
    "JsonFormatter",
    "TextFormatter",
    "bind",
    "configure",
    "formatter",
    "gunicorn_logger_class",
    "scrub",
    "session_tag",
    "unbind",
]

#: The attributes every ``LogRecord`` has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}
_SESSION_TAG_LENGTH = 12

# Masks, most specific first. Each keeps enough to see *what* was there, nothing that could be used.
_SCRUBS: tuple[tuple[re.Pattern[str], str], ...] = (
    # A JWT (access, ID or logout token): three base64url parts, the first a JSON header.
    (re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*"), "[jwt]"),
    # A bearer or basic credential from an Authorization header that found its way into a message.
    (re.compile(r"\b(Bearer|bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 [redacted]"),
    # Credentials in a URL (a store URL with a password).
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@\"']+@"), r"\1[redacted]@"),
    # The query string of a URL or of a request target (login codes, states, tickets).
    (re.compile(r"((?:\b[a-z][a-z0-9+.-]*://[^\s/?#\"']*)(?:/[^\s?#\"']*)?|/[^\s?#\"']*)\?[^\s#\"']*", re.I),
     r"\1?[redacted]"),
    # Cookie headers, whole.
    (re.compile(r"(?i)\b((?:set-)?cookie)\s*[:=]\s*[^\r\n]*"), r"\1: [redacted]"),
)


#: What every mask above needs to find something: a text with none of these is returned as it is, after one
#: scan instead of five (most values, the access line's among them, are route templates, ids and numbers).
_TRIGGERS = re.compile(r"eyJ|[Bb]earer|Basic|@|\?|(?i:cookie)")


def scrub(text: str) -> str:
    """``text`` with anything shaped like a token, a credential or a query string masked."""
    if _TRIGGERS.search(text) is None:
        return text
    for pattern, replacement in _SCRUBS:
        text = pattern.sub(replacement, text)
    return text


def session_tag(mac: t.Callable[[str], str], sid: str) -> str:
    """The name of session ``sid`` in logs: a truncated HMAC under the app's secret (``SecretBox.mac``).

    Stable for a session, so its lines can be followed; without the secret it can be neither reversed
    nor forged, so a log reader cannot turn it into a session cookie.
    """
    return mac("log:session:" + sid)[:_SESSION_TAG_LENGTH]


# Request fields -------------------------------------------------------------------------------------
#
# A context variable rather than a thread-local: a gevent worker runs each connection in a greenlet,
# and every greenlet has a context of its own, as every thread has.

_fields: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("bff_log_fields", default=None)


def bind(**fields: str) -> None:
    """Add ``fields`` (``request_id``, ``session``) to every line logged from here on in this request."""
    _fields.set({**(_fields.get() or {}), **fields})


def unbind() -> None:
    """The request is over: later lines of this thread or greenlet carry no request fields."""
    _fields.set(None)


# Formatters -----------------------------------------------------------------------------------------


def _time(record: logging.LogRecord) -> str:
    moment = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _value(value: t.Any) -> t.Any:
    if isinstance(value, str):
        return scrub(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, list | tuple):
        return [_value(item) for item in value]
    return scrub(str(value))


def _fields_of(record: logging.LogRecord) -> dict[str, t.Any]:
    """The record's own fields (``extra=``), after the request's: a record's own ``session`` wins."""
    fields: dict[str, t.Any] = dict(_fields.get() or {})
    for key, value in record.__dict__.items():
        if key not in _STANDARD and key != "event" and not key.startswith("_"):
            fields[key] = _value(value)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``event``, ``message``, then fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, t.Any] = {
            "time": _time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": str(getattr(record, "event", "log")),
            "message": scrub(record.getMessage()),
        }
        for key, value in _fields_of(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exception"] = scrub(self.formatException(record.exc_info))
        if record.stack_info:
            line["stack"] = scrub(self.formatStack(record.stack_info))
        # ASCII only: a control character or a newline in any value is escaped, never a line break.
        return json.dumps(line, ensure_ascii=True, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    """``time LEVEL event message key=value ...`` for a person at a terminal (``bff demo``)."""

    def format(self, record: logging.LogRecord) -> str:
        event = str(getattr(record, "event", "log"))
        parts = [_time(record), record.levelname, event, scrub(record.getMessage())]
        parts += [f"{key}={value}" for key, value in _fields_of(record).items()]
        text = " ".join(part for part in parts if part)
        if record.exc_info:
            text += "\n" + scrub(self.formatException(record.exc_info))
        return text


def formatter(log_format: str) -> logging.Formatter:
    """The formatter for ``BFF_LOG_FORMAT`` (``json`` or ``text``)."""
    return JsonFormatter() if log_format == "json" else TextFormatter()


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure` installs (so a second call replaces it rather than adding one)."""


def configure(log_format: str, *, level: int = logging.INFO, stream: t.TextIO | None = None) -> logging.Handler:
    """Send every record at ``level`` or above, from any logger, to ``stream`` (stderr) in ``log_format``.

    Python warnings are routed through logging too, so in json mode nothing but JSON reaches stderr.
    """
    root = logging.getLogger()
    for existing in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(existing)
    handler = _Handler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(log_format))
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    return handler


def gunicorn_logger_class(log_format: str) -> type:
    """gunicorn's logger with its error log in ``log_format`` (and so scrubbed) and no access log.

    The BFF writes its own access line (:mod:`bff.access`), with the route template instead of the
    path; gunicorn's would duplicate it and, with its default format, carry the query string.
    """
    from gunicorn.glogging import Logger

    class BffGunicornLogger(Logger):  # type: ignore[misc]
        def setup(self, cfg: t.Any) -> None:
            super().setup(cfg)
            for handler in self.error_log.handlers:
                handler.setFormatter(formatter(log_format))

        def access(self, *args: t.Any, **kwargs: t.Any) -> None:
            return None

    return BffGunicornLogger
