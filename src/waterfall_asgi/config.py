"""Configuration: providers, deployments, chains, the routing policy and limits.

Plain pydantic models, so a config can be built in Python, or loaded from TOML, YAML or JSON with
:func:`load_config`; a mistake is reported with the exact key that is wrong
(:class:`ConfigError`). Secrets are :class:`pydantic.SecretStr`: they never appear in a repr, a
log line or an error message.
"""

from __future__ import annotations

import importlib.util
import json
import os
import tomllib
from collections.abc import Mapping
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ._config_words import did_you_mean, plain_errors

__all__ = [
    "CircuitPolicy",
    "ConfigError",
    "CooldownSettings",
    "Deployment",
    "LedgerSettings",
    "Limits",
    "MetricsSettings",
    "ModelInfo",
    "Price",
    "Provider",
    "Rate",
    "Route",
    "RouterConfig",
    "RoutingPolicy",
    "Timeouts",
    "TracingSettings",
    "UpstreamSettings",
    "ceil_units",
    "load_config",
]

DEFAULT_FALL_THROUGH = frozenset({401, 402, 403, 408, 429, 500, 502, 503, 504})


def _env_secret(name: str) -> SecretStr:
    """The value of the environment variable ``name``, as a secret (checked by the field's own
    validator first; this raises too, for a variable unset between the two checks)."""
    value = os.environ.get(name)
    if value is None:
        raise ValueError(f"environment variable {name} is not set")
    return SecretStr(value)


class ConfigError(ValueError):
    """A config that cannot be used; the message names each wrong key and why."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Model):
    """Upstream timeouts, in seconds."""

    connect: float = Field(default=5.0, gt=0, description="to open a connection")
    first_byte: float = Field(
        default=60.0, gt=0, description="from sending the request to the response headers"
    )
    read: float = Field(default=60.0, gt=0, description="between two body chunks")
    stall: float = Field(
        default=15.0,
        gt=0,
        description="once a stream has begun: seconds without a byte before it is given up "
        "(at most ``read``; unset, it is ``read`` if that is shorter)",
    )
    write: float = Field(default=30.0, gt=0, description="to send the request body")
    pool: float = Field(default=5.0, gt=0, description="to get a connection from the pool")

    @model_validator(mode="after")
    def _check_stall(self) -> Timeouts:
        if self.stall > self.read:
            if "stall" in self.model_fields_set:
                raise ValueError(f"stall ({self.stall:g}) must not exceed read ({self.read:g})")
            object.__setattr__(self, "stall", self.read)
        return self

    def for_headers(self) -> Timeouts:
        """These timeouts for a client waiting for response headers within ``first_byte``: its
        read timeout must not cut that wait short."""
        return (
            self
            if self.read >= self.first_byte
            else self.model_copy(update={"read": self.first_byte})
        )


Api = Literal["chat", "responses", "messages"]
"""An API a provider speaks (see :mod:`waterfall_asgi.dialects`)."""


class Provider(_Model):
    """An upstream API: OpenAI-compatible Chat Completions by default, and the OpenAI Responses
    API or Anthropic Messages where ``apis`` says so.

    The key comes from ``api_key`` or, better, from the environment variable named by
    ``api_key_env`` (read when the config is loaded). It is sent the way the request's API
    sends keys: ``Authorization: Bearer`` for ``chat`` and ``responses``, ``x-api-key`` for
    ``messages``.
    """

    base_url: str = Field(description="e.g. https://api.openai.com/v1")
    api_key: SecretStr | None = None
    api_key_env: str | None = None
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="extra headers to send (treated as secrets: they often carry credentials)",
    )
    apis: tuple[Api, ...] = Field(
        default=("chat",),
        min_length=1,
        description="the APIs it speaks: chat (Chat Completions, with text completions and "
        "embeddings), responses (the OpenAI Responses API), messages (Anthropic Messages); "
        "an entry is tried only for requests in an API its provider speaks",
    )
    timeouts: Timeouts = Field(default_factory=Timeouts)
    import_prices: Literal["openrouter", "routstr", "auto"] | None = Field(
        default=None,
        description="read prices from the provider's GET /models: the OpenRouter style "
        "(`pricing`, USD per token), the Routstr style (`sats_pricing`, sats per token), or "
        "whichever each model carries (auto); config prices always win",
    )

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _check_env(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Checked here rather than only below so that the error names ``api_key_env`` itself.
        # ``api_key`` is declared first: it is in ``info.data`` unless it was itself invalid.
        has_key = info.data.get("api_key") is not None or "api_key" not in info.data
        if value and not has_key and value not in os.environ:
            raise ValueError(f"environment variable {value} is not set")
        return value

    @model_validator(mode="after")
    def _resolve_key(self) -> Provider:
        if self.api_key is None and self.api_key_env:
            object.__setattr__(self, "api_key", _env_secret(self.api_key_env))
        return self

    @field_validator("apis")
    @classmethod
    def _distinct_apis(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(value))

    def secret_headers(self) -> dict[str, str]:
        """The headers every request to this provider carries, names lower-cased: the extra
        ``headers`` and the key as ``Authorization: Bearer`` (the way of ``chat`` and
        ``responses``). Secrets: never log them."""
        own = {k.lower(): v.get_secret_value() for k, v in self.headers.items()}
        if self.api_key is not None:
            own["authorization"] = f"Bearer {self.api_key.get_secret_value()}"
        return own


class Price(_Model):
    """What a deployment costs, exactly: Decimal amounts of ``unit`` per token (or, with
    ``per = "million"``, per million tokens) and per request.

    ``cost`` multiplies exactly and rounds up once, to a whole number of ``unit``; choose a unit
    small enough for that (``msat``, ``usd_micro``, ...).

    >>> Price(unit="msat", prompt="0.15", completion="0.6", request=1).cost(1000, 10)
    157
    >>> Price(unit="usd_micro", prompt="150", completion="600", per="million").cost(1000, 10)
    1
    """

    unit: str = "msat"
    prompt: Decimal = Field(default=Decimal(0), ge=0, description="per prompt token (or million)")
    completion: Decimal = Field(
        default=Decimal(0), ge=0, description="per completion token (or million)"
    )
    request: Decimal = Field(default=Decimal(0), ge=0, description="per request")
    per: Literal["token", "million"] = "token"

    def exact(self, prompt_tokens: int | Decimal, completion_tokens: int | Decimal) -> Decimal:
        """The exact cost, in ``unit``, before any rounding."""
        tokens = prompt_tokens * self.prompt + completion_tokens * self.completion
        if self.per == "million":
            tokens /= Decimal(1_000_000)
        return tokens + self.request

    def cost(self, prompt_tokens: int, completion_tokens: int) -> int:
        """The cost of one request, rounded up once to a whole ``unit``."""
        return ceil_units(self.exact(prompt_tokens, completion_tokens))


def ceil_units(amount: Decimal) -> int:
    """``amount`` rounded up to a whole unit (the one rounding a cost ever gets)."""
    return int(amount.to_integral_value(rounding=ROUND_CEILING))


class Rate(_Model):
    """An explicit exchange rate: one ``source`` unit is worth ``rate`` ``target`` units."""

    source: str
    target: str
    rate: Decimal = Field(gt=0)


class ModelInfo(_Model):
    """What a model can do: its quality score and capabilities, for cost routing."""

    quality: Decimal = Field(default=Decimal(0), description="higher is better")
    context_window: int | None = Field(default=None, ge=1, description="tokens, prompt + reply")
    capabilities: frozenset[Literal["tools", "vision", "json_schema", "prefill"]] = Field(
        default=frozenset(),
        description="``prefill``: it continues an assistant message given last (see "
        "``policy.continue_streams``)",
    )


class Deployment(_Model):
    """One model at one provider: an entry a chain can name as ``provider/model``."""

    provider: str
    model: str
    price: Price | None = None

    @property
    def key(self) -> str:
        """``provider/model``: the name of the entry, and the key of its cooldown."""
        return f"{self.provider}/{self.model}"

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        """Accept ``"provider/model"`` (the model may contain ``/`` itself) for a mapping."""
        if isinstance(value, str):
            provider, sep, model = value.partition("/")
            if not sep or not provider or not model:
                raise ValueError(f"{value!r} is not of the form 'provider/model'")
            return {"provider": provider, "model": model}
        return value


class CircuitPolicy(_Model):
    """When an entry's health circuit opens, and for how long (``[policy.circuit]``).

    Health signals (a 5xx without a hint, a timeout, a reset, a stream that ends before its first
    event) are counted per entry in this process; the circuit opens after ``failures`` of them in
    a row, or when at least ``min_requests`` calls in the last ``window`` seconds saw a failure
    ratio of ``failure_ratio`` or more. It stays open ``open_for`` seconds, then one probe decides;
    each failed probe opens it ``growth`` times longer, up to ``max_open`` (and
    ``policy.max_cooldown``).
    """

    failures: int = Field(default=5, ge=1, description="consecutive failures that open it")
    failure_ratio: float = Field(
        default=0.5, gt=0, le=1, description="failure ratio over the window that opens it"
    )
    window: float = Field(default=60.0, gt=0, description="seconds the ratio is measured over")
    min_requests: int = Field(
        default=20, ge=1, description="calls in the window before the ratio counts"
    )
    open_for: float = Field(default=5.0, gt=0, description="seconds of the first open period")
    growth: float = Field(
        default=2.0, ge=1, description="each failed probe multiplies the open period by this"
    )
    max_open: float = Field(
        default=30.0,
        gt=0,
        description="the longest open period (and never more than policy.max_cooldown): how "
        "soon at worst a recovered provider gets traffic again",
    )


class RoutingPolicy(_Model):
    """When to fall through to the next entry, when to retry, and how long an entry is left
    alone."""

    fall_through: frozenset[int] = Field(
        default=DEFAULT_FALL_THROUGH,
        description="upstream statuses that fall through (every 5xx does too)",
    )
    default_cooldown: float = Field(
        default=30.0,
        ge=0,
        description="seconds a 429 or 402 without a hint cools its entry (other failures "
        "without a hint are health signals: see circuit)",
    )
    max_cooldown: float = Field(default=3600.0, ge=0, description="cap on any one cooldown")
    cool_on_zero_remaining: bool = Field(
        default=True, description="cool an entry down when a success reports remaining=0"
    )
    accept: Literal["first_event", "headers"] = Field(
        default="first_event",
        description="when a streaming upstream is accepted: after its first complete SSE event, "
        "or as soon as its headers say 200",
    )
    retries: int = Field(
        default=1, ge=0, le=10, description="retries of a transient failure on the same entry"
    )
    backoff: float = Field(
        default=0.05,
        ge=0,
        le=60,
        description="seconds before the first retry (jittered, doubled for each further one)",
    )
    max_attempts: int = Field(
        default=8, ge=1, description="upstream calls one request may make, in all"
    )
    retry_budget: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="router-wide retries, as a fraction of the requests it has seen",
    )
    retry_burst: int = Field(
        default=10, ge=0, description="retries the router-wide budget can hold in reserve"
    )
    max_wait: float = Field(
        default=0.0,
        ge=0,
        description="a 429 whose hint is at most this many seconds is waited out on the same "
        "entry (0: fall through at once)",
    )
    circuit: CircuitPolicy = Field(default_factory=CircuitPolicy)

    continue_streams: bool = Field(
        default=False,
        description="continue a chat stream cut or stalled after it began on a further entry "
        "of its plan whose model declares the capability ``prefill``",
    )

    def falls_through(self, status: int) -> bool:
        """Whether an upstream ``status`` makes the request move to the next entry."""
        return status in self.fall_through or status >= 500


class Limits(_Model):
    """Limits on what clients may send, and on what the router reads from providers."""

    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1)
    body_timeout: float = Field(
        default=30.0, gt=0, description="seconds to read a request's whole body, else 408"
    )
    max_json_depth: int = Field(
        default=128, ge=1, description="how deep a request's JSON may nest (deeper: 400)"
    )
    max_model_length: int = Field(
        default=256, ge=1, description="the longest `model` a request may name (longer: 400)"
    )
    max_header_bytes: int = Field(
        default=8192,
        ge=1,
        description="a client header larger than this (name and value) is not forwarded upstream",
    )
    max_forwarded_headers: int = Field(
        default=64,
        ge=0,
        description="client headers forwarded upstream, at most (the rest: dropped)",
    )
    max_response_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1,
        description="the largest whole (non-stream) upstream body read; a larger one fails the "
        "attempt, which falls through",
    )
    max_response_seconds: float = Field(
        default=600.0,
        gt=0,
        description="seconds to read a whole (non-stream) upstream body, from its headers on; "
        "a slower one fails the attempt, which falls through",
    )


class UpstreamSettings(_Model):
    """The HTTP client the router calls providers with, and its connection pool."""

    client: Literal["aiohttp", "httpx"] = Field(
        default="aiohttp",
        description="aiohttp (fast, the default) or httpx (what the test seams plug into)",
    )
    max_connections: int = Field(default=1000, ge=1, description="open connections, in all")
    max_keepalive: int = Field(
        default=100, ge=0, description="idle connections kept for reuse (httpx only)"
    )


class MetricsSettings(_Model):
    """Prometheus metrics (``pip install 'waterfall-asgi[metrics]'``): see the Observability
    page for the list."""

    enabled: bool = Field(default=False, description="collect the router's Prometheus metrics")
    path: str | None = Field(
        default=None,
        description='serve them at this path, e.g. "/metrics" (None: not served; the host '
        "exposes the registry itself)",
    )
    require_client_key: bool = Field(
        default=True,
        description="when client_keys are set, the metrics path asks for one too",
    )

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or value.endswith("/")):
            raise ValueError('give a path such as "/metrics" (starting with /, no trailing /)')
        return value or None


class TracingSettings(_Model):
    """OpenTelemetry spans and GenAI client metrics (``pip install 'waterfall-asgi[otel]'``),
    through the tracer and meter providers the host configured."""

    enabled: bool = Field(
        default=False, description="a span per request, a child span per upstream attempt"
    )
    propagate: bool = Field(
        default=False,
        description="send the request span's traceparent upstream (otherwise a client's "
        "traceparent and tracestate are not forwarded while tracing is enabled)",
    )


class CooldownSettings(_Model):
    """Where cooldowns are kept: in this process (the default), or shared by every replica
    through Redis (``url`` or ``url_env``; needs ``pip install 'waterfall-asgi[redis]'``).

    The URL is a secret (it may carry a password): it never appears in a repr, a log line, an
    error or ``/health`` except with its password redacted.
    """

    url: SecretStr | None = Field(
        default=None,
        description="redis://[user:password@]host:port/db, rediss://… or unix://…; "
        "none: cooldowns are kept in this process",
    )
    url_env: str | None = Field(
        default=None, description="the environment variable holding the URL (for a password)"
    )
    prefix: str = Field(
        default="waterfall:cooldown:",
        min_length=1,
        description="namespaces the keys and the pub/sub channel (one per router fleet)",
    )
    timeout: float = Field(
        default=0.05, gt=0, le=10, description="seconds, the most any one Redis call may take"
    )
    connect_timeout: float = Field(
        default=0.25, gt=0, le=30, description="seconds, the most opening a connection may take"
    )
    heartbeat: float = Field(
        default=1.0, gt=0, description="seconds between checks that Redis still answers"
    )

    @field_validator("url_env")
    @classmethod
    def _check_env(cls, value: str | None, info: ValidationInfo) -> str | None:
        has_url = info.data.get("url") is not None or "url" not in info.data
        if value and not has_url and value not in os.environ:
            raise ValueError(f"environment variable {value} is not set")
        return value

    @model_validator(mode="after")
    def _resolve_url(self) -> CooldownSettings:
        if self.url is None and self.url_env:
            object.__setattr__(self, "url", _env_secret(self.url_env))
        if self.url is None:
            return self
        where = f"the URL in {self.url_env}" if self.url_env else "url"
        scheme = self.url.get_secret_value().partition("://")[0].lower()
        if scheme not in ("redis", "rediss", "unix"):  # (never quote the URL: a secret)
            raise ValueError(f"{where} must start with redis://, rediss:// or unix://")
        if importlib.util.find_spec("redis") is None:
            raise ValueError("Redis cooldowns need redis-py: pip install 'waterfall-asgi[redis]'")
        return self


class Route(_Model):
    """A cost route: a request naming it is served by the cheapest fitting deployment that
    meets ``min_quality``, then the next cheapest, and so on down the waterfall."""

    min_quality: Decimal = Decimal(0)
    unit: str | None = Field(
        default=None, description="the unit costs are compared in (default: the first price's)"
    )
    deployments: tuple[Deployment, ...] = Field(
        default=(), description="the candidates (default: every deployment with a price)"
    )
    budget: int | None = Field(
        default=None, ge=0, description="the most a request may cost at worst, in ``unit``"
    )
    reference: Deployment | None = Field(
        default=None,
        description="what savings are measured against (default: the dearest fitting candidate)",
    )
    quality_bounds: tuple[Decimal, Decimal] | None = Field(
        default=None,
        description="the range the x-waterfall-min-quality header may set (None: no override)",
    )
    default_completion_tokens: int = Field(
        default=256, ge=0, description="expected reply length when max_tokens is not given"
    )


class LedgerSettings(_Model):
    """Where usage records go and how streams are accounted for."""

    path: str | None = Field(
        default="waterfall-usage.db",
        description='the SQLite file (None, or "" in TOML: keep records in memory only)',
    )
    drain_seconds: float = Field(
        default=5.0,
        ge=0,
        description="after a client disconnects, keep reading the upstream this long so "
        "usage and cost are still recorded",
    )
    cost_event: bool = Field(
        default=False,
        description="end each Chat Completions stream with an SSE event carrying its cost",
    )
    url: SecretStr | None = Field(
        default=None,
        description="a postgresql:// URL: keep records in PostgreSQL instead of the SQLite "
        "file (pip install 'waterfall-asgi[postgres]'); a secret, never shown",
    )
    url_env: str | None = Field(
        default=None,
        description="the environment variable holding that URL (read when the config is "
        "loaded), for a URL with a password",
    )
    lease: float = Field(
        default=30.0,
        gt=0,
        description="seconds a process's claim on its pending rows lasts unrenewed (renewed "
        "every lease/3): a process that died has its pending rows marked interrupted within "
        "lease + lease/3",
    )
    instance_id: str | None = Field(
        default=None,
        min_length=1,
        description="this process's name in the leases (default: host, pid and a random "
        "part); a stable one, unique per process, marks its previous life's rows at start",
    )

    @field_validator("path")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _is_postgres(value.get_secret_value()):
            raise ValueError("must start with postgresql:// or postgres://")
        return value

    @field_validator("url_env")
    @classmethod
    def _check_url_env(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if info.data.get("url") is not None:
            raise ValueError("give url or url_env, not both")
        found = os.environ.get(value)
        if found is None:
            raise ValueError(f"environment variable {value} is not set")
        if not _is_postgres(found):
            raise ValueError(
                f"environment variable {value} must hold a postgresql:// or postgres:// URL"
            )
        return value

    @model_validator(mode="after")
    def _resolve_url(self) -> LedgerSettings:
        if self.url is None and self.url_env:
            object.__setattr__(self, "url", _env_secret(self.url_env))
        if self.url is not None and "path" in self.model_fields_set and self.path is not None:
            raise ValueError("give path (SQLite) or url/url_env (PostgreSQL), not both")
        return self

    def database_url(self) -> str | None:
        """The PostgreSQL URL (a secret: never log it), or ``None`` for SQLite or memory."""
        return None if self.url is None else self.url.get_secret_value()


def _is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


class RouterConfig(_Model):
    """Everything the router needs.

    >>> cfg = RouterConfig.model_validate({
    ...     "providers": {"a": {"base_url": "http://127.0.0.1:9/v1"}},
    ...     "chains": {"fast": ["a/m1", "a/m2"]},
    ... })
    >>> [d.key for d in cfg.chains["fast"]]
    ['a/m1', 'a/m2']
    """

    prefix: str = Field(default="/v1", description="the path the router answers under")
    providers: dict[str, Provider]
    deployments: tuple[Deployment, ...] = Field(
        default=(), description="entries not named in any chain but servable by model name"
    )
    chains: dict[str, tuple[Deployment, ...]] = Field(default_factory=dict)
    default_chain: str | None = Field(
        default=None, description="the chain for requests that name no model"
    )
    client_keys: tuple[SecretStr, ...] = Field(
        default=(), description="Bearer keys clients must present; none: no auth"
    )
    policy: RoutingPolicy = Field(default_factory=RoutingPolicy)
    limits: Limits = Field(default_factory=Limits)
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    cooldowns: CooldownSettings = Field(
        default_factory=CooldownSettings,
        description="where cooldowns are kept (shared through Redis with a url)",
    )
    models: dict[str, ModelInfo] = Field(
        default_factory=dict, description="quality and capabilities, by model name"
    )
    routes: dict[str, Route] = Field(default_factory=dict, description="cost routes, by name")
    rates: tuple[Rate, ...] = Field(default=(), description="exchange rates between units")
    price_refresh: float | None = Field(
        default=None, gt=0, description="seconds between price imports (None: at start only)"
    )
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_refs(self) -> RouterConfig:
        problems = []
        for name, entries in self.chains.items():
            if not entries:
                problems.append(f"chains.{name}: a chain needs at least one entry")
            for i, d in enumerate(entries):
                if d.provider not in self.providers:
                    problems.append(
                        f"chains.{name}.{i}: unknown provider {d.provider!r}"
                        + did_you_mean(d.provider, self.providers)
                    )
        for i, d in enumerate(self.deployments):
            if d.provider not in self.providers:
                problems.append(
                    f"deployments.{i}: unknown provider {d.provider!r}"
                    + did_you_mean(d.provider, self.providers)
                )
        for name, route in self.routes.items():
            if name in self.chains:
                problems.append(f"routes.{name}: a chain has that name too")
            keys = [d.key for d in route.deployments]
            for key in sorted({k for k in keys if keys.count(k) > 1}):
                problems.append(f"routes.{name}.deployments: {key!r} is listed twice")
            for i, d in enumerate(route.deployments):
                if d.provider not in self.providers:
                    problems.append(
                        f"routes.{name}.deployments.{i}: unknown provider {d.provider!r}"
                        + did_you_mean(d.provider, self.providers)
                    )
        if self.default_chain is not None and self.default_chain not in self.chains:
            problems.append(
                f"default_chain: no chain named {self.default_chain!r}"
                + did_you_mean(self.default_chain, self.chains)
            )
        if problems:  # each names its own key: _explain splits them on the newlines
            raise ValueError("\n".join(problems))
        return self

    def price_of(self, deployment: Deployment) -> Price | None:
        """The price of ``deployment``: its own, else that of the same entry listed elsewhere."""
        if deployment.price is not None:
            return deployment.price
        return self.listed_prices().get(deployment.key)

    def listed_prices(self) -> dict[str, Price]:
        """The price each entry is listed with (``provider/model`` -> price; entries listed
        without one are left out): what :meth:`price_of` falls back on. Built on each call:
        keep it where the config does not change, for lookups in a loop."""
        return {d.key: d.price for d in self.all_deployments() if d.price is not None}

    def all_deployments(self) -> list[Deployment]:
        """Every distinct entry, in config order (listed deployments, then chains)."""
        seen: dict[str, Deployment] = {}
        for d in self.deployments:
            seen.setdefault(d.key, d)
        for entries in self.chains.values():
            for d in entries:
                seen.setdefault(d.key, d)
        return list(seen.values())


def _explain(exc: ValidationError, data: Any) -> str:
    return "\n".join(plain_errors(exc, data, RouterConfig))


def _yaml_problem(exc: Exception) -> str:
    """A YAML error without the quoted source line that PyYAML puts in its message (the line
    may hold a secret): what is wrong and where."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem is None:
        return type(exc).__name__
    context = getattr(exc, "context", None)
    text = f"{context}: {problem}" if context else str(problem)
    if mark is not None:
        text += f" (at line {mark.line + 1}, column {mark.column + 1})"
    return text


def _parse(path: Path, text: str) -> Any:
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(
                f"{path}: YAML needs PyYAML (pip install 'waterfall-asgi[yaml]')"
            ) from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    kind = "TOML" if suffix == ".toml" else "JSON"
    try:
        return tomllib.loads(text) if kind == "TOML" else json.loads(text)
    except ValueError as exc:  # tomllib.TOMLDecodeError, json.JSONDecodeError: no source text
        if suffix not in (".toml", ".json"):  # read as JSON only because nothing else fits
            raise ConfigError(
                f"{path}: not a config format this reads: a config is TOML (.toml), YAML "
                "(.yaml, .yml) or JSON (.json; also any other name, but this is not valid "
                f"JSON: {exc})"
            ) from None
        raise ConfigError(f"{path}: not valid {kind}: {exc}") from None


def load_config(source: str | Path | Mapping[str, Any] | RouterConfig) -> RouterConfig:
    """Build a :class:`RouterConfig` from a file path (``.toml``, ``.yaml``/``.yml``; any other
    name is read as JSON), a mapping, or a config (returned as it is).

    Raises :class:`ConfigError`, whose message has one line per problem, each starting with the
    dotted key it is about (``providers.a.base_url: ...``, ``chains.fast.1: ...``) or with the
    file name for a file that cannot be read or parsed. It never quotes an API key or a line of
    the file (only chain entries and the names of providers and chains).
    """
    if isinstance(source, RouterConfig):
        return source
    data: Any
    if isinstance(source, Mapping):
        data = source
    else:
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (at byte {exc.start})") from None
        data = _parse(path, text)
        if not isinstance(data, Mapping):
            got = "nothing" if data is None else f"a {type(data).__name__}"
            raise ConfigError(f"{path}: the top level must be a table of settings, not {got}")
    try:
        return RouterConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, data)) from None
