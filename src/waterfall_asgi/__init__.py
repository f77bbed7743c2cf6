"""waterfall-asgi: an OpenAI-compatible LLM router as pure ASGI middleware.

Mount :class:`WaterfallMiddleware` around any ASGI app (FastAPI, Starlette, a bare callable), or
run :func:`create_app` on its own; configure it with :class:`RouterConfig` or a file
(:func:`load_config`).
"""

from .app import GC_YOUNG_THRESHOLD, create_app, tune_gc
from .config import (
    ConfigError,
    CooldownSettings,
    Deployment,
    LedgerSettings,
    Limits,
    ModelInfo,
    Price,
    Provider,
    Rate,
    Route,
    RouterConfig,
    RoutingPolicy,
    Timeouts,
    UpstreamSettings,
    ceil_units,
    load_config,
)
from .cooldown import (
    CooldownStore,
    InMemoryCooldownStore,
    parse_duration,
    preemptive_hint,
    retry_hint,
)
from .cooldown_redis import RedisCooldownStore, redact_url
from .cost import (
    Candidate,
    NoFittingDeployment,
    PromptEstimator,
    Ranking,
    convert,
    estimate_prompt_tokens,
    rank,
    request_limits,
    required_capabilities,
)
from .deadline import Deadline
from .errors import RouterError, error_body, send_error
from .ledger import (
    TERMINAL_STATUSES,
    LedgerStore,
    MemoryLedger,
    Status,
    UsageRecord,
    new_request_id,
)
from .ledger_sqlite import LedgerError, SQLiteLedger, read_records
from .middleware import WaterfallMiddleware, with_usage
from .pricing import (
    DEFAULT_MAX_BYTES,
    ImportStyle,
    PriceBook,
    PriceImportError,
    missing_prices,
    models_url,
    parse_models,
)
from .relay import (
    ClientWatch,
    EventAligner,
    RelayOutcome,
    WatchStarter,
    error_event,
    relay_stream,
)
from .router import Attempt, Exhausted, Router, Served, forwarded_headers
from .sse import BLANK_LINE, SSEEvent, SSEParser, after_last_blank_line
from .upstream import (
    AiohttpUpstream,
    HttpxUpstream,
    Upstream,
    UpstreamConnectError,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamTransportError,
    as_upstream,
)
from .usage import StreamObserver, UsageResult, observe_body, usage_only_chunk
from .usage_report import GROUP_KEYS, GroupUsage, UsageReport, parse_since, read_usage

__version__ = "0.1.0"

__all__ = [
    "BLANK_LINE",
    "DEFAULT_MAX_BYTES",
    "GC_YOUNG_THRESHOLD",
    "GROUP_KEYS",
    "TERMINAL_STATUSES",
    "AiohttpUpstream",
    "Attempt",
    "Candidate",
    "ClientWatch",
    "ConfigError",
    "CooldownSettings",
    "CooldownStore",
    "Deadline",
    "Deployment",
    "EventAligner",
    "Exhausted",
    "GroupUsage",
    "HttpxUpstream",
    "ImportStyle",
    "InMemoryCooldownStore",
    "LedgerError",
    "LedgerSettings",
    "LedgerStore",
    "Limits",
    "MemoryLedger",
    "ModelInfo",
    "NoFittingDeployment",
    "Price",
    "PriceBook",
    "PriceImportError",
    "PromptEstimator",
    "Provider",
    "Ranking",
    "Rate",
    "RedisCooldownStore",
    "RelayOutcome",
    "Route",
    "Router",
    "RouterConfig",
    "RouterError",
    "RoutingPolicy",
    "SQLiteLedger",
    "SSEEvent",
    "SSEParser",
    "Served",
    "Status",
    "StreamObserver",
    "Timeouts",
    "Upstream",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamResponse",
    "UpstreamSettings",
    "UpstreamTimeout",
    "UpstreamTransportError",
    "UsageRecord",
    "UsageReport",
    "UsageResult",
    "WatchStarter",
    "WaterfallMiddleware",
    "after_last_blank_line",
    "as_upstream",
    "ceil_units",
    "convert",
    "create_app",
    "error_body",
    "error_event",
    "estimate_prompt_tokens",
    "forwarded_headers",
    "load_config",
    "missing_prices",
    "models_url",
    "new_request_id",
    "observe_body",
    "parse_duration",
    "parse_models",
    "parse_since",
    "preemptive_hint",
    "rank",
    "read_records",
    "read_usage",
    "redact_url",
    "relay_stream",
    "request_limits",
    "required_capabilities",
    "retry_hint",
    "send_error",
    "tune_gc",
    "usage_only_chunk",
    "with_usage",
]
