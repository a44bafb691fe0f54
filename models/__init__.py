"""CondInst: ResNet-FPN backbone, FCOS head with controller, mask branch, dynamic mask head."""

from boxinst.models.condinst import CondInst, CondInstConfig, HeadOutputs

__all__ = ["CondInst", "CondInstConfig", "HeadOutputs"]
