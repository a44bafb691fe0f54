"""Instance-segmentation samples from any COCO-format dataset (annotation JSON + image folder).

Every sample is an RGB image and a target whose instances carry ``has_mask`` from the regime's
mask policy. The mask of an instance without ``has_mask`` is never decoded and is zeros whatever
the transform did, so it cannot reach the model or the loss (the no-leakage rule of the
semi-supervised regimes).

Crowd annotations (``iscrowd``) are left out of the targets, as detectron2 does; COCO
evaluation reads them from the annotation file itself.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from boxinst.platform.data.check import Problem, check_records, load_annotations, summarise
from boxinst.platform.data.decode import decode_segmentation, image_path, read_rgb
from boxinst.platform.data.policy import MaskPolicy, parse_mask_policy

Transform = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class _ImageRecord:
    """One image of the dataset with its non-crowd annotations and their ``has_mask``."""

    image_id: int
    file_name: str
    height: int
    width: int
    annotations: list[dict[str, Any]]
    has_mask: np.ndarray  # [G] bool


class DatasetError(ValueError):
    """A dataset with bad records; the message names the file and each record."""


def _index(data: dict) -> COCO:
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def _without_bad_records(data: dict, problems: list[Problem]) -> tuple[dict, dict[str, int]]:
    """``data`` less the images and annotations that ``problems`` name, and how many of each."""
    bad_annotations = {p.annotation_id for p in problems if p.annotation_id is not None}
    bad_images = {p.image_id for p in problems if p.annotation_id is None}
    kept = {
        **data,
        "images": [i for i in data["images"] if i.get("id") not in bad_images],
        "annotations": [
            a
            for a in data["annotations"]
            if a.get("id") not in bad_annotations and a.get("image_id") not in bad_images
        ],
    }
    return kept, {"images": len(bad_images), "annotations": len(bad_annotations)}


class CocoInstanceDataset(Dataset):
    """Samples ``(image, target)`` of a COCO-format dataset.

    ``image`` is a ``[3, H, W]`` uint8 RGB tensor (after ``transform``); ``target`` holds
    ``boxes`` [G, 4] float32 xyxy, ``labels`` [G] int64 contiguous class indices, ``masks``
    [G, H, W] uint8, ``has_mask`` [G] bool, ``image_size`` (H, W), ``ignore_bottom`` (rows at
    the bottom of the transformed image), ``image_id`` and ``original_size`` (height, width of
    the file). :func:`boxinst.platform.data.collate.collate_instances` batches them.

    Args:
        annotation_file: COCO-format JSON.
        image_dir: folder the images' ``file_name`` are relative to.
        train: training mode drops images without (non-crowd) annotations; evaluation mode
            keeps every image.
        mask_policy: which instances keep their mask (a policy or its spec, see
            :func:`boxinst.platform.data.policy.parse_mask_policy`).
        transform: a sample transform, e.g. from
            :func:`boxinst.platform.data.transforms.train_transform`.
        ignore_bottom: rows at the bottom of each original image to leave out of the pairwise
            term (COCO: 10); scaled to the transformed image as the official code does.
        skip_bad_records: the records that :func:`boxinst.platform.data.check.check_records`
            finds bad (boxes, categories, ids) make the dataset fail with a
            :class:`DatasetError` naming them; with True they are left out instead, counted in
            ``skipped`` and reported once. Image files are read lazily, so an unreadable one
            fails when its sample is read.
    """

    def __init__(
        self,
        annotation_file: str | Path,
        image_dir: str | Path,
        *,
        train: bool = True,
        mask_policy: MaskPolicy | str | dict[str, Any] = "all",
        transform: Transform | None = None,
        ignore_bottom: int = 0,
        skip_bad_records: bool = False,
        box_priors: Mapping[int, dict | None] | None = None,
    ):
        if (
            isinstance(ignore_bottom, bool)
            or not isinstance(ignore_bottom, int)
            or ignore_bottom < 0
        ):
            raise ValueError(f"ignore_bottom: expected an integer >= 0, got {ignore_bottom!r}")
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        self.train = train
        self.mask_policy = parse_mask_policy(mask_policy)
        self.transform = transform
        self.ignore_bottom = ignore_bottom
        self.box_priors = box_priors
        self.coco, self.skipped = self._load(skip_bad_records)

        categories = sorted(self.coco.dataset["categories"], key=lambda c: c["id"])
        if not categories:
            raise ValueError(f"COCO annotation file {self.annotation_file} has no categories")
        #: contiguous class index -> COCO category id (what evaluation writes back)
        self.category_ids: tuple[int, ...] = tuple(c["id"] for c in categories)
        self.category_names: tuple[str, ...] = tuple(c["name"] for c in categories)
        #: ``{"id", "name"}`` of each category by contiguous class index (what a checkpoint keeps)
        self.categories = [{"id": c["id"], "name": c["name"]} for c in categories]
        self.label_of_category = {cid: i for i, cid in enumerate(self.category_ids)}
        self.mask_policy.check_categories(self.category_names)
        self._records = self._build_records()

    def _load(self, skip_bad_records: bool) -> tuple[COCO, dict[str, int]]:
        data, problems = load_annotations(self.annotation_file)
        if data is None:
            raise DatasetError(summarise(problems))
        problems = check_records(data, str(self.annotation_file))
        fatal = [p for p in problems if p.image_id is None and p.annotation_id is None]
        if problems and (fatal or not skip_bad_records):
            advice = "" if fatal else "; fix them, or skip them with skip_bad_records"
            raise DatasetError(
                f"{len(problems)} bad record(s) in {self.annotation_file}{advice}:\n"
                + summarise(fatal or problems)
            )
        data, skipped = _without_bad_records(data, problems)
        if problems:
            print(
                f"{self.annotation_file}: skipped {skipped['annotations']} bad annotation(s) "
                f"and {skipped['images']} bad image record(s) (boxinst data check lists them)"
            )
        return _index(data), skipped

    def _where(self, annotation: dict[str, Any]) -> str:
        return (
            f"annotation id {annotation.get('id')} (image id {annotation.get('image_id')}) "
            f"in {self.annotation_file}"
        )

    def _build_records(self) -> list[_ImageRecord]:
        names = dict(zip(self.category_ids, self.category_names, strict=True))
        records = []
        for image in self.coco.dataset["images"]:
            annotations = [
                a for a in self.coco.imgToAnns.get(image["id"], []) if not a.get("iscrowd", 0)
            ]
            if self.train and not annotations:
                continue
            has_mask = np.array(
                [self.mask_policy.has_mask(a["id"], names[a["category_id"]]) for a in annotations],
                dtype=bool,
            )
            for annotation, keeps_mask in zip(annotations, has_mask, strict=True):
                if keeps_mask and not annotation.get("segmentation"):
                    raise ValueError(
                        f"{self._where(annotation)} has no segmentation, but the mask policy "
                        f"{self.mask_policy.to_spec()!r} gives it a mask"
                    )
            records.append(
                _ImageRecord(
                    image["id"],
                    image["file_name"],
                    image["height"],
                    image["width"],
                    annotations,
                    has_mask,
                )
            )
        return records

    @property
    def image_ids(self) -> list[int]:
        """COCO image ids of the samples, in order."""
        return [record.image_id for record in self._records]

    def __len__(self) -> int:
        return len(self._records)

    def original_image(self, index: int) -> np.ndarray:
        """The image file of sample ``index``, untransformed: ``[H, W, 3]`` uint8 RGB."""
        return self._read_image(self._records[index])

    def _read_image(self, record: _ImageRecord) -> np.ndarray:
        """``[H, W, 3]`` uint8 RGB, EXIF orientation applied, checked against the record's size."""
        where = f"image id {record.image_id} of {self.annotation_file}"
        path = image_path(self.image_dir, record.file_name, where)
        image = read_rgb(path, where)
        if image.shape[:2] != (record.height, record.width):
            raise ValueError(
                f"image file {path} ({where}) is {image.shape[0]}x{image.shape[1]} (HxW), "
                f"the annotation file says {record.height}x{record.width}"
            )
        return image

    def _masks(self, record: _ImageRecord) -> np.ndarray:
        """``[G, H, W]`` uint8: decoded for ``has_mask`` instances, zeros for the others."""
        masks = np.zeros((len(record.annotations), record.height, record.width), np.uint8)
        for i in np.flatnonzero(record.has_mask):
            annotation = record.annotations[i]
            try:
                masks[i] = decode_segmentation(
                    annotation["segmentation"], record.height, record.width
                )
            except (ValueError, TypeError, KeyError, AttributeError) as error:
                raise ValueError(
                    f"{self._where(annotation)} has an invalid segmentation: {error}"
                ) from None
        return masks

    def _priors(self, record: _ImageRecord) -> tuple[np.ndarray, np.ndarray]:
        """``[G, H, W]`` uint8 box-prior masks of the instances without ``has_mask`` that have
        one (zeros for the others), and ``[G]`` bool: which have one."""
        masks = np.zeros((len(record.annotations), record.height, record.width), np.uint8)
        has_prior = np.zeros(len(record.annotations), bool)
        for i, annotation in enumerate(record.annotations):
            rle = None if record.has_mask[i] else self.box_priors.get(annotation["id"])
            if rle is not None:
                masks[i] = mask_utils.decode(rle)
                has_prior[i] = True
        return masks, has_prior

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        record = self._records[index]
        xywh = np.array([a["bbox"] for a in record.annotations], np.float32).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        boxes = boxes.clip(0, [record.width, record.height] * 2).astype(np.float32)
        sample = {
            "image": self._read_image(record),
            "boxes": boxes,
            "masks": self._masks(record),
            "labels": np.array(
                [self.label_of_category[a["category_id"]] for a in record.annotations], np.int64
            ),
            "has_mask": record.has_mask,
        }
        if self.box_priors is not None:
            sample["prior_masks"], sample["has_prior"] = self._priors(record)
        if self.transform is not None:
            sample = self.transform(sample)
        height, width = sample["image"].shape[:2]
        # Zero again at the exit, whatever the transform did: no mask of a box-only instance
        # leaves the dataset.
        masks = sample["masks"] * sample["has_mask"][:, None, None].astype(np.uint8)
        image = torch.from_numpy(np.ascontiguousarray(sample["image"].transpose(2, 0, 1)))
        target = {
            "boxes": torch.from_numpy(sample["boxes"].astype(np.float32).reshape(-1, 4)),
            "labels": torch.from_numpy(sample["labels"].astype(np.int64)),
            "masks": torch.from_numpy(np.ascontiguousarray(masks)),
            "has_mask": torch.from_numpy(sample["has_mask"].astype(bool)),
            "image_size": (height, width),
            "ignore_bottom": int(self.ignore_bottom * height / record.height),
            "image_id": record.image_id,
            "original_size": (record.height, record.width),
        }
        if self.box_priors is not None:
            target["prior_masks"] = torch.from_numpy(np.ascontiguousarray(sample["prior_masks"]))
            target["has_prior"] = torch.from_numpy(sample["has_prior"].astype(bool))
        return image, target
