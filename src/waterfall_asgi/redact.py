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

import contextlib
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .config import RouterConfig

__all__ = ["REDACTED", "Redactor", "redact_url", "url_secrets"]

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


def redact_url(url: str) -> str:
    """``url`` (a Redis or PostgreSQL URL) with its password, and any query parameter whose name
    says ``pass``, replaced by ``***``: what logs, errors, reprs and ``/health`` show of it.

    >>> redact_url("redis://user:s3cret@cache:6379/0")
    'redis://user:***@cache:6379/0'
    >>> redact_url("postgresql://app:s3cret@db:5432/usage?sslmode=require&password=x")
    'postgresql://app:***@db:5432/usage?sslmode=require&password=%2A%2A%2A'
    >>> redact_url("redis://127.0.0.1:6379/0")
    'redis://127.0.0.1:6379/0'
    """
    if not url_secrets(url):
        return url
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, host = netloc.rpartition("@")
            user, colon, _password = userinfo.partition(":")
            netloc = f"{user}:***@{host}" if colon else f"{user}@{host}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, "***" if "pass" in k.lower() else v) for k, v in pairs])
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<unparseable URL>"


def url_secrets(url: str) -> list[str]:
    """The password(s) in ``url``, to scrub from any message that might quote them.

    >>> url_secrets("rediss://:s3cret@cache/1?password=x&ssl_cert_reqs=none")
    ['s3cret', 'x']
    """
    found = []
    with contextlib.suppress(ValueError):
        parts = urlsplit(url)
        if parts.password:
            found.append(parts.password)
        found += [v for k, v in parse_qsl(parts.query) if "pass" in k.lower() and v]
    return found
