"""`boxinst data convert-voc` on a tiny VOC 2012 + SBD tree written by the test."""

import json

import cv2
import numpy as np
import pytest
import scipy.io
from PIL import Image
from pycocotools.coco import COCO

from boxinst.platform.cli import main
from boxinst.platform.data.check import check_dataset, resolve
from boxinst.platform.data.voc import VOC_CLASSES, convert_voc

H, W = 40, 60


def palette_png(path, indices):
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette(list(np.random.default_rng(0).integers(0, 256, 768)))
    image.save(path)


def write_xml(path, height, width):
    path.write_text(
        f"<annotation><size><width>{width}</width><height>{height}</height>"
        "<depth>3</depth></size></annotation>"
    )


@pytest.fixture
def tree(tmp_path):
    """VOC: a (train, VOC masks), b (val, VOC masks); SBD: c (train), d (val), b (also in SBD).
    train_aug must be {a, c, d}: the union less VOC val."""
    voc, sbd = tmp_path / "VOC2012", tmp_path / "sbd"
    for folder in ("JPEGImages", "Annotations", "SegmentationObject", "SegmentationClass"):
        (voc / folder).mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    for folder in ("img", "inst"):
        (sbd / folder).mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("a\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("b\n")
    (sbd / "train.txt").write_text("c\nb\n")
    (sbd / "val.txt").write_text("d\n")
    image = np.zeros((H, W, 3), np.uint8)
    for name in "ab":
        cv2.imwrite(str(voc / "JPEGImages" / f"{name}.jpg"), image)
        write_xml(voc / "Annotations" / f"{name}.xml", H, W)
        objects = np.zeros((H, W), np.uint8)
        classes = np.zeros((H, W), np.uint8)
        objects[5:15, 10:30], classes[5:15, 10:30] = 1, 15  # a person
        objects[20:35, 35:55], classes[20:35, 35:55] = 2, 12  # a dog
        objects[4, :] = classes[4, :] = 255  # void border line, no instance
        palette_png(voc / "SegmentationObject" / f"{name}.png", objects)
        palette_png(voc / "SegmentationClass" / f"{name}.png", classes)
    for name in "cdb":
        cv2.imwrite(str(sbd / "img" / f"{name}.jpg"), image)
        segmentation = np.zeros((H, W), np.uint8)
        segmentation[10:20, 0:10] = 1
        segmentation[30:40, 20:25] = 2
        gt = {"Segmentation": segmentation, "Categories": np.array([[7], [3]], np.uint8)}
        scipy.io.savemat(sbd / "inst" / f"{name}.mat", {"GTinst": gt})
    return voc, sbd


def test_splits_instances_and_boxes(tree, tmp_path):
    voc, sbd = tree
    out = tmp_path / "coco"
    splits = convert_voc(voc, sbd, out)
    assert [i["file_name"] for i in splits["train_aug"]["images"]] == ["a.jpg", "c.jpg", "d.jpg"]
    assert [i["file_name"] for i in splits["val"]["images"]] == ["b.jpg"]

    val = COCO(str(out / "val" / "annotations.json"))
    anns = val.loadAnns(val.getAnnIds())
    names = [VOC_CLASSES[a["category_id"] - 1] for a in anns]
    assert names == ["person", "dog"]
    assert [a["bbox"] for a in anns] == [[10, 5, 20, 10], [35, 20, 20, 15]]
    assert all(val.annToMask(a).sum() == a["area"] for a in anns)  # void row excluded

    train = COCO(str(out / "train_aug" / "annotations.json"))
    sbd_anns = train.loadAnns(train.getAnnIds(imgIds=[2]))  # c.jpg, from SBD
    assert [VOC_CLASSES[a["category_id"] - 1] for a in sbd_anns] == ["car", "bird"]
    assert [a["bbox"] for a in sbd_anns] == [[0, 10, 10, 10], [20, 30, 5, 10]]
    assert check_dataset(*resolve(out / "train_aug")) == []


def test_cli_convert_voc_and_missing_sbd_file(tree, tmp_path, capsys):
    voc, sbd = tree
    assert (
        main(
            [
                "data",
                "convert-voc",
                "--voc",
                str(voc),
                "--sbd",
                str(sbd),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    assert "train_aug: 3 images, 6 instances" in capsys.readouterr().out
    (sbd / "inst" / "d.mat").unlink()
    assert (
        main(
            [
                "data",
                "convert-voc",
                "--voc",
                str(voc),
                "--sbd",
                str(sbd),
                "--out",
                str(tmp_path / "p"),
            ]
        )
        == 2
    )
    assert "inst/d.mat does not exist (image d)" in capsys.readouterr().err
    assert json.loads((tmp_path / "o" / "val" / "annotations.json").read_text())["categories"][0]
