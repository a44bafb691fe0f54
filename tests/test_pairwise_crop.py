"""The crop-local pairwise term (Eq. 8) against the full-image formulation of the paper and the
official code: the same edges, hence the same value and gradients, at a cost that follows the
boxes."""

import pytest
import torch

from boxinst.losses.color import color_similarity
from boxinst.losses.mask import mixed_mask_loss, pairwise_loss, pairwise_loss_full_image

HEIGHT, WIDTH = 17, 23


def random_boxes(generator: torch.Generator, count: int) -> torch.Tensor:
    """``[count, H, W]`` box masks: random rectangles, then one touching every border, one of
    a single cell in a corner and one empty (a box between cell centres draws no cell)."""
    masks = torch.zeros(count, HEIGHT, WIDTH)
    for m in range(count):
        y0, y1 = sorted(torch.randint(0, HEIGHT, (2,), generator=generator).tolist())
        x0, x1 = sorted(torch.randint(0, WIDTH, (2,), generator=generator).tolist())
        masks[m, y0 : y1 + 1, x0 : x1 + 1] = 1
    specials = [(slice(None), slice(None)), (slice(HEIGHT - 1, None), slice(0, 1)), None]
    for m, special in zip(range(count), specials, strict=False):
        masks[m] = 0
        if special is not None:
            masks[m][special] = 1
    return masks


def batch(seed: int, counts: list[int], kernel_size: int, dilation: int, ignore_bottom: int = 0):
    """Logits (leaf, requiring grad), per-image similarity, image index and box masks of a batch
    with ``counts[b]`` instances in image ``b``; the bottom rows and, in image 0, the right
    columns (padding) are outside the valid image."""
    g = torch.Generator().manual_seed(seed)
    lab = torch.rand(len(counts), 3, HEIGHT, WIDTH, generator=g) * 8
    valid = torch.ones(len(counts), HEIGHT, WIDTH)
    valid[:, HEIGHT - ignore_bottom :] = 0
    if ignore_bottom:
        valid[0, :, WIDTH - 3 :] = 0
    similarity = color_similarity(lab, kernel_size, dilation, valid=valid)
    image_index = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    logits = (torch.randn(sum(counts), HEIGHT, WIDTH, generator=g) * 4).requires_grad_(True)
    return logits, similarity, image_index, random_boxes(g, sum(counts))


def value_and_grad(loss_fn, logits, *args, **kwargs):
    logits.grad = None
    value = loss_fn(logits, *args, **kwargs)
    value.backward()
    return value.detach(), logits.grad.clone()


@pytest.mark.parametrize("tau", [0.0, 0.3])
@pytest.mark.parametrize("kernel_size,dilation", [(3, 2), (3, 1), (5, 2)])
@pytest.mark.parametrize("ignore_bottom", [0, 4])
def test_crop_local_equals_full_image(kernel_size, dilation, tau, ignore_bottom):
    logits, similarity, image_index, boxes = batch(
        kernel_size * 10 + dilation, [5, 0, 3], kernel_size, dilation, ignore_bottom
    )
    args = (similarity, image_index, boxes, tau, kernel_size, dilation)
    crop, crop_grad = value_and_grad(pairwise_loss, logits, *args)
    full, full_grad = value_and_grad(pairwise_loss_full_image, logits, *args)
    assert crop.item() > 0.1  # edges were counted: the comparison is not of two zeros
    torch.testing.assert_close(crop, full, rtol=0, atol=1e-5)
    torch.testing.assert_close(crop_grad, full_grad, rtol=0, atol=1e-5)


def test_finite_and_equal_at_saturated_logits():
    logits, similarity, image_index, boxes = batch(7, [4, 2], 3, 2)
    with torch.no_grad():
        logits.copy_(torch.where(logits > 0, 50.0, -50.0))
    crop, crop_grad = value_and_grad(pairwise_loss, logits, similarity, image_index, boxes, 0.0)
    full, full_grad = value_and_grad(
        pairwise_loss_full_image, logits, similarity, image_index, boxes, 0.0
    )
    assert torch.isfinite(crop) and torch.isfinite(crop_grad).all()
    assert crop.item() > 1.0  # disagreeing neighbours at ±50 cost about 50 nats each
    torch.testing.assert_close(crop, full, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(crop_grad, full_grad, rtol=0, atol=1e-5)


def test_no_instances_gives_zero_with_a_graph():
    logits, similarity, image_index, boxes = batch(3, [0, 0], 3, 2)
    value, grad = value_and_grad(pairwise_loss, logits, similarity, image_index, boxes)
    assert value.item() == 0.0 and grad.shape == (0, HEIGHT, WIDTH)


def test_reads_nothing_beyond_the_boxes_and_their_margin():
    """Logits farther than ``dilation * (K // 2)`` cells from an instance's box, and similarities
    of centre pixels outside every box of their image, never enter the crop-local term."""
    kernel_size, dilation = 3, 2
    logits, similarity, image_index, boxes = batch(5, [2, 1], kernel_size, dilation)
    boxes = torch.zeros_like(boxes)
    boxes[0, 3:6, 4:9] = 1
    boxes[1, 12:17, 0:2] = 1  # touches the bottom and left borders
    boxes[2, 8:10, 10:14] = 1
    margin = dilation * (kernel_size // 2)
    near = torch.nn.functional.max_pool2d(boxes[:, None], 2 * margin + 1, 1, margin)[:, 0] > 0
    poisoned_logits = torch.where(near, logits.detach(), float("nan")).requires_grad_(True)
    in_a_box = torch.zeros(2, HEIGHT, WIDTH).index_add_(0, image_index, boxes) > 0
    poisoned_similarity = torch.where(in_a_box[:, None], similarity, float("nan"))

    expected, expected_grad = value_and_grad(
        pairwise_loss, logits, similarity, image_index, boxes, 0.1, kernel_size, dilation
    )
    value, grad = value_and_grad(
        pairwise_loss,
        poisoned_logits,
        poisoned_similarity,
        image_index,
        boxes,
        0.1,
        kernel_size,
        dilation,
    )
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(grad, expected_grad)
    assert (grad[~near] == 0).all()


def test_mixer_takes_the_similarity_per_image():
    """``mixed_mask_loss`` reads each box-supervised instance's own image's similarity."""
    logits, similarity, image_index, boxes = batch(11, [3, 2], 3, 2)
    has_mask = torch.tensor([False, True, False, False, True])
    gt = torch.zeros_like(boxes)
    out = mixed_mask_loss(logits, has_mask, gt, boxes, similarity, image_index, tau=0.3)
    box_only = ~has_mask
    expected = pairwise_loss_full_image(
        logits[box_only], similarity, image_index[box_only], boxes[box_only], tau=0.3
    )
    torch.testing.assert_close(out["loss_pairwise"], 3 / 5 * expected, rtol=0, atol=1e-6)
