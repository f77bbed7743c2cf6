"""The ``waterfall-asgi`` command."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``waterfall-asgi`` command."""
    parser = argparse.ArgumentParser(prog="waterfall-asgi")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="a tour on embedded defaults: fake providers on loopback")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run

        return run()
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
