"""Test configuration for the router: the Hypothesis profile and the anyio backend.

The profile comes from ``HYPOTHESIS_PROFILE`` (``dev`` by default; ``.ci/run`` uses ``ci``).
"""

import os

import pytest
from hypothesis import settings

from waterfall_fakes.strategies import register_profiles

register_profiles()
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Run ``@pytest.mark.anyio`` tests on asyncio only."""
    return "asyncio"
