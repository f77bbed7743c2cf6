"""``waterfall-asgi demo`` (placeholder)."""


def run() -> int:
    """Run the demo."""
    return 0
