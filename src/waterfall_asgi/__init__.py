"""waterfall-asgi: an OpenAI-compatible LLM router as pure ASGI middleware."""

__version__ = "0.1.0"

__all__ = ["__version__"]
