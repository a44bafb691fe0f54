"""Validation of a COCO-format dataset: every problem, with the file and the record it is in.

Used by ``boxinst data check PATH`` and by training before it starts, so bad data fails early
with a readable message (or, when asked, its bad records are skipped and counted).

Two layers, one set of rules with the loader (:mod:`boxinst.platform.data.coco`):

- :func:`check_records` checks the JSON alone: the fields and types of every record, ids and
  references, boxes, the structure of polygons and RLEs. It opens no image and decodes no mask,
  so it is cheap enough to run before every training (the loader does).
- :func:`check_dataset` adds what the loader meets when it reads the dataset: every image file
  through the loader's own reader, every segmentation through its own decoder. A dataset it
  passes is one the loader reads; what the loader would refuse, it reports.

No input makes either raise: each thing wrong is a :class:`Problem`.
"""

from __future__ import annotations

import json
import reprlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boxinst.platform.data.decode import (
    BOX_TOLERANCE,
    check_segmentation,
    decode_segmentation,
    finite_numbers,
    image_path,
    is_int,
    read_rgb,
)

#: The largest height or width of an image: PIL's (and PNG's) limit.
MAX_SIDE = 2**31 - 1

#: The segmentations of an annotation without a mask (box-only data): legal, nothing to decode.
NO_SEGMENTATION = (None, [], {})


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


def read_json(path: Path) -> tuple[Any, Problem | None]:
    """The parsed JSON of a file, or None and the problem that keeps it from being read (no
    such file, unreadable, not JSON): the one reader of the JSON files users give."""
    name = str(path)
    try:
        return json.loads(Path(path).read_bytes()), None
    except FileNotFoundError:
        return None, Problem(name, "file", "does not exist")
    except OSError as err:
        return None, Problem(name, "file", f"cannot be read ({err.strerror or err})")
    except (ValueError, RecursionError) as err:  # also: bad UTF-8, integers of over 4300 digits
        return None, Problem(name, "file", f"is not valid JSON ({err})")


def load_annotations(annotations: Path) -> tuple[dict | None, list[Problem]]:
    """The parsed COCO-format JSON, or None and the reason it cannot be read."""
    name = str(annotations)
    data, problem = read_json(annotations)
    if problem is not None:
        return None, [problem]
    if not isinstance(data, dict):
        return None, [Problem(name, "file", "is not COCO format: not a JSON object")]
    missing = [
        k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)
    ]
    if missing:
        return None, [Problem(name, "file", f"is not COCO format: no list {missing}")]
    return data, []


# --- values --------------------------------------------------------------------------------------


def _is_side(value: Any) -> bool:
    return is_int(value) and 0 < value <= MAX_SIDE


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _field(record: dict, key: str, valid: Callable[[Any], bool], expected: str) -> list[str]:
    """No message if ``record[key]`` is valid, else the one saying what it is instead."""
    if key not in record:
        return [f"has no {key}"]
    if valid(record[key]):
        return []
    return [f"has {key} {reprlib.repr(record[key])}, not {expected}"]


# --- records -------------------------------------------------------------------------------------


def _records(data: dict, key: str, name: str) -> tuple[list[dict], list[Problem]]:
    """The records of ``data[key]`` that are objects with an integer id, and a problem for each
    other one, named by its place in the list (e.g. ``images[3]``): it has no id to name it."""
    records, problems = [], []
    for index, record in enumerate(data[key]):
        if _record_id(record) is not None:
            records.append(record)
            continue
        if isinstance(record, dict):
            (message,) = _field(record, "id", is_int, "an integer")
        else:
            message = f"is {reprlib.repr(record)}, not an object"
        problems.append(Problem(name, f"{key}[{index}]", message))
    return records, problems


def _record_id(record: Any) -> int | None:
    """The id of a record that is an object with an integer id."""
    return record["id"] if isinstance(record, dict) and is_int(record.get("id")) else None


def _problem(name: str, kind: str, record: dict, message: str) -> Problem:
    """A problem of an image, annotation or category record, named by its id; an annotation's
    problem names its image too (if its image id is one)."""
    rid = record["id"]
    if kind == "image":
        return Problem(name, f"image id {rid}", message, image_id=rid)
    if kind == "annotation":
        image_id = record.get("image_id")
        image_id = image_id if is_int(image_id) else None
        return Problem(name, f"annotation id {rid}", message, image_id, rid)
    return Problem(name, f"category id {rid}", message)


def _duplicates(name: str, kind: str, records: list[dict]) -> list[Problem]:
    counts = Counter(r["id"] for r in records)
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


def _duplicate_names(name: str, categories: list[dict]) -> list[Problem]:
    first: dict[str, int] = {}  # name -> id of the first category of that name
    problems = []
    for category in categories:
        label = category.get("name")
        if not _is_name(label):
            continue
        if label in first:
            message = f"has the same name {reprlib.repr(label)} as category id {first[label]}"
            problems.append(_problem(name, "category", category, message))
        else:
            first[label] = category["id"]
    return problems


def _check_category(category: dict) -> list[str]:
    return _field(category, "name", _is_name, "a non-empty string")


def _check_image_record(record: dict) -> list[str]:
    return (
        _field(record, "file_name", _is_name, "a non-empty string")
        + _field(record, "height", _is_side, f"an integer in 1..{MAX_SIDE}")
        + _field(record, "width", _is_side, f"an integer in 1..{MAX_SIDE}")
    )


def _size(image: dict) -> tuple[int, int] | None:
    """``(height, width)`` of an image record, if both are valid."""
    if not (_is_side(image.get("height")) and _is_side(image.get("width"))):
        return None
    return image["height"], image["width"]


def _reference(ann: dict, key: str, known: dict | set, unknown: str) -> list[str]:
    """No message if ``ann[key]`` is an id in ``known``, else the one saying what it is."""
    messages = _field(ann, key, is_int, "an integer")
    if not messages and ann[key] not in known:
        messages = [f"{unknown} {ann[key]}"]
    return messages


def _check_box(box: Any, size: tuple[int, int] | None) -> list[str]:
    if not (isinstance(box, list) and len(box) == 4 and finite_numbers(box)):
        return [f"has a malformed bbox {reprlib.repr(box)} (expected [x, y, w, h])"]
    x, y, w, h = box
    if w <= 0 or h <= 0:
        return [f"has a box of non-positive size {w}x{h}"]
    if size is not None:
        height, width = size
        tolerance = BOX_TOLERANCE
        if min(x, y) < -tolerance or x + w > width + tolerance or y + h > height + tolerance:
            return [f"box {reprlib.repr(box)} lies outside its {width}x{height} image"]
    return []


def _check_annotation(ann: dict, sizes: dict[int, tuple | None], categories: set[int]) -> list[str]:
    """The messages of an annotation; ``sizes`` are the images' ``(height, width)`` by id (None
    where the record's are invalid)."""
    messages = _reference(ann, "image_id", sizes, "refers to unknown image id")
    messages += _reference(ann, "category_id", categories, "has unknown category id")
    size = sizes.get(ann["image_id"]) if is_int(ann.get("image_id")) else None
    messages += _check_box(ann.get("bbox"), size)
    if "iscrowd" in ann:
        messages += _field(ann, "iscrowd", lambda v: v in (0, 1), "0 or 1")
    if "area" in ann:
        messages += _field(ann, "area", lambda v: finite_numbers([v]), "a finite number")
    segmentation = ann.get("segmentation")
    if size is not None and segmentation not in NO_SEGMENTATION:
        try:
            check_segmentation(segmentation, *size)
        except ValueError as error:
            messages.append(f"has {error}")
    return messages


def check_records(data: dict, name: str) -> list[Problem]:
    """The problems of a COCO dict (as :func:`load_annotations` returns it) that need no image
    file: the records' fields, ids and references, boxes, and the structure of segmentations.
    Linear in the size of the JSON: cheap enough to run before every training."""
    categories, problems = _records(data, "categories", name)
    images, found = _records(data, "images", name)
    problems += found
    annotations, found = _records(data, "annotations", name)
    problems += found
    if not data["categories"]:
        problems.append(Problem(name, "file", "has no categories"))
    problems += _duplicates(name, "category", categories) + _duplicate_names(name, categories)
    problems += _duplicates(name, "image", images)
    problems += _duplicates(name, "annotation", annotations)
    for category in categories:
        problems += [_problem(name, "category", category, m) for m in _check_category(category)]
    for image in images:
        problems += [_problem(name, "image", image, m) for m in _check_image_record(image)]
    sizes = {image["id"]: _size(image) for image in images}
    category_ids = {category["id"] for category in categories}
    for ann in annotations:
        messages = _check_annotation(ann, sizes, category_ids)
        problems += [_problem(name, "annotation", ann, m) for m in messages]
    return problems


# --- files ---------------------------------------------------------------------------------------


def check_dataset(annotations: Path, image_folder: Path) -> list[Problem]:
    """All problems of a COCO-format dataset (empty when it is sound): those of its records, then
    those the loader would meet reading it (:func:`check_files`)."""
    data, problems = load_annotations(Path(annotations))
    if data is None:
        return problems
    problems = check_records(data, str(annotations))
    return problems + check_files(data, Path(image_folder), str(annotations), problems)


def check_files(data: dict, folder: Path, name: str, problems: list[Problem]) -> list[Problem]:
    """What the loader meets reading the records that ``problems`` (of :func:`check_records`)
    leave sound: each image file read by its :func:`~boxinst.platform.data.decode.read_rgb`
    (confined to ``folder``, the size the record says), then each segmentation of a readable
    image decoded by its :func:`~boxinst.platform.data.decode.decode_segmentation`."""
    bad_images = {p.image_id for p in problems if p.annotation_id is None}
    bad_annotations = {p.annotation_id for p in problems}
    readable: dict[int, dict] = {}  # image id -> record, of the images the loader reads
    found = []
    for record in data["images"]:
        if _record_id(record) is None or record["id"] in bad_images:
            continue
        try:
            path = image_path(folder, record["file_name"])
            height, width = read_rgb(path).shape[:2]
        except (ValueError, FileNotFoundError) as error:
            found.append(_problem(name, "image", record, str(error)))
            continue
        if (height, width) != (record["height"], record["width"]):
            message = (
                f"image file {path} is {width}x{height} (WxH, its EXIF orientation applied) "
                f"but the JSON says {record['width']}x{record['height']}"
            )
            found.append(_problem(name, "image", record, message))
        else:
            readable[record["id"]] = record
    for ann in data["annotations"]:
        if _record_id(ann) is None or ann["id"] in bad_annotations:
            continue
        image = readable.get(ann["image_id"])
        segmentation = ann.get("segmentation")
        if image is None or segmentation in NO_SEGMENTATION:
            continue
        try:
            decode_segmentation(segmentation, image["height"], image["width"])
        except ValueError as error:
            message = f"has an invalid segmentation: {error}"
            found.append(_problem(name, "annotation", ann, message))
    return found


def summarise(problems: list[Problem], limit: int = 10) -> str:
    """The first ``limit`` problems, one a line, and how many more there are."""
    lines = [str(p) for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"... and {len(problems) - limit} more (boxinst data check lists them all)")
    return "\n".join(lines)
