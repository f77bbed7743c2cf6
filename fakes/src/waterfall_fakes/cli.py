"""``waterfall-fakes``: run a fake provider from the command line, for any language's CI.

``waterfall-fakes serve --port 0`` prints the base URL (``http://127.0.0.1:PORT/v1``) as its
first line of standard output, then serves until SIGINT or SIGTERM, and exits 0.
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

import uvicorn
from pydantic import ValidationError

from .asgi import FakeApp
from .behaviours import Behaviour, BehaviourError, parse_behaviours
from .provider import FakeConfig, FakeProvider
from .server import _FILTER, _listen, _Server

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
    except (OSError, ValueError, ValidationError, BehaviourError) as exc:
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
    args = parser.parse_args(argv)
    if args.command == "behaviours":
        print(_describe())
        return 0
    return _serve(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
