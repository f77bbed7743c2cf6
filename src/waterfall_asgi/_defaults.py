"""What the middleware makes when it is not given it, and what it says when it cannot work.

The stores a config asks for (:func:`default_cooldowns`, :func:`default_ledger`: their optional
dependencies imported only when used), the problems of a config that loads but cannot serve
(:func:`config_problem`), and the stand-in config (:func:`unconfigured`) and messages of a
middleware whose config cannot be used: the log's and a failed startup's
(:func:`startup_failure`), and the client's (:func:`misconfigured`), which never shows the config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal

from .config import ConfigError, RouterConfig
from .cooldown import CooldownStore, InMemoryCooldownStore
from .cost import convert
from .errors import RouterError
from .ledger import LedgerStore, MemoryLedger
from .pricing import PriceBook, missing_prices

__all__ = [
    "config_problem",
    "default_cooldowns",
    "default_ledger",
    "misconfigured",
    "startup_failure",
    "unconfigured",
]


def default_cooldowns(config: RouterConfig, clock: Callable[[], float]) -> CooldownStore:
    """Shared through Redis at ``cooldowns.url``, else in memory."""
    settings = config.cooldowns
    if settings.url is None:
        return InMemoryCooldownStore()
    from .cooldown_redis import RedisCooldownStore

    return RedisCooldownStore(
        settings.url.get_secret_value(),
        prefix=settings.prefix,
        timeout=settings.timeout,
        connect_timeout=settings.connect_timeout,
        heartbeat=settings.heartbeat,
        clock=clock,
    )


def default_ledger(config: RouterConfig) -> LedgerStore:
    """PostgreSQL at the ledger's database URL, else SQLite at ``ledger.path``, else memory."""
    settings = config.ledger
    url = settings.database_url()
    if url is not None:
        from .ledger_postgres import PostgresLedger

        return PostgresLedger(url, lease=settings.lease, instance_id=settings.instance_id)
    if settings.path is None:
        return MemoryLedger()
    from .ledger_sqlite import SQLiteLedger

    return SQLiteLedger(settings.path, lease=settings.lease, instance_id=settings.instance_id)


def config_problem(config: RouterConfig, price_book: PriceBook) -> ConfigError | None:
    """The first reason a config that loads still cannot serve (``None``: it can): a cost route
    entry that no price can ever cover, or a route's reference in a unit that cannot be
    converted into the route's."""
    importing = {n for n, p in config.providers.items() if p.import_prices}
    static = [
        key for key in missing_prices(config, price_book) if key.partition("/")[0] not in importing
    ]
    if static:  # no import can ever price these
        return ConfigError(f"routes: no price for {', '.join(static)}")
    for name, route in config.routes.items():
        reference = config.price_of(route.reference) if route.reference else None
        if reference is not None and route.unit is not None:
            try:
                convert(Decimal(1), reference.unit, route.unit, config)
            except LookupError as exc:
                return ConfigError(f"routes.{name}.reference: {exc}")
    return None


def unconfigured(source: object) -> RouterConfig:
    """The stand-in config of a middleware whose own config cannot be used: no providers, and
    the given prefix when it can be read, so that the router's routes still answer (503)."""
    prefix = source.get("prefix") if isinstance(source, Mapping) else None
    bare = {"providers": {}, "ledger": {"path": None}}  # nothing to open, nothing to write
    try:
        return RouterConfig.model_validate({**bare, "prefix": prefix or "/v1"})
    except ValueError:
        return RouterConfig.model_validate(bare)


def startup_failure(error: ConfigError | None) -> str:
    """What a failed startup says about a config that cannot be used."""
    lines = "\n".join(f"  {line}" for line in str(error).splitlines())
    return f"waterfall-asgi: the router's config is invalid, so it cannot start:\n{lines}"


def misconfigured() -> RouterError:
    """The answer of the router's routes while its config cannot be used (503: the details are
    in the server's log, never in an answer)."""
    return RouterError(
        503,
        "The router's config is invalid, so it serves no requests: the server's log says "
        "why (`waterfall-asgi check-config FILE` checks a config file).",
        "server_error",
        "router_misconfigured",
    )
