"""pytest fixtures for the fakes (loaded automatically through the ``pytest11`` entry point).

- ``fake_provider``: a fresh :class:`~waterfall_fakes.FakeProvider` for each test;
- ``fake_transport``: a :class:`~waterfall_fakes.FakeTransport` around ``fake_provider``;
- ``fake_server``: a loopback :class:`~waterfall_fakes.FakeServer` serving ``fake_provider``
  (the server starts once per session; each test gets it with its own fresh provider);
- ``fake_factory``: a :class:`FakeFactory` that makes as many fakes as a test needs and stops
  every server it started when the test ends;
- ``fake_openai_env`` (opt-in: ask for it by name): ``fake_server``, with ``OPENAI_BASE_URL`` and
  ``OPENAI_API_KEY`` set for the test so that the official OpenAI SDKs (Python, and Node in a
  process the test starts) talk to the fake with no change to the code under test;
- the ``@pytest.mark.fake_config(config=None, **overrides)`` marker configures ``fake_provider``
  (and so ``fake_transport`` and ``fake_server``) with :class:`~waterfall_fakes.FakeConfig` fields
  or a ``clock``::

      @pytest.mark.fake_config(script=["rate_limit:dialect=openai", "ok"], seed=7)
      def test_retries(fake_transport): ...

  Markers on the module, class and function merge, the closest winning key by key (a
  positional config replaces everything farther markers said).

When a test that used a fake fails, its report gets a ``waterfall-fakes`` section listing the
requests each fake received. The fakes are imported when a fixture first needs them, so that
merely having the plugin installed costs nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from waterfall_fakes import FakeConfig, FakeProvider, FakeServer, FakeTransport

__all__ = [
    "FAKE_API_KEY",
    "FakeFactory",
    "fake_factory",
    "fake_openai_env",
    "fake_provider",
    "fake_server",
    "fake_transport",
    "pytest_configure",
    "pytest_runtest_makereport",
]

_MARKER = "fake_config"
FAKE_API_KEY = "sk-waterfall-fake"
"""The key ``fake_openai_env`` gives the SDKs when the fake asks for none."""
_FAKES = pytest.StashKey[list["FakeProvider"]]()


def pytest_configure(config: pytest.Config) -> None:
    """Declare the ``fake_config`` marker."""
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(config=None, **overrides): configure this test's fake_provider, "
        "fake_transport and fake_server with a FakeConfig and/or its fields "
        "(e.g. script=['rate_limit', 'ok'], seed=1) or a clock.",
    )


def _remember(node: pytest.Item | pytest.Collector, provider: FakeProvider) -> None:
    node.stash.setdefault(_FAKES, []).append(provider)


def _describe(providers: list[FakeProvider]) -> str:
    from waterfall_fakes import format_behaviours

    def count(n: int, what: str) -> str:
        return f"{n} {what}" if n == 1 else f"{n} {what}s"

    lines = []
    for p in providers:
        script = f", a script of {count(len(p.config.script), 'step')}" if p.config.script else ""
        lines.append(f"{p.config.name!r} received {count(len(p.requests), 'request')}{script}")
        for i, r in enumerate(p.requests, 1):
            how = format_behaviours(list(r.behaviours))
            by = f" by {', '.join(r.answered_by)}" if r.answered_by else ""
            lines.append(
                f"  {i}. {r.method} {r.path} -> {r.status}" + (f"  [{how}]{by}" if how else "")
            )
    return "\n".join(lines)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Add what each fake of a failed test received to its report."""
    report = yield
    providers = item.stash.get(_FAKES, [])
    if report.failed and providers:
        report.sections.append((f"waterfall-fakes ({report.when})", _describe(providers)))
    return report


def _marked_provider(request: pytest.FixtureRequest) -> FakeProvider:
    from waterfall_fakes import FakeConfig, FakeProvider

    base: object = None
    overrides: dict[str, Any] = {}
    for mark in reversed(list(request.node.iter_markers(_MARKER))):
        if len(mark.args) > 1:
            pytest.fail(
                f"@pytest.mark.{_MARKER} takes at most one positional argument (a FakeConfig "
                f"or a mapping), got {len(mark.args)}",
                pytrace=False,
            )
        if mark.args:  # a whole config: it replaces whatever farther markers said
            base = mark.args[0]
            overrides.clear()
        overrides.update(mark.kwargs)
    if base is not None and not isinstance(base, FakeConfig | Mapping):
        problem = f"expected a FakeConfig or a mapping, got {base!r}"
    else:
        try:
            config = FakeConfig.model_validate(base) if isinstance(base, Mapping) else base
            return FakeProvider(config, **overrides)
        except (TypeError, ValueError) as exc:
            problem = str(exc)
    pytest.fail(f"bad @pytest.mark.{_MARKER} on {request.node.nodeid}: {problem}", pytrace=False)


@pytest.fixture
def fake_provider(request: pytest.FixtureRequest) -> FakeProvider:
    """A fresh fake provider for this test, configured by its ``fake_config`` markers."""
    provider = _marked_provider(request)
    _remember(request.node, provider)
    return provider


@pytest.fixture
def fake_transport(fake_provider: FakeProvider) -> FakeTransport:
    """An httpx transport (sync and async) that answers from ``fake_provider``."""
    from waterfall_fakes import FakeTransport

    return FakeTransport(fake_provider)


@pytest.fixture(scope="session")
def _waterfall_fake_server() -> Iterator[FakeServer]:
    """The loopback server behind ``fake_server``: started once, stopped at the session's end."""
    from waterfall_fakes import FakeProvider, FakeServer

    server = FakeServer(FakeProvider(name="waterfall-fakes-idle")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fake_server(
    _waterfall_fake_server: FakeServer, fake_provider: FakeProvider
) -> Iterator[FakeServer]:
    """A running loopback server (``.url`` ends in ``/v1``) answering from ``fake_provider``.

    The server is shared by the whole session; while this test runs it serves this test's
    provider, which ``fake_server.provider`` is.
    """
    server = _waterfall_fake_server
    idle = server.provider
    server.provider = fake_provider
    try:
        yield server
    finally:
        server.provider = idle


@pytest.fixture
def fake_openai_env(fake_server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    """``fake_server``, with the OpenAI SDKs' environment pointing at it for this test.

    Sets ``OPENAI_BASE_URL`` to the server's ``/v1`` URL and ``OPENAI_API_KEY`` to the fake's
    ``api_key`` (:data:`FAKE_API_KEY` when it has none); both are restored after the test.
    ``openai.OpenAI()`` made during the test, and any process the test starts, use the fake.
    """
    monkeypatch.setenv("OPENAI_BASE_URL", fake_server.url)
    monkeypatch.setenv("OPENAI_API_KEY", fake_server.provider.config.api_key or FAKE_API_KEY)
    return fake_server


def _stop_all(servers: list[FakeServer]) -> None:
    """Stop ``servers`` concurrently (each stop waits for uvicorn's next tick)."""
    errors: list[BaseException] = []

    def stop(server: FakeServer) -> None:
        try:
            server.stop()
        except BaseException as exc:  # reported below, after every server had its chance
            errors.append(exc)

    threads = [threading.Thread(target=stop, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


class FakeFactory:
    """Makes fakes for one test; the ``fake_factory`` fixture gives you one.

    >>> factory = FakeFactory()
    >>> [factory.provider().config.name, factory.provider(name="b").config.name]
    ['fake-1', 'b']
    >>> factory.close()

    Providers are named ``fake-1``, ``fake-2``, ... unless given a ``name``. Every server made
    here is started at once and stopped by :meth:`close` (the fixture calls it at teardown).
    """

    def __init__(self, node: pytest.Item | None = None) -> None:
        self._node = node
        self.providers: list[FakeProvider] = []
        """Every provider made so far, in order."""
        self.servers: list[FakeServer] = []
        """Every server started so far, in order."""

    def provider(self, config: FakeConfig | None = None, /, **overrides: Any) -> FakeProvider:
        """A new :class:`~waterfall_fakes.FakeProvider` (same arguments)."""
        from waterfall_fakes import FakeProvider

        if config is None and "name" not in overrides:
            overrides["name"] = f"fake-{len(self.providers) + 1}"
        made = FakeProvider(config, **overrides)
        self.providers.append(made)
        if self._node is not None:
            _remember(self._node, made)
        return made

    def _provider_for(
        self, provider: FakeProvider | None, overrides: dict[str, Any]
    ) -> FakeProvider:
        if provider is not None and overrides:
            raise TypeError("pass either a provider or config overrides, not both")
        return provider if provider is not None else self.provider(**overrides)

    def transport(self, provider: FakeProvider | None = None, /, **overrides: Any) -> FakeTransport:
        """A :class:`~waterfall_fakes.FakeTransport` around ``provider`` (or a new one)."""
        from waterfall_fakes import FakeTransport

        return FakeTransport(self._provider_for(provider, overrides))

    def server(self, provider: FakeProvider | None = None, /, **overrides: Any) -> FakeServer:
        """A started loopback :class:`~waterfall_fakes.FakeServer` for ``provider`` (or a new
        one)."""
        from waterfall_fakes import FakeServer

        server = FakeServer(self._provider_for(provider, overrides)).start()
        self.servers.append(server)
        return server

    def close(self) -> None:
        """Stop every server this factory started."""
        servers, self.servers = self.servers, []
        _stop_all(servers)

    def __repr__(self) -> str:
        return f"FakeFactory(providers={len(self.providers)}, servers={len(self.servers)})"


@pytest.fixture
def fake_factory(request: pytest.FixtureRequest) -> Iterator[FakeFactory]:
    """A :class:`FakeFactory`: ``.provider(...)``, ``.transport(...)``, ``.server(...)``."""
    factory = FakeFactory(request.node)
    try:
        yield factory
    finally:
        factory.close()
