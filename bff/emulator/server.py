"""Serving the emulator over HTTP on loopback.

Security first: the emulator signs tokens for anyone who asks its control endpoints, so it refuses to bind
to anything but a loopback address.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import types

from werkzeug.serving import make_server

from bff.emulator.app import create_emulator_app
from bff.emulator.state import Clock, EmulatorConfig, EmulatorState

__all__ = [
    "EmulatorServer",
    "run",
]


class EmulatorServer:
    """The emulator in a background thread, on a free port unless ``port`` is given.

    The socket is bound before the state is built because the issuer (``url`` + ``/``) must name the
    port actually bound.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock | None = None,
    ) -> None:
        address = ipaddress.ip_address(host)
        if not address.is_loopback:
            raise ValueError(f"the emulator binds to loopback only, not {host}")
        listener = socket.create_server(
            (host, port), family=socket.AF_INET6 if address.version == 6 else socket.AF_INET
        )
        bound_port = listener.getsockname()[1]
        self.url = f"http://{f'[{host}]' if address.version == 6 else host}:{bound_port}"
        self.state = EmulatorState(config or EmulatorConfig.from_env(), self.url + "/", clock=clock)
        try:
            self._server = make_server(
                host, bound_port, create_emulator_app(self.state), threaded=True, fd=listener.fileno()
            )
        finally:
            # make_server duplicated the descriptor; this copy is no longer needed.
            listener.close()
        self._thread: threading.Thread | None = None

    def start(self) -> EmulatorServer:
        # A short poll interval keeps stop() quick; tests start and stop an emulator per test.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="auth0-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted."""
        self._server.serve_forever()

    def stop(self) -> None:
        if self._thread is None:
            self._server.server_close()
            return
        self._server.shutdown()
        self._thread.join()
        self._thread = None

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: types.TracebackType | None
    ) -> None:
        self.stop()


def run(host: str, port: int) -> None:
    """Serve the emulator in the foreground, configured from ``BFF_*`` variables (``bff emulator``)."""
    server = EmulatorServer(EmulatorConfig.from_env(), host=host, port=port)
    print(f"Auth0 emulator at {server.url}/ (log in as alice@example.com / alice)", flush=True)
    server.serve_forever()
