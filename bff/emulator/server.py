"""Serving the emulator over HTTP or HTTPS on loopback.

Security first: the emulator signs tokens for anyone who asks its control endpoints, so it refuses to bind
to anything but a loopback address. With a certificate it serves TLS, so its issuer and the My Account
audience are ``https://`` URLs, as at Auth0; the key stays where the caller keeps it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import threading
import types
import typing as t

from werkzeug.serving import make_server

from bff.emulator.app import create_emulator_app
from bff.emulator.state import Clock, EmulatorConfig, EmulatorState

__all__ = [
    "EmulatorServer",
    "run",
    "tls_context",
]


def tls_context(certfile: str | os.PathLike[str], keyfile: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """A TLS server context (TLS 1.2 and later) for the PEM certificate chain and key.

    ``keyfile`` may be left out when the key is in ``certfile``. Raises ``ValueError`` naming the files
    when they cannot be read or do not match.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as error:
        named = f"{certfile}" + (f" and {keyfile}" if keyfile else "")
        raise ValueError(f"cannot load the TLS certificate and key from {named}: {error}") from error
    return context


class EmulatorServer:
    """The emulator in a background thread, on a free port unless ``port`` is given.

    The socket is bound before the state is built because the issuer (``url`` + ``/``) must name the
    port actually bound. With ``ssl_context``, or ``certfile`` (and ``keyfile``), it serves HTTPS and ``url``
    is ``https://...``; the certificate must name the host (``127.0.0.1``) for clients to accept it.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock | None = None,
        ssl_context: ssl.SSLContext | None = None,
        certfile: str | os.PathLike[str] | None = None,
        keyfile: str | os.PathLike[str] | None = None,
    ) -> None:
        address = ipaddress.ip_address(host)
        if not address.is_loopback:
            raise ValueError(f"the emulator binds to loopback only, not {host}")
        if ssl_context is not None and certfile is not None:
            raise ValueError("give ssl_context or certfile, not both")
        if keyfile is not None and certfile is None:
            raise ValueError("a keyfile needs its certfile")
        if certfile is not None:
            ssl_context = tls_context(certfile, keyfile)
        listener = socket.create_server(
            (host, port), family=socket.AF_INET6 if address.version == 6 else socket.AF_INET
        )
        bound_port = listener.getsockname()[1]
        scheme = "http" if ssl_context is None else "https"
        self.url = f"{scheme}://{f'[{host}]' if address.version == 6 else host}:{bound_port}"
        try:
            self.state = EmulatorState(config or EmulatorConfig.from_env(), self.url + "/", clock=clock)
            self._server = make_server(
                host, bound_port, create_emulator_app(self.state), threaded=True, fd=listener.fileno()
            )
        finally:
            # make_server duplicated the descriptor; this copy is no longer needed.
            listener.close()
        if ssl_context is not None:
            # Wrapped here rather than by make_server, to leave the handshake to the connection's own
            # thread: a client that connects and says nothing must not stall the accept loop for everyone.
            self._server.socket = ssl_context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
            self._server.ssl_context = ssl_context
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


def run(
    host: str,
    port: int,
    *,
    certfile: str | os.PathLike[str] | None = None,
    keyfile: str | os.PathLike[str] | None = None,
    settings: t.Mapping[str, t.Any] | None = None,
) -> None:
    """Serve the emulator in the foreground, configured from ``BFF_*`` variables (``bff emulator``).

    With ``certfile`` (and ``keyfile`` unless the key is in it) over HTTPS; ``settings`` are token settings
    to start with (``require_proof_of_possession``, ``dpop_nonce``, ...). Bad configuration or unreadable
    certificate files raise ``ValueError`` before anything is served.
    """
    server = EmulatorServer(EmulatorConfig.from_env(), host=host, port=port, certfile=certfile, keyfile=keyfile)
    if settings:
        server.state.configure(**settings)
    print(f"Auth0 emulator at {server.url}/ (log in as alice@example.com / alice)", flush=True)
    print(f"  codes sent by email or text message: {server.url}/inbox", flush=True)
    server.serve_forever()
