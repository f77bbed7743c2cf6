"""The ``waterfall-asgi`` command: ``serve``, ``check-config``, ``demo``, ``usage`` and
``explain``."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import signal
import socket
import sys
from collections.abc import Iterator
from decimal import Decimal
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import ConfigError, RouterConfig, load_config
from .redact import redact_url

if TYPE_CHECKING:
    from .cost import Candidate, Ranking

__all__ = ["main"]


def _report(path: str, exc: ConfigError) -> None:
    print(f"{path}: invalid config", file=sys.stderr)
    for line in str(exc).splitlines():
        print(f"  {line}", file=sys.stderr)


def _check_as_mounted(config: RouterConfig) -> None:
    """Raise what the middleware would find wrong with ``config`` beyond its keys (a cost route's
    entry without a price, a reference that cannot be converted), without opening anything."""
    from .cooldown import InMemoryCooldownStore
    from .ledger import MemoryLedger
    from .middleware import WaterfallMiddleware

    mounted = WaterfallMiddleware(
        None, config, ledger=MemoryLedger(), cooldowns=InMemoryCooldownStore()
    )
    if mounted.config_error is not None:
        raise mounted.config_error


def _check(path: str) -> int:
    try:
        config = load_config(path)
        _check_as_mounted(config)
        if config.ledger.url is not None and importlib.util.find_spec("asyncpg") is None:
            raise ConfigError(
                "ledger.url: the PostgreSQL ledger needs asyncpg: "
                "pip install 'waterfall-asgi[postgres]'"
            )
    except ConfigError as exc:
        _report(path, exc)
        return 1
    chains = ", ".join(f"{k} ({len(v)} entries)" for k, v in config.chains.items()) or "none"
    shared = ""
    if config.cooldowns.url is not None:
        where = redact_url(config.cooldowns.url.get_secret_value())
        shared = f"; cooldowns shared in Redis at {where} (prefix {config.cooldowns.prefix})"
    print(f"{path}: OK — {len(config.providers)} providers, chains: {chains}{shared}")
    url = config.ledger.database_url()
    if url is not None:
        print(f"  usage ledger: PostgreSQL at {redact_url(url)}")
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
    from ._serving import guarded_h11, serve_logging
    from .app import create_app, tune_gc

    class Server(uvicorn.Server):
        """uvicorn's server, but a handled SIGINT/SIGTERM ends the process normally (exit 0)
        instead of being raised again after the graceful shutdown, and requests cancelled when
        the graceful shutdown timed out get to record their end before the app shuts down."""

        async def shutdown(self, sockets: list[Any] | None = None) -> None:
            lifespan_shutdown = self.lifespan.shutdown

            async def then_lifespan() -> None:
                await _settle(self.server_state.tasks)
                await lifespan_shutdown()

            self.lifespan.shutdown = then_lifespan
            await super().shutdown(sockets)

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:  # one line on stdout a script can read the URL from
                print(_listening(self, args.host, config.prefix), flush=True)

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
            log_config=serve_logging(args.log_level, args.log_format),
            lifespan="on",
            http=guarded_h11(args.header_timeout),
            h11_max_incomplete_event_size=args.max_header_bytes,
            timeout_keep_alive=args.timeout_keep_alive,
            limit_concurrency=args.limit_concurrency,
            timeout_graceful_shutdown=args.timeout_graceful_shutdown,
        )
    )
    tune_gc()  # what is loaded by now lives as long as the process (see tune_gc)
    server.run()
    return 0 if server.started else 3


async def _settle(tasks: set[Any]) -> None:
    """Wait a little (5 s at most) for cancelled request tasks to finish."""
    import asyncio

    pending = [t for t in tasks if not t.done()]
    if pending:
        await asyncio.wait(pending, timeout=5)


def _listening(server: Any, host: str, prefix: str) -> str:
    """The router's base URL on the port the server is listening on (``--port 0``: the one it
    was given)."""
    port = server.servers[0].sockets[0].getsockname()[1]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{prefix}"


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

    db = args.db
    if args.config is not None:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            _report(args.config, exc)
            return 1
        url = config.ledger.database_url()
        if url is None and config.ledger.path is None:
            print(
                f"{args.config}: the ledger is kept in memory (ledger.path is empty): "
                "there is no file to read",
                file=sys.stderr,
            )
            return 1
        db = url or config.ledger.path
    elif db is None:
        db = "waterfall-usage.db"
    if args.html is not None:
        return _usage_html(db, args.html, args.since)
    try:
        report = read_usage(db, by=args.by, since=args.since)
    except LedgerError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(report.to_json() if args.json else report.table())
    return 0


def _usage_html(db: str, target: str, since: float | None) -> int:
    from .ledger_sqlite import LedgerError, read_records
    from .usage_html import render_html

    shown = redact_url(db) if db.startswith(("postgresql://", "postgres://")) else db
    try:
        records = read_records(db, since=since)
    except LedgerError as exc:
        print(exc, file=sys.stderr)
        return 1
    page = render_html(records, source=shown)
    try:
        Path(target).write_text(page, encoding="utf-8")
    except OSError as exc:
        print(f"{target}: cannot write: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"{target}: the usage report of {len(records)} requests from {shown}")
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
        route = payload.get("model", config.default_chain)
        if isinstance(route, str) and route not in config.routes:
            if args.min_quality is not None or args.budget is not None:
                raise ValueError("--min-quality and --budget are for cost routes only")
            return _explain_chain(config, route, args.json)
        if not isinstance(route, str):
            raise ValueError(f"model {route!r}: give the name of a cost route or a chain")
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
        if args.json:
            print(_ranking_json(exc.ranking, error))
        else:  # the explanation says why each one is out: said once, then the verdict
            print(exc.ranking.explain())
            print(f"nothing fits: the router answers {exc.status} {exc.code}")
        return 1
    print(_ranking_json(ranking, None) if args.json else ranking.explain())
    return 0


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds above 0")
    return value


def _explain_chain(config: RouterConfig, name: str, as_json: bool) -> int:
    import asyncio

    from ._chain_explain import chain_plan, entries_for, read_cooldowns
    from ._config_words import did_you_mean
    from .ledger import MemoryLedger
    from .middleware import WaterfallMiddleware

    plan = None
    if entries_for(config, name) is not None:
        # the cooldown store a router with this config would use (nothing else is opened)
        store = WaterfallMiddleware(None, config, ledger=MemoryLedger()).cooldowns
        cooling, source = asyncio.run(read_cooldowns(store))
        plan = chain_plan(config, name, cooling, source)
    if plan is None:
        names = [*config.routes, *config.chains]
        print(
            f"model {name!r} names no cost route, chain, model or entry"
            f"{did_you_mean(name, names)} (routes: {', '.join(config.routes) or 'none'}; "
            f"chains: {', '.join(config.chains) or 'none'})",
            file=sys.stderr,
        )
        return 1
    print(plan.to_json() if as_json else plan.explain())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``waterfall-asgi`` command."""
    parser = argparse.ArgumentParser(
        prog="waterfall-asgi", description="An OpenAI-compatible waterfall LLM router."
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {metadata.version('waterfall-asgi')}"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the standalone proxy",
        description="Run the router as a standalone OpenAI-compatible proxy. Once it listens, "
        "the first line on stdout is its base URL (e.g. http://127.0.0.1:8000/v1); logs go "
        "to stderr, the access log to stdout.",
    )
    serve.add_argument("--config", required=True, help="a config file (.toml, .yaml, .json)")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on (default: %(default)s, this machine only; 0.0.0.0: every "
        "interface)",
    )
    serve.add_argument(
        "--port",
        type=int,
        default=8000,
        help="the TCP port (default: %(default)s; 0: a free one, printed on stdout)",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="for uvicorn's lines and the router's (one JSON line per request at info)",
    )
    serve.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="text (uvicorn's format; the per-request line's message is a JSON object) or json "
        "(every line one JSON object; a request line's fields at its top level)",
    )
    serve.add_argument(
        "--header-timeout",
        type=_positive,
        default=10.0,
        help="seconds a client has to send a request's headers; a new connection that sends "
        "nothing is closed after as long (default: %(default)s)",
    )
    serve.add_argument(
        "--max-header-bytes",
        type=int,
        default=32 * 1024,
        help="the largest request head (request line and headers); larger: 431 "
        "(default: %(default)s)",
    )
    serve.add_argument(
        "--timeout-keep-alive",
        type=_positive,
        default=5.0,
        help="seconds an idle kept-alive connection stays open (default: %(default)s)",
    )
    serve.add_argument(
        "--limit-concurrency",
        type=int,
        default=2048,
        help="connections (and requests) served at once; more: 503 (default: %(default)s)",
    )
    serve.add_argument(
        "--timeout-graceful-shutdown",
        type=_positive,
        default=30.0,
        help="seconds requests in flight get to finish after SIGTERM; then they are cancelled "
        "and recorded as interrupted (default: %(default)s)",
    )
    check = sub.add_parser("check-config", help="validate a config file and say what is wrong")
    check.add_argument("file")
    sub.add_parser("demo", help="a tour on embedded defaults: fake providers on loopback")
    usage = sub.add_parser("usage", help="what the usage ledger recorded, grouped and totalled")
    ledger = usage.add_mutually_exclusive_group()
    ledger.add_argument(
        "--db",
        help="the ledger: a SQLite file, or a postgresql:// URL (default: waterfall-usage.db)",
    )
    ledger.add_argument(
        "--config",
        help="read the ledger the config file names (ledger.url, or ledger.path relative to "
        "where the router runs: run this from there)",
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
    usage.add_argument(
        "--html",
        metavar="FILE",
        help="write a self-contained HTML page of charts instead (spend and tokens over time "
        "by provider and model, fall-through and error rates, TTFB percentiles)",
    )
    explain = sub.add_parser(
        "explain",
        help="what a request would try: a cost route's ranking (estimates, and why each "
        "deployment is excluded), or a chain's entries and which are cooling",
        description="For a cost route, rank the candidates of the route a request's model "
        "names, as the router would (config prices only: none are imported from providers); "
        "exit 1 if nothing fits, with the explanation all the same. For a chain (or a model, "
        "or one provider/model entry), list the entries a request would try, in order, and "
        "which are cooling down and until when: read from a shared cooldown store when the "
        "config has one (each router process keeps in-memory cooldowns to itself).",
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
