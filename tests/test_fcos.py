"""FCOS target assignment and losses on small hand-checked cases."""

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from boxinst.losses.fcos import (
    FCOSTargets,
    assign_targets,
    centerness_targets,
    fcos_losses,
    size_ranges,
)

INF = float("inf")


def test_size_ranges_of_fcos():
    assert size_ranges(5) == [(0, 64), (64, 128), (128, 256), (256, 512), (512, INF)]
    with pytest.raises(ValueError):
        size_ranges(4)


def _one_level(xs, ys, stride, lo=0.0, hi=INF):
    locations = torch.tensor([[x, y] for y in ys for x in xs], dtype=torch.float32)
    strides = torch.full((len(locations),), float(stride))
    ranges = torch.tensor([[lo, hi]]).expand(len(locations), 2)
    return locations, strides, ranges


def test_assignment_prefers_the_smallest_box_and_respects_centre_sampling():
    locations, strides, ranges = _one_level([4, 12, 20, 28, 36], [4, 12, 20, 28, 36], stride=8)
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [8.0, 8.0, 24.0, 24.0]])
    labels = torch.tensor([3, 7])
    cls, reg, gt = assign_targets(
        locations, strides, ranges, boxes, labels, num_classes=10, center_sampling_radius=1.5
    )
    grid = gt.view(5, 5)
    # the small box's centre (16, 16) +- 12 covers locations 12 and 20 on each axis
    assert grid[1:3, 1:3].eq(1).all()
    # the large box's centre region (20 +- 12) is [8, 32]: locations 12..28,
    # minus those taken by the small box
    assert grid[1, 3] == 0 and grid[3, 3] == 0 and grid[3, 1] == 0
    # the border locations are outside the large box's centre region
    assert grid[0].eq(-1).all() and grid[:, 0].eq(-1).all() and grid[4].eq(-1).all()
    assert cls.view(5, 5)[1, 1] == 7 and cls.view(5, 5)[3, 3] == 3 and cls.view(5, 5)[0, 0] == 10
    # location (12, 12) against box (8, 8, 24, 24): ltrb (4, 4, 12, 12) in strides of 8
    torch.testing.assert_close(reg.view(5, 5, 4)[1, 1], torch.tensor([0.5, 0.5, 1.5, 1.5]))


def test_assignment_size_of_interest_excludes_boxes_too_big_for_the_level():
    locations, strides, ranges = _one_level([20], [20], stride=8, lo=0, hi=16)
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0]])  # largest distance 20 > 16
    cls, _, gt = assign_targets(locations, strides, ranges, boxes, torch.tensor([1]), 4, 0.0)
    assert gt.item() == -1 and cls.item() == 4


def test_assignment_without_boxes_is_all_background():
    locations, strides, ranges = _one_level([4, 12], [4], stride=8)
    cls, reg, gt = assign_targets(
        locations, strides, ranges, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 3
    )
    assert cls.tolist() == [3, 3] and gt.tolist() == [-1, -1] and reg.abs().sum() == 0


def test_centerness_targets():
    reg = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 2.0, 2.0], [1.0, 3.0, 4.0, 3.0]])
    expected = torch.tensor([1.0, 0.5, (0.25 * 1.0) ** 0.5])
    torch.testing.assert_close(centerness_targets(reg), expected)


def test_fcos_losses_hand_computed():
    num_classes = 2
    cls_logits = torch.tensor([[2.0, -1.0], [0.5, 0.0], [-3.0, 1.0]])
    box = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    centerness = torch.tensor([0.3, 0.0, 0.0])
    targets = FCOSTargets(
        labels=torch.tensor([0, 2, 2]),  # one positive of class 0, two background
        reg_targets=torch.tensor([[1.0, 1.0, 2.0, 2.0], [0, 0, 0, 0], [0, 0, 0, 0]]),
        gt_index=torch.tensor([0, -1, -1]),
    )
    losses = fcos_losses(cls_logits, box, centerness, targets, num_classes)
    one_hot = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    expected_cls = sigmoid_focal_loss(cls_logits, one_hot, alpha=0.25, gamma=2.0, reduction="sum")
    torch.testing.assert_close(losses["loss_cls"], expected_cls)
    # predicted box (-1,-1,1,1) inside target (-1,-1,2,2): IoU 4/9 = GIoU, loss 5/9
    assert losses["loss_box"].item() == pytest.approx(5 / 9, abs=1e-5)
    # BCE(0.3, target centerness 0.5)
    sig = torch.sigmoid(torch.tensor(0.3))
    assert losses["loss_ctr"].item() == pytest.approx(
        -(0.5 * sig.log() + 0.5 * (1 - sig).log()).item(), abs=1e-6
    )


def test_fcos_losses_without_positives_are_finite():
    targets = FCOSTargets(torch.tensor([3, 3]), torch.zeros(2, 4), torch.tensor([-1, -1]))
    cls_logits = torch.randn(2, 3, requires_grad=True)
    losses = fcos_losses(cls_logits, torch.rand(2, 4), torch.zeros(2), targets, 3)
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total) and losses["loss_box"].item() == 0
