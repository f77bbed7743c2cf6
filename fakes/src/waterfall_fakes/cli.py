"""``waterfall-fakes``: run a fake provider from the command line, for any language's CI.

``waterfall-fakes serve --port 0`` prints the base URL (``http://127.0.0.1:PORT/v1``) as its
first line of standard output, then serves until SIGINT or SIGTERM, and exits 0.
``waterfall-fakes verdict URL`` judges the conduct of a running fake's client from its journal
(exit 1 when a check fails).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tomllib
import typing
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from pydantic import ValidationError

from .asgi import FakeApp
from .behaviours import Behaviour, BehaviourError, parse_behaviours
from .control import CONTROL_PREFIX
from .provider import FakeConfig, FakeProvider
from .server import _FILTER, _listen, _Server
from .verdict import ConductThresholds, judge_conduct

__all__ = ["load_config", "main"]


def load_config(path: str | Path) -> FakeConfig:
    """Read a fake's config from a ``.json``, ``.toml`` or (with PyYAML) ``.yaml`` file."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    data: Any
    if path.suffix == ".toml":
        data = tomllib.loads(text)
    elif path.suffix in (".yaml", ".yml"):
        import yaml  # type: ignore[import-untyped,unused-ignore]

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    return FakeConfig.model_validate(data)


def _describe() -> str:
    lines = []
    for cls in typing.get_args(typing.get_args(Behaviour)[0]):
        fields = [f"{k}={v.default!r}" for k, v in cls.model_fields.items() if k != "kind"]
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        kind = cls.model_fields["kind"].default
        lines.append(f"{kind}{':' + ','.join(fields) if fields else ''}\n    {doc}")
    return "\n".join(lines)


def _serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config) if args.config else FakeConfig()
        overrides: dict[str, Any] = {}
        if args.seed is not None:
            overrides["seed"] = args.seed
        if args.name is not None:
            overrides["name"] = args.name
        if args.script:
            overrides["script"] = [parse_behaviours(s) for s in args.script]
        if args.cycle:
            overrides["cycle"] = True
        provider = FakeProvider(config, **overrides)
    except ValidationError as exc:  # one line per problem, by key: no dump, no values
        print(f"waterfall-fakes: bad config: {args.config or 'options'}", file=sys.stderr)
        for error in exc.errors(include_url=False, include_input=False):
            where = ".".join(str(p) for p in error["loc"]) or "config"
            message = error["msg"].removeprefix("Value error, ").replace("Input should", "should")
            if error["type"] == "extra_forbidden":
                message = "unknown setting"
            print(f"  {where}: {message}", file=sys.stderr)
        return 2
    except (OSError, ValueError, BehaviourError) as exc:
        print(f"waterfall-fakes: bad config: {exc}", file=sys.stderr)
        return 2
    try:
        sock = _listen(args.host, args.port)
    except OSError as exc:
        print(f"waterfall-fakes: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    sock.listen(128)  # connections made as soon as the URL is printed wait in the backlog
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"http://{host}:{port}/v1", flush=True)
    server = _Server(
        uvicorn.Config(
            FakeApp(provider),
            log_level=args.log_level,
            lifespan="off",
            access_log=args.log_level == "debug",
            timeout_graceful_shutdown=1,
        )
    )
    logging.getLogger("uvicorn.error").addFilter(_FILTER)
    server.run(sockets=[sock])
    sock.close()
    return 0


def _journal_source(where: str) -> dict[str, Any]:
    """The journal at a fake's URL (its root or its ``/v1`` base URL), or in a JSON file."""
    if not where.startswith(("http://", "https://")):
        data = json.loads(Path(where).read_text(encoding="utf-8"))
    else:
        root = where.rstrip("/").removesuffix("/v1")
        answer = httpx.get(root + CONTROL_PREFIX + "/journal", timeout=30)
        answer.raise_for_status()
        data = answer.json()
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise ValueError("not a journal: expected an object with a list of entries")
    return data


def _verdict(args: argparse.Namespace) -> int:
    given = {name: getattr(args, name) for name in ConductThresholds.NAMES}
    try:
        thresholds = ConductThresholds(**{k: v for k, v in given.items() if v is not None})
        journal = _journal_source(args.source)
        verdict = judge_conduct(journal, thresholds)
    except (OSError, ValueError, KeyError, TypeError, httpx.HTTPError) as exc:
        print(f"waterfall-fakes: cannot judge {args.source}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(verdict.to_json(), indent=2))
    else:
        print(verdict.report())
    return 0 if verdict.passed else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``waterfall-fakes`` command."""
    parser = argparse.ArgumentParser(
        prog="waterfall-fakes",
        description="OpenAI-compatible fake LLM providers with scripted faults.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve one fake provider on a loopback port")
    serve.add_argument("--port", type=int, default=0, help="port to listen on (0: any free port)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--config", help="a fake's config file (.json, .toml, .yaml)")
    serve.add_argument("--seed", type=int, help="seed for the replies (overrides the config)")
    serve.add_argument("--name", help="the fake's name (x-fake-name header)")
    serve.add_argument(
        "--script",
        action="append",
        metavar="SPEC",
        help="one script step in header syntax; repeat for more steps",
    )
    serve.add_argument("--cycle", action="store_true", help="repeat the script forever")
    serve.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    sub.add_parser("behaviours", help="list every behaviour and its parameters")
    verdict = sub.add_parser(
        "verdict",
        help="judge the conduct of a fake's client from its journal (exit 1 on failure)",
        description="Judge how the client of a running fake retried, from the fake's journal: "
        "Retry-After honoured, backoff after failures with no hint, no storm, no retry of a "
        "request-fault 4xx, no attempt after being told to stop. Exit 0: passed; 1: failed; "
        "2: the journal could not be read.",
    )
    verdict.add_argument(
        "source", metavar="URL", help="the fake's URL (root or /v1), or a saved journal file"
    )
    verdict.add_argument("--json", action="store_true", help="print the verdict as JSON")
    for name in ConductThresholds.NAMES:
        field = ConductThresholds.model_fields[name]
        verdict.add_argument(
            "--" + name.replace("_", "-"),
            type=float,
            metavar="N",
            help=f"{field.description} (default {field.default})",
        )
    args = parser.parse_args(argv)
    if args.command == "behaviours":
        print(_describe())
        return 0
    if args.command == "verdict":
        return _verdict(args)
    return _serve(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
