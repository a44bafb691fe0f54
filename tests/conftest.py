"""Shared helpers of the test suite."""

import pytest

from boxinst.platform.quick_train import small_model_config


@pytest.fixture
def make_config():
    """The CPU-sized CondInst config (3 classes unless overridden)."""
    return lambda **overrides: small_model_config(**{"num_classes": 3, **overrides})
