"""Validation of a COCO-format dataset: every problem, with the file and the record it is in.

Used by ``boxinst data check PATH`` and by training before it starts, so bad data fails early
with a readable message (or, when asked, its bad records are skipped and counted).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

#: Boxes may overhang the image by float rounding of their converters; more is an error.
BOX_TOLERANCE = 1.0


@dataclass(frozen=True)
class Problem:
    """One problem of a dataset. ``image_id``/``annotation_id`` name the bad record, if any."""

    file: str
    record: str
    message: str
    image_id: int | None = None
    annotation_id: int | None = None

    def __str__(self) -> str:
        return f"{self.file}: {self.record}: {self.message}"


def resolve(path: Path) -> tuple[Path, Path]:
    """``(annotations.json, image folder)`` of a split folder (``annotations.json`` +
    ``images/``) or of an annotation file whose images lie in ``images/`` beside it."""
    path = Path(path)
    if path.is_dir():
        return path / "annotations.json", path / "images"
    return path, path.parent / "images"


def load_annotations(annotations: Path) -> tuple[dict | None, list[Problem]]:
    """The parsed JSON, or None and the reason it cannot be read."""
    name = str(annotations)
    if not annotations.is_file():
        return None, [Problem(name, "file", "does not exist")]
    try:
        data = json.loads(annotations.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return None, [Problem(name, "file", f"is not valid JSON ({err})")]
    if not isinstance(data, dict):
        return None, [Problem(name, "file", "is not COCO format: not a JSON object")]
    missing = [
        k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)
    ]
    if missing:
        return None, [Problem(name, "file", f"is not COCO format: no list {missing}")]
    return data, []


def _duplicates(name: str, kind: str, records: list[dict]) -> list[Problem]:
    counts = Counter(r.get("id") for r in records)
    return [
        Problem(
            name,
            f"{kind} id {rid}",
            f"appears {n} times",
            image_id=rid if kind == "image" else None,
            annotation_id=rid if kind == "annotation" else None,
        )
        for rid, n in counts.items()
        if n > 1
    ]


def _check_image_record(record: dict, name: str) -> list[Problem]:
    fields = [k for k in ("id", "file_name", "height", "width") if k not in record]
    if fields:
        rid = record.get("id")
        return [Problem(name, f"image id {rid}", f"lacks {fields}", image_id=rid)]
    return []


def _check_image_file(record: dict, folder: Path) -> list[Problem]:
    rid = record["id"]
    where = f"image id {rid}"
    path = folder / record["file_name"]
    if not path.is_file():
        return [Problem(str(path), where, "image file does not exist", image_id=rid)]
    try:
        with Image.open(path) as image:
            image.load()  # decodes the pixels: truncated or corrupt files fail here
            width, height = image.size
    except (OSError, UnidentifiedImageError) as err:
        return [Problem(str(path), where, f"image cannot be read ({err})", image_id=rid)]
    if (height, width) != (record["height"], record["width"]):
        return [
            Problem(
                str(path),
                where,
                f"image is {width}x{height} but the JSON says {record['width']}x{record['height']}",
                image_id=rid,
            )
        ]
    return []


def _check_annotation(ann: dict, images: dict, categories: set, name: str) -> list[Problem]:
    aid = ann.get("id")
    image = images.get(ann.get("image_id"))

    def problem(message: str) -> Problem:
        return Problem(name, f"annotation id {aid}", message, ann.get("image_id"), aid)

    problems = []
    if image is None:
        problems.append(problem(f"refers to unknown image id {ann.get('image_id')}"))
    if ann.get("category_id") not in categories:
        problems.append(problem(f"has unknown category id {ann.get('category_id')}"))
    box = ann.get("bbox")
    numbers = isinstance(box, list) and all(isinstance(v, int | float) for v in box)
    if not (numbers and len(box) == 4 and all(math.isfinite(v) for v in box)):
        problems.append(problem(f"has a malformed bbox {box!r} (expected [x, y, w, h])"))
    else:
        x, y, w, h = box
        if w <= 0 or h <= 0:
            problems.append(problem(f"has a box of non-positive size {w}x{h}"))
        elif image is not None and (
            x < -BOX_TOLERANCE
            or y < -BOX_TOLERANCE
            or x + w > image.get("width", 0) + BOX_TOLERANCE
            or y + h > image.get("height", 0) + BOX_TOLERANCE
        ):
            problems.append(
                problem(
                    f"box {box} lies outside its {image.get('width')}x{image.get('height')} image"
                )
            )
    segmentation = ann.get("segmentation")
    if isinstance(segmentation, list):
        for polygon in segmentation:
            if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
                size = len(polygon) // 2 if isinstance(polygon, list) else 0
                problems.append(problem(f"has a polygon of {size} points (3 at least)"))
    elif isinstance(segmentation, dict) and image is not None:
        if list(segmentation.get("size", [])) != [image.get("height"), image.get("width")]:
            problems.append(problem(f"has an RLE of size {segmentation.get('size')} for its image"))
    return problems


def check_records(data: dict, name: str) -> list[Problem]:
    """The problems of a parsed COCO dict that need no image file: ids, image records and
    annotations. Cheap enough to run before every training."""
    problems = _duplicates(name, "image", data["images"])
    problems += _duplicates(name, "annotation", data["annotations"])
    problems += _duplicates(name, "category", data["categories"])
    images = {record.get("id"): record for record in data["images"]}
    for record in data["images"]:
        problems += _check_image_record(record, name)
    categories = {c.get("id") for c in data["categories"]}
    for ann in data["annotations"]:
        problems += _check_annotation(ann, images, categories, name)
    return problems


def check_dataset(annotations: Path, image_folder: Path) -> list[Problem]:
    """All problems of a COCO-format dataset, image files included (empty when it is sound)."""
    data, problems = load_annotations(Path(annotations))
    if data is None:
        return problems
    problems = check_records(data, str(annotations))
    bad_images = {p.image_id for p in problems if p.annotation_id is None}
    for record in data["images"]:
        if record.get("id") not in bad_images:
            problems += _check_image_file(record, Path(image_folder))
    return problems


def summarise(problems: list[Problem], limit: int = 10) -> str:
    """The first ``limit`` problems, one a line, and how many more there are."""
    lines = [str(p) for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"... and {len(problems) - limit} more (boxinst data check lists them all)")
    return "\n".join(lines)
