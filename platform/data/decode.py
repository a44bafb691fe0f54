"""The loader's reading of a dataset's files and segmentations, each validated first: image
files as 8-bit RGB (:func:`read_rgb`, confined to the image folder by :func:`image_path`), COCO
polygons and RLEs as masks (:func:`decode_segmentation`).

The loader (:mod:`boxinst.platform.data.coco`) reads a dataset with these functions and
``boxinst data check`` (:mod:`boxinst.platform.data.check`) runs them on every record, so what
the check passes the loader reads, and what the loader would refuse the check reports.
"""

from __future__ import annotations

import math
import os
import reprlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils

#: Boxes may overhang the image by float rounding of their converters; more is an error. The
#: same margin holds for the points of polygons.
BOX_TOLERANCE = 1.0

_NUMBER_TYPES = frozenset({int, float})


def is_int(value: Any) -> bool:
    """A JSON integer (``true`` is not one)."""
    return type(value) is int


def finite_numbers(values: list) -> bool:
    """Whether every value is a finite JSON number: an int or a float, not a bool, not NaN or
    infinite, not an integer too large for a float."""
    try:
        return set(map(type, values)) <= _NUMBER_TYPES and all(map(math.isfinite, values))
    except OverflowError:  # an integer beyond a float's range
        return False


def check_segmentation(segmentation: Any, height: int, width: int) -> None:
    """Raise a ValueError saying what is wrong unless ``segmentation`` is a valid COCO
    segmentation of a ``height`` x ``width`` image: polygons (:func:`check_polygons`) or an RLE
    (:func:`rle_counts`). The message reads after "has", e.g. "has a polygon of 2 points"."""
    if isinstance(segmentation, list):
        check_polygons(segmentation, height, width)
    elif isinstance(segmentation, dict):
        rle_counts(segmentation, height, width)
    else:
        kind = type(segmentation).__name__
        raise ValueError(f"a segmentation of type {kind} (polygons or an RLE expected)")


def check_polygons(polygons: list, height: int, width: int) -> None:
    """Raise a ValueError unless there are polygons, each a list of at least 3 points, x, y
    pairs of finite numbers within the image (give or take :data:`BOX_TOLERANCE`: pycocotools
    rasterises a polygon in time proportional to its extent, and crashes on a huge one)."""
    if not polygons:
        raise ValueError("no polygon")
    for polygon in polygons:
        if not isinstance(polygon, list) or not finite_numbers(polygon):
            raise ValueError(f"a polygon that is not a list of numbers: {reprlib.repr(polygon)}")
        if len(polygon) % 2:
            raise ValueError(f"a polygon of {len(polygon)} numbers (x, y pairs expected)")
        if len(polygon) < 6:
            raise ValueError(f"a polygon of {len(polygon) // 2} points (3 at least)")
        if not (_within(polygon[0::2], width) and _within(polygon[1::2], height)):
            raise ValueError(f"a polygon with points outside its {width}x{height} image")


def _within(values: list, side: int) -> bool:
    return min(values) >= -BOX_TOLERANCE and max(values) <= side + BOX_TOLERANCE


def rle_counts(rle: dict, height: int, width: int) -> list[int]:
    """The run lengths of a COCO RLE of a ``height`` x ``width`` image, ``counts`` a list of
    integers or a string in COCO's compressed format (:func:`_decompress`). A ValueError unless
    its ``size`` is ``[height, width]`` and its runs cover the image exactly: pycocotools would
    decode any other into memory it never wrote, or past the end of the mask."""
    size, counts = rle.get("size"), rle.get("counts")
    if size != [height, width]:
        raise ValueError(f"an RLE of size {reprlib.repr(size)} for its [{height}, {width}] image")
    if isinstance(counts, str):
        counts = _decompress(counts)
    elif not (isinstance(counts, list) and all(map(is_int, counts))):
        raise ValueError(
            f"an RLE whose counts are neither integers nor a string: {reprlib.repr(counts)}"
        )
    if any(count < 0 for count in counts):
        raise ValueError("an RLE with a negative count")
    if sum(counts) != height * width:
        raise ValueError(
            f"an RLE whose counts sum to {sum(counts)}, not to the {height * width} pixels of "
            f"its {width}x{height} image"
        )
    return counts


def _decompress(text: str) -> list[int]:
    """The numbers of a compressed RLE string, read as pycocotools' ``rleFrString`` does.

    Each number is written in groups of 5 bits, least significant first, a character each: the
    group plus 48 (``'0'``), plus 0x20 when another group follows. The 0x10 bit of the last group
    is the sign. From the fourth number on, each is the difference to the count two before.
    """
    counts: list[int] = []
    value = shift = 0
    for char in text:
        code = ord(char) - 48
        if not 0 <= code < 64:
            raise ValueError(f"an RLE string with {char!r}, outside the compressed alphabet")
        value |= (code & 0x1F) << shift
        shift += 5
        if code & 0x20:  # another group follows
            if shift == 35:  # pycocotools' counts are 32-bit: 7 groups hold any of them
                raise ValueError("an RLE string with a number of more than 32 bits")
            continue
        if code & 0x10:  # negative
            value -= 1 << shift
        counts.append(value + counts[-2] if len(counts) > 2 else value)
        value = shift = 0
    if shift:
        raise ValueError("an RLE string that ends inside a number")
    return counts


def decode_segmentation(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """``[height, width]`` uint8 mask of a COCO segmentation: polygons, uncompressed RLE
    (``counts`` a list) or compressed RLE (``counts`` a string). A malformed one is a ValueError
    saying what is wrong (the rules of :func:`check_segmentation`, which
    ``boxinst data check`` applies too)."""
    if isinstance(segmentation, dict):
        # The runs as the check read them: they cover the mask exactly.
        runs = rle_counts(segmentation, height, width)
        values = (np.arange(len(runs)) % 2).astype(np.uint8)  # runs of 0s and 1s, 0s first
        return np.repeat(values, runs).reshape((height, width), order="F")  # column-major
    check_segmentation(segmentation, height, width)
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width)))


def image_path(folder: Path, file_name: str, where: str = "") -> Path:
    """``folder / file_name``, if ``file_name`` is a relative path that stays inside ``folder``
    (not absolute, no ``..``) and one the file system can name; else a ValueError naming it (and
    ``where``, its record): an annotation file cannot make the loader open other files. Symbolic
    links inside ``folder`` are followed: they are the dataset owner's doing, not the JSON's."""
    parts = Path(file_name).parts
    inside = bool(parts) and not Path(file_name).is_absolute() and ".." not in parts
    if not (inside and _nameable(file_name)):
        where = f" ({where})" if where else ""
        raise ValueError(
            f"file_name {file_name!r}{where} is refused: not a relative path inside the image "
            f"folder {folder}"
        )
    return Path(folder) / file_name


def _nameable(file_name: str) -> bool:
    """Whether a file system can name ``file_name``: no NUL, nothing its encoding lacks."""
    try:
        os.fsencode(file_name)
    except UnicodeEncodeError:
        return False
    return "\0" not in file_name


class ImageError(ValueError):
    """An image file that cannot be read as 8-bit RGB; the message names it."""


def read_rgb(path: Path, where: str = "") -> np.ndarray:
    """An image file as ``[H, W, 3]`` uint8 RGB, its EXIF orientation applied; an error naming
    the file (and ``where``, the record it belongs to) if it cannot be read.

    Palette, grey, alpha and CMYK images are converted to RGB, 16- and 32-bit integer grey
    ones scaled to 8 bits (:func:`_to_rgb`). An image of more than twice PIL's
    ``Image.MAX_IMAGE_PIXELS`` (where PIL raises rather than warns) is refused as a
    decompression bomb.
    """
    where = f" ({where})" if where else ""
    try:
        with Image.open(path) as file:
            return _to_rgb(ImageOps.exif_transpose(file))
    except FileNotFoundError:
        raise FileNotFoundError(f"image file {path}{where} does not exist") from None
    except Image.DecompressionBombError as error:
        raise ImageError(
            f"image file {path}{where} is refused as a decompression bomb (PIL's "
            f"MAX_IMAGE_PIXELS limit): {error}"
        ) from None
    # PIL's decoders fail on a malformed file in many ways (OSError, SyntaxError, ValueError,
    # struct.error, ...): Pillow's own fuzzing harness catches Exception for that reason.
    except Exception as error:
        raise ImageError(f"image file {path}{where} cannot be read: {error}") from None


def _to_rgb(image: Image.Image) -> np.ndarray:
    """``[H, W, 3]`` uint8 of an image of any mode. Integer grey modes are scaled to 0..255:
    16-bit ones (``I;16*``) divided by 257; 32-bit ones (``I``) too when no value exceeds 65535
    (16-bit data, as PIL opens some 16-bit files), else by (2**31 - 1) / 255, negative values
    as 0. Floating-point ones (``F``) are refused: they have no range to scale from."""
    if image.mode == "F":
        raise ValueError("its pixels are floating-point (mode F), which have no 8-bit scale")
    if image.mode.startswith("I"):
        grey = np.asarray(image)
        full = 65535 if grey.max(initial=0) <= 65535 else 2**31 - 1
        grey = np.round(np.clip(grey, 0, None) * (255 / full)).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"))
