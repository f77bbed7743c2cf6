"""waterfall-fakes: OpenAI-compatible fake LLM providers with scripted faults.

Pick a way to run a fake:

- :class:`FakeTransport`: in-process, for ``httpx`` clients, chunk-exact;
- :class:`FakeApp`: a raw ASGI app;
- :class:`FakeServer`: a real loopback server in a background thread;
- ``waterfall-fakes serve``: the same from the command line, for any language.

All of them play back what a :class:`FakeProvider` decides, and every behaviour is described in
:mod:`waterfall_fakes.behaviours`. All of them answer the control plane under ``/_fake``
(:mod:`waterfall_fakes.control`): the journal, a reset, the config and the conduct verdict.

A fake speaks three dialects (:mod:`waterfall_fakes.dialects`): OpenAI Chat Completions, the
OpenAI Responses API and Anthropic Messages.
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
    ContextStyle,
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
    ToolCall,
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
from .control import (
    CONTROL_PREFIX,
    CONTROL_VERSION,
    ControlError,
    control_reply,
    is_control_path,
)
from .dialects import (
    ANTHROPIC_ERROR_TYPES,
    API_PATHS,
    FRAGMENT_CHARS,
    Api,
    ToolCallPlan,
    anthropic_error,
    anthropic_error_type,
    argument_fragments,
    count_input_tokens,
    offered_tools,
    plan_tool_call,
    tool_arguments,
    tool_choice_forces,
)
from .journal import (
    JOURNAL_VERSION,
    Delivery,
    DeliveryEnd,
    entry_json,
    journal_json,
    usage_sent,
)
from .network import FakeNetwork
from .provider import FakeConfig, FakeProvider, RecordedRequest, Reply, chunk_bytes
from .ratelimit import (
    Limits,
    RateLimiter,
    Verdict,
    format_duration,
    format_rfc3339,
    rate_limit_headers,
    remaining_headers,
)
from .rules import Draw, Rule, RuleStatus, request_text
from .samples import STREAM_SAMPLES, StreamSample, stream_sample
from .server import FakeServer, LoopbackServer
from .transport import FakeTransport, ReplyStream, read_timeout
from .verdict import (
    CONDUCT_CHECKS,
    ConductCheck,
    ConductThresholds,
    ConductVerdict,
    ConductViolation,
    assert_good_conduct,
    hint_seconds,
    judge_conduct,
)

__version__ = "0.1.0"

__all__ = [
    "ANTHROPIC_ERROR_TYPES",
    "API_PATHS",
    "BEHAVIOUR_HEADER",
    "CONDUCT_CHECKS",
    "CONTROL_PREFIX",
    "CONTROL_VERSION",
    "DEFAULT_MODELS",
    "FRAGMENT_CHARS",
    "JOURNAL_VERSION",
    "STREAM_SAMPLES",
    "WORDS",
    "Api",
    "Behaviour",
    "BehaviourError",
    "BigEvent",
    "Chunking",
    "ConductCheck",
    "ConductThresholds",
    "ConductVerdict",
    "ConductViolation",
    "ConnectionCut",
    "ContentFilter",
    "ContextLengthExceeded",
    "ContextStyle",
    "ControlError",
    "Cut",
    "Delivery",
    "DeliveryEnd",
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
    "StreamSample",
    "ToolCall",
    "ToolCallPlan",
    "Truncate",
    "Verdict",
    "When",
    "anthropic_error",
    "anthropic_error_type",
    "argument_fragments",
    "assert_good_conduct",
    "chunk_bytes",
    "control_reply",
    "count_input_tokens",
    "count_prompt_tokens",
    "dumps",
    "entry_json",
    "format_behaviours",
    "format_duration",
    "format_rfc3339",
    "hint_seconds",
    "is_control_path",
    "journal_json",
    "judge_conduct",
    "message_text",
    "offered_tools",
    "parse_behaviours",
    "plan_tool_call",
    "rate_limit_headers",
    "read_timeout",
    "remaining_headers",
    "reply_words",
    "request_text",
    "stream_sample",
    "tool_arguments",
    "tool_choice_forces",
    "usage_sent",
]
