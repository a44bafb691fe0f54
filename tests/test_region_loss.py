"""The region term against hand-computed values of the two-phase energy it normalises."""

import pytest
import torch

from boxinst.losses.mask import grow_boxes, mixed_mask_loss, region_loss

BIG = 50.0  # a logit whose sigmoid is 1 (or 0) in float32


def two_colour_scene():
    """Three rows of four cells; the box is columns 1-2, grown by one cell it is the whole
    grid. Only L varies: 10 in the margin (columns 0 and 3), 30 on the object (column 1), 10 on
    the box's background (column 2)."""
    lab = torch.zeros(1, 3, 3, 4)
    lab[0, 0] = torch.tensor([10.0, 30.0, 10.0, 10.0])
    box = torch.zeros(1, 3, 4)
    box[0, :, 1:3] = 1
    return lab, box, torch.ones(1, 3, 4)


def logits(columns: list[float]) -> torch.Tensor:
    return torch.tensor(columns).expand(1, 3, 4).clone()


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        # the object alone: both phases are constant, nothing is left unexplained
        ([-BIG, BIG, -BIG, -BIG], 0.0),
        # the filled box: per row the object phase {30, 10} leaves (30-20)² + (10-20)² = 200 of
        # the region's variance Σ(c - 15)² = 25 + 225 + 25 + 25 = 300
        ([-BIG, BIG, BIG, -BIG], 200 / 300),
        # m = 1/2 in the box: colours centred on 15 are (-5, 15, -5, -5); Σ m c = 5 per row,
        # Σ m = 1, Σ (1 - m) = 3, explained 5² (1/1 + 1/3) = 100/3 of 300
        ([-BIG, 0.0, 0.0, -BIG], 1 - (100 / 3) / 300),
        # the margin is background whatever the logits say there
        ([BIG, BIG, -BIG, BIG], 0.0),
    ],
    ids=["object", "filled-box", "undecided", "margin-ignored"],
)
def test_region_loss_hand_computed(columns, expected):
    lab, box, valid = two_colour_scene()
    loss = region_loss(logits(columns), lab, torch.tensor([0]), box, valid, margin=1)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_region_loss_gradient_pulls_the_object_in_and_the_background_out():
    lab, box, valid = two_colour_scene()
    z = logits([0.0, 0.0, 0.0, 0.0]).requires_grad_()
    region_loss(z, lab, torch.tensor([0]), box, valid, margin=1).sum().backward()
    grad = z.grad[0]
    assert (grad[:, 1] < 0).all()  # descent raises the object's logits
    assert (grad[:, 2] > 0).all()  # and lowers the box's background
    assert (grad[:, [0, 3]] == 0).all()  # the margin has no say


def test_region_loss_reads_only_the_grown_box_and_the_valid_pixels():
    lab, box, valid = two_colour_scene()
    z = logits([-BIG, BIG, BIG, -BIG])
    reference = region_loss(z, lab, torch.tensor([0]), box, valid, margin=1)
    wide = torch.zeros(1, 3, 3, 7)
    wide[..., :4] = lab
    wide[0, :, :, 4:] = torch.rand(3, 3, 3) * 100  # beyond the margin: any colours
    wide_box = torch.zeros(1, 3, 7)
    wide_box[..., :4] = box
    wide_z = torch.full((1, 3, 7), -BIG)
    wide_z[..., :4] = z
    far = region_loss(wide_z, wide, torch.tensor([0]), wide_box, torch.ones(1, 3, 7), margin=1)
    torch.testing.assert_close(far, reference)

    padded = wide.clone()
    padded[0, :, :, 4:] = 0  # padding (black) next to the box: left out when marked invalid
    valid_cols = torch.zeros(1, 3, 7)
    valid_cols[..., :4] = 1
    wide_box2 = torch.zeros(1, 3, 7)
    wide_box2[..., 2:4] = 1  # a box touching the padding: its margin is column 1 only
    z2 = torch.full((1, 3, 7), -BIG)
    z2[..., 2:4] = BIG
    with_padding = region_loss(
        z2, padded, torch.tensor([0]), wide_box2, valid_cols, margin=2
    )  # margin 2 reaches columns 0-5: 4 and 5 are padding
    without = region_loss(z2[..., :4], padded[..., :4], torch.tensor([0]), wide_box2[..., :4],
                          valid_cols[..., :4], margin=2)  # fmt: skip
    torch.testing.assert_close(with_padding, without)


def test_region_loss_of_a_region_without_colour_variance_is_zero():
    lab = torch.full((1, 3, 5, 5), 40.0)
    box = torch.zeros(1, 5, 5)
    box[0, 1:4, 1:4] = 1
    loss = region_loss(torch.zeros(1, 5, 5), lab, torch.tensor([0]), box, torch.ones(1, 5, 5))
    assert loss.item() == 0.0


def test_region_loss_is_per_instance_and_per_image():
    lab, box, valid = two_colour_scene()
    other = lab.flip(-1)  # the second image: its object in column 2
    images = torch.cat([lab, other])
    z = torch.stack([logits([-BIG, BIG, -BIG, -BIG])[0], logits([-BIG, -BIG, BIG, -BIG])[0]])
    losses = region_loss(
        z, images, torch.tensor([0, 1]), box.expand(2, 3, 4), valid.expand(2, 3, 4), 1
    )
    torch.testing.assert_close(losses, torch.zeros(2))
    swapped = region_loss(
        z, images, torch.tensor([1, 0]), box.expand(2, 3, 4), valid.expand(2, 3, 4), 1
    )
    assert (swapped > 0.5).all()  # each mask on the other image's object: its background


def test_grow_boxes_adds_the_margin_and_stays_in_the_image():
    box = torch.zeros(1, 6, 6)
    box[0, 0:2, 2:4] = 1
    grown = grow_boxes(box, 1)
    expected = torch.zeros(1, 6, 6)
    expected[0, 0:3, 1:5] = 1
    torch.testing.assert_close(grown, expected)
    assert grow_boxes(box, 0) is box


def test_mixer_adds_the_region_term_per_box_supervised_instance():
    lab, box, valid = two_colour_scene()
    z = torch.cat([logits([-BIG, BIG, BIG, -BIG]), logits([-BIG, BIG, -BIG, -BIG])])
    boxes, masks = box.expand(2, 3, 4), torch.zeros(2, 3, 4)
    masks[1, :, 1] = 1
    has_mask = torch.tensor([False, True])  # the second instance has its mask: dice, no region
    losses = mixed_mask_loss(
        z, has_mask, masks, boxes, None, torch.tensor([0, 0]), images_lab=lab, valid=valid,
        use_projection=False, use_pairwise=False, use_region=True, region_weight=0.5,
        region_margin=1,
    )  # fmt: skip
    # one box-supervised instance (the filled box, 2/3) of the two supervised ones, weight 0.5
    assert losses["loss_region"].item() == pytest.approx(0.5 * (200 / 300) / 2, abs=1e-6)
    off = mixed_mask_loss(z, has_mask, masks, boxes, None, None, use_pairwise=False)
    assert "loss_region" not in off
