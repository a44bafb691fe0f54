"""Mask losses of CondInst and BoxInst on full-image instance masks (1/4 input resolution).

Equation numbers refer to the BoxInst paper (Tian et al., CVPR 2021).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from boxinst.losses.distributed import global_mean

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


def _log_same_label(
    log_fg_i: torch.Tensor, log_bg_i: torch.Tensor, log_fg_j: torch.Tensor, log_bg_j: torch.Tensor
) -> torch.Tensor:
    """Eq. (4) in log space: ``log(m_i m_j + (1 - m_i)(1 - m_j))`` from the log-probabilities of
    foreground and background of both ends, ``logsumexp(log m_i + log m_j, log(1-m_i) +
    log(1-m_j))``, finite for any logits."""
    return torch.logaddexp(log_fg_i + log_fg_j, log_bg_i + log_bg_j)


def log_same_label_probability(
    mask_logits: torch.Tensor, kernel_size: int = 3, dilation: int = 2
) -> torch.Tensor:
    """``log P(y_e = 1)`` of Eq. (4) for every pixel and each of its K*K-1 dilated neighbours.

    ``P(y_e=1) = m_i m_j + (1 - m_i)(1 - m_j)`` is evaluated in log space,
    ``logsumexp(log σ(z_i) + log σ(z_j), log σ(-z_i) + log σ(-z_j))``, so it stays finite for
    any logits. Neighbours outside the image read log-probabilities 0 (zero padding), a value
    that callers must mask out.

    Args:
        mask_logits: ``[N, H, W]``.
    Returns:
        ``[N, K*K-1, H, W]``.
    """
    logits = mask_logits[:, None]
    log_fg = F.logsigmoid(logits)
    log_bg = F.logsigmoid(-logits)
    log_same = _log_same_label(
        log_fg[:, :, None],
        log_bg[:, :, None],
        unfold_neighbours(log_fg, kernel_size, dilation),
        unfold_neighbours(log_bg, kernel_size, dilation),
    )
    return log_same[:, 0]


def _sum_over_edges(
    log_same: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (8)'s sum of ``-log P(y_e = 1)`` over the edges of weight 1, and their number."""
    return -(log_same * weights).sum(), weights.sum()


def _edge_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Eq. (8)'s mean over the edges (0 when there are none, not NaN)."""
    return total / count.clamp(min=1.0)


def pairwise_loss_full_image(
    mask_logits: torch.Tensor,
    similarity: torch.Tensor,
    image_index: torch.Tensor,
    box_masks: torch.Tensor,
    tau: float = 0.1,
    kernel_size: int = 3,
    dilation: int = 2,
) -> torch.Tensor:
    """Eq. (8) as the paper and the official code compute it: every instance's edges over its
    whole image, masked to the box afterwards. Cost and memory ∝ instances × image area × K*K.

    The reference that :func:`pairwise_loss` is tested and benchmarked against; training uses
    :func:`pairwise_loss`. Arguments and result as there.
    """
    log_same = log_same_label_probability(mask_logits, kernel_size, dilation)
    weights = (similarity[image_index] >= tau).to(log_same.dtype)
    weights = weights * box_masks[:, None].to(log_same.dtype)
    return _edge_mean(*_sum_over_edges(log_same, weights))


def _cells_in_boxes(box_masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(instance, y, x)`` of every cell of each instance's box: the bounding rectangle of the
    non-zero cells of its box mask, listed instance by instance in row-major order. The total
    length is the sum of the box areas (an empty mask has none)."""
    n, h, w = box_masks.shape
    device = box_masks.device
    rows = box_masks.amax(dim=2) > 0  # [N, H]
    cols = box_masks.amax(dim=1) > 0  # [N, W]
    ys = torch.arange(h, device=device)
    xs = torch.arange(w, device=device)
    top = torch.where(rows, ys, h).amin(dim=1)
    left = torch.where(cols, xs, w).amin(dim=1)
    height = (torch.where(rows, ys, -1).amax(dim=1) - top + 1).clamp(min=0)
    width = (torch.where(cols, xs, -1).amax(dim=1) - left + 1).clamp(min=0)
    areas = height * width
    instance = torch.repeat_interleave(torch.arange(n, device=device), areas)
    local = torch.arange(instance.numel(), device=device) - (areas.cumsum(0) - areas)[instance]
    box_width = width[instance]
    return instance, top[instance] + local // box_width, left[instance] + local % box_width


def pairwise_edge_sums(
    mask_logits: torch.Tensor,
    similarity: torch.Tensor,
    image_index: torch.Tensor,
    box_masks: torch.Tensor,
    tau: float = 0.1,
    kernel_size: int = 3,
    dilation: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sum of Eq. (8) over the confident edges of :func:`pairwise_loss`, and their number
    (so that workers can normalise by the count of the global batch). Arguments as there."""
    _, h, w = mask_logits.shape
    instance, y, x = _cells_in_boxes(box_masks)
    offsets = torch.tensor(neighbour_offsets(kernel_size, dilation), device=mask_logits.device)
    ny = y[:, None] + offsets[:, 0]  # [T, K*K-1]
    nx = x[:, None] + offsets[:, 1]
    inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
    centre = ((instance * h + y) * w + x)[:, None]
    # a neighbour outside the image reads its centre's logit, then 0 as zero padding does
    neighbour = torch.where(inside, centre + offsets[:, 0] * w + offsets[:, 1], centre)

    z = mask_logits.reshape(-1)[torch.cat([centre, neighbour], dim=1)]  # one gather, one scatter
    z_i, z_j = z[:, :1], z[:, 1:]
    log_same = _log_same_label(
        F.logsigmoid(z_i),
        F.logsigmoid(-z_i),
        F.logsigmoid(z_j).masked_fill(~inside, 0.0),
        F.logsigmoid(-z_j).masked_fill(~inside, 0.0),
    )
    edge = torch.arange(offsets.shape[0], device=mask_logits.device)
    edge_similarity = similarity[image_index[instance][:, None], edge, y[:, None], x[:, None]]
    weights = (edge_similarity >= tau).to(log_same.dtype)
    return _sum_over_edges(log_same, weights)


def pairwise_loss(
    mask_logits: torch.Tensor,
    similarity: torch.Tensor,
    image_index: torch.Tensor,
    box_masks: torch.Tensor,
    tau: float = 0.1,
    kernel_size: int = 3,
    dilation: int = 2,
) -> torch.Tensor:
    """Pairwise affinity term, Eq. (8): mean of ``-log P(y_e = 1)`` (Eq. 4) over the confident
    edges, computed only where edges count: cost ∝ total box area, not instances × image.

    An edge counts when its centre pixel lies inside the instance's box and its colour
    similarity (Eq. 7) is at least ``tau``; the mean runs over all such edges of all instances
    (the count is clamped at 1, so no instance or edge gives 0, not NaN). The centre pixels of
    all boxes are gathered into one flat list, each with its K*K-1 neighbours' logits (read
    within ``dilation * (kernel_size // 2)`` cells of the box) and its image's similarities, so
    the value and gradients are those of :func:`pairwise_loss_full_image`, edge for edge.

    Args:
        mask_logits: ``[N, H, W]``.
        similarity: ``[B, K*K-1, H, W]`` colour similarity of each image of the batch
            (:func:`boxinst.losses.color.color_similarity`; 0 for a neighbour outside the image).
        image_index: ``[N]`` the image of each instance.
        box_masks: ``[N, H, W]`` 1 inside the instance's box, 0 elsewhere: a rectangle of
            cells (its bounding rectangle is what is read).
    Returns:
        a scalar.
    """
    return _edge_mean(
        *pairwise_edge_sums(
            mask_logits, similarity, image_index, box_masks, tau, kernel_size, dilation
        )
    )


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
    image_index: torch.Tensor | None,
    *,
    use_projection: bool = True,
    use_pairwise: bool = True,
    projection_weight: float = 1.0,
    pairwise_weight: float = 1.0,
    prior_masks: torch.Tensor | None = None,
    has_prior: torch.Tensor | None = None,
    prior_weight: float = 1.0,
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
    CondInst's mean dice and to BoxInst's ``mean(L_proj) + L_pairwise`` exactly. The counts
    (instances, edges) are those of the global batch in a data-parallel run
    (:func:`~boxinst.losses.distributed.global_mean`: every worker calls this function).

    Args:
        mask_logits: ``[N, H, W]`` logits of the instances sampled for the mask loss.
        has_mask: ``[N]`` bool.
        gt_masks: ``[N, H, W]`` ground-truth masks; only rows with ``has_mask`` are read.
        box_masks: ``[N, H, W]`` box masks.
        similarity: ``[B, K*K-1, H, W]`` colour similarity of each image of the batch, and
        image_index: ``[N]`` the image of each instance; both needed when the pairwise term is
            on (:func:`pairwise_loss`).
        prior_masks: ``[N, H, W]`` box-prior masks (GrabCut, not in the paper): with them, a
            dice loss to the prior for every box-supervised instance whose ``has_prior`` is set,
            weighted by ``prior_weight``; ``None``: no prior term.
    Returns:
        ``{"loss_mask": dice, "loss_proj": ..., "loss_pairwise": ...}`` (and ``"loss_prior"``
        with ``prior_masks``), each a scalar that is 0
        (with a graph to the logits) where no instance contributes.
    """
    has_mask = has_mask.bool()
    use_prior = prior_masks is not None
    any_box_term = use_projection or use_pairwise or use_prior
    box_supervised = ~has_mask if any_box_term else torch.zeros_like(has_mask)
    zero = mask_logits.sum() * 0.0
    pairwise_total, edges = zero, zero.detach()
    if use_pairwise and box_supervised.any():
        if similarity is None or image_index is None:
            raise ValueError("the pairwise term needs the colour similarity of the images")
        pairwise_total, edges = pairwise_edge_sums(
            mask_logits[box_supervised],
            similarity,
            image_index[box_supervised],
            box_masks[box_supervised],
            tau=tau,
            kernel_size=kernel_size,
            dilation=dilation,
        )
    counts = torch.stack([has_mask.sum(), box_supervised.sum(), edges.detach()]).float()
    num_masked, num_boxed, num_edges = global_mean(counts)  # float32: edges overflow fp16
    num_supervised = (num_masked + num_boxed).clamp(min=1)

    losses = {"loss_mask": zero, "loss_proj": zero, "loss_pairwise": zero}
    if use_prior:
        losses["loss_prior"] = zero
        with_prior = box_supervised & has_prior.bool()
        if with_prior.any():
            prior = dice_loss(mask_logits[with_prior].sigmoid(), prior_masks[with_prior])
            losses["loss_prior"] = prior_weight * prior.sum() / num_supervised
    if has_mask.any():
        dice = dice_loss(mask_logits[has_mask].sigmoid(), gt_masks[has_mask])
        losses["loss_mask"] = dice.sum() / num_supervised
    if use_projection and box_supervised.any():
        proj = projection_loss(mask_logits[box_supervised], box_masks[box_supervised])
        losses["loss_proj"] = projection_weight * proj.sum() / num_supervised
    if use_pairwise and box_supervised.any():
        share = num_boxed / num_supervised
        pairwise = _edge_mean(pairwise_total, num_edges)
        losses["loss_pairwise"] = pairwise_weight * pairwise_warmup * share * pairwise
    return losses
