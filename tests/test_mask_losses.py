"""The mask losses against hand-computed values and naive loops over the paper's equations."""

import math

import pytest
import torch

from boxinst.losses.color import color_similarity
from boxinst.losses.mask import (
    dice_loss,
    mixed_mask_loss,
    neighbour_offsets,
    pairwise_loss,
    pairwise_warmup_factor,
    projection_loss,
)

BIG = 50.0  # a logit whose sigmoid is 1 (or 0) in float32


def logits_of(probs: torch.Tensor) -> torch.Tensor:
    """Logits whose sigmoid is ``probs``; 0 and 1 map to ∓BIG."""
    return (
        torch.logit(probs.clamp(0, 1), eps=0).nan_to_num(posinf=BIG, neginf=-BIG).clamp(-BIG, BIG)
    )


def test_dice_loss_hand_computed():
    probs = torch.tensor([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 1.0]])
    target = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 1.0]])
    # row 0: 1 - 2 * 0.5 / (0.25 + 0.25 + 1); row 1: 1 - 2 * 2 / (2 + 2)
    expected = torch.tensor([1 - 1.0 / (1.5 + 1e-5), 1 - 4.0 / (4 + 1e-5)])
    torch.testing.assert_close(dice_loss(probs, target), expected)


def test_projection_loss_zero_for_mask_equal_to_box():
    box = torch.zeros(1, 6, 7)
    box[0, 1:4, 2:6] = 1
    logits = torch.where(box > 0, BIG, -BIG)
    assert projection_loss(logits, box).item() == pytest.approx(0.0, abs=1e-5)


def test_projection_loss_positive_when_a_box_row_is_left_empty():
    box = torch.zeros(1, 6, 7)
    box[0, 1:4, 2:6] = 1
    mask = box.clone()
    mask[0, 2, :] = 0  # the middle row of the box is empty: y-projection misses it
    loss = projection_loss(torch.where(mask > 0, BIG, -BIG), box)
    # x-projection still matches; y-projection is [0,1,0,1,0,0] against [0,1,1,1,0,0]
    expected = 1 - 2 * 2 / (2 + 3 + 1e-5)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert loss.item() > 0.1


def test_projection_loss_hand_computed_soft_mask():
    box = torch.tensor([[[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]])
    probs = torch.tensor([[[0.5, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    # both projections are [0.5, 0, 0] against [1, 1, 0]: 1 - 2 * 0.5 / (0.25 + 2)
    per_axis = 1 - 1.0 / (2.25 + 1e-5)
    assert projection_loss(logits_of(probs), box).item() == pytest.approx(2 * per_axis, abs=1e-5)


def naive_color_similarity(lab, kernel_size, dilation, theta):
    """Eq. (7) pixel by pixel; neighbours outside the image get 0."""
    b, _, h, w = lab.shape
    offsets = neighbour_offsets(kernel_size, dilation)
    out = torch.zeros(b, len(offsets), h, w, dtype=torch.float64)
    for n in range(b):
        for k, (dy, dx) in enumerate(offsets):
            for i in range(h):
                for j in range(w):
                    if 0 <= i + dy < h and 0 <= j + dx < w:
                        diff = lab[n, :, i, j].double() - lab[n, :, i + dy, j + dx].double()
                        out[n, k, i, j] = math.exp(-diff.norm().item() / theta)
    return out


def naive_pairwise_loss(logits, similarity, box_masks, tau, kernel_size, dilation):
    """Eq. (8) edge by edge, with P(y_e = 1) from Eq. (4): the mean over edges whose centre is in
    the box, whose other end is in the image and whose similarity is >= tau."""
    n, h, w = logits.shape
    probs = logits.double().sigmoid()
    total, count = 0.0, 0
    for m in range(n):
        for k, (dy, dx) in enumerate(neighbour_offsets(kernel_size, dilation)):
            for i in range(h):
                for j in range(w):
                    inside = 0 <= i + dy < h and 0 <= j + dx < w
                    if box_masks[m, i, j] and inside and similarity[m, k, i, j] >= tau:
                        a, c = probs[m, i, j], probs[m, i + dy, j + dx]
                        total -= math.log(a * c + (1 - a) * (1 - c))
                        count += 1
    return total / max(count, 1)


@pytest.mark.parametrize("kernel_size,dilation", [(3, 2), (3, 1), (5, 1)])
def test_color_similarity_matches_eq7(kernel_size, dilation):
    lab = torch.rand(2, 3, 7, 9, generator=torch.Generator().manual_seed(1)) * 4
    ours = color_similarity(lab, kernel_size, dilation, theta=2.0)
    torch.testing.assert_close(
        ours.double(), naive_color_similarity(lab, kernel_size, dilation, 2.0)
    )


def test_color_similarity_zero_across_invalid_pixels():
    lab = torch.zeros(1, 3, 6, 6)  # uniform image: every valid edge has similarity 1
    valid = torch.ones(1, 6, 6)
    valid[0, 4:] = 0  # the two bottom rows are ignored
    sim = color_similarity(lab, 3, 2, valid=valid)
    offsets = neighbour_offsets(3, 2)
    for k, (dy, dx) in enumerate(offsets):
        for i in range(6):
            for j in range(6):
                ends_valid = i < 4 and 0 <= i + dy < 4 and 0 <= j + dx < 6
                assert sim[0, k, i, j].item() == (1.0 if ends_valid else 0.0)


@pytest.mark.parametrize("kernel_size,dilation,tau", [(3, 2, 0.3), (3, 1, 0.1), (5, 2, 0.5)])
def test_pairwise_loss_matches_naive_eq8(kernel_size, dilation, tau):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 8, 10, generator=g) * 3
    lab = torch.rand(3, 3, 8, 10, generator=g) * 4
    similarity = color_similarity(lab, kernel_size, dilation)
    box_masks = torch.zeros(3, 8, 10)
    box_masks[0, 2:6, 3:8] = 1
    box_masks[1, 0:8, 0:4] = 1  # touches the image border
    box_masks[2, 5:8, 6:10] = 1
    ours = pairwise_loss(logits, similarity, torch.arange(3), box_masks, tau, kernel_size, dilation)
    expected = naive_pairwise_loss(logits, similarity, box_masks, tau, kernel_size, dilation)
    assert ours.item() == pytest.approx(expected, abs=1e-5)


def test_pairwise_loss_rewards_agreement_of_similar_neighbours():
    similarity = torch.ones(1, 8, 6, 6)
    box = torch.ones(1, 6, 6)
    uniform = torch.full((1, 6, 6), BIG)
    checkerboard = torch.where(
        (torch.arange(6)[:, None] + torch.arange(6)[None]) % 2 == 0, BIG, -BIG
    )[None]
    image = torch.zeros(1, dtype=torch.long)
    assert pairwise_loss(uniform, similarity, image, box).item() == pytest.approx(0.0, abs=1e-6)
    # with dilation 2 every neighbour of a checkerboard pixel has its own parity: still 0
    assert pairwise_loss(checkerboard, similarity, image, box, dilation=2).item() == pytest.approx(
        0.0, abs=1e-6
    )
    # with dilation 1 the 4 side neighbours disagree with certainty: -log P = BIG each
    assert pairwise_loss(checkerboard, similarity, image, box, dilation=1).item() > 10


def test_pairwise_loss_no_edges_is_zero_not_nan():
    loss = pairwise_loss(
        torch.randn(2, 5, 5), torch.zeros(2, 8, 5, 5), torch.arange(2), torch.ones(2, 5, 5), tau=0.1
    )
    assert loss.item() == 0.0


def test_losses_have_finite_gradients_for_extreme_logits():
    g = torch.Generator().manual_seed(0)
    logits = (torch.randint(0, 2, (4, 12, 12), generator=g).float() * 2 - 1) * BIG
    logits.requires_grad_(True)
    box = torch.zeros(4, 12, 12)
    box[:, 2:9, 3:10] = 1
    similarity = torch.ones(4, 8, 12, 12)
    images = torch.arange(4)
    total = pairwise_loss(logits, similarity, images, box) + projection_loss(logits, box).sum()
    total = total + dice_loss(logits.sigmoid(), box).sum()
    total.backward()
    assert torch.isfinite(total)
    assert torch.isfinite(logits.grad).all()
    # disagreeing neighbours at ±50 cost about 50 nats each edge, not inf
    assert 1.0 < pairwise_loss(logits, similarity, images, box).item() < 60.0


def test_pairwise_warmup_is_linear_then_flat():
    assert pairwise_warmup_factor(0, 10_000) == 0.0
    assert pairwise_warmup_factor(2_500, 10_000) == 0.25
    assert pairwise_warmup_factor(50_000, 10_000) == 1.0
    assert pairwise_warmup_factor(3, 0) == 1.0


def _mixer_inputs():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 10, 10, generator=g)
    gt = (torch.rand(4, 10, 10, generator=g) > 0.5).float()
    box = torch.zeros(4, 10, 10)
    box[:, 2:8, 1:7] = 1
    similarity = torch.rand(4, 8, 10, 10, generator=g)
    return logits, gt, box, similarity


def test_mixer_pure_regimes_reduce_to_condinst_and_boxinst():
    logits, gt, box, sim = _mixer_inputs()
    full = mixed_mask_loss(logits, torch.ones(4, dtype=torch.bool), gt, box, None, None)
    torch.testing.assert_close(full["loss_mask"], dice_loss(logits.sigmoid(), gt).mean())
    assert full["loss_proj"].item() == 0 and full["loss_pairwise"].item() == 0

    images = torch.arange(4)
    boxed = mixed_mask_loss(
        logits, torch.zeros(4, dtype=torch.bool), gt, box, sim, images, tau=0.3, pairwise_warmup=0.5
    )
    assert boxed["loss_mask"].item() == 0
    torch.testing.assert_close(boxed["loss_proj"], projection_loss(logits, box).mean())
    torch.testing.assert_close(
        boxed["loss_pairwise"], 0.5 * pairwise_loss(logits, sim, images, box, tau=0.3)
    )


def test_mixer_semi_supervised_counts_each_instance_once():
    logits, gt, box, sim = _mixer_inputs()
    has_mask = torch.tensor([True, False, True, False])
    out = mixed_mask_loss(
        logits, has_mask, gt, box, sim, torch.arange(4), use_pairwise=True, pairwise_weight=2.0
    )
    dice = dice_loss(logits.sigmoid(), gt)
    proj = projection_loss(logits, box)
    torch.testing.assert_close(out["loss_mask"], (dice[0] + dice[2]) / 4)
    torch.testing.assert_close(out["loss_proj"], (proj[1] + proj[3]) / 4)
    box_only = torch.tensor([1, 3])
    expected_pairwise = (
        2.0 * (2 / 4) * pairwise_loss(logits[box_only], sim, box_only, box[box_only])
    )
    torch.testing.assert_close(out["loss_pairwise"], expected_pairwise)


def test_mixer_without_box_terms_ignores_box_only_instances():
    logits, gt, box, sim = _mixer_inputs()
    has_mask = torch.tensor([True, False, False, False])
    images = torch.arange(4)
    out = mixed_mask_loss(
        logits, has_mask, gt, box, sim, images, use_projection=False, use_pairwise=False
    )
    torch.testing.assert_close(out["loss_mask"], dice_loss(logits[:1].sigmoid(), gt[:1])[0])
    none = mixed_mask_loss(
        logits,
        torch.zeros(4, dtype=torch.bool),
        gt,
        box,
        sim,
        images,
        use_projection=False,
        use_pairwise=False,
    )
    assert all(v.item() == 0 for v in none.values())


def test_mixer_never_reads_masks_of_box_only_instances():
    logits, gt, box, sim = _mixer_inputs()
    has_mask = torch.tensor([True, False, True, False])
    poisoned = gt.clone()
    poisoned[~has_mask] = float("nan")
    clean = mixed_mask_loss(logits, has_mask, gt, box, sim, torch.arange(4))
    dirty = mixed_mask_loss(logits, has_mask, poisoned, box, sim, torch.arange(4))
    for name in clean:
        torch.testing.assert_close(dirty[name], clean[name])
