"""What a request's ledger record and response headers say about its attempts.

Each entry the router tried or passed over is one :class:`~waterfall_asgi.router.Attempt`. The
ledger keeps each as a dict (:func:`attempt_log`); the ``x-waterfall-attempts`` header of an
answer (and of an ``all_providers_exhausted`` error) sums them up in one line (:func:`trail`):
``entry status`` per call, or ``entry outcome`` when there was no status to show, with the
outcome too where a status alone would hide it (``retried``, ``waited``, ``too_long``) and the
kind of call (``probe``, ``fail_open``) when it was not an ordinary one.
"""

from __future__ import annotations

from typing import Any

from .errors import RouterError
from .ledger import UsageRecord
from .router import Attempt, Exhausted

__all__ = ["attempt_log", "refused", "trail"]

_SHOWN = frozenset({"retried", "waited", "too_long"})  # outcomes a status alone would hide


def trail(attempts: list[Attempt]) -> str:
    """The ``x-waterfall-attempts`` header's text: each attempt in order, comma separated."""
    return ", ".join(
        f"{a.entry} {a.status if a.status is not None else a.outcome}"
        if not a.kind and a.outcome not in _SHOWN
        else _step(a)
        for a in attempts
    )


def _step(a: Attempt) -> str:
    if a.status is None:
        text = f"{a.entry} {a.outcome}"
    else:
        text = f"{a.entry} {a.status}"
        if a.outcome in _SHOWN:
            text += f" {a.outcome}"
    if a.kind:
        text += f" {a.kind}"
    return text


def attempt_log(a: Attempt) -> dict[str, Any]:
    """The ledger's account of one attempt (see :attr:`UsageRecord.attempts`)."""
    log = {
        "entry": a.entry,
        "outcome": a.outcome,
        "status": a.status,
        "elapsed_ms": round(a.elapsed * 1000, 3),
        "cooldown_s": a.cooldown,
    }
    if a.kind:
        log["kind"] = a.kind
    return log


def refused(record: UsageRecord, exc: RouterError) -> list[tuple[str, str]]:
    """Note on ``record`` the error a request is answered with; return the headers the error
    answer adds: the request's id, and the trail of an ``all_providers_exhausted``."""
    record.status = "exhausted" if isinstance(exc, Exhausted) else "rejected"
    record.http_status = exc.status
    record.error = exc.code
    extra = [("x-waterfall-request-id", record.id)]
    if isinstance(exc, Exhausted):
        record.attempts = [attempt_log(a) for a in exc.attempts]
        # the trail a served answer carries, where a user needs it most
        text = trail(exc.attempts).encode("latin-1", "replace").decode("latin-1")
        extra.append(("x-waterfall-attempts", text))
    return extra
