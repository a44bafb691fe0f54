"""Generated scenes of filled shapes with exact instance masks.

The shapes are chosen so that a filled box is a poor mask (a ring has a hole, a star and a
crescent leave most of their box empty). How a scene is painted is its :class:`Style`, so that
one set of shapes can be seen under the conditions the colour prior of BoxInst's pairwise term
finds easy or hard (:data:`STYLES`): flat colours on a smooth background, textured fills and
backgrounds, clutter and heavy occlusion, low contrast.
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


@dataclass(frozen=True)
class Style:
    """How a scene is painted; where its shapes go and what they are is the same in every style
    (but for ``clustered``).

    - ``grating``: RGB amplitude of the sums of three sinusoidal gratings (random orientation,
      period and colour direction) laid over the background and over each object's fill; 0:
      flat fills on a smooth background.
    - ``noise``: standard deviation of the pixel noise of background and fills (RGB).
    - ``distractors``: up to this many unannotated lines and small squares on the background,
      behind the objects.
    - ``clustered``: every object after the first is centred inside an earlier one's radius,
      so that objects occlude each other in most scenes.
    - ``contrast``: every object takes the background's colour under its centre moved this far
      (an RGB distance drawn from the range); ``None``: random colours.
    """

    grating: float = 0.0
    noise: float = 3.0
    distractors: int = 0
    clustered: bool = False
    contrast: tuple[float, float] | None = None


#: The styles of the generated datasets, by name (``data synth --style``, ``SynthConfig.style``).
STYLES = {
    "flat": Style(),
    "textured": Style(grating=12.0, noise=6.0),
    "cluttered": Style(distractors=8, clustered=True),
    "low_contrast": Style(contrast=(20.0, 50.0)),
}


def gratings(rng: np.random.Generator, height: int, width: int, amplitude: float) -> np.ndarray:
    """``[H, W, 3]`` float32: a sum of three sinusoidal gratings, each along a random direction
    of the image with a random period (5-20 px) and phase, along a random colour direction."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    field = np.zeros((height, width, 3), np.float32)
    for _ in range(3):
        angle, period, phase = rng.uniform(0, np.pi), rng.uniform(5, 20), rng.uniform(0, 2 * np.pi)
        colour = rng.normal(size=3)
        colour *= amplitude * rng.uniform(0.5, 1.0) / np.linalg.norm(colour)
        wave = np.sin(2 * np.pi * (xs * np.cos(angle) + ys * np.sin(angle)) / period + phase)
        field += wave[..., None] * colour.astype(np.float32)
    return field


def textured_background(
    rng: np.random.Generator, height: int, width: int, style: Style = STYLES["flat"]
) -> np.ndarray:
    """A smooth random colour field plus a finer texture and pixel noise, float32 RGB; with
    the style's gratings and distractors."""
    coarse = rng.uniform(40, 215, size=(2, 2, 3)).astype(np.float32)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    fine = rng.normal(0, 3, size=(height // 8 + 1, width // 8 + 1, 3)).astype(np.float32)
    field += cv2.resize(fine, (width, height), interpolation=cv2.INTER_LINEAR)
    if style.grating:
        field += gratings(rng, height, width, style.grating)
    for _ in range(int(rng.integers(0, style.distractors + 1)) if style.distractors else 0):
        _draw_distractor(rng, field)
    return field + rng.normal(0, style.noise, size=field.shape).astype(np.float32)


def _draw_distractor(rng: np.random.Generator, image: np.ndarray) -> None:
    """An unannotated thin line or small square in a random colour, drawn into ``image``."""
    height, width = image.shape[:2]
    colour = tuple(float(v) for v in rng.uniform(0, 255, size=3))
    x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
    if rng.random() < 0.5:
        end = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.line(image, (x, y), end, colour, thickness=int(rng.integers(1, 3)))
    else:
        side = int(rng.integers(3, 7))
        cv2.rectangle(image, (x, y), (x + side, y + side), colour, thickness=-1)


def render_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    classes: tuple[str, ...] = tuple(SHAPES),
    max_objects: int = 3,
    size_range: tuple[float, float] = (0.15, 0.35),
    min_visible: float = 0.5,
    low_contrast: float = 0.0,
    style: Style = STYLES["flat"],
) -> Scene:
    """Draw 1..``max_objects`` shapes, later ones occluding earlier ones; an object keeps its
    visible part as its mask and is dropped when less than ``min_visible`` of it remains.

    With probability ``low_contrast`` an object takes a colour close to the background under
    its centre, the hard case for the colour-similarity prior of the pairwise term. The
    ``style`` paints the scene (:class:`Style`)."""
    image = textured_background(rng, height, width, style)
    masks, labels, full_areas, centres = [], [], [], []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        label = int(rng.integers(len(classes)))
        radius = rng.uniform(*size_range) * min(height, width)
        low, high = [radius, radius], [width - radius, height - radius]
        if style.clustered and centres:  # inside an earlier object's radius
            near, reach = centres[int(rng.integers(len(centres)))]
            low = np.maximum(low, near - reach)
            high = np.maximum(np.minimum(high, near + reach), low)
        centre = rng.uniform(low, high)
        centres.append((centre, radius))
        mask = SHAPES[classes[label]](rng, centre, radius, (height, width))
        if mask.sum() < 16:
            continue
        background = image[int(centre[1]), int(centre[0])]
        if style.contrast is not None:
            direction = rng.normal(size=3)
            distance = rng.uniform(*style.contrast)
            colour = (background + distance * direction / np.linalg.norm(direction)).astype(
                np.float32
            )
        elif low_contrast > 0 and rng.random() < low_contrast:
            colour = (background + rng.normal(0, 12, size=3)).astype(np.float32)
        else:
            colour = rng.uniform(0, 255, size=3).astype(np.float32)
        texture = rng.normal(0, style.noise, size=(height, width, 3)).astype(np.float32)
        if style.grating:
            texture += gratings(rng, height, width, style.grating)
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
