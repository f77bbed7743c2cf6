"""The ``waterfall-asgi`` command: ``serve``, ``check-config``, ``demo``, ``usage`` and
``explain``."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import ConfigError, load_config

if TYPE_CHECKING:
    from .cost import Candidate, Ranking

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
    shared = ""
    if config.cooldowns.url is not None:
        from .cooldown_redis import redact_url

        where = redact_url(config.cooldowns.url.get_secret_value())
        shared = f"; cooldowns shared in Redis at {where} (prefix {config.cooldowns.prefix})"
    print(f"{path}: OK — {len(config.providers)} providers, chains: {chains}{shared}")
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
    from .app import create_app, tune_gc

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
    tune_gc()  # what is loaded by now lives as long as the process (see tune_gc)
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


def _read_request(source: str) -> dict[str, Any]:
    """The JSON object in file ``source`` (``-``: stdin); ValueError says what is wrong."""
    name = "<stdin>" if source == "-" else source
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{name}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{name}: not UTF-8 text (at byte {exc.start})") from None
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{name}: not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{name}: a request must be a JSON object")
    return payload


def _number(value: Decimal | None) -> str | None:
    return None if value is None else format(value.normalize(), "f")


def _candidate(c: Candidate) -> dict[str, Any]:
    price = c.price
    return {
        "deployment": c.deployment.key,
        "provider": c.deployment.provider,
        "model": c.deployment.model,
        "quality": _number(c.quality),
        "estimate": _number(c.estimate),
        "worst_case": _number(c.worst_case),
        "price": None
        if price is None
        else {
            "unit": price.unit,
            "per": price.per,
            "prompt": _number(price.prompt),
            "completion": _number(price.completion),
            "request": _number(price.request),
        },
    }


def _ranking_json(ranking: Ranking, error: dict[str, Any] | None) -> str:
    data = {
        "route": ranking.route,
        "unit": ranking.unit,
        "prompt_tokens": ranking.prompt_tokens,
        "completion_tokens": ranking.completion_tokens,
        "min_quality": _number(ranking.min_quality),
        "budget": ranking.budget,
        "needs": sorted(ranking.needs),
        "ranked": [_candidate(c) for c in ranking.ranked],
        "excluded": [{**_candidate(c), "reason": c.excluded} for c in ranking.excluded],
        "reference": None if ranking.reference is None else _candidate(ranking.reference),
        "error": error,
    }
    return json.dumps(data, ensure_ascii=False, indent=2)


def _explain(args: argparse.Namespace) -> int:
    from .cost import NoFittingDeployment, rank, request_limits

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        _report(args.config, exc)
        return 1
    try:
        payload = _read_request(args.request)
        route = payload.get("model")
        if not isinstance(route, str) or route not in config.routes:
            routes = ", ".join(config.routes) or "none"
            raise ValueError(f"model {route!r} names no cost route (routes: {routes})")
        min_quality, budget = request_limits(
            config, route, args.min_quality, args.budget, names=("--min-quality", "--budget")
        )
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        ranking = rank(config, route, payload, min_quality=min_quality, budget=budget)
    except NoFittingDeployment as exc:
        error = {"status": exc.status, "type": exc.type, "code": exc.code, "message": exc.message}
        print(_ranking_json(exc.ranking, error) if args.json else exc.ranking.explain())
        print(exc.message, file=sys.stderr)
        return 1
    print(_ranking_json(ranking, None) if args.json else ranking.explain())
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
    explain = sub.add_parser(
        "explain",
        help="how a cost route ranks a request: estimates, and why each deployment is excluded",
        description="Rank the candidates of the cost route a request's model names, as the "
        "router would (config prices only: none are imported from providers). Exit 1 if "
        "nothing fits, with the explanation all the same.",
    )
    explain.add_argument("--config", required=True, help="a config file (.toml, .yaml, .json)")
    explain.add_argument("request", help="the request's JSON body: a file, or - for stdin")
    explain.add_argument(
        "--min-quality", help="as the x-waterfall-min-quality header (within quality_bounds)"
    )
    explain.add_argument("--budget", help="as the x-waterfall-budget header (whole units)")
    explain.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    if args.command == "explain":
        return _explain(args)
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
