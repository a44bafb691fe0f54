"""GrabCut box priors: better than the boxes, failures left out, cached by content, carried
through the data pipeline with their instances, and learnt from by the dice term."""

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from threadpoolctl import threadpool_info

from boxinst.losses.mask import dice_loss, mixed_mask_loss
from boxinst.platform.data.box_prior import (
    PriorSettings,
    box_priors,
    ensure_priors,
    load_priors,
    one_thread_worker,
    prior_file,
    reaches_across,
)
from boxinst.platform.data.coco import CocoInstanceDataset
from boxinst.platform.data.collate import collate_instances
from boxinst.platform.data.synth import SynthConfig, synthesize
from boxinst.platform.data.transforms import train_transform
from boxinst.platform.evaluation.coco import grabcut_masks
from boxinst.platform.spec import load_spec
from boxinst.platform.training.loop import box_prior_file


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A few generated scenes (flat colours: GrabCut's easy case) and their priors."""
    root = tmp_path_factory.mktemp("priors")
    synthesize(root, SynthConfig(seed=4, train_images=10, val_images=1, min_size=96, max_size=96))
    train = root / "train"
    path = ensure_priors(train / "annotations.json", train / "images", root / "cache", workers=1)
    return train, path


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_a_mask_must_reach_across_its_box():
    mask = np.zeros((20, 20), bool)
    box = np.array([2.0, 2.0, 12.0, 12.0])
    assert not reaches_across(mask, box, 0.8)  # GrabCut found nothing
    mask[3:6, 3:6] = True
    assert not reaches_across(mask, box, 0.8)  # a small stray blob
    mask[2:12, 6] = True
    mask[6, 2:12] = True
    assert reaches_across(mask, box, 0.8)  # a cross spans every row and column of the box
    assert not reaches_across(mask, np.array([15.0, 15.0, 15.0, 15.0]), 0.8)  # an empty box


def test_priors_fit_the_shapes_better_than_their_boxes(shapes):
    train, path = shapes
    coco = json.loads((train / "annotations.json").read_text())
    priors = load_priors(path)
    assert set(priors) == {a["id"] for a in coco["annotations"]}
    kept, prior_ious, box_ious = 0, [], []
    for annotation in coco["annotations"]:
        truth = mask_utils.decode(annotation["segmentation"]).astype(bool)
        x, y, w, h = (int(v) for v in annotation["bbox"])
        box = np.zeros_like(truth)
        box[y : y + h, x : x + w] = True
        box_ious.append(iou(box, truth))
        if priors[annotation["id"]] is not None:
            kept += 1
            prior_ious.append(iou(mask_utils.decode(priors[annotation["id"]]).astype(bool), truth))
    assert kept >= 0.8 * len(coco["annotations"])
    assert np.mean(prior_ious) > np.mean(box_ious) + 0.25  # boxes: about 0.5, priors: about 0.9


def test_overlapping_boxes_are_cut_again_with_the_other_objects_pixels_unsure():
    # a red disk in front of a blue square, wholly inside the square's box: to GrabCut alone
    # the disk is the square's too, its colour being nowhere outside that box
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :96]
    disk = (yy - 40) ** 2 + (xx - 40) ** 2 <= 12**2
    square = np.zeros((96, 96), bool)
    square[20:56, 16:52] = True
    square &= ~disk
    image = rng.normal(128, 6, (96, 96, 3))
    image[square] = rng.normal((40, 60, 200), 6, (square.sum(), 3))
    image[disk] = rng.normal((210, 40, 40), 6, (disk.sum(), 3))
    image = image.clip(0, 255).astype(np.uint8)
    boxes = np.array([[16.0, 20.0, 52.0, 56.0], [28.0, 28.0, 53.0, 53.0]])  # square, disk

    once, kept_once = box_priors(image, boxes, PriorSettings(overlap_pass=False))
    twice, kept_twice = box_priors(image, boxes, PriorSettings())
    assert kept_once.all() and kept_twice.all()
    assert once[0][disk].mean() > 0.95 and iou(once[0], square) < 0.7  # the square took the disk
    assert iou(twice[0], square) > 0.95 and iou(twice[1], disk) > 0.95
    assert not (twice[0] & twice[1]).any()


def test_a_ring_keeps_its_hole_when_background_like_pixels_start_as_background():
    # a red ring on a background whose colour drifts across the image: the hole shows the
    # background of the ring's centre, a colour not among those around the box, but the one
    # the background around it, continued, predicts there
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :96]
    centre = (yy - 48) ** 2 + (xx - 48) ** 2
    ring, hole = (centre <= 22**2) & (centre > 12**2), centre <= 12**2
    background = np.stack([100 + 40 * xx / 96, 120 + 0 * xx, 140 - 40 * yy / 96], axis=-1)
    image = background + rng.normal(0, 4, (96, 96, 3))
    image[ring] = rng.normal((210, 60, 40), 4, (ring.sum(), 3))
    image = image.clip(0, 255).astype(np.uint8)
    box = np.array([[26.0, 26.0, 71.0, 71.0]])

    plain, kept_plain = box_priors(image, box, PriorSettings(background_start=False))
    carved, kept_carved = box_priors(image, box, PriorSettings())
    assert kept_plain.all() and kept_carved.all()
    assert plain[0][hole].all() and iou(plain[0], ring) < 0.75  # GrabCut alone fills the hole
    assert not carved[0][hole].any() and iou(carved[0], ring) > 0.95


def test_an_object_lost_from_the_background_start_is_cut_plainly():
    # a smooth disk whose colour lies within the noisy background's spread, around a red core:
    # started as background (it is as near to the background's fit as most of the background),
    # only the core is left, which does not reach across the box; the plain cut finds the disk
    # (a tight cluster of colour to its foreground model), and is the prior kept
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :96]
    centre = (yy - 48) ** 2 + (xx - 48) ** 2
    disk, core = centre <= 20**2, centre <= 4**2
    image = rng.normal(128, 20, (96, 96, 3))
    image[disk] = rng.normal((163, 93, 128), 2, (disk.sum(), 3))
    image[core] = rng.normal((210, 60, 40), 2, (core.sum(), 3))
    image = image.clip(0, 255).astype(np.uint8)
    box = np.array([[28.0, 28.0, 69.0, 69.0]])
    lost = grabcut_masks(image, box, margin=0.5, max_crop=256, background_quantile=0.95)[0]
    assert not reaches_across(lost, box[0], 0.8)
    prior, kept = box_priors(image, box, PriorSettings(background_start=True))
    assert kept.all() and iou(prior[0], disk) > 0.95


def test_prior_workers_run_their_libraries_on_one_thread():
    # the pool runs a worker per core: BLAS's threads under the background fit's least squares
    # made the priors 2.5x slower on 2 cores
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, context, initializer=one_thread_worker) as pool:
        libraries = pool.submit(threadpool_info).result()
        opencv_threads = pool.submit(cv2.getNumThreads).result()
    blas = [library for library in libraries if library["user_api"] == "blas"]
    assert blas and all(library["num_threads"] == 1 for library in blas)
    assert opencv_threads == 1


def test_prior_files_are_named_by_content_and_settings(shapes, tmp_path):
    train, path = shapes
    annotations = train / "annotations.json"
    assert ensure_priors(annotations, train / "images", path.parent) == path  # found, not redone
    assert prior_file(annotations, path.parent, PriorSettings(iterations=3)) != path
    changed = tmp_path / "annotations.json"
    data = json.loads(annotations.read_text())
    data["annotations"] = data["annotations"][1:]
    changed.write_text(json.dumps(data))
    assert prior_file(changed, path.parent, PriorSettings()).name != path.name


@pytest.mark.parametrize(("overlap_pass", "background_start"), [(True, False), (False, True)])
def test_a_spec_computes_the_priors_of_its_settings(
    shapes, tmp_path, overlap_pass, background_start
):
    train, _ = shapes
    split = {"annotations": str(train / "annotations.json"), "images": str(train / "images")}
    spec = load_spec(
        "quickstart",
        [
            f"data.train={split}",
            f"data.val={split}",
            f"data.box_priors={tmp_path}",
            f"data.prior_overlap_pass={overlap_pass}",
            f"data.prior_background_start={background_start}",
        ],
    )
    settings = PriorSettings(overlap_pass=overlap_pass, background_start=background_start)
    assert box_prior_file(spec) == prior_file(train / "annotations.json", tmp_path, settings)
    assert box_prior_file(spec).is_file()


def test_priors_follow_their_instances_through_flips_and_resizes(shapes):
    train, path = shapes
    priors = load_priors(path)
    transform = lambda: train_transform((80, 112), 200, flip_prob=1.0, seed=0)  # noqa: E731
    with_truth = CocoInstanceDataset(
        train / "annotations.json", train / "images", mask_policy="all", transform=transform()
    )
    boxed = CocoInstanceDataset(
        train / "annotations.json", train / "images", mask_policy="none", transform=transform(),
        box_priors=priors,
    )  # fmt: skip
    checked = 0
    for index in range(len(boxed)):
        with_truth.transform.reseed(index)
        boxed.transform.reseed(index)
        _, truth = with_truth[index]
        _, target = boxed[index]
        assert target["prior_masks"].shape == truth["masks"].shape
        pairs = zip(target["prior_masks"], truth["masks"], target["has_prior"], strict=True)
        for prior, mask, has in pairs:
            if has:
                assert iou(prior.numpy() > 0, mask.numpy() > 0) > 0.5
                checked += 1
            else:
                assert prior.sum() == 0
    assert checked >= 10
    images, targets = collate_instances([boxed[0], boxed[1]])
    for target in targets:  # padded like the masks
        assert target["prior_masks"].shape[-2:] == images.shape[-2:]


def test_instances_with_their_mask_get_no_prior(shapes):
    train, path = shapes
    dataset = CocoInstanceDataset(
        train / "annotations.json", train / "images", mask_policy="all",
        box_priors=load_priors(path),
    )  # fmt: skip
    _, target = dataset[0]
    assert not target["has_prior"].any() and target["prior_masks"].sum() == 0


def test_prior_term_is_the_dice_of_the_box_supervised_instances_with_a_prior():
    logits = torch.randn(3, 6, 6)
    priors = (torch.rand(3, 6, 6) > 0.5).to(torch.uint8)
    boxes = torch.ones(3, 6, 6)
    has_mask = torch.tensor([True, False, False])
    has_prior = torch.tensor([False, True, False])  # the third one's prior was left out
    losses = mixed_mask_loss(
        logits, has_mask, priors, boxes, None, None, use_projection=False, use_pairwise=False,
        prior_masks=priors, has_prior=has_prior, prior_weight=0.5,
    )  # fmt: skip
    expected = 0.5 * dice_loss(logits[1:2].sigmoid(), priors[1:2]).sum() / 3  # 3 supervised
    torch.testing.assert_close(losses["loss_prior"], expected)
    torch.testing.assert_close(
        losses["loss_mask"], dice_loss(logits[:1].sigmoid(), priors[:1]).sum() / 3
    )
