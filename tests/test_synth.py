"""The generated COCO-format dataset: exact masks, tight boxes, groups, determinism."""

import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from boxinst.platform.cli import main
from boxinst.platform.data.shapes import SHAPES
from boxinst.platform.data.synth import CLASS_GROUPS, CLASSES, SynthConfig, synthesize

SMALL = SynthConfig(seed=3, train_images=12, val_images=4, min_size=96, max_size=128)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    stats = synthesize(out, SMALL)
    return out, stats


def test_class_groups_split_every_shape_once():
    grouped = [name for names in CLASS_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(SHAPES) == sorted(CLASSES)
    assert len(grouped) == len(set(grouped))


def test_splits_are_valid_coco_with_tight_boxes_and_exact_masks(dataset):
    out, stats = dataset
    for split, count in (("train", 12), ("val", 4)):
        coco = COCO(str(out / split / "annotations.json"))
        assert len(coco.getImgIds()) == count == stats[split]["images"]
        for image in coco.loadImgs(coco.getImgIds()):
            pixels = cv2.imread(str(out / split / "images" / image["file_name"]))
            assert pixels.shape[:2] == (image["height"], image["width"])
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=image["id"])):
                mask = coco.annToMask(ann)
                ys, xs = np.nonzero(mask)
                x, y, w, h = ann["bbox"]
                assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
                assert ann["area"] == mask.sum() == mask_utils.area(ann["segmentation"])
        names = {c["name"]: c["supercategory"] for c in coco.loadCats(coco.getCatIds())}
        assert all(name in CLASS_GROUPS[group] for name, group in names.items())


def test_boxes_are_poor_masks(dataset):
    _, stats = dataset
    assert stats["train"]["instances_per_image"] > 1.5
    assert stats["train"]["box_fill"] < 0.6


def test_same_seed_same_dataset_other_seed_other(tmp_path):
    one, two, other = tmp_path / "one", tmp_path / "two", tmp_path / "other"
    synthesize(one, SMALL)
    synthesize(two, SMALL)
    synthesize(other, SynthConfig(**{**SMALL.__dict__, "seed": 4}))
    read = lambda root: (root / "train" / "annotations.json").read_text()  # noqa: E731
    assert read(one) == read(two) != read(other)
    first = "train/images/000000.png"
    assert (one / first).read_bytes() == (two / first).read_bytes()


def test_cli_synth_prints_statistics(tmp_path, capsys):
    assert main(["data", "synth", str(tmp_path), "--train-images", "3", "--val-images", "2"]) == 0
    printed = capsys.readouterr().out
    assert "train: 3 images" in printed and "class groups: curved" in printed
    assert json.loads((tmp_path / "val" / "annotations.json").read_text())["class_groups"]
