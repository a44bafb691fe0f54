"""The fidelity suite's parts: the data styles, generated datasets named by their settings, the
colour prior's statistics, and the diagnostics that say when box-supervised masks collapse."""

import json
import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from boxinst.models.condinst import CondInst
from boxinst.platform.cli import main
from boxinst.platform.data.colour_prior import Counts, image_counts
from boxinst.platform.data.shapes import STYLES, render_scene
from boxinst.platform.data.synth import CLASSES, SynthConfig
from boxinst.platform.evaluation.coco import (
    box_likeness,
    collapse_warning,
    encode_masks,
    true_box_fill,
)
from boxinst.platform.evaluation.mask_quality import MaskIoU
from boxinst.platform.metrics import (
    BOX_LIKENESS_FILL,
    BOX_LIKENESS_IOU,
    BOX_LIKENESS_OUT,
    MASK_IOU,
    MASK_IOU_BOX,
)
from boxinst.platform.spec import SpecError, load_spec
from boxinst.platform.sweep import trial_specs
from boxinst.platform.training.loop import generate_data
from boxinst.platform.training.objective import LossConfig


def scenes(style: str, count: int = 12):
    rng = np.random.default_rng(7)
    return [
        render_scene(rng, 96, 96, CLASSES, max_objects=2, style=STYLES[style]) for _ in range(count)
    ]


def test_flat_is_todays_rendering():
    """The default style draws what the generator drew before styles existed: these scenes'
    numbers were recorded with the generator of a7d028a (the commit before styles)."""
    rng = np.random.default_rng(3)
    scenes = [render_scene(rng, 64, 80, CLASSES, low_contrast=0.5) for _ in range(4)]
    assert [s.labels.tolist() for s in scenes] == [[0, 6], [4], [0], [3]]
    assert [int(s.masks.sum()) for s in scenes] == [849, 678, 211, 539]
    means = [float(s.image.mean()) for s in scenes]
    assert means == pytest.approx([107.2307, 134.9729, 118.9255, 133.7717], abs=0.01)


def local_variation(scene) -> float:
    """Mean absolute difference of horizontally neighbouring pixels, away from the objects."""
    background = scene.masks.sum(0) == 0 if len(scene.masks) else np.ones(scene.image.shape[:2])
    step = np.abs(np.diff(scene.image.astype(float), axis=1)).sum(-1)
    return float(step[background[:, 1:] & background[:, :-1]].mean())


def box_overlap(generated) -> float:
    """Mean IoU of the first two boxes of the scenes that kept two objects."""
    ious = []
    for scene in generated:
        if len(scene.boxes) > 1:
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = scene.boxes[:2]
            inter = max(0, min(ax1, bx1) - max(ax0, bx0)) * max(0, min(ay1, by1) - max(ay0, by0))
            union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
            ious.append(inter / union)
    return float(np.mean(ious))


def contrast(scene) -> float:
    """Mean RGB distance between each object and the background just around it."""
    distances = []
    for mask in scene.masks.astype(bool):
        ring = (np.pad(mask, 3)[3:-3, :-6] | np.pad(mask, 3)[3:-3, 6:]) & ~scene.masks.any(0)
        if ring.any():
            inside, outside = scene.image[mask].mean(0), scene.image[ring].mean(0)
            distances.append(np.linalg.norm(inside.astype(float) - outside))
    return float(np.mean(distances))


def test_styles_change_what_they_promise():
    flat, textured = scenes("flat"), scenes("textured")
    cluttered, low = scenes("cluttered"), scenes("low_contrast")
    variation = lambda s: np.mean([local_variation(x) for x in s])  # noqa: E731
    assert variation(textured) > 2 * variation(flat)  # gratings and noise
    assert variation(cluttered) > variation(flat)  # lines and squares in the background
    assert box_overlap(scenes("cluttered", 100)) > 1.5 * box_overlap(scenes("flat", 100))
    assert np.mean([contrast(x) for x in low]) < 0.5 * np.mean([contrast(x) for x in flat])
    for scene in [*flat, *textured, *cluttered, *low]:  # masks stay exact and disjoint
        assert scene.masks.sum(0).max() <= 1


def test_unknown_style_is_refused_by_name():
    with pytest.raises(ValueError, match="style 'wavy'"):
        SynthConfig(style="wavy")


def spec_file(tmp_path, data: dict) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(
        json.dumps(
            {
                "name": "gen",
                "regime": "box_only",
                "data": data,
                "sweep": {"axes": {"data.synth.style": ["flat", "textured"], "seed": [0, 1]}},
            }
        )
    )
    return str(path)


def test_generated_data_without_paths_lives_in_a_folder_of_its_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    synth = {"train_images": 2, "val_images": 1, "min_size": 64, "max_size": 64}
    spec = load_spec(spec_file(tmp_path, {"synth": synth}))
    trials = list(trial_specs(spec).values())
    folders = {t.data.synth.style: t.data.train.annotations for t in trials}
    assert len(trials) == 4 and len(set(folders.values())) == 2  # one dataset per style
    assert all(path.startswith(str(tmp_path / "data" / "generated")) for path in folders.values())
    assert "textured-" in folders["textured"] and "flat-" in folders["flat"]
    for trial in trials:
        generate_data(trial)
    for style, path in folders.items():
        info = json.loads(open(path).read())["info"]["synth_config"]
        assert info["style"] == style
    assert "train" not in spec.as_dict()["data"]  # derived again wherever the spec is read


def test_a_generated_dataset_made_with_other_settings_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    synth = {"train_images": 2, "val_images": 1, "min_size": 64, "max_size": 64}
    split = lambda name: {"annotations": f"d/{name}/annotations.json", "images": f"d/{name}/images"}  # noqa: E731
    data = {"train": split("train"), "val": split("val"), "synth": synth}
    generate_data(load_spec(spec_file(tmp_path, data)))
    changed = {**data, "synth": {**synth, "style": "textured"}}
    with pytest.raises(SpecError, match="style differ"):
        generate_data(load_spec(spec_file(tmp_path, changed)))


def test_colour_prior_statistics_on_a_hand_made_image():
    """A flat grey image with one flat red square in a box: every in-box edge inside the square
    or inside the grey passes, those across the square's border do not."""
    image = np.full((32, 32, 3), 128, np.uint8)
    image[8:16, 8:16] = (200, 30, 30)
    mask = np.zeros((1, 32, 32), np.uint8)
    mask[0, 8:16, 8:16] = 1
    box = np.array([[4.0, 4.0, 20.0, 20.0]])  # 4 px of grey around the square
    counts = image_counts(image, box, mask, taus=(0.1,))[0.1]
    shares = counts.shares()
    assert shares["same_label"] == 1.0  # no edge across the border is similar
    assert 0 < shares["edges"] < 1
    assert shares["background_reached"] == 1.0  # the grey links to the outside everywhere
    # a red ring around grey, wider than the dilated neighbourhood reaches (two cells of 4 px),
    # cuts the grey inside it from the outside of the box: a ring's hole (the paper's Fig. 5)
    image = np.full((64, 64, 3), 128, np.uint8)
    image[8:48, 8:48] = (200, 30, 30)
    image[20:36, 20:36] = 128
    ring = np.zeros((1, 64, 64), np.uint8)
    ring[0, 8:48, 8:48], ring[0, 20:36, 20:36] = 1, 0
    counts = image_counts(image, np.array([[8.0, 8.0, 48.0, 48.0]]), ring, taus=(0.1,))[0.1]
    assert counts.shares()["background_reached"] == 0.0


def test_colour_prior_counts_add_up():
    total = Counts()
    total.add(Counts(edges=10, passing=4, passing_same=3, background=5, reached=1))
    total.add(Counts(edges=10, passing=6, passing_same=6, background=5, reached=4))
    assert total.shares() == {"edges": 0.5, "same_label": 0.9, "background_reached": 0.5}
    assert math.isnan(Counts().shares()["edges"])


def test_data_inspect_prints_the_table_and_a_verdict(tmp_path, capsys):
    from boxinst.platform.data.synth import synthesize

    synthesize(tmp_path, SynthConfig(seed=1, train_images=6, val_images=1, style="textured"))
    assert main(["data", "inspect", str(tmp_path / "train"), "--tau", "0.1", "0.3"]) == 0
    printed = capsys.readouterr().out
    assert "in-box edges >= tau" in printed and "0.3" in printed
    assert "at tau 0.1 the pairwise term reaches" in printed


def result(mask: np.ndarray, box: list[float], score: float = 0.9) -> dict:
    (rle,) = encode_masks(mask[None].astype(bool))
    return {"image_id": 1, "category_id": 1, "bbox": box, "score": score, "segmentation": rle}


def test_box_likeness_of_a_filled_box_a_shape_and_a_spill():
    filled = np.zeros((20, 20), bool)
    filled[2:12, 2:12] = True
    disc = np.zeros((20, 20), bool)
    disc[4:10, 4:10] = True  # 36 of the box's 100 pixels
    spill = filled.copy()
    spill[12:14, 2:12] = True  # 20 pixels outside the box
    box = [2.0, 2.0, 10.0, 10.0]
    assert box_likeness([result(filled, box)])[BOX_LIKENESS_IOU] == pytest.approx(1.0)
    shape = box_likeness([result(disc, box)])
    assert shape[BOX_LIKENESS_FILL] == pytest.approx(0.36) and shape[BOX_LIKENESS_OUT] == 0
    assert box_likeness([result(spill, box)])[BOX_LIKENESS_OUT] == pytest.approx(20 / 120)
    low = box_likeness([result(filled, box, score=0.1)])  # below the score: not counted
    assert math.isnan(low[BOX_LIKENESS_FILL])


def test_true_box_fill_reads_the_ground_truth():
    mask = np.zeros((10, 10), np.uint8)
    mask[0:4, 0:2] = 1  # 8 pixels of a 4x4 box
    rle = mask_utils.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode()
    gt = {
        "images": [{"id": 1, "height": 10, "width": 10}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "area": 8,
             "iscrowd": 0, "segmentation": rle},
        ],
    }  # fmt: skip
    assert true_box_fill(gt) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("metrics", "says"),
    [
        ({BOX_LIKENESS_FILL: 0.95}, "converging to filled boxes"),
        ({BOX_LIKENESS_FILL: 0.7, MASK_IOU: 0.49, MASK_IOU_BOX: 0.5}, "no closer"),
        ({BOX_LIKENESS_FILL: 0.05}, "vanishing"),
        ({BOX_LIKENESS_FILL: 0.6, MASK_IOU: 0.65, MASK_IOU_BOX: 0.5}, None),
        ({}, None),
    ],
)
def test_collapse_warning(metrics, says):
    warning = collapse_warning(metrics)
    assert (warning is None) if says is None else (says in warning)


def test_mask_iou_at_the_true_locations(make_config):
    torch.manual_seed(0)
    model = CondInst(make_config(num_classes=2)).eval()
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 8:40, 8:24] = 1  # half of its box
    masks[0, 8:24, 8:40] = 1
    masks[1, 44:60, 40:60] = 1  # all of its box
    target = {
        "boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0], [40.0, 44.0, 60.0, 60.0]]),
        "labels": torch.tensor([0, 1]),
        "masks": masks,
        "has_mask": torch.ones(2, dtype=torch.bool),
        "image_size": (64, 64),
    }
    # a controller that gives every location the dynamic parameters of a constant mask: zero
    # weights and a large last bias (the parameters are all weights, then all biases)
    controller = model.head.controller
    with torch.no_grad():
        controller.weight.zero_()
        controller.bias.zero_()
        controller.bias[-1] = 10.0
    quality = MaskIoU()
    with torch.no_grad():
        quality.add(model, model(torch.rand(1, 3, 64, 64) * 255), [target], LossConfig())
    metrics = quality.metrics()
    assert quality.instances == 2
    assert metrics[MASK_IOU_BOX] == pytest.approx((768 / 1024 + 1.0) / 2)  # an L, a square
    # the whole image as each mask: the IoU is the true mask's share of the image
    assert metrics[MASK_IOU] == pytest.approx((768 + 320) / 2 / (64 * 64))
    assert math.isnan(MaskIoU().metrics()[MASK_IOU])
