"""Shared helpers of the test suite."""

import pytest

from boxinst.models.condinst import CondInstConfig


def small_config(**overrides) -> CondInstConfig:
    """A CondInst small enough for CPU tests: ResNet-18, 64-channel FPN, 2-conv towers."""
    values = dict(
        num_classes=3,
        backbone_depth=18,
        backbone_norm="BN",
        trainable_backbone_layers=5,
        fpn_channels=64,
        head_convs=2,
        mask_branch_channels=32,
        mask_branch_convs=2,
    )
    values.update(overrides)
    return CondInstConfig(**values)


@pytest.fixture
def make_config():
    return small_config
