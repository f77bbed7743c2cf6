"""waterfall-fakes: OpenAI-compatible fake LLM providers with scripted faults.

Pick a way to run a fake:

- :class:`FakeTransport`: in-process, for ``httpx`` clients, chunk-exact;
- :class:`FakeApp`: a raw ASGI app;
- :class:`FakeServer`: a real loopback server in a background thread;
- ``waterfall-fakes serve``: the same from the command line, for any language.

All of them play back what a :class:`FakeProvider` decides, and every behaviour is described in
:mod:`waterfall_fakes.behaviours`.
"""

from .asgi import ConnectionCut, FakeApp
from .behaviours import (
    BEHAVIOUR_HEADER,
    Behaviour,
    BehaviourError,
    BigEvent,
    Chunking,
    ContentFilter,
    ContextLengthExceeded,
    Cut,
    Dialect,
    DoubleDone,
    ErrorEvent,
    Fields,
    Hang,
    InsufficientBalance,
    KeepAlive,
    LineEndings,
    MalformedEvent,
    NoDone,
    NoUsage,
    Ok,
    Prefill,
    RateLimit,
    SlowChunks,
    SlowFirstByte,
    Stall,
    Status,
    Truncate,
    When,
    format_behaviours,
    parse_behaviours,
)
from .catalog import (
    DEFAULT_MODELS,
    WORDS,
    FakeModel,
    count_prompt_tokens,
    dumps,
    message_text,
    reply_words,
)
from .network import FakeNetwork
from .provider import FakeConfig, FakeProvider, RecordedRequest, Reply, chunk_bytes
from .ratelimit import (
    Limits,
    RateLimiter,
    Verdict,
    format_duration,
    rate_limit_headers,
    remaining_headers,
)
from .rules import Draw, Rule, RuleStatus, request_text
from .server import FakeServer, LoopbackServer
from .transport import FakeTransport, ReplyStream, read_timeout

__version__ = "0.1.0"

__all__ = [
    "BEHAVIOUR_HEADER",
    "DEFAULT_MODELS",
    "WORDS",
    "Behaviour",
    "BehaviourError",
    "BigEvent",
    "Chunking",
    "ConnectionCut",
    "ContentFilter",
    "ContextLengthExceeded",
    "Cut",
    "Dialect",
    "DoubleDone",
    "Draw",
    "ErrorEvent",
    "FakeApp",
    "FakeConfig",
    "FakeModel",
    "FakeNetwork",
    "FakeProvider",
    "FakeServer",
    "FakeTransport",
    "Fields",
    "Hang",
    "InsufficientBalance",
    "KeepAlive",
    "Limits",
    "LineEndings",
    "LoopbackServer",
    "MalformedEvent",
    "NoDone",
    "NoUsage",
    "Ok",
    "Prefill",
    "RateLimit",
    "RateLimiter",
    "RecordedRequest",
    "Reply",
    "ReplyStream",
    "Rule",
    "RuleStatus",
    "SlowChunks",
    "SlowFirstByte",
    "Stall",
    "Status",
    "Truncate",
    "Verdict",
    "When",
    "chunk_bytes",
    "count_prompt_tokens",
    "dumps",
    "format_behaviours",
    "format_duration",
    "message_text",
    "parse_behaviours",
    "rate_limit_headers",
    "read_timeout",
    "remaining_headers",
    "reply_words",
    "request_text",
]
