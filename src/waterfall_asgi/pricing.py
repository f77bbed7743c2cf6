"""Prices imported from the providers' own ``GET /models`` listings, exactly.

A provider whose config sets ``import_prices`` publishes its prices next to each model it lists:

- ``"openrouter"``: the OpenRouter style, ``pricing.prompt``, ``pricing.completion`` and
  ``pricing.request`` in US dollars per token (and per request), written as strings. They become a
  :class:`~waterfall_asgi.config.Price` in unit ``"usd_micro"`` (millionths of a dollar: the
  amounts times 10**6, exactly), so that a request's cost, rounded up once to a whole unit, is
  not rounded up to a whole dollar.
- ``"routstr"``: the Routstr style, ``sats_pricing.prompt``, ``.completion`` and ``.request`` in
  sats per token, written as JSON numbers. They become a price in unit ``"msat"`` (the amounts
  times 1000, exactly).
- ``"auto"``: each model by what it carries: ``sats_pricing`` when the model has one (it is the
  more specific of the two: a provider that bothers to publish sats charges in sats), else
  ``pricing``. A model with neither is skipped. A model whose ``sats_pricing`` is unusable is
  skipped too rather than silently priced in dollars instead.

Either style accepts a price written as a string or as a number. Numbers are read with
``parse_float=Decimal``, so no price ever passes through a binary float: ``0.000000123456789012345``
stays exactly that. ``prompt`` and ``completion`` are required; a missing ``request`` fee is zero.
A model whose price is missing, negative, not a number or not finite is skipped, and why is
reported (:func:`parse_models`'s ``warnings``; :class:`PriceBook` logs each reason once).

:class:`PriceBook` keeps the imported prices by ``provider/model``, the key
:func:`waterfall_asgi.cost.rank` looks them up by (``rank(..., prices=book.prices)``; a price in
the config always wins over an imported one). A provider whose listing cannot be fetched or read
keeps its last good prices. :func:`missing_prices` lists the route candidates that have no price
at all, so that startup can fail on them instead of routing without them.

Wiring it into an application's lifespan::

    book = PriceBook(config)
    await book.refresh(client)              # at startup: never raises
    if gaps := missing_prices(config, book):  # a route candidate without a price: config error
        raise ConfigError("no price for " + ", ".join(gaps))
    task = asyncio.create_task(book.run(client))   # every config.price_refresh seconds, if set
    ...
    task.cancel()                           # at shutdown
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any, Literal, get_args

import httpx
from pydantic import ValidationError

from .config import Deployment, Price, Provider, RouterConfig
from .upstream import Upstream, UpstreamError, UpstreamResponse, as_upstream

__all__ = [
    "DEFAULT_MAX_BYTES",
    "ImportStyle",
    "PriceBook",
    "PriceImportError",
    "missing_prices",
    "models_url",
    "parse_models",
]

logger = logging.getLogger("waterfall_asgi.pricing")

ImportStyle = Literal["openrouter", "routstr", "auto"]
"""How a provider publishes its prices (see the module's documentation)."""

DEFAULT_MAX_BYTES = 32 * 1024 * 1024
"""The largest ``GET /models`` answer read (OpenRouter's full listing is a few megabytes)."""

_STYLES: dict[str, tuple[str, str]] = {
    "openrouter": ("pricing", "usd_micro"),
    "routstr": ("sats_pricing", "msat"),
}
_SCALE = {"usd_micro": Decimal(10**6), "msat": Decimal(1000)}
"""Published amounts are in dollars and sats; kept in their exact fine units."""
_FIELDS = ("prompt", "completion", "request")
_REQUIRED = frozenset({"prompt", "completion"})
_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


class PriceImportError(ValueError):
    """A ``GET /models`` answer that cannot be read at all: not JSON, or no list of models."""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _amount(value: Any) -> Decimal | str:
    """``value`` as an exact, finite, non-negative Decimal, or the reason it is not one."""
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, int) and not isinstance(value, bool):
        amount = Decimal(value)
    elif isinstance(value, str) and _NUMBER.fullmatch(value):
        try:
            amount = Decimal(value)
        except (InvalidOperation, ValueError):  # pragma: no cover - the pattern rules these out
            return f"{_short(value)} is not a number"
    else:
        return f"{_short(value)} is not a number"
    if not amount.is_finite():
        return f"{_short(value)} is not a finite number"
    if amount < 0:
        return f"{_short(value)} is negative"
    return amount.copy_abs() if amount.is_zero() else amount  # -0 is 0


def _pick(entry: Mapping[str, Any], style: str) -> tuple[str, str] | str:
    """The pricing field and unit to use for ``entry``, or why it has none."""
    if style == "auto":
        for name in ("sats_pricing", "pricing"):
            if entry.get(name) is not None:
                return name, _STYLES["routstr" if name == "sats_pricing" else "openrouter"][1]
        return "has neither `sats_pricing` nor `pricing`"
    name, unit = _STYLES[style]
    if entry.get(name) is None:
        return f"has no `{name}`"
    return name, unit


def _price(entry: Mapping[str, Any], style: str) -> Price | str:
    """The price of one listed model, or why it has none."""
    picked = _pick(entry, style)
    if isinstance(picked, str):
        return picked
    name, unit = picked
    table = entry[name]
    if not isinstance(table, Mapping):
        return f"`{name}` is not an object"
    amounts: dict[str, Decimal] = {}
    problems = []
    for part in _FIELDS:
        if table.get(part) is None:
            if part in _REQUIRED:
                problems.append(f"`{name}.{part}` is missing")
            continue
        amount = _amount(table[part])
        if isinstance(amount, str):
            problems.append(f"`{name}.{part}`: {amount}")
        else:
            amounts[part] = (amount * _SCALE[unit]).normalize()
    if problems:
        return "; ".join(problems)
    try:
        return Price(unit=unit, **amounts)
    except ValidationError:  # pragma: no cover - _amount already checked what Price checks
        return f"`{name}` is not a valid price"


def parse_models(
    body: bytes, style: ImportStyle, *, warnings: list[str] | None = None
) -> dict[str, Price]:
    """The prices in a ``GET /models`` answer, by model id, read in ``style``.

    The answer is an object whose ``data`` is the list of models (a bare list is accepted too).
    Each model that cannot be priced is skipped, with one line saying why appended to
    ``warnings``; without a ``warnings`` list, the reasons are logged instead, in one line.
    Raises :class:`PriceImportError` when the answer is not JSON or holds no list of models.

    >>> body = b'{"data": [{"id": "m", "pricing": {"prompt": "0.0000001", "completion": "2e-7"}}]}'
    >>> price = parse_models(body, "openrouter")["m"]
    >>> price.unit, price.prompt, price.completion, price.request
    ('usd_micro', Decimal('0.1'), Decimal('0.2'), Decimal('0'))
    """
    if style not in get_args(ImportStyle):
        raise ValueError(f"unknown price style {style!r}")
    try:
        doc = json.loads(body, parse_float=Decimal, parse_constant=Decimal)
    except (ValueError, RecursionError) as exc:  # includes JSONDecodeError, UnicodeDecodeError
        raise PriceImportError(f"the answer is not JSON ({type(exc).__name__})") from None
    entries = doc.get("data") if isinstance(doc, dict) else doc
    if not isinstance(entries, list):
        raise PriceImportError("the answer has no list of models (an object with a `data` array)")
    notes: list[str] = []
    prices: dict[str, Price] = {}
    for index, entry in enumerate(entries):
        model = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(model, str) or not model:
            notes.append(f"data[{index}]: skipped: no model id")
            continue
        if model in prices:
            notes.append(f"model {model!r}: listed twice; the first listing is used")
            continue
        price = _price(entry, style)
        if isinstance(price, str):
            notes.append(f"model {model!r}: skipped: {price}")
        else:
            prices[model] = price
    if warnings is not None:
        warnings.extend(notes)
    elif notes:
        logger.warning("price import: %d problem(s): %s", len(notes), " | ".join(notes))
    return prices


def models_url(provider: Provider) -> str:
    """Where ``provider`` lists its models: ``{base_url}/models``."""
    return provider.base_url + "/models"


class _Failed(Exception):
    """One provider's fetch failed; the message says why (never a secret)."""


class PriceBook:
    """The prices imported from every provider whose config sets ``import_prices``.

    :attr:`prices` is a live, read-only mapping ``"provider/model" -> Price`` for
    :func:`waterfall_asgi.cost.rank`; :meth:`refresh` fetches every such provider's listing (at
    once, concurrently) and :meth:`run` does so on an interval. A provider whose fetch fails keeps
    the prices of its last good answer; :attr:`errors` says which providers are failing and why.
    """

    def __init__(self, config: RouterConfig, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.config = config
        self.max_bytes = max_bytes
        self.styles: dict[str, ImportStyle] = {
            name: p.import_prices
            for name, p in config.providers.items()
            if p.import_prices is not None
        }
        """The providers prices are imported from, and the style of each."""
        self._by_provider: dict[str, dict[str, Price]] = {}
        self._flat: dict[str, Price] = {}
        self._view: Mapping[str, Price] = MappingProxyType(self._flat)
        self._errors: dict[str, str] = {}
        self._warnings: dict[str, tuple[str, ...]] = {}
        self._logged: dict[str, set[str]] = {}

    @property
    def prices(self) -> Mapping[str, Price]:
        """Every imported price, by ``provider/model``: a live read-only view."""
        return self._view

    @property
    def errors(self) -> Mapping[str, str]:
        """The providers whose last fetch failed, and why (cleared by a good fetch)."""
        return MappingProxyType(self._errors)

    @property
    def warnings(self) -> Mapping[str, tuple[str, ...]]:
        """The models each provider's last good answer skipped, and why."""
        return MappingProxyType(self._warnings)

    def models(self, provider: str) -> Mapping[str, Price]:
        """The prices imported from ``provider``, by model id (empty if none yet)."""
        return MappingProxyType(self._by_provider.get(provider, {}))

    async def refresh(self, client: Upstream | httpx.AsyncClient) -> dict[str, str]:
        """Fetch every importing provider's listing once with ``client`` (an
        :class:`~waterfall_asgi.upstream.Upstream`, or an ``httpx.AsyncClient``); return the
        failures of this round, ``{provider: why}`` (empty when all succeeded). Never raises
        (except when cancelled)."""
        names = list(self.styles)
        upstream = as_upstream(client)
        outcomes = await asyncio.gather(*(self._fetch(upstream, name) for name in names))
        failures: dict[str, str] = {}
        for name, outcome in zip(names, outcomes, strict=True):
            if isinstance(outcome, str):
                failures[name] = outcome
                self._failed(name, outcome)
            else:
                self._succeeded(name, *outcome)
        fresh = {
            f"{name}/{model}": price
            for name, models in self._by_provider.items()
            for model, price in models.items()
        }
        self._flat.clear()  # in place and without an await: readers see the old or the new set
        self._flat.update(fresh)
        return failures

    async def run(
        self, client: Upstream | httpx.AsyncClient, interval: float | None = None
    ) -> None:
        """Refresh every ``interval`` seconds (default: the config's ``price_refresh``) until
        cancelled; the first refresh comes one interval after the start. With no interval at
        all, return at once."""
        interval = self.config.price_refresh if interval is None else interval
        if interval is None or not self.styles:
            return
        if interval <= 0:
            raise ValueError(f"the refresh interval must be positive, not {interval}")
        while True:
            await asyncio.sleep(interval)
            await self.refresh(client)

    async def _fetch(
        self, upstream: Upstream, name: str
    ) -> tuple[dict[str, Price], list[str]] | str:
        """One provider's prices and the warnings about its listing, or why there are none."""
        provider = self.config.providers[name]
        t = provider.timeouts
        headers = {
            "accept": "application/json",
            "accept-encoding": "identity",
            **provider.secret_headers(),
        }
        timeouts = t.for_headers()
        try:
            async with asyncio.timeout(t.first_byte + t.read):
                response = await upstream.request(
                    "GET", models_url(provider), headers.items(), None, timeouts
                )
                body = await self._read(response)
            notes: list[str] = []
            prices = parse_models(body, self.styles[name], warnings=notes)
        except TimeoutError:
            return "timed out"
        except UpstreamError as exc:
            return f"{exc.name}: {exc}"
        except (_Failed, PriceImportError) as exc:
            return str(exc)
        except Exception as exc:  # never let one provider's surprise stop the others
            logger.error("price import from %s: unexpected error", name, exc_info=exc)
            return f"unexpected error ({type(exc).__name__})"
        if not prices:
            self._log_warnings(name, notes)
            return f"no model in the answer has a usable price ({len(notes)} skipped)"
        return prices, notes

    async def _read(self, response: UpstreamResponse) -> bytes:
        try:
            if response.status != 200:
                raise _Failed(f"HTTP {response.status} {response.reason}".rstrip())
            body = bytearray()
            while chunk := await response.read_chunk():
                body += chunk
                if len(body) > self.max_bytes:
                    raise _Failed(f"the answer is larger than {self.max_bytes} bytes")
            return bytes(body)
        finally:
            await response.aclose()

    def _succeeded(self, name: str, prices: dict[str, Price], notes: list[str]) -> None:
        self._by_provider[name] = prices
        self._warnings[name] = tuple(notes)
        self._log_warnings(name, notes)
        if self._errors.pop(name, None) is not None:
            logger.info("price import from %s: working again (%d models)", name, len(prices))
        else:
            logger.debug("price import from %s: %d models", name, len(prices))

    def _failed(self, name: str, why: str) -> None:
        kept = len(self._by_provider.get(name, {}))
        if self._errors.get(name) == why:  # the same failure again: said already
            logger.debug("price import from %s failed again: %s", name, why)
        else:
            logger.warning(
                "price import from %s failed: %s (keeping %d earlier prices)", name, why, kept
            )
        self._errors[name] = why

    def _log_warnings(self, name: str, notes: list[str]) -> None:
        seen = self._logged.setdefault(name, set())
        new = [n for n in notes if n not in seen]
        if new:
            seen.update(new)
            logger.warning("price import from %s: %s", name, " | ".join(new))


def missing_prices(
    config: RouterConfig, book: PriceBook | Mapping[str, Price] | None = None
) -> list[str]:
    """The cost-route candidates that have no price, neither in the config nor imported, as
    ``provider/model`` keys (each once, in config order).

    A route's candidates are its ``deployments``; a route that lists none takes every deployment
    with a price, so for it the unpriced deployments of providers that import prices are listed
    (a model their listing does not price is most likely misspelt).

    >>> cfg = RouterConfig.model_validate({
    ...     "providers": {"a": {"base_url": "http://a/v1"}},
    ...     "routes": {"cheap": {"deployments": ["a/m1", "a/m2"]}},
    ... })
    >>> missing_prices(cfg, {"a/m1": Price(unit="usd_micro", prompt="1")})
    ['a/m2']
    """
    prices = book.prices if isinstance(book, PriceBook) else (book or {})
    importing = {name for name, p in config.providers.items() if p.import_prices is not None}
    found: dict[str, None] = {}
    for route in config.routes.values():
        candidates: tuple[Deployment, ...] | list[Deployment] = route.deployments or [
            d for d in config.all_deployments() if d.provider in importing
        ]
        for d in candidates:
            if config.price_of(d) is None and d.key not in prices:
                found.setdefault(d.key, None)
    return list(found)
