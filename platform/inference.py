"""A trained model from its checkpoint file alone (or its MLflow model), and its predictions
on image files.

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
from boxinst.platform.data.collate import collate_instances
from boxinst.platform.data.decode import read_rgb
from boxinst.platform.data.transforms import eval_transform
from boxinst.platform.evaluation import predictions_to_coco_results, save_results
from boxinst.platform.mlflow_models import is_model_uri, load_logged_model
from boxinst.platform.overlays import MIN_SCORE, draw_detections, write_png
from boxinst.platform.spec import TrainSpec, parse_override, set_key, validate
from boxinst.platform.training import CHECKPOINT_FILE, CheckpointError, load_checkpoint


def checkpoint_file(path: str | Path) -> Path:
    """``path`` itself, or the checkpoint file inside a checkpoint folder."""
    path = Path(path)
    found = path / CHECKPOINT_FILE if path.is_dir() else path
    if not found.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (a {CHECKPOINT_FILE} or its folder)")
    return found


def load_trained(
    path: str | Path, overrides: Sequence[str] = (), tracking_uri: str | None = None
) -> tuple[CondInst, TrainSpec]:
    """The model of a checkpoint, or of an MLflow model URI (``models:/NAME/VERSION``, read
    from ``tracking_uri``), in eval mode, with its spec (``--set`` overrides applied, e.g.
    another validation set). A file that is not a whole boxinst checkpoint, or overrides that
    change the model's shape, raise :class:`CheckpointError` naming the file."""
    if is_model_uri(path):
        file, state = str(path), load_logged_model(str(path), tracking_uri)
    else:
        file = checkpoint_file(path)
        state = load_checkpoint(file)
    if not isinstance(state, dict) or not {"spec", "model"} <= state.keys():
        raise CheckpointError(f"checkpoint {file} holds no spec and model: not boxinst's")
    data = state["spec"]
    for text in overrides:
        data = set_key(data, *parse_override(text))
    spec = validate(data, str(file))
    model = CondInst(spec.model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        first = str(error).strip().splitlines()[:2]
        raise CheckpointError(
            f"checkpoint {file}: its weights do not fit the model of its spec"
            f"{' with the --set overrides' if overrides else ''} ({' '.join(first)})"
        ) from None
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


def overlay_names(images: Sequence[Path]) -> list[str]:
    """``<stem>.png`` for each image; ``<stem>-2.png``, ``-3`` ... for later images of a stem
    already taken (``a/x.jpg`` and ``b/x.jpg``), so no overlay overwrites another."""
    names, taken = [], set()
    for path in images:
        stem, name, count = Path(path).stem, f"{Path(path).stem}.png", 1
        while name in taken:
            count += 1
            name = f"{stem}-{count}.png"
        taken.add(name)
        names.append(name)
    return names


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
    the detections scoring at least ``min_score`` (:func:`overlay_names`). An image that cannot
    be read fails it before ``predictions.json`` is written."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; predictions go into a folder")
    missing = [str(path) for path in images if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"image file(s) not found: {', '.join(missing)}")
    transform = eval_transform(spec.data.test_short_size, spec.data.max_size)
    category_ids, names = category_table(spec)
    results = []
    for image_id, (path, overlay) in enumerate(zip(images, overlay_names(images), strict=True)):
        original = read_rgb(Path(path))
        empty = {"image": original, "boxes": np.zeros((0, 4), np.float32), "masks": np.zeros(0)}
        resized = transform(empty)["image"]
        tensor = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        batch, _ = collate_instances([(tensor, {"masks": torch.zeros(0, *resized.shape[:2])})])
        outputs = model.predict(batch, [resized.shape[:2]], [original.shape[:2]])
        found = predictions_to_coco_results(outputs, [image_id], category_ids)
        for result in found:
            result["file_name"] = str(path)
        write_png(out / overlay, draw_detections(original, found, names, min_score))
        results += found
    save_results(out / "predictions.json", results)
    return results
