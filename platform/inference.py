"""A trained model from its checkpoint file alone (or its MLflow model), and its predictions
on image files and folders, in one process or sharded over a Ray cluster.

A checkpoint holds the resolved spec it was trained with, so the model (architecture, classes,
test-time resize) is rebuilt exactly, and the categories (ids and names) of its training set,
so its predictions are labelled on a machine without the training data.

Predictions stream: a DataLoader reads and resizes the images (``loader_workers`` processes),
the model predicts a batch at a time, and the COCO results go into ``predictions.json`` as they
come (:func:`~boxinst.platform.evaluation.coco.results_writer`), with overlays only when asked for.
With ``workers``, each of that many Ray actors (a GPU each where the cluster has GPUs, else a
CPU) loads the model once and predicts chunks of consecutive images; the results come back to
this process in the images' order (``ray.util.ActorPool``), so the file is the same as one
process writes. The images must be readable where the actors run (a shared file system).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import ray
import torch
from ray.util import ActorPool
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from boxinst.models.condinst import CondInst
from boxinst.platform.data.collate import collate_instances
from boxinst.platform.data.decode import ImageError, read_rgb
from boxinst.platform.data.transforms import eval_transform
from boxinst.platform.evaluation.coco import predictions_to_coco_results, results_writer
from boxinst.platform.evaluation.overlays import MIN_SCORE, draw_detections, write_png
from boxinst.platform.spec import TrainSpec, parse_override, set_key, validate
from boxinst.platform.tracking.models import is_model_uri, load_logged_model
from boxinst.platform.training.loop import CHECKPOINT_FILE, CheckpointError, load_checkpoint

#: what ``predict`` takes from a folder (any case)
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")

#: category ids by contiguous class index, and category names by id
Categories = tuple[list[int], dict[int, str]]


def checkpoint_file(path: str | Path) -> Path:
    """``path`` itself, or the checkpoint file inside a checkpoint folder."""
    path = Path(path)
    found = path / CHECKPOINT_FILE if path.is_dir() else path
    if not found.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (a {CHECKPOINT_FILE} or its folder)")
    return found


def load_trained(
    path: str | Path, overrides: Sequence[str] = (), tracking_uri: str | None = None
) -> tuple[CondInst, TrainSpec, Categories]:
    """The model of a checkpoint, or of an MLflow model URI (``models:/NAME/VERSION``, read
    from ``tracking_uri``), in eval mode, with its spec (``--set`` overrides applied, e.g.
    another validation set) and its categories (:func:`categories_of`). A file that is not a
    whole boxinst checkpoint, or overrides that change the model's shape, raise
    :class:`CheckpointError` naming the file."""
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
    return model.eval(), spec, categories_of(state, spec)


def categories_of(state: dict, spec: TrainSpec) -> Categories:
    """The categories a checkpoint's state holds; for a checkpoint written before they were
    kept, those of its spec's validation annotations where that file is at hand, else the
    class indices."""
    categories = state.get("categories")
    if not categories and Path(spec.data.val.annotations).is_file():
        annotations = json.loads(Path(spec.data.val.annotations).read_text())
        categories = sorted(annotations["categories"], key=lambda c: c["id"])
    if not categories:
        categories = [{"id": i, "name": f"class {i}"} for i in range(spec.model.num_classes)]
    return [c["id"] for c in categories], {c["id"]: c["name"] for c in categories}


def image_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The images to predict on: each file as given, and the image files under each folder
    (by :data:`IMAGE_SUFFIXES`, recursively, in sorted order). A path that does not exist,
    or a folder without images, raises ``FileNotFoundError`` naming it."""
    missing = [str(path) for path in inputs if not Path(path).exists()]
    if missing:
        raise FileNotFoundError(f"image file(s) not found: {', '.join(missing)}")
    files = []
    for path in map(Path, inputs):
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            )
            if not found:
                raise FileNotFoundError(f"folder {path} holds no image files ({IMAGE_SUFFIXES})")
            files += found
        else:
            files.append(path)
    return files


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


class ImageFiles(Dataset):
    """Image files resized for inference: ``(image [3, h, w] uint8, target)`` with the
    target's ``image_size`` and ``original_size``; for an image that cannot be read, only its
    ``error`` (the message, raised by :meth:`Predictor.batches` in the main process, not in a
    loader worker, where it would come wrapped in a traceback)."""

    def __init__(self, files: Sequence[Path], spec: TrainSpec):
        self.files = list(files)
        self.transform = eval_transform(spec.data.test_short_size, spec.data.max_size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        try:
            original = read_rgb(self.files[index])
        except ImageError as error:
            return torch.zeros(3, 1, 1, dtype=torch.uint8), {"error": str(error)}
        empty = {"image": original, "boxes": np.zeros((0, 4), np.float32), "masks": np.zeros(0)}
        resized = self.transform(empty)["image"]
        image = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        return image, {"image_size": resized.shape[:2], "original_size": original.shape[:2]}


class Predictor:
    """The model at ``model_path`` (a checkpoint or an MLflow model URI, :func:`load_trained`)
    on this machine's GPU if it has one, predicting image files a batch at a time; a Ray actor
    of :func:`predict_to_folder`'s ``workers``."""

    def __init__(
        self, model_path: str, overrides: Sequence[str] = (), tracking_uri: str | None = None
    ):
        model, self.spec, self.categories = load_trained(model_path, overrides, tracking_uri)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device)

    @torch.no_grad()
    def batches(
        self,
        files: Sequence[Path],
        first_id: int = 0,
        batch_size: int = 8,
        loader_workers: int = 0,
    ) -> Iterator[tuple[int, list[dict]]]:
        """For each batch of ``files``: its image count and its COCO results (``image_id`` =
        the file's position in ``files`` plus ``first_id``, with its ``file_name``). An image
        that cannot be read raises :class:`ImageError` naming it."""
        loader = DataLoader(
            ImageFiles(files, self.spec),
            batch_size=batch_size,
            num_workers=loader_workers,
            collate_fn=collate_instances,
        )
        start = first_id
        for images, targets in loader:
            for target in targets:
                if "error" in target:
                    raise ImageError(target["error"])
            outputs = self.model.predict(
                images.to(self.device),
                [t["image_size"] for t in targets],
                [t["original_size"] for t in targets],
            )
            ids = list(range(start, start + len(targets)))
            results = predictions_to_coco_results(outputs, ids, self.categories[0])
            for result in results:
                result["file_name"] = str(files[result["image_id"] - first_id])
            yield len(targets), results
            start += len(targets)

    def predict(self, files: Sequence[str], first_id: int, batch_size: int) -> list[dict]:
        """The COCO results of a chunk of files (an actor's call)."""
        found = self.batches([Path(f) for f in files], first_id, batch_size)
        return [result for _, results in found for result in results]


def predict_to_folder(
    model_path: str,
    images: Sequence[str | Path],
    out: Path,
    overrides: Sequence[str] = (),
    tracking_uri: str | None = None,
    overlays: bool = False,
    min_score: float = MIN_SCORE,
    batch_size: int = 8,
    loader_workers: int = 2,
    workers: int = 0,
) -> tuple[int, int]:
    """Predictions of the model at ``model_path`` on ``images`` (files and folders,
    :func:`image_files`): ``out/predictions.json`` (COCO results) and, with ``overlays``,
    ``out/<stem>.png`` pictures of the detections scoring at least ``min_score``
    (:func:`overlay_names`), with a progress bar on a terminal. In this process, or on
    ``workers`` Ray actors of the cluster this process is connected to (the module says how).
    Returns the numbers of images and of detections. Bad input is refused before the first
    prediction; an image that cannot be read fails it, and no ``predictions.json`` is left."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; predictions go into a folder")
    model = (model_path, overrides, tracking_uri)
    if workers:  # read here only to be refused before the actors start, and for the names
        categories = load_trained(*model)[2]
        files = image_files(images)
        stream = _on_actors(model, files, workers, batch_size)
    else:
        predictor = Predictor(*model)
        categories, files = predictor.categories, image_files(images)
        stream = predictor.batches(files, 0, batch_size, loader_workers)
    names = overlay_names(files) if overlays else []
    done = detections = 0
    with results_writer(out / "predictions.json") as write, _bar(len(files)) as bar:
        for count, results in stream:
            write(results)
            for image_id in range(done, done + count) if overlays else ():
                found = [r for r in results if r["image_id"] == image_id]
                picture = draw_detections(
                    read_rgb(files[image_id]), found, categories[1], min_score
                )
                write_png(out / names[image_id], picture)
            done, detections = done + count, detections + len(results)
            bar.update(count)
    return len(files), detections


def _on_actors(
    model: tuple, files: Sequence[Path], workers: int, batch_size: int
) -> Iterator[tuple[int, list[dict]]]:
    """(image count, results) of consecutive chunks of ``files`` predicted by ``workers``
    :class:`Predictor` actors (a GPU each when the cluster has that many), in order; about
    eight chunks per actor, so that the results stream and a slow chunk does not hold up
    the others long."""
    gpu = ray.cluster_resources().get("GPU", 0) >= workers
    actor = ray.remote(num_gpus=1 if gpu else 0, num_cpus=0 if gpu else 1)(Predictor)
    pool = ActorPool([actor.remote(*model) for _ in range(workers)])
    chunk = batch_size * max(1, math.ceil(len(files) / (workers * batch_size * 8)))
    starts = range(0, len(files), chunk)

    def submit(predictor, start: int):
        paths = [str(f) for f in files[start : start + chunk]]
        return predictor.predict.remote(paths, start, batch_size)

    try:
        for start, results in zip(starts, pool.map(submit, starts), strict=True):
            yield len(files[start : start + chunk]), results
    except ray.exceptions.RayTaskError as error:
        raise error.cause from None  # an image that cannot be read, named without the traceback


class ProgressBar(tqdm):
    """tqdm without its monitor thread: tqdm starts one with its first bar, a daemon thread that
    lives until the interpreter exits, only to retune the refresh rate of stalled bars."""

    monitor_interval = 0


def _bar(total: int) -> tqdm:
    """A progress bar of images on a terminal (none in a log)."""
    return ProgressBar(total=total, unit="img", disable=None, dynamic_ncols=True)
