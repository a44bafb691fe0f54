"""A trained model from its checkpoint file alone, and its predictions on image files.

A checkpoint holds the resolved spec it was trained with, so the model (architecture, classes,
test-time resize) is rebuilt exactly; category names and ids come from the spec's validation
annotations when that file is at hand, else the contiguous class indices stand in.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from boxinst.models.condinst import CondInst
from boxinst.platform.data.coco import read_rgb
from boxinst.platform.data.collate import collate_instances
from boxinst.platform.data.transforms import eval_transform
from boxinst.platform.evaluation import predictions_to_coco_results, save_results
from boxinst.platform.overlays import MIN_SCORE, draw_detections, write_png
from boxinst.platform.spec import TrainSpec, parse_override, set_key, validate
from boxinst.platform.training import CHECKPOINT_FILE, load_checkpoint


def checkpoint_file(path: str | Path) -> Path:
    """``path`` itself, or the checkpoint file inside a checkpoint folder."""
    path = Path(path)
    found = path / CHECKPOINT_FILE if path.is_dir() else path
    if not found.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (a {CHECKPOINT_FILE} or its folder)")
    return found


def load_trained(path: str | Path, overrides: Sequence[str] = ()) -> tuple[CondInst, TrainSpec]:
    """The model of a checkpoint, in eval mode, with its spec (``--set`` overrides applied,
    e.g. another validation set)."""
    file = checkpoint_file(path)
    state = load_checkpoint(file)
    if "spec" not in state:
        raise ValueError(f"{file} holds no spec: it was not written by boxinst training")
    data = state["spec"]
    for text in overrides:
        data = set_key(data, *parse_override(text))
    spec = validate(data, str(file))
    model = CondInst(spec.model)
    model.load_state_dict(state["model"])
    return model.eval(), spec


def category_table(spec: TrainSpec) -> tuple[list[int], dict[int, str]]:
    """Category ids (by contiguous class index) and names of the spec's dataset."""
    annotations = Path(spec.data.val.annotations)
    if annotations.is_file():
        categories = sorted(
            json.loads(annotations.read_text())["categories"], key=lambda c: c["id"]
        )
        return [c["id"] for c in categories], {c["id"]: c["name"] for c in categories}
    ids = list(range(spec.model.num_classes))
    return ids, {i: f"class {i}" for i in ids}


@torch.no_grad()
def predict_files(
    model: CondInst,
    spec: TrainSpec,
    images: Sequence[Path],
    out: Path,
    min_score: float = MIN_SCORE,
) -> list[dict]:
    """Predictions on image files: ``out/predictions.json`` (COCO results, ``image_id`` = the
    file's position in ``images``, with its ``file_name``) and ``out/<stem>.png`` overlays of
    the detections scoring at least ``min_score``."""
    transform = eval_transform(spec.data.test_short_size, spec.data.max_size)
    category_ids, names = category_table(spec)
    results = []
    for image_id, path in enumerate(images):
        original = read_rgb(Path(path))
        empty = {"image": original, "boxes": np.zeros((0, 4), np.float32), "masks": np.zeros(0)}
        resized = transform(empty)["image"]
        tensor = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        batch, _ = collate_instances([(tensor, {"masks": torch.zeros(0, *resized.shape[:2])})])
        outputs = model.predict(batch, [resized.shape[:2]], [original.shape[:2]])
        found = predictions_to_coco_results(outputs, [image_id], category_ids)
        for result in found:
            result["file_name"] = str(path)
        write_png(
            out / f"{Path(path).stem}.png", draw_detections(original, found, names, min_score)
        )
        results += found
    save_results(out / "predictions.json", results)
    return results
