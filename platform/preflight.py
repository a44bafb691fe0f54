"""Checks of a run before it starts: the spec against the data it names, on the driver.

``train``, ``sweep`` and ``rerun`` run them after a generated dataset is written and before the
box priors are computed and Ray or MLflow start, so that what would otherwise fail a worker deep
in the loop (a batch larger than the training set, a class the model has no output for), or
fail the final evaluation after the whole training (an evaluation group naming a class the data
lacks), is one message naming the file, the record or the key, and exit status 2.

The checks read the annotation files and look for the image files without decoding them:
linear in the records, a few seconds on COCO's 118k-image training file (``boxinst data check``
decodes every image and mask).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from boxinst.platform.data.check import Problem, check_records, load_annotations
from boxinst.platform.data.decode import image_path, is_int
from boxinst.platform.data.policy import parse_mask_policy
from boxinst.platform.spec import Split, TrainSpec

#: Problems listed in the message before "... and N more".
SHOWN = 20


class PreflightError(ValueError):
    """A run whose spec and data do not fit together; the message lists every problem."""


@dataclass(frozen=True)
class SplitSummary:
    """What the checks need of one annotation file: the problems of its records, its image
    files that do not exist, its categories (id, name) in id order, how many images it has
    (with a valid id) and how many of them have non-crowd annotations, and those annotations
    (id, image id, category name, whether it has a segmentation), which a mask policy may want
    masks of; the runs' dataset inputs in MLflow report them too."""

    problems: tuple[Problem, ...]
    missing_files: tuple[Problem, ...]
    categories: tuple[tuple[int, str], ...]
    images: int
    annotated_images: int
    annotations: tuple[tuple[int, int, str, bool], ...]


@functools.cache
def _summary(annotations: str, images: str, mtime_ns: int) -> SplitSummary:
    """The summary of a split, read once per file version (a sweep's trials share splits)."""
    data, problems = load_annotations(Path(annotations))
    if data is None:
        return SplitSummary(tuple(problems), (), (), 0, 0, ())
    problems = check_records(data, annotations)
    bad_images = {p.image_id for p in problems if p.annotation_id is None}
    # records without an integer id are problems already
    records = [r for r in data["images"] if isinstance(r, dict) and is_int(r.get("id"))]
    folder, missing = Path(images), []
    if not folder.is_dir():
        missing.append(Problem(images, "folder", "image folder does not exist"))
    else:
        for record in records:
            if record["id"] in bad_images:
                continue
            where = f"image id {record['id']}"
            try:
                path = image_path(folder, record["file_name"])
            except ValueError as error:
                missing.append(Problem(annotations, where, str(error)))
                continue
            if not path.is_file():
                missing.append(Problem(str(path), where, "image file does not exist"))
    names = {
        c["id"]: str(c.get("name"))
        for c in data["categories"]
        if isinstance(c, dict) and is_int(c.get("id"))
    }
    annotations = [
        a
        for a in data["annotations"]
        if isinstance(a, dict)
        and is_int(a.get("image_id"))
        and is_int(a.get("category_id"))
        and not a.get("iscrowd", 0)
    ]
    known = {record["id"] for record in records}
    return SplitSummary(
        problems=tuple(problems),
        missing_files=tuple(missing),
        categories=tuple(sorted(names.items())),
        images=len(records),
        annotated_images=len({a["image_id"] for a in annotations} & known),
        annotations=tuple(
            (
                a.get("id"),
                a["image_id"],
                names.get(a["category_id"], ""),
                bool(a.get("segmentation")),
            )
            for a in annotations
        ),
    )


def summary(split: Split) -> SplitSummary:
    """The summary of ``split`` as its annotation file is now."""
    try:
        version = os.stat(split.annotations).st_mtime_ns
    except OSError:
        version = 0
    return _summary(split.annotations, split.images, version)


def _split_problems(spec: TrainSpec, key: str, split: SplitSummary) -> list[str]:
    """The split's problems that would stop the run: all of them, or with
    ``data.skip_bad_records`` all but the bad records, which the loader leaves out."""
    records = split.problems
    if spec.data.skip_bad_records:
        records = [p for p in records if p.image_id is None and p.annotation_id is None]
    return [f"{key}: {p}" for p in (*records, *split.missing_files)]


def problems(spec: TrainSpec) -> list[str]:
    """Every problem of ``spec`` with its data, each naming the spec key and the file/record."""
    data, found = spec.data, []
    train, val = summary(data.train), summary(data.val)
    for key, split, summarised in (("data.train", data.train, train), ("data.val", data.val, val)):
        found += _split_problems(spec, key, summarised)
        if not summarised.categories and not summarised.problems:
            found.append(f"{key}: {split.annotations} has no categories")
    if not train.categories or not val.categories:
        return found
    return (
        found
        + _class_problems(spec, train, val)
        + _batch_problems(spec, train)
        + _mask_policy_problems(spec, train)
        + _group_problems(spec, val)
    )


def _class_problems(spec: TrainSpec, train: SplitSummary, val: SplitSummary) -> list[str]:
    """The model's classes are the training set's: the validation set must have the same, and
    ``model.num_classes`` must cover them."""
    found = []
    if train.categories != val.categories:
        found.append(
            f"data.val: {spec.data.val.annotations} has other categories than data.train's "
            f"{spec.data.train.annotations} (ids and names must match)"
        )
    if spec.model.num_classes < len(train.categories):
        found.append(
            f"model.num_classes: {spec.model.num_classes}, but {spec.data.train.annotations} "
            f"has {len(train.categories)} categories"
        )
    return found


def _batch_problems(spec: TrainSpec, train: SplitSummary) -> list[str]:
    """Each worker's share of the images with annotations must fill its share of a batch."""
    workers = spec.resources.num_workers
    if train.annotated_images // workers >= max(spec.solver.ims_per_batch // workers, 1):
        return []
    return [
        f"solver.ims_per_batch: {spec.solver.ims_per_batch} images per batch over {workers} "
        f"worker(s), but {spec.data.train.annotations} has {train.annotated_images} image(s) "
        "with annotations"
    ]


def _mask_policy_problems(spec: TrainSpec, train: SplitSummary) -> list[str]:
    """The policy's classes must be the training set's, and what it gives a mask must have one."""
    policy = parse_mask_policy(spec.regime.masks)
    try:
        policy.check_categories([name for _, name in train.categories])
    except ValueError as error:
        return [f"regime.masks: {error}"]
    return [
        f"regime.masks: {spec.data.train.annotations}: annotation id {aid} (image id {iid}) "
        f"has no segmentation, but the mask policy {policy.to_spec()!r} gives it a mask"
        for aid, iid, name, has_segmentation in train.annotations
        if not has_segmentation and policy.has_mask(aid, name)
    ]


def _group_problems(spec: TrainSpec, val: SplitSummary) -> list[str]:
    """Each evaluation group needs classes, named or numbered as the validation set's."""
    names = {name for _, name in val.categories}
    known = names | {str(cid) for cid, _ in val.categories}
    found = []
    for group, members in spec.evaluation.groups.items():
        unknown = [member for member in members if str(member) not in known]
        if not members:
            found.append(f"evaluation.groups.{group}: no classes")
        elif unknown:
            found.append(
                f"evaluation.groups.{group}: {unknown} are not categories of "
                f"{spec.data.val.annotations} (names: {', '.join(sorted(names))})"
            )
    return found


def check(specs: Mapping[str, TrainSpec]) -> None:
    """Raise :class:`PreflightError` listing the problems of the runs ``specs`` (by name: one
    run, or a sweep's trials), each problem once, with the trials it concerns when not all."""
    runs: dict[str, list[str]] = {}
    for name, spec in specs.items():
        for problem in problems(spec):
            runs.setdefault(problem, []).append(name)
    if not runs:
        return
    lines = [
        problem if len(names) == len(specs) else f"{problem} (trials: {'; '.join(names)})"
        for problem, names in runs.items()
    ]
    shown = "\n".join(lines[:SHOWN])
    more = f"\n... and {len(lines) - SHOWN} more" if len(lines) > SHOWN else ""
    what = next(iter(specs)) if len(specs) == 1 else f"the {len(specs)} trials"
    raise PreflightError(f"{len(lines)} problem(s), found before {what} started:\n{shown}{more}")
