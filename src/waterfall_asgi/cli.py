"""The ``waterfall-asgi`` command: ``serve``, ``check-config``, ``demo`` and ``usage``."""

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


def _since(text: str) -> float:
    from .usage_report import parse_since

    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _by(text: str) -> tuple[str, ...]:
    from .usage_report import GROUP_KEYS

    keys = tuple(k.strip() for k in text.split(","))
    if not all(k in GROUP_KEYS for k in keys) or len(set(keys)) != len(keys):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give one or more of {', '.join(GROUP_KEYS)}, separated by commas"
        )
    return keys


def _usage(args: argparse.Namespace) -> int:
    from .ledger_sqlite import LedgerError
    from .usage_report import read_usage

    try:
        report = read_usage(args.db, by=args.by, since=args.since)
    except LedgerError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(report.to_json() if args.json else report.table())
    return 0


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
    usage = sub.add_parser("usage", help="what the usage ledger recorded, grouped and totalled")
    usage.add_argument(
        "--db", default="waterfall-usage.db", help="the ledger file (default: %(default)s)"
    )
    usage.add_argument(
        "--since", type=_since, help="only requests since: a span (30m, 1h, 2d) or an ISO date/time"
    )
    usage.add_argument(
        "--by",
        type=_by,
        default=("provider",),
        help="group by provider, model, upstream_model, route or status; several: provider,model",
    )
    usage.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.command == "check-config":
        return _check(args.file)
    if args.command == "serve":
        return _serve(args)
    if args.command == "usage":
        return _usage(args)
    from .demo import run

    return run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
