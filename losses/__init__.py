"""BoxInst and CondInst losses: pure tensor functions, each citing the equation it implements."""

from boxinst.losses.color import color_similarity, images_to_lab
from boxinst.losses.fcos import FCOSTargets, assign_targets, fcos_losses
from boxinst.losses.mask import (
    dice_loss,
    mixed_mask_loss,
    pairwise_loss,
    pairwise_warmup_factor,
    projection_loss,
)

__all__ = [
    "FCOSTargets",
    "assign_targets",
    "color_similarity",
    "dice_loss",
    "fcos_losses",
    "images_to_lab",
    "mixed_mask_loss",
    "pairwise_loss",
    "pairwise_warmup_factor",
    "projection_loss",
]
