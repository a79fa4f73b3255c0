"""BFF instances as separate gunicorn processes sharing one store (several hosts, in miniature)."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
import typing as t

import requests

# Tests log in and call far more often than a person; a test about limits sets its own.
_NO_RATE_LIMITS = {f"BFF_RATE_LIMIT_{kind}": "off" for kind in ("SESSION", "ADDRESS", "LOGIN", "CONNECT")}


class BffProcess:
    """``bff serve`` with one worker on ``port``; the constructor returns once ``/healthz`` answers.

    ``log``: a file that takes the process's stdout and stderr (its log lines). Without one, both are
    read as they come, into memory (:meth:`output`), so a chatty process (a store outage logs every
    request) can never fill a pipe and block on its next log line. ``args``: more ``bff serve`` options
    (``--workers 2``: the last one given wins).
    """

    def __init__(
        self, port: int, env: t.Mapping[str, str], *, threads: int = 32, log: pathlib.Path | None = None,
        args: t.Sequence[str] = (),
    ) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with log.open("ab") if log is not None else contextlib.nullcontext() as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bff.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                 "--workers", "1", "--threads", str(threads), *args],
                env={**os.environ, **_NO_RATE_LIMITS, **env},
                stdout=subprocess.PIPE if sink is None else sink,
                stderr=subprocess.PIPE if sink is None else sink,
                start_new_session=True,
            )
        self._output: list[bytes] = []
        self._output_lock = threading.Lock()
        self._drains = [
            threading.Thread(target=self._drain, args=(stream,), daemon=True)
            for stream in (self.process.stdout, self.process.stderr) if stream is not None
        ]
        for drain in self._drains:
            drain.start()
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

    def _drain(self, stream: t.IO[bytes]) -> None:
        for line in iter(stream.readline, b""):
            with self._output_lock:
                self._output.append(line)

    def output(self) -> str:
        """Everything the process (master and workers) wrote to stdout and stderr so far."""
        if self.log is not None:
            return self.log.read_text(errors="replace")
        with self._output_lock:
            return b"".join(self._output).decode(errors="replace")

    def stderr_tail(self, chars: int = 2000) -> str:
        """The end of what the process wrote."""
        return self.output()[-chars:]

    def _close_pipes(self) -> None:
        """Once the process has exited: read what is left, then close the pipes."""
        for drain in self._drains:
            drain.join(timeout=10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    def terminate(self, timeout: float = 40) -> int:
        """SIGTERM to the master alone, as an orchestrator sends it; its exit code once it has exited."""
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        self._close_pipes()
        return code

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
        self._close_pipes()

