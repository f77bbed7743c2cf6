"""Test configuration for the whole repository (the router's and the fakes' tests alike).

- The fakes' pytest plugin is loaded here, after coverage has started, instead of by its entry
  point (``-p no:waterfall_fakes`` in pyproject.toml): an entry-point plugin is imported before
  pytest-cov begins measuring, so the package's import-time lines would count as missed.
- The Hypothesis profile comes from ``HYPOTHESIS_PROFILE`` (``dev`` by default; ``.ci/run``
  uses ``ci``).
- ``@pytest.mark.anyio`` tests run on asyncio.
- ``tests/services.py`` gives the servers tests need (Redis, ...) as fixtures.
"""

import os

import pytest
from hypothesis import settings

from waterfall_fakes.strategies import register_profiles

pytest_plugins = ["waterfall_fakes.pytest_plugin", "services"]

register_profiles()
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Run ``@pytest.mark.anyio`` tests on asyncio only."""
    return "asyncio"


@pytest.fixture(autouse=True)
def _own_working_directory(tmp_path: "os.PathLike[str]", monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in a directory of its own, so files a default config writes (the usage
    ledger's ``waterfall-usage.db``) never land in the repository."""
    monkeypatch.chdir(tmp_path)
