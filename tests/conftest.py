"""Shared test fixtures.

Verification tests against closed forms run in float64 through the ``x64`` fixture (a context
manager scoped to the test, so float32 tests in the same worker are unaffected)."""

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import pytest  # noqa: E402

try:  # hypothesis: deterministic, CI-sized profiles
    from hypothesis import HealthCheck, settings

    settings.register_profile("ci", max_examples=12, deadline=None, derandomize=True,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("ci")
except ImportError:  # pragma: no cover
    pass


@pytest.fixture
def x64():
    """Run the test body with float64 enabled."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop compiled programs after each test module. Every live XLA CPU program holds memory
    mappings; without this a test worker that runs a few hundred tests passes Linux's
    ``vm.max_map_count`` and dies in a later compile (see tests/test_caches.py)."""
    yield
    import slamjax

    slamjax.clear_caches()
