"""``boxinst demo``: a spec's trials trained on this machine alone, without Ray or MLflow, by the
one training loop (:func:`boxinst.platform.training.loop.run`), one single-threaded process per CPU
core; the shipped ``demo`` spec trains each supervision regime briefly on generated shapes.

Each trial prints its progress lines, keeps its final checkpoint (model, spec, classes,
evaluation files) in ``OUT/<trial>/``, ready for ``boxinst predict``, and returns its final
metrics; :func:`table` sets them side by side. The learning test of the suite trains the same
way.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import torch

from boxinst.platform.console import Progress
from boxinst.platform.metrics import (
    BBOX_AP,
    FINAL,
    MASK_IOU,
    MASK_IOU_BOX,
    SEGM_AP,
    box_as_mask_name,
)
from boxinst.platform.spec import TrainSpec
from boxinst.platform.sweep import trial_specs
from boxinst.platform.training.loop import prepare_data, run

#: The demo's table: its columns, their metrics and how they are printed.
IOU, AP = "{:.3f}".format, "{:.1f}".format
COLUMNS = {
    "mask IoU": (MASK_IOU, IOU),
    "filled-box IoU": (MASK_IOU_BOX, IOU),
    "mask AP": (SEGM_AP, AP),
    "box-as-mask AP": (box_as_mask_name("AP"), AP),
    "box AP": (BBOX_AP, AP),
}
#: Seconds a trial took, beside its metrics.
SECONDS = "seconds"


def train_trials(spec: TrainSpec, out: Path) -> dict[str, dict[str, float]]:
    """Every trial of ``spec``'s sweep (or ``spec`` alone, without axes) trained side by side,
    one process per CPU core; their final metrics (and ``seconds``) by trial name."""
    trials = trial_specs(spec) if spec.sweep and spec.sweep.axes else {spec.name: spec}
    prepare_data(trials)  # generated data, the checks against it, box priors: once, here
    workers = min(len(trials), os.cpu_count() or 1)
    context = multiprocessing.get_context("spawn")  # no torch threads inherited mid-state
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {
            name: pool.submit(train_alone, name, trial.as_dict(), out / name.replace(" ", "_"))
            for name, trial in trials.items()
        }
        return {name: future.result() for name, future in futures.items()}


def train_alone(name: str, spec_data: dict, out: Path) -> dict[str, float]:
    """One trial trained in this process on one thread (small models train faster per core so
    than one process using them all), its final checkpoint folder copied to ``out``."""
    torch.set_num_threads(1)
    spec = TrainSpec.model_validate(spec_data)
    progress = Progress()
    start = time.perf_counter()

    def report(metrics: dict, folder: Path | None) -> None:
        line = progress.line(name, metrics, spec.solver.max_iter, spec.reporting.print_every)
        if line:
            print(line, flush=True)
        if folder is not None and metrics.get(FINAL):
            shutil.copytree(folder, out, dirs_exist_ok=True)

    metrics = run(spec, torch.device("cpu"), report)
    return {**metrics, SECONDS: time.perf_counter() - start}


def table(results: dict[str, dict[str, float]]) -> str:
    """The trials' masks side by side: IoU at the true locations against the filled boxes,
    mask AP against the box-as-mask baseline, box AP, and the time each took."""
    rows = [
        {
            "trial": name,
            **{column: metrics.get(key, float("nan")) for column, (key, _) in COLUMNS.items()},
            "time": f"{metrics[SECONDS]:.0f}s",
        }
        for name, metrics in results.items()
    ]
    formats = {column: number for column, (_, number) in COLUMNS.items()}
    return pd.DataFrame(rows).to_string(index=False, formatters=formats)
