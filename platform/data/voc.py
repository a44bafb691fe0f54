"""Pascal VOC 2012 + SBD instance segmentation converted to COCO format.

The paper's VOC setting (§3, Table 5, following BBTP): train on the augmented VOC 2012 set of
10,582 images (SBD train and val plus VOC 2012 segmentation train, less VOC 2012 segmentation
val), evaluate on VOC 2012 segmentation val (1,449 images).

Instance masks come from VOC's ``SegmentationObject`` PNGs (class from ``SegmentationClass``)
where an image has them, otherwise from SBD's ``inst/*.mat`` (``GTinst.Segmentation`` and
``GTinst.Categories``). VOC's void label 255 belongs to no instance. Boxes are the masks' tight
boxes, so every box has its mask; image sizes are read from VOC's XML where present.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from boxinst.platform.evaluation.coco import encode_masks

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
VOID = 255


def _ids(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"image list {path} does not exist")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def split_ids(voc: Path, sbd: Path | None) -> dict[str, list[str]]:
    """Image ids of ``train_aug`` and ``val`` (VOC 2012 segmentation val)."""
    segmentation_sets = voc / "ImageSets" / "Segmentation"
    val = _ids(segmentation_sets / "val.txt")
    train = set(_ids(segmentation_sets / "train.txt"))
    if sbd is not None:
        train |= set(_ids(sbd / "train.txt")) | set(_ids(sbd / "val.txt"))
    return {"train_aug": sorted(train - set(val)), "val": val}


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)  # palette indices, not colours


def voc_instances(voc: Path, image_id: str) -> tuple[np.ndarray, list[int]] | None:
    """``(masks [G, H, W] bool, 1-based class ids)`` from VOC's PNGs, None if it has none."""
    object_png = voc / "SegmentationObject" / f"{image_id}.png"
    if not object_png.is_file():
        return None
    objects = _read_png(object_png)
    classes = _read_png(voc / "SegmentationClass" / f"{image_id}.png")
    masks, labels = [], []
    for instance in sorted(set(np.unique(objects).tolist()) - {0, VOID}):
        mask = objects == instance
        values, counts = np.unique(classes[mask], return_counts=True)
        label = int(values[np.argmax(counts)])
        if 1 <= label <= len(VOC_CLASSES):
            masks.append(mask)
            labels.append(label)
    return _stack(masks, objects.shape), labels


def sbd_instances(sbd: Path, image_id: str) -> tuple[np.ndarray, list[int]]:
    """``(masks [G, H, W] bool, 1-based class ids)`` from SBD's ``inst/<id>.mat``."""
    path = sbd / "inst" / f"{image_id}.mat"
    if not path.is_file():
        raise FileNotFoundError(f"SBD instance file {path} does not exist (image {image_id})")
    gt = scipy.io.loadmat(path, struct_as_record=False, squeeze_me=True)["GTinst"]
    segmentation = np.asarray(gt.Segmentation)
    categories = np.atleast_1d(gt.Categories).astype(int).tolist()
    masks = [segmentation == i + 1 for i in range(len(categories))]
    return _stack(masks, segmentation.shape), categories


def _stack(masks: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    return np.stack(masks) if masks else np.zeros((0, *shape), bool)


def _image_file(voc: Path, sbd: Path | None, image_id: str) -> Path:
    for folder in (voc / "JPEGImages", sbd / "img" if sbd else None):
        if folder is not None and (folder / f"{image_id}.jpg").is_file():
            return folder / f"{image_id}.jpg"
    raise FileNotFoundError(f"no image file for VOC image {image_id} in {voc} or {sbd}")


def _xml_size(voc: Path, image_id: str) -> tuple[int, int] | None:
    path = voc / "Annotations" / f"{image_id}.xml"
    if not path.is_file():
        return None
    size = ET.parse(path).getroot().find("size")
    return int(size.findtext("height")), int(size.findtext("width"))


def convert_split(voc: Path, sbd: Path | None, ids: list[str], out: Path) -> dict:
    """Write ``out/annotations.json`` and link the images into ``out/images``."""
    image_dir = out / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for number, image_id in enumerate(ids, start=1):
        source = _image_file(voc, sbd, image_id)
        instances = voc_instances(voc, image_id)
        if instances is None:
            if sbd is None:
                raise FileNotFoundError(
                    f"image {image_id} has no VOC instance PNG and no SBD given"
                )
            instances = sbd_instances(sbd, image_id)
        masks, labels = instances
        nonempty = masks.reshape(len(masks), -1).any(axis=1)
        masks, labels = (
            masks[nonempty],
            [c for c, keep in zip(labels, nonempty, strict=True) if keep],
        )
        height, width = _xml_size(voc, image_id) or masks.shape[1:]
        if masks.shape[1:] != (height, width):
            raise ValueError(
                f"image {image_id}: masks are {masks.shape[1:]}, XML says {height, width}"
            )
        link = image_dir / source.name
        if not link.exists():
            link.symlink_to(source.resolve())
        images.append({"id": number, "file_name": source.name, "height": height, "width": width})
        for mask, rle, label in zip(masks, encode_masks(masks), labels, strict=True):
            ys, xs = np.nonzero(mask)
            x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": number,
                    "category_id": label,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": int(mask.sum()),
                    "iscrowd": 0,
                    "segmentation": rle,
                }
            )
    coco = {
        "info": {"description": "Pascal VOC 2012 + SBD instances, converted by boxinst"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(VOC_CLASSES)],
    }
    (out / "annotations.json").write_text(json.dumps(coco))
    return coco


def convert_voc(voc: Path, sbd: Path | None, out: Path) -> dict[str, dict]:
    """Convert ``train_aug`` and ``val``; returns each split's COCO dict."""
    return {
        split: convert_split(Path(voc), Path(sbd) if sbd else None, ids, Path(out) / split)
        for split, ids in split_ids(Path(voc), Path(sbd) if sbd else None).items()
    }
