"""One redaction step for what came from an upstream: :class:`Redactor`.

A provider may echo what it was sent (its key, a secret header) in an error body or a header.
Every such text the router passes on (to a client, a log line or the ledger) goes through
:meth:`Redactor.text` or :meth:`Redactor.bytes` first, which replace each of the router's own
secrets, wherever it appears, with ``[redacted]``. It runs on error paths only: a successful
answer is the provider's content, relayed as it is.

The secrets are those of the config: every provider's ``api_key`` (and its ``Authorization``
value), every value of a provider's ``headers``, and the ``client_keys``.

>>> from waterfall_asgi.config import RouterConfig
>>> config = RouterConfig.model_validate({
...     "providers": {"a": {"base_url": "http://127.0.0.1:9/v1", "api_key": "sk-secret-1"}},
... })
>>> Redactor.from_config(config).text("echo: Bearer sk-secret-1")
'echo: [redacted]'
"""

from __future__ import annotations

from collections.abc import Iterable

from .config import RouterConfig

__all__ = ["REDACTED", "Redactor"]

REDACTED = "[redacted]"
"""What a secret is replaced with."""

_ROUNDS = 8  # a replacement can make a new occurrence: a few rounds, then nothing is kept


class Redactor:
    """Removes a fixed set of secrets from text (longest first, so that a secret holding
    another is removed whole)."""

    __slots__ = ("_as_bytes", "_as_text")

    def __init__(self, secrets: Iterable[str]) -> None:
        unique = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._as_text = tuple(unique)
        self._as_bytes = tuple(s.encode("utf-8", "surrogatepass") for s in unique)

    @classmethod
    def from_config(cls, config: RouterConfig) -> Redactor:
        """The secrets of ``config``: provider keys and headers, and client keys."""
        secrets: list[str] = []
        for provider in config.providers.values():
            secrets += provider.secret_headers().values()
            if provider.api_key is not None:
                secrets.append(provider.api_key.get_secret_value())
        secrets += (key.get_secret_value() for key in config.client_keys)
        return cls(secrets)

    def text(self, value: str) -> str:
        """``value`` without any of the secrets (nothing at all, if a secret is part of the
        replacement itself).

        >>> Redactor(["ab", "abc"]).text("xabcx ab")
        'x[redacted]x [redacted]'
        >>> Redactor(["d]"]).text("d]")
        ''
        """
        for _ in range(_ROUNDS):
            found = False
            for secret in self._as_text:
                if secret in value:
                    value, found = value.replace(secret, REDACTED), True
            if not found:
                return value
        return ""  # a secret within the replacement itself: nothing of the text is safe

    def bytes(self, value: bytes) -> bytes:
        """``value`` without any of the secrets (as UTF-8).

        >>> Redactor(["k1"]).bytes(b'{"echo": "k1"}')
        b'{"echo": "[redacted]"}'
        >>> Redactor(["d]"]).bytes(b"d]")
        b''
        """
        marker = REDACTED.encode()
        for _ in range(_ROUNDS):
            found = False
            for secret in self._as_bytes:
                if secret in value:
                    value, found = value.replace(secret, marker), True
            if not found:
                return value
        return b""
