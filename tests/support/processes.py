"""BFF instances as separate gunicorn processes sharing one store (several hosts, in miniature)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import typing as t

import requests


class BffProcess:
    def __init__(self, port: int, env: t.Mapping[str, str], *, threads: int = 32) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bff.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--threads", str(threads)],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("bff serve exited: " + self.process.stderr.read().decode()[-2000:])  # type: ignore[union-attr]
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.1)
        raise RuntimeError("bff serve did not start")

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
