"""Mask losses of CondInst and BoxInst on full-image instance masks (1/4 input resolution).

Equation numbers refer to the BoxInst paper (Tian et al., CVPR 2021).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DICE_EPS = 1e-5


def dice_loss(mask_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """CondInst's dice loss, one value per instance: ``1 - 2Σxy / (Σx² + Σy² + eps)``.

    Args:
        mask_probs: ``[N, ...]`` predicted foreground probabilities.
        targets: ``[N, ...]`` targets in [0, 1], same shape.
    Returns:
        ``[N]`` losses.
    """
    x = mask_probs.flatten(1)
    y = targets.to(x.dtype).flatten(1)
    intersection = (x * y).sum(dim=1)
    union = (x * x).sum(dim=1) + (y * y).sum(dim=1) + DICE_EPS
    return 1.0 - 2.0 * intersection / union


def projection_loss(mask_logits: torch.Tensor, box_masks: torch.Tensor) -> torch.Tensor:
    """Projection term, Eq. (3): dice between the axis max-projections (Eq. 2) of mask and box.

    ``L_proj = Dice(max_y(m), max_y(b)) + Dice(max_x(m), max_x(b))``.

    Args:
        mask_logits: ``[N, H, W]`` mask logits.
        box_masks: ``[N, H, W]`` 1 inside each instance's ground-truth box, 0 elsewhere.
    Returns:
        ``[N]`` losses.
    """
    probs = mask_logits.sigmoid()
    box_masks = box_masks.to(probs.dtype)
    loss_x = dice_loss(probs.amax(dim=1), box_masks.amax(dim=1))  # projection on the x-axis
    loss_y = dice_loss(probs.amax(dim=2), box_masks.amax(dim=2))  # projection on the y-axis
    return loss_x + loss_y


def neighbour_offsets(kernel_size: int, dilation: int) -> list[tuple[int, int]]:
    """The ``(dy, dx)`` offsets of the K*K-1 dilated neighbours of a pixel, centre excluded,
    in row-major order of the K x K window."""
    radius = kernel_size // 2
    steps = range(-radius * dilation, radius * dilation + 1, dilation)
    return [(dy, dx) for dy in steps for dx in steps if (dy, dx) != (0, 0)]


def unfold_neighbours(x: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """For ``x`` of shape ``[B, C, H, W]``, the value of each pixel's K*K-1 dilated neighbours.

    Returns ``[B, C, K*K-1, H, W]``; neighbours outside the image read 0 (zero padding).
    """
    b, c, h, w = x.shape
    padding = (kernel_size // 2) * dilation
    patches = F.unfold(x, kernel_size=kernel_size, dilation=dilation, padding=padding)
    patches = patches.view(b, c, kernel_size * kernel_size, h, w)
    centre = kernel_size * kernel_size // 2
    return torch.cat([patches[:, :, :centre], patches[:, :, centre + 1 :]], dim=2)


def log_same_label_probability(
    mask_logits: torch.Tensor, kernel_size: int = 3, dilation: int = 2
) -> torch.Tensor:
    """``log P(y_e = 1)`` of Eq. (4) for every pixel and each of its K*K-1 dilated neighbours.

    ``P(y_e=1) = m_i m_j + (1 - m_i)(1 - m_j)`` is evaluated in log space,
    ``logsumexp(log σ(z_i) + log σ(z_j), log σ(-z_i) + log σ(-z_j))``, so it stays finite for
    any logits. Neighbours outside the image get a value that callers must mask out.

    Args:
        mask_logits: ``[N, H, W]``.
    Returns:
        ``[N, K*K-1, H, W]``.
    """
    logits = mask_logits[:, None]
    log_fg = F.logsigmoid(logits)
    log_bg = F.logsigmoid(-logits)
    same_fg = log_fg[:, :, None] + unfold_neighbours(log_fg, kernel_size, dilation)
    same_bg = log_bg[:, :, None] + unfold_neighbours(log_bg, kernel_size, dilation)
    return torch.logaddexp(same_fg, same_bg)[:, 0]


def pairwise_loss(
    mask_logits: torch.Tensor,
    similarity: torch.Tensor,
    box_masks: torch.Tensor,
    tau: float = 0.1,
    kernel_size: int = 3,
    dilation: int = 2,
) -> torch.Tensor:
    """Pairwise affinity term, Eq. (8): mean of ``-log P(y_e = 1)`` over the confident edges.

    An edge counts when its centre pixel lies inside the instance's box and its colour
    similarity (Eq. 7) is at least ``tau``; the mean runs over all such edges of all instances
    (the count is clamped at 1, so no instance or edge gives 0, not NaN).

    Args:
        mask_logits: ``[N, H, W]``.
        similarity: ``[N, K*K-1, H, W]`` colour similarity of each instance's image
            (see :func:`boxinst.losses.color.color_similarity`).
        box_masks: ``[N, H, W]`` 1 inside the instance's box.
    Returns:
        a scalar.
    """
    log_same = log_same_label_probability(mask_logits, kernel_size, dilation)
    weights = (similarity >= tau).to(log_same.dtype) * box_masks[:, None].to(log_same.dtype)
    return -(log_same * weights).sum() / weights.sum().clamp(min=1.0)


def pairwise_warmup_factor(iteration: int, warmup_iters: int) -> float:
    """Linear ramp of the pairwise weight, ``min(iteration / warmup_iters, 1)``, as in the
    official BoxInst code (10k iterations on COCO)."""
    if warmup_iters <= 0:
        return 1.0
    return min(float(iteration) / float(warmup_iters), 1.0)


def mixed_mask_loss(
    mask_logits: torch.Tensor,
    has_mask: torch.Tensor,
    gt_masks: torch.Tensor,
    box_masks: torch.Tensor,
    similarity: torch.Tensor | None,
    *,
    use_projection: bool = True,
    use_pairwise: bool = True,
    projection_weight: float = 1.0,
    pairwise_weight: float = 1.0,
    pairwise_warmup: float = 1.0,
    tau: float = 0.1,
    kernel_size: int = 3,
    dilation: int = 2,
) -> dict[str, torch.Tensor]:
    """The mask loss of a supervision regime, chosen per instance.

    - ``has_mask``: CondInst's dice loss on the ground-truth mask;
    - otherwise: the enabled BoxInst terms, ``L_mask = L_proj + L_pairwise`` (Eq. 6), each
      with its weight (the pairwise one times its warm-up factor);
    - an instance with no mask and no enabled box term gets no mask loss (the "no BoxInst
      terms" rows of Tables 6 and 7).

    Normalisation: every instance that receives a mask loss counts once, so per-instance terms
    (dice, projection) are summed and divided by that count and the edge-averaged pairwise term
    is weighted by the share of box-supervised instances. In the pure regimes this reduces to
    CondInst's mean dice and to BoxInst's ``mean(L_proj) + L_pairwise`` exactly.

    Args:
        mask_logits: ``[N, H, W]`` logits of the instances sampled for the mask loss.
        has_mask: ``[N]`` bool.
        gt_masks: ``[N, H, W]`` ground-truth masks; only rows with ``has_mask`` are read.
        box_masks: ``[N, H, W]`` box masks.
        similarity: ``[N, K*K-1, H, W]`` colour similarity, needed when the pairwise term is on.
    Returns:
        ``{"loss_mask": dice, "loss_proj": ..., "loss_pairwise": ...}``, each a scalar that is 0
        (with a graph to the logits) where no instance contributes.
    """
    has_mask = has_mask.bool()
    box_supervised = ~has_mask if (use_projection or use_pairwise) else torch.zeros_like(has_mask)
    num_supervised = (has_mask.sum() + box_supervised.sum()).clamp(min=1).to(mask_logits.dtype)
    zero = mask_logits.sum() * 0.0

    losses = {"loss_mask": zero, "loss_proj": zero, "loss_pairwise": zero}
    if has_mask.any():
        dice = dice_loss(mask_logits[has_mask].sigmoid(), gt_masks[has_mask])
        losses["loss_mask"] = dice.sum() / num_supervised
    if use_projection and box_supervised.any():
        proj = projection_loss(mask_logits[box_supervised], box_masks[box_supervised])
        losses["loss_proj"] = projection_weight * proj.sum() / num_supervised
    if use_pairwise and box_supervised.any():
        if similarity is None:
            raise ValueError("the pairwise term needs the colour similarity of the images")
        pairwise = pairwise_loss(
            mask_logits[box_supervised],
            similarity[box_supervised],
            box_masks[box_supervised],
            tau=tau,
            kernel_size=kernel_size,
            dilation=dilation,
        )
        share = box_supervised.sum().to(mask_logits.dtype) / num_supervised
        losses["loss_pairwise"] = pairwise_weight * pairwise_warmup * share * pairwise
    return losses
