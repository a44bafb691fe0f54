"""The trained model as an MLflow model: logged at a run's end, registered, loaded by URI.

A run's final checkpoint becomes an MLflow 3 *LoggedModel* of the PyTorch flavour (the
``CondInst`` module, loadable with ``mlflow.pytorch.load_model``), linked to the run and to the
run's metrics at the final step (its AP numbers, shown on the model's page). The resolved spec
it was trained with is the model's metadata, so ``boxinst predict`` and ``boxinst eval`` rebuild
exactly the model a checkpoint file would give them from a ``models:/...`` URI: a registered
version (``models:/NAME/VERSION``, ``models:/NAME@ALIAS``) or a logged model (``models:/m-...``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow.pytorch
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import get_model_info
from mlflow.tracking import MlflowClient

from boxinst.models.condinst import CondInst
from boxinst.platform.environment import environment
from boxinst.platform.metrics import TAG_MODEL
from boxinst.platform.spec import TrainSpec

#: The LoggedModel's name in its run.
MODEL_NAME = "model"
#: What the model needs installed, given so that MLflow does not infer it (a subprocess that
#: imports the model: seconds, and failing on a worker without the package's sources).
REQUIREMENTS = [f"torch=={torch.__version__.split('+')[0]}", "boxinst"]


class ModelUriError(ValueError):
    """A ``models:/`` URI that names no model boxinst logged."""


def is_model_uri(text: str | Path) -> bool:
    return str(text).startswith("models:/")


def log_trained_model(tracking_uri: str, run_id: str, state: dict, step: int) -> str:
    """Log the model of a checkpoint's ``state`` as the LoggedModel of run ``run_id``, with
    the run's metrics at ``step``; tags the run with the model's URI, which it returns."""
    spec = TrainSpec.model_validate(state["spec"])
    model = CondInst(spec.model)
    model.load_state_dict(state["model"])
    client = MlflowClient(tracking_uri)
    # MLflow puts a LoggedModel in the active experiment, not its run's: the environment names
    # both the server and the run's experiment. It warns at every pickled model that unpickling
    # runs code (true of any checkpoint but a state dict); the traced-graph format it suggests
    # cannot take this model.
    where = {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_EXPERIMENT_ID": client.get_run(run_id).info.experiment_id,
    }
    with environment(where), logger_level("mlflow.pytorch"):
        info = mlflow.pytorch.log_model(
            model.eval(),
            name=MODEL_NAME,
            run_id=run_id,
            step=step,
            metadata={"spec": state["spec"], "categories": state.get("categories", [])},
            pip_requirements=REQUIREMENTS,
            serialization_format="pickle",  # a traced graph (pt2) needs fixed input shapes
        )
    client.set_tag(run_id, TAG_MODEL, info.model_uri)
    return info.model_uri


@contextmanager
def logger_level(name: str, level: int = logging.ERROR) -> Iterator[None]:
    """Logger ``name`` at ``level`` inside the block."""
    logger = logging.getLogger(name)
    saved = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(saved)


def load_logged_model(uri: str, tracking_uri: str) -> dict:
    """The ``{"spec", "model", "categories"}`` state of the model at ``uri`` (what a
    checkpoint holds of it)."""
    with environment({"MLFLOW_TRACKING_URI": tracking_uri}):
        try:
            metadata = get_model_info(uri).metadata or {}
            spec = metadata.get("spec")
            if spec is None:
                raise ModelUriError(f"{uri} in {tracking_uri}: not a model boxinst logged")
            model = mlflow.pytorch.load_model(uri, map_location="cpu")
        except MlflowException as error:
            raise ModelUriError(f"{uri} in {tracking_uri}: {error.message}") from None
    return {"spec": spec, "model": model.state_dict(), "categories": metadata.get("categories")}


def register_model(client: MlflowClient, run_id: str, name: str) -> str:
    """Register run ``run_id``'s logged model under ``name`` (created if new); returns the
    new version's URI, ``models:/NAME/VERSION``."""
    run = client.get_run(run_id)
    model_uri = run.data.tags.get(TAG_MODEL)
    if model_uri is None:
        raise ModelUriError(f"run {run_id} ({run.info.run_name}) has no logged model")
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    version = client.create_model_version(
        name, model_uri, run_id, model_id=model_uri.removeprefix("models:/")
    )
    return f"models:/{name}/{version.version}"
