"""The ``bff`` command: ``serve``, ``emulator``, ``demo`` and ``check``.

Configuration problems end the process with one line naming the variable, and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import typing as t

from .settings import ConfigError, Settings, variables

__all__ = ["main"]


def _fail(message: str | ConfigError, code: int = 2) -> t.NoReturn:
    """Stop with one line per problem (every bad variable of a :class:`ConfigError`)."""
    lines = message.lines() if isinstance(message, ConfigError) else [message]
    for line in lines:
        print(f"bff: {line}", file=sys.stderr)
    raise SystemExit(code)


def _serve(args: argparse.Namespace) -> None:
    """Production serving through gunicorn.

    gevent workers by default: every connection is a greenlet, so a hung identity provider or My
    Account API, or clients that send their requests slowly, hold no thread that ``/healthz`` or other
    users would wait for. gunicorn's own HTTP parser keeps giving the raw request target (``RAW_URI``)
    that the proxy's allowlist judges.
    """
    if args.worker_class == "gevent":
        # Before anything imports ssl, sockets or threads: the workers inherit a patched world instead
        # of patching over modules the master already loaded.
        from gevent import monkey

        monkey.patch_all()
    from gunicorn.app.base import BaseApplication

    from . import logs, metrics

    try:
        settings = Settings.from_env()
        if settings.session_store is None:
            raise ConfigError("BFF_SESSION_STORE", "is required but not set")
        if settings.metrics_address in (f"{args.host}:{args.port}", f"[{args.host}]:{args.port}"):
            raise ConfigError("BFF_METRICS_ADDRESS", "must not be the public address (--host, --port)")
        log_format = settings.log_format or "json"
        logs.configure(log_format)
        metrics_dir = None
        if settings.metrics_address:
            # Before the first metric exists and before any worker forks: every worker counts in files
            # of its own here, and the listener in this (master) process adds them up.
            try:
                metrics_dir = tempfile.mkdtemp(prefix="bff-metrics-")
            except OSError as error:
                raise ConfigError("BFF_METRICS_ADDRESS", f"no writable temporary directory ({error})") from error
            metrics.enable_multiprocess(metrics_dir)
        from .app import create_app

        create_app(settings)  # fail fast in the master, before any worker starts
    except ConfigError as error:
        _fail(error)
    try:
        listener = _metrics_listener(settings.metrics_address)
    except SystemExit:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        raise

    options: dict[str, t.Any] = {
        "bind": f"{args.host}:{args.port}",
        "workers": args.workers,
        "worker_class": args.worker_class,
        "threads": args.threads,
        "timeout": 60,
        "graceful_timeout": 20,
        "keepalive": 5,
        # Room for the proxy allowlist's long queries: gunicorn's largest bounded request line (default 4094;
        # it cuts any larger value to 8190, and 0 lifts the bound). A longer line gets gunicorn's own 414, an
        # HTML page: gunicorn writes that answer itself, so it cannot be a problem+json.
        "limit_request_line": 8190,
        # gunicorn's error log in BFF_LOG_FORMAT, and no access log of its own: the BFF writes one access
        # line per request itself, naming the route template (gunicorn's would repeat it, with the path).
        "logger_class": logs.gunicorn_logger_class(log_format),
        "control_socket_disable": True,
        "proc_name": "bff",
        # Only BFF_TRUSTED_PROXIES may set the scheme, and only with X-Forwarded-Proto (gunicorn's default
        # trusts loopback and two more headers); no peer may set WSGI variables such as PATH_INFO.
        "forwarded_allow_ips": ",".join(str(network) for network in settings.trusted_proxies),
        "secure_scheme_headers": {"X-FORWARDED-PROTO": "https"},
        "forwarder_headers": "",
    }

    if listener is not None:
        options["post_fork"] = lambda server, worker: listener.close_inherited()
        options["child_exit"] = lambda server, worker: metrics.process_exited(worker.pid)

        def on_exit(server: t.Any) -> None:
            listener.close()
            if metrics_dir is not None:
                shutil.rmtree(metrics_dir, ignore_errors=True)

        options["on_exit"] = on_exit

    class _Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                if value is not None:
                    self.cfg.set(key, value)

        def load(self) -> t.Any:
            from .app import create_app

            return create_app(settings)

    _Server().run()


def _metrics_listener(address: str | None) -> t.Any:
    """``/metrics`` on ``address`` (``BFF_METRICS_ADDRESS``), or ``None``; one line and exit 2 if it cannot listen."""
    if not address:
        return None
    from . import metrics

    try:
        return metrics.listen(address)
    except OSError as error:
        _fail(f"BFF_METRICS_ADDRESS: cannot listen on {address} ({error.strerror or error})")


def _env_setting(variable: str) -> t.Any:
    """One ``BFF_*`` variable parsed as the settings parse it (for ``demo``, which builds its own settings)."""
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return None
    try:
        return variables()[variable].metadata["parse"](raw)
    except ValueError as error:
        _fail(f"{variable}: {error}")


def _emulator(args: argparse.Namespace) -> None:
    """Run the local Auth0 emulator, over HTTPS with ``--certfile`` (and ``--keyfile``).

    Its packages are the ``emulator`` extra, which a production install does not carry; without them the
    command says in one line how to get them (exit 2) instead of ending in a traceback. Missing ``BFF_*``
    variables or unreadable certificate files also end in one line and exit 2.
    """
    try:
        from .emulator.server import run
    except ModuleNotFoundError as error:
        # Only the extra's own packages: any other missing module is a real fault and keeps its traceback.
        if (error.name or "").partition(".")[0] not in {"webauthn", "pyotp", "cbor2"}:
            raise
        _fail("the emulator needs its extra: pip install 'bff[emulator]'")

    if args.keyfile and not args.certfile:
        _fail("--keyfile needs --certfile")
    try:
        dpop = {"require_proof_of_possession": args.require_dpop, "dpop_nonce": args.dpop_nonce,
                "dpop_api_nonce": args.dpop_nonce}
        run(args.host, args.port, certfile=args.certfile, keyfile=args.keyfile,
            settings={name: True for name, on in dpop.items() if on})
    except ConfigError as error:
        _fail(error)
    except ValueError as error:
        _fail(str(error))


def _demo(args: argparse.Namespace) -> None:
    """Run the emulator, the BFF and the demo SPA; like ``emulator``, one line when the extra is missing."""
    try:
        # Imported here rather than first inside run_demo, so a missing extra fails before anything starts.
        from . import emulator  # noqa: F401
    except ModuleNotFoundError as error:
        if (error.name or "").partition(".")[0] not in {"webauthn", "pyotp", "cbor2"}:
            raise
        _fail("the emulator needs its extra: pip install 'bff[emulator]'")
    import logging

    from . import logs
    from .demo import run_demo

    logs.configure(_env_setting("BFF_LOG_FORMAT") or "text")
    # The BFF writes its own access lines; the demo's servers would repeat each request.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    _metrics_listener(_env_setting("BFF_METRICS_ADDRESS"))
    run_demo(host=args.host, port=args.port, emulator_port=args.emulator_port)


def _check(args: argparse.Namespace) -> None:
    """Validate configuration, reach the IdP's discovery document, ping the store."""
    problems: list[str] = []
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        _fail(error, 1)
    from .clock import SystemClock
    from .errors import Problem
    from .oidc import Provider

    skipped: list[str] = []
    dpop: str | None = None
    try:
        provider = Provider(settings, SystemClock())
        skipped = provider.skipped_features()
        dpop = provider.dpop_status()
        if settings.dpop and provider.dpop_algorithm() is None:
            problems.append(f"BFF_DPOP: the provider's {dpop}")
        credentials = _client_authentication(settings, provider)
        if credentials is not None:
            problems.append(credentials)
    except Problem as problem:
        problems.append(f"BFF_ISSUER_URL: {problem.detail}")
    if settings.session_store is None:
        problems.append("BFF_SESSION_STORE: is required but not set")
    else:
        from .store import StoreUnavailable, open_store

        try:
            store = open_store(settings.session_store)
            store.ping()
            store.close()
        except ValueError as error:
            problems.append(f"BFF_SESSION_STORE: {error}")
        except StoreUnavailable:
            problems.append("BFF_SESSION_STORE: the session store is not answering or refuses writes")
    try:
        from .proxy.matching import RouteTable

        RouteTable.from_config(settings.proxy_routes)
    except ValueError as error:
        problems.append(f"BFF_PROXY_ROUTES: {error}")
    for problem_line in problems:
        print(problem_line, file=sys.stderr)
    if problems:
        raise SystemExit(1)
    notes = [*(f"the provider advertises {item}" for item in skipped), *_advice(settings)]
    if dpop is not None:
        notes.append(f"DPoP {'on' if settings.dpop else 'off'} (BFF_DPOP); discovery advertises {dpop}")
    for note in notes:
        print(f"note: {note}")
    print("configuration ok")


def _client_authentication(settings: Settings, provider: t.Any) -> str | None:
    """Whether the token endpoint accepts the BFF's client credentials; a problem line when it does not.

    A refresh-token grant with a token that cannot exist: a provider that authenticates the client
    first answers ``invalid_grant`` (credentials fine), ``invalid_client`` or ``unauthorized_client``
    when they are wrong or the grant is not allowed. Nothing is created or changed at the provider.
    """
    from .clock import SystemClock
    from .dpop import DpopKey
    from .tokens.endpoint import TokenClient, TokenFailure

    # With DPoP, as the BFF will call: a provider that requires proofs refuses a grant without one.
    algorithm = provider.dpop_algorithm() if settings.dpop else None
    result = TokenClient(settings, SystemClock()).refresh(
        provider.endpoint("token_endpoint"), "bff-check-no-such-token", audience=None, scope=None,
        dpop=DpopKey.generate(algorithm) if algorithm else None,
    )
    if not isinstance(result, TokenFailure) or result.kind == "invalid_grant":
        return None
    if result.error in ("invalid_client", "unauthorized_client"):
        return (f"BFF_CLIENT_SECRET: the token endpoint refused the client's credentials or grant "
                f"({result.error}: {result.description})")
    if result.kind in ("unavailable", "ambiguous", "server_error"):
        return f"BFF_ISSUER_URL: the token endpoint is not answering well ({result.error})"
    return None


def _advice(settings: Settings) -> list[str]:
    """What is valid but leaves users exposed to an infrastructure fault."""
    notes = []
    if settings.refresh_token_overlap <= settings.token_timeout:
        notes.append(
            f"BFF_REFRESH_TOKEN_OVERLAP is {settings.refresh_token_overlap}s, not above BFF_TOKEN_TIMEOUT "
            f"({settings.token_timeout:g}s): a refresh whose outcome is unknown (the IdP hung or the "
            "connection broke) ends that session. Set the tenant's refresh-token rotation overlap "
            "(Reuse Interval) and this variable to the same value, above the token timeout "
            "(docs/operations.md)."
        )
    return notes


def main(argv: t.Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bff", description="Backend-for-frontend for SPAs on Auth0.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the BFF with gunicorn")
    serve.add_argument("--host", default=os.environ.get("BFF_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("BFF_PORT", "8000")))
    serve.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    serve.add_argument("--threads", type=int, default=8, help="threads per gthread worker")
    serve.add_argument("--worker-class", choices=["gevent", "gthread"], default="gevent",
                       help="gunicorn worker class (default gevent: idle and slow connections cost no thread)")
    serve.add_argument("--access-log", action="store_true",
                       help="accepted for compatibility: the BFF always writes one access line per request")
    serve.set_defaults(handler=_serve)

    emulator = commands.add_parser("emulator", help="run the local Auth0 emulator")
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=9000)
    emulator.add_argument("--certfile", help="serve HTTPS with this PEM certificate (chain)")
    emulator.add_argument("--keyfile", help="the certificate's PEM private key, unless it is in --certfile")
    emulator.add_argument("--require-dpop", action="store_true",
                          help="the application requires DPoP-bound tokens (Require Sender Constraining)")
    emulator.add_argument("--dpop-nonce", action="store_true",
                          help="the token endpoint and the My Account API require DPoP nonces")
    emulator.set_defaults(handler=_emulator)

    demo = commands.add_parser("demo", help="run the emulator, the BFF and the demo SPA on loopback")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--emulator-port", type=int, default=0)
    demo.set_defaults(handler=_demo)

    check = commands.add_parser("check", help="validate configuration and reach the IdP and the store")
    check.set_defaults(handler=_check)

    args = parser.parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()
