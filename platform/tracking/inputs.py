"""What a run was trained and evaluated on, as MLflow dataset inputs of the run.

Each split becomes an MLflow dataset (``mlflow.entities.Dataset``): its name (from the
annotation file's path), its source (that file), a digest of the file's bytes and the mask
policy (two runs on the same digest saw the same annotations and learnt from the same masks;
MLflow keeps one dataset per name and digest in an experiment), and a profile with the
counts of images and instances, the instances with a mask in the file and the regime's mask
policy (which of them training uses). The training split is logged with the context
``training``, the validation split with ``evaluation``: the Dataset column of MLflow's runs
table.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from boxinst.platform.preflight import summary
from boxinst.platform.spec import Split, TrainSpec

#: Digest length (hex characters): MLflow keeps at most 36.
DIGEST_LENGTH = 16


def dataset_name(annotations: str | Path) -> str:
    """``instances_train2017`` for ``.../instances_train2017.json``; for a file named only
    ``annotations.json``, the folders above it: ``quickstart/train``."""
    path = Path(annotations).with_suffix("")
    if path.name != "annotations":
        return path.name
    return "/".join(path.parent.parts[-2:])


@functools.cache
def _file_sha256(path: str, mtime_ns: int) -> str:
    """The SHA-256 of a file's bytes, read once per file version."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def split_digest(path: str, mask_policy: str | dict) -> str:
    """SHA-256 of the annotation file's SHA-256 followed by the mask policy as sorted JSON."""
    content = _file_sha256(path, os.stat(path).st_mtime_ns)
    policy = json.dumps(mask_policy, sort_keys=True)
    return hashlib.sha256(f"{content}{policy}".encode()).hexdigest()[:DIGEST_LENGTH]


def split_dataset(split: Split, mask_policy: str | dict) -> Dataset:
    """The MLflow dataset of one split, read from its annotation file."""
    found = summary(split)
    profile = {
        "images": found.images,
        "instances": len(found.annotations),
        "instances_with_masks": sum(has_mask for *_, has_mask in found.annotations),
        "mask_policy": mask_policy,
    }
    return Dataset(
        name=dataset_name(split.annotations),
        digest=split_digest(split.annotations, mask_policy),
        source_type="local",  # MLflow's source of a local file: a spec's splits are paths
        source=json.dumps({"uri": split.annotations}),
        profile=json.dumps(profile),
    )


def dataset_inputs(spec: TrainSpec) -> list[DatasetInput]:
    """The spec's training and validation splits as dataset inputs. Computed where the spec's
    data was checked (the summaries and digests are read once per file there): a sweep's
    driver passes each trial its inputs."""
    return [
        DatasetInput(split_dataset(split, masks), [InputTag(MLFLOW_DATASET_CONTEXT, context)])
        for split, masks, context in (
            (spec.data.train, spec.regime.masks, "training"),
            (spec.data.val, "all", "evaluation"),
        )
    ]


def log_datasets(client: MlflowClient, run_id: str, inputs: list[DatasetInput]) -> None:
    """Log ``inputs`` (:func:`dataset_inputs`) as the dataset inputs of ``run_id``.

    Trials that start together create the same datasets at once, and MLflow's get-or-create
    is not atomic: a store can refuse the second creation (a unique-key violation). A second
    try finds the dataset and links it. Dataset inputs are a run's description, not its
    results: if that fails too, a warning says so and training goes on."""
    for attempt in range(2):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return
        except MlflowException as error:
            if attempt == 1:
                print(f"warning: run {run_id} has no dataset inputs: MLflow refused them ({error})")
