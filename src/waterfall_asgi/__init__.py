"""waterfall-asgi: an OpenAI-compatible LLM router as pure ASGI middleware.

Mount :class:`WaterfallMiddleware` around any ASGI app (FastAPI, Starlette, a bare callable), or
run :func:`create_app` on its own; configure it with :class:`RouterConfig` or a file
(:func:`load_config`).
"""

from .app import create_app
from .config import (
    ConfigError,
    Deployment,
    LedgerSettings,
    Limits,
    Price,
    Provider,
    RouterConfig,
    RoutingPolicy,
    Timeouts,
    load_config,
)
from .cooldown import (
    CooldownStore,
    InMemoryCooldownStore,
    parse_duration,
    preemptive_hint,
    retry_hint,
)
from .errors import RouterError, error_body, send_error
from .ledger import TERMINAL_STATUSES, LedgerStore, MemoryLedger, Status, UsageRecord
from .middleware import WaterfallMiddleware
from .relay import EventAligner, error_event
from .router import Attempt, Exhausted, Router, Served, forwarded_headers
from .sse import SSEEvent, SSEParser

__version__ = "0.1.0"

__all__ = [
    "TERMINAL_STATUSES",
    "Attempt",
    "ConfigError",
    "CooldownStore",
    "Deployment",
    "EventAligner",
    "Exhausted",
    "InMemoryCooldownStore",
    "LedgerSettings",
    "LedgerStore",
    "Limits",
    "MemoryLedger",
    "Price",
    "Provider",
    "Router",
    "RouterConfig",
    "RouterError",
    "RoutingPolicy",
    "SSEEvent",
    "SSEParser",
    "Served",
    "Status",
    "Timeouts",
    "UsageRecord",
    "WaterfallMiddleware",
    "create_app",
    "error_body",
    "error_event",
    "forwarded_headers",
    "load_config",
    "parse_duration",
    "preemptive_hint",
    "retry_hint",
    "send_error",
]
