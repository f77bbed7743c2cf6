"""The ``waterfall-asgi`` command: ``serve``, ``check-config`` and ``demo``."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Iterator

from .config import ConfigError, load_config

__all__ = ["main"]


def _report(path: str, exc: ConfigError) -> None:
    print(f"{path}: invalid config", file=sys.stderr)
    for line in str(exc).splitlines():
        print(f"  {line}", file=sys.stderr)


def _check(path: str) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        _report(path, exc)
        return 1
    chains = ", ".join(f"{k} ({len(v)} entries)" for k, v in config.chains.items()) or "none"
    print(f"{path}: OK — {len(config.providers)} providers, chains: {chains}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:  # pragma: no cover - depends on the installed extras
        print("serve needs uvicorn: pip install 'waterfall-asgi[server]'", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        _report(args.config, exc)
        return 1
    from .app import create_app

    class Server(uvicorn.Server):
        """uvicorn's server, but a handled SIGINT/SIGTERM ends the process normally (exit 0)
        instead of being raised again after the graceful shutdown."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            handled = (signal.SIGINT, signal.SIGTERM)
            originals = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in originals.items():
                    signal.signal(sig, handler)

    server = Server(
        uvicorn.Config(
            create_app(config),
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            lifespan="on",
        )
    )
    server.run()
    return 0 if server.started else 3


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``waterfall-asgi`` command."""
    parser = argparse.ArgumentParser(
        prog="waterfall-asgi", description="An OpenAI-compatible waterfall LLM router."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the standalone proxy")
    serve.add_argument("--config", required=True, help="a config file (.toml, .yaml, .json)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    check = sub.add_parser("check-config", help="validate a config file and say what is wrong")
    check.add_argument("file")
    sub.add_parser("demo", help="a tour on embedded defaults: fake providers on loopback")
    args = parser.parse_args(argv)
    if args.command == "check-config":
        return _check(args.file)
    if args.command == "serve":
        return _serve(args)
    from .demo import run

    return run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
