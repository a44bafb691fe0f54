"""MLflow tracking against a real server on 127.0.0.1: nesting, params, metrics, end states."""

import pytest
import ray
from conftest import free_port, write_tiny_spec
from mlflow.tracking import MlflowClient

from boxinst.platform.cli import main
from boxinst.platform.tracking.tracker import Tracker, flatten

pytestmark = pytest.mark.integration


def test_flatten_dots_keys_and_drops_secrets():
    config = {"solver": {"base_lr": 0.01, "steps": [60, 80]}, "name": "x", "api_key": "hunter2"}
    config["storage"] = {"aws_secret_access_key": "s", "bucket": "b", "password": "p"}
    assert flatten(config) == {
        "solver.base_lr": "0.01",
        "solver.steps": "[60, 80]",
        "name": "x",
        "storage.bucket": "b",
    }


def test_parent_and_nested_runs_with_params_metrics_and_status(mlflow_server, tmp_path):
    tracker = Tracker("sweep-test", mlflow_server)
    with tracker.run("sweep", {"sweep": {"axes": {"seed": [0, 1]}}}) as parent:
        with tracker.run(
            "box_only seed=0", {"seed": 0, "loss": {"pairwise_tau": 0.1}}, parent
        ) as child:
            tracker.log_metrics(child, {"train/loss": 2.0, "note": "not a number"}, step=1)
            tracker.log_metrics(child, {"train/loss": 1.5, "segm/AP": 12.5}, step=2)
            report = tmp_path / "eval.json"
            report.write_text("{}")
            tracker.log_artifact(child, report, "evaluation")

    client = MlflowClient(mlflow_server)
    run = client.get_run(child)
    assert run.info.status == "FINISHED" and run.info.run_name == "box_only seed=0"
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.params == {"seed": "0", "loss.pairwise_tau": "0.1"}
    history = client.get_metric_history(child, "train/loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.5)]
    assert "note" not in run.data.metrics
    assert [a.path for a in client.list_artifacts(child, "evaluation")] == ["evaluation/eval.json"]
    assert client.get_run(parent).info.status == "FINISHED"
    # an experiment of model training: the MLflow UI opens it on its runs
    tags = client.get_experiment(tracker.experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"


def test_failed_and_interrupted_runs_are_never_left_running(mlflow_server):
    tracker = Tracker("failures", mlflow_server)
    ids = {}
    with pytest.raises(ZeroDivisionError):
        with tracker.run("fails") as ids["failed"]:
            1 / 0  # noqa: B018
    with pytest.raises(KeyboardInterrupt):
        with tracker.run("interrupted") as ids["killed"]:
            raise KeyboardInterrupt
    client = MlflowClient(mlflow_server)
    assert client.get_run(ids["failed"]).info.status == "FAILED"
    assert client.get_run(ids["killed"]).info.status == "KILLED"


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_an_unreachable_server_is_named_before_ray_starts(command, tmp_path, capsys):
    """MLflow's client would retry for minutes; the command stops at once, clearly, with no
    Ray cluster started and nothing written to the run storage."""
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    spec = write_tiny_spec(tmp_path)
    argv = [command, str(spec), "--tracking-uri", uri, "--storage", str(tmp_path / "runs")]
    assert not ray.is_initialized()
    assert main([*argv, "--set", "sweep={axes: {seed: [0, 1]}}"]) == 2
    error = capsys.readouterr().err
    assert f"MLflow tracking server {uri} is unreachable" in error and "Connection refused" in error
    assert not ray.is_initialized() and not (tmp_path / "runs").exists()
