"""Mask policies: which ground-truth instances keep their mask (``has_mask``).

A supervision regime is a mask policy plus the box terms it enables (see DESIGN.md): box-only is
``none``, fully supervised is ``all``, the paper's COCO splits are ``{"classes": ["voc20"]}`` and
``{"classes": ["nonvoc60"]}``, and ``{"fraction": p}`` gives a mask to a random share of the
instances. A policy decides from the annotation id and the category name only, so the decision is
the same in every epoch, every data-loader worker and every Ray worker.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

#: The 80 category names of COCO 2017, in the order of their category ids.
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

#: The COCO names of the 20 Pascal VOC classes (VOC's aeroplane, diningtable, motorbike,
#: pottedplant, sofa and tvmonitor under their COCO names).
VOC20: frozenset[str] = frozenset(
    {
        "airplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
        "dining table", "dog", "horse", "motorcycle", "person", "potted plant", "sheep", "couch",
        "train", "tv",
    }
)  # fmt: skip

#: The other 60 COCO classes: the "unseen" or "seen" half of the paper's partially supervised split.
NONVOC60: frozenset[str] = frozenset(COCO_CLASSES) - VOC20

#: Names a ``classes`` policy may use for a whole group of classes.
CLASS_GROUPS: dict[str, frozenset[str]] = {"voc20": VOC20, "nonvoc60": NONVOC60}

_SPEC_HELP = "expected 'all', 'none', {'classes': [names or groups]} or {'fraction': p, 'seed': s}"


class MaskPolicy(ABC):
    """Decides per ground-truth instance whether its mask is used in training."""

    @abstractmethod
    def has_mask(self, annotation_id: int, category_name: str) -> bool:
        """Whether the instance of this COCO annotation id and category name keeps its mask."""

    def check_categories(self, category_names: Iterable[str]) -> None:  # noqa: B027 (no-op default)
        """Raise ``ValueError`` if the policy names classes the dataset does not have (only a
        ``classes`` policy names any)."""

    @abstractmethod
    def to_spec(self) -> str | dict[str, Any]:
        """The plain spec that :func:`parse_mask_policy` turns back into this policy."""


@dataclass(frozen=True)
class AllMasks(MaskPolicy):
    """Every instance has its mask: fully supervised."""

    def has_mask(self, annotation_id: int, category_name: str) -> bool:
        return True

    def to_spec(self) -> str:
        return "all"


@dataclass(frozen=True)
class NoMasks(MaskPolicy):
    """No instance has a mask: box-supervised (BoxInst)."""

    def has_mask(self, annotation_id: int, category_name: str) -> bool:
        return False

    def to_spec(self) -> str:
        return "none"


@dataclass(frozen=True)
class ClassMasks(MaskPolicy):
    """Instances of the named classes have masks, the others only boxes.

    ``names`` is the spec as written (class names and group names); ``classes`` is its
    expansion into class names.
    """

    names: tuple[str, ...]

    @cached_property
    def classes(self) -> frozenset[str]:
        return frozenset().union(*(CLASS_GROUPS.get(name, {name}) for name in self.names))

    def has_mask(self, annotation_id: int, category_name: str) -> bool:
        return category_name in self.classes

    def check_categories(self, category_names: Iterable[str]) -> None:
        """Every class name must be one of the dataset's, and every group must share at least
        one class with it (a COCO subset may lack some classes of a group)."""
        valid = set(category_names)
        unknown = [
            name
            for name in self.names
            if not (CLASS_GROUPS[name] & valid if name in CLASS_GROUPS else name in valid)
        ]
        if unknown:
            raise ValueError(
                f"mask policy 'classes' names classes the dataset does not have: {unknown}; "
                f"valid class names: {sorted(valid)}; groups: {sorted(CLASS_GROUPS)}"
            )

    def to_spec(self) -> dict[str, Any]:
        return {"classes": list(self.names)}


@dataclass(frozen=True)
class FractionMasks(MaskPolicy):
    """Each instance has its mask with probability ``fraction``, decided by a hash of
    ``(seed, annotation id)``: a fixed random subset, not a fresh draw per epoch or worker."""

    fraction: float
    seed: int = 0

    def has_mask(self, annotation_id: int, category_name: str) -> bool:
        digest = hashlib.blake2b(f"{self.seed}:{annotation_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2**64 < self.fraction

    def to_spec(self) -> dict[str, Any]:
        return {"fraction": self.fraction, "seed": self.seed}


def _parse_classes(value: Any) -> ClassMasks:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(
            f"mask policy 'classes': expected a non-empty list of names, got {value!r}"
        )
    bad = [name for name in value if not isinstance(name, str) or not name]
    if bad:
        raise ValueError(f"mask policy 'classes': names must be non-empty strings, got {bad!r}")
    return ClassMasks(tuple(value))


def _parse_fraction(value: Any, seed: Any) -> FractionMasks:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"mask policy 'fraction': expected a number in [0, 1], got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"mask policy 'seed': expected an integer, got {seed!r}")
    return FractionMasks(float(value), seed)


def parse_mask_policy(spec: MaskPolicy | str | dict[str, Any]) -> MaskPolicy:
    """A policy from its plain spec: ``"all"``, ``"none"``, ``{"classes": [...]}`` (class names
    and the groups ``voc20``/``nonvoc60``) or ``{"fraction": p}`` with an optional ``"seed"``.

    Class names are checked against a dataset by :meth:`MaskPolicy.check_categories`.
    """
    if isinstance(spec, MaskPolicy):
        return spec
    if spec == "all":
        return AllMasks()
    if spec == "none":
        return NoMasks()
    if not isinstance(spec, dict):
        raise ValueError(f"mask policy {spec!r}: {_SPEC_HELP}")
    if "classes" in spec:
        extra = sorted(set(spec) - {"classes"})
        if extra:
            raise ValueError(f"mask policy 'classes' takes no other keys, got {extra}")
        return _parse_classes(spec["classes"])
    if "fraction" in spec:
        extra = sorted(set(spec) - {"fraction", "seed"})
        if extra:
            raise ValueError(f"mask policy 'fraction' takes only 'seed' besides, got {extra}")
        return _parse_fraction(spec["fraction"], spec.get("seed", 0))
    raise ValueError(f"mask policy has unknown keys {sorted(spec)}: {_SPEC_HELP}")
