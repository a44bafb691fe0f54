"""Generated scenes of filled shapes with exact instance masks.

The shapes are chosen so that a filled box is a poor mask (a ring has a hole, a star and a
crescent leave most of their box empty) and the backgrounds are textured and noisy, so the
colour-similarity prior of the pairwise term has real work to do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

Mask = np.ndarray  # [H, W] uint8 in {0, 1}


def _polygon(points: np.ndarray, shape: tuple[int, int]) -> Mask:
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1, lineType=cv2.LINE_8)
    return mask


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def ellipse(rng, centre, radius, shape) -> Mask:
    mask = np.zeros(shape, np.uint8)
    axes = (int(radius), int(radius * rng.uniform(0.45, 0.8)))
    centre_px = (int(centre[0]), int(centre[1]))
    cv2.ellipse(mask, centre_px, axes, float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
    return mask


def triangle(rng, centre, radius, shape) -> Mask:
    angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2.1, 4.2]) + rng.uniform(-0.3, 0.3, 3)
    points = centre + radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return _polygon(points, shape)


def star(rng, centre, radius, shape) -> Mask:
    tips = int(rng.integers(5, 7))
    angles = rng.uniform(0, 2 * np.pi) + np.arange(2 * tips) * np.pi / tips
    radii = np.where(np.arange(2 * tips) % 2 == 0, radius, radius * rng.uniform(0.38, 0.5))
    points = centre + radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return _polygon(points, shape)


def ring(rng, centre, radius, shape) -> Mask:
    mask = np.zeros(shape, np.uint8)
    centre_px = (int(centre[0]), int(centre[1]))
    cv2.circle(mask, centre_px, int(radius), 1, thickness=-1)
    cv2.circle(mask, centre_px, int(radius * rng.uniform(0.5, 0.65)), 0, thickness=-1)
    return mask


def crescent(rng, centre, radius, shape) -> Mask:
    mask = np.zeros(shape, np.uint8)
    cv2.circle(mask, (int(centre[0]), int(centre[1])), int(radius), 1, thickness=-1)
    shift = _rotate(np.array([[radius * rng.uniform(0.45, 0.6), 0.0]]), rng.uniform(0, 2 * np.pi))[
        0
    ]
    bite = centre + shift
    cv2.circle(mask, (int(bite[0]), int(bite[1])), int(radius * 0.9), 0, thickness=-1)
    return mask


def bar(rng, centre, radius, shape) -> Mask:
    half = np.array([[radius, radius * rng.uniform(0.18, 0.3)]])
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
    return _polygon(centre + _rotate(corners, rng.uniform(0, np.pi)), shape)


def rounded_polygon(rng, centre, radius, shape) -> Mask:
    """A random convex-ish polygon whose corners are rounded by blurring and re-thresholding."""
    corners = int(rng.integers(4, 8))
    angles = np.sort(rng.uniform(0, 2 * np.pi, corners))
    radii = radius * rng.uniform(0.7, 1.0, corners)
    points = centre + radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    sharp = _polygon(points, shape).astype(np.float32)
    blur = max(3, int(radius * 0.4)) | 1  # odd kernel size
    return (cv2.GaussianBlur(sharp, (blur, blur), 0) > 0.5).astype(np.uint8)


SHAPES: dict[str, Callable] = {
    "ellipse": ellipse,
    "triangle": triangle,
    "star": star,
    "ring": ring,
    "crescent": crescent,
    "bar": bar,
    "rounded_polygon": rounded_polygon,
}


@dataclass
class Scene:
    """One generated image: ``image`` [H, W, 3] uint8 RGB, ``masks`` [G, H, W] uint8, ``boxes``
    [G, 4] float32 xyxy (tight around the visible mask, exclusive upper corner), ``labels`` [G]
    int64 indices into the class list."""

    image: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray


def textured_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random colour field plus a finer texture and pixel noise, float32 RGB."""
    coarse = rng.uniform(40, 215, size=(2, 2, 3)).astype(np.float32)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    fine = rng.normal(0, 3, size=(height // 8 + 1, width // 8 + 1, 3)).astype(np.float32)
    field += cv2.resize(fine, (width, height), interpolation=cv2.INTER_LINEAR)
    return field + rng.normal(0, 3, size=field.shape).astype(np.float32)


def render_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    classes: tuple[str, ...] = tuple(SHAPES),
    max_objects: int = 3,
    size_range: tuple[float, float] = (0.15, 0.35),
    min_visible: float = 0.5,
    low_contrast: float = 0.0,
) -> Scene:
    """Draw 1..``max_objects`` shapes, later ones occluding earlier ones; an object keeps its
    visible part as its mask and is dropped when less than ``min_visible`` of it remains.

    With probability ``low_contrast`` an object takes a colour close to the background under
    its centre, the hard case for the colour-similarity prior of the pairwise term."""
    image = textured_background(rng, height, width)
    masks, labels, full_areas = [], [], []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        label = int(rng.integers(len(classes)))
        radius = rng.uniform(*size_range) * min(height, width)
        centre = rng.uniform([radius, radius], [width - radius, height - radius])
        mask = SHAPES[classes[label]](rng, centre, radius, (height, width))
        if mask.sum() < 16:
            continue
        if low_contrast > 0 and rng.random() < low_contrast:
            background = image[int(centre[1]), int(centre[0])]
            colour = (background + rng.normal(0, 12, size=3)).astype(np.float32)
        else:
            colour = rng.uniform(0, 255, size=3).astype(np.float32)
        texture = rng.normal(0, 3, size=(height, width, 3)).astype(np.float32)
        image = np.where(mask[..., None] > 0, colour + texture, image)
        masks = [m * (1 - mask) for m in masks]
        masks.append(mask)
        labels.append(label)
        full_areas.append(int(mask.sum()))

    kept = [i for i, m in enumerate(masks) if m.sum() >= max(min_visible * full_areas[i], 16)]
    masks = [masks[i] for i in kept]
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return Scene(
        image=np.clip(image, 0, 255).astype(np.uint8),
        masks=np.stack(masks) if masks else np.zeros((0, height, width), np.uint8),
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        labels=np.asarray([labels[i] for i in kept], np.int64),
    )
