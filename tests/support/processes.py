"""BFF instances as separate gunicorn processes sharing one store (several hosts, in miniature)."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import time
import typing as t

import requests


# Tests log in and call far more often than a person; a test about limits sets its own.
_NO_RATE_LIMITS = {f"BFF_RATE_LIMIT_{kind}": "off" for kind in ("SESSION", "ADDRESS", "LOGIN", "CONNECT")}


class BffProcess:
    """``bff serve`` with one gthread worker on ``port``; the constructor returns once ``/healthz`` answers.

    ``log``: a file that takes the process's stderr (its log lines) instead of a pipe. Nobody drains the
    pipe while the process runs, so a chatty process (a store outage logs every request) could fill it and
    block on its next log line.
    """

    def __init__(
        self, port: int, env: t.Mapping[str, str], *, threads: int = 32, log: pathlib.Path | None = None
    ) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with log.open("ab") if log is not None else contextlib.nullcontext() as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bff.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                 "--workers", "1", "--threads", str(threads)],
                env={**os.environ, **_NO_RATE_LIMITS, **env},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE if sink is None else sink,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("bff serve exited: " + self.stderr_tail())
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.1)
        raise RuntimeError("bff serve did not start")

    def stderr_tail(self, chars: int = 2000) -> str:
        """The end of what the process wrote to stderr (read from the pipe only once it has exited)."""
        if self.log is not None:
            return self.log.read_text(errors="replace")[-chars:]
        if self.process.stderr is not None and self.process.poll() is not None:
            return self.process.stderr.read().decode(errors="replace")[-chars:]
        return ""

    def kill(self) -> None:
        """SIGKILL the whole process group: the master and its worker die mid-request."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.process.stderr is not None:
            self.process.stderr.close()

