"""The platform end to end, as a user drives it: `boxinst sweep`, `rerun`, `eval`, `predict` on
a real local Ray cluster, tracked by a real MLflow server on 127.0.0.1."""

import json
from pathlib import Path

import pytest
import yaml
from conftest import write_tiny_spec
from mlflow.tracking import MlflowClient

from boxinst.platform.cli import main
from boxinst.platform.data.box_prior import PriorSettings, prior_file
from boxinst.platform.metrics import (
    KIND_SWEEP,
    KIND_TRIAL,
    TAG_AXES,
    TAG_CHECKPOINT,
    TAG_KIND,
    TAG_REGIME,
)
from boxinst.platform.spec import load_spec
from boxinst.platform.training.loop import generate_data

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AXES = {
    "regime": [
        "box_only",
        "projection_only",
        # learns from box priors whose cache file the fixture corrupts: passes the checks
        # before start (they do not read the cache), fails when its worker loads the priors
        {"name": "broken", "masks": "none", "prior": True},
    ]
}


#: Credentials in the environment of the driver and (inherited) of every Ray worker
#: (``RAY_ENV`` of the ``local_ray`` fixture).
SECRETS = {"AWS_SECRET_ACCESS_KEY": "aws-secret-1234", "MLFLOW_TRACKING_PASSWORD": "mlflow-pw-5678"}
RAY_ENV = SECRETS


@pytest.fixture(scope="module")
def sweep(local_ray, mlflow_server, tmp_path_factory):
    """A three-trial sweep of the tiny spec run through the CLI; its runs by name."""
    folder = tmp_path_factory.mktemp("sweep")
    spec = write_tiny_spec(folder)
    argv = ["sweep", str(spec), "--tracking-uri", mlflow_server, "--storage", str(folder / "runs")]
    overrides = ["--set", f"sweep={json.dumps({'axes': AXES})}"]
    overrides += ["--set", "reporting={log_every: 2, checkpoint_every: 3}"]
    overrides += ["--set", f"data.box_priors={folder / 'priors'}"]
    loaded = load_spec(spec, overrides[1::2])
    generate_data(loaded)
    corrupt = prior_file(Path(loaded.data.train.annotations), folder / "priors", PriorSettings())
    corrupt.parent.mkdir()
    corrupt.write_text('{"priors": ')
    assert main(argv + overrides) == 0
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("tiny").experiment_id
    runs = {run.info.run_name: run for run in client.search_runs([experiment])}
    return client, runs, folder, overrides


def test_a_sweep_logs_one_parent_run_and_a_nested_run_per_trial(sweep):
    client, runs, *_ = sweep
    (parent,) = [run for run in runs.values() if run.data.tags[TAG_KIND] == KIND_SWEEP]
    trials = {name: run for name, run in runs.items() if run.data.tags[TAG_KIND] == KIND_TRIAL}
    assert set(trials) == {"box_only", "projection_only", "broken"}
    assert parent.info.status == "FINISHED"
    for name, run in trials.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags[TAG_REGIME] == name == run.data.params["regime.name"]
        assert json.loads(run.data.tags[TAG_AXES])["regime"] in AXES["regime"]
    assert trials["projection_only"].data.params["regime.pairwise"] == "false"

    for name in ("box_only", "projection_only"):
        run = trials[name]
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert [m.step for m in history] == [2, 3, 4, 6]  # every 2, and at the checkpoint
        for key in ("train/loss_proj", "train/images_per_s", "train/lr"):
            assert len(client.get_metric_history(run.info.run_id, key)) == 4
        folders = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert folders == {"config", "evaluation", "predictions", "overlays", "images"}
        overlays = client.list_artifacts(run.info.run_id, "overlays")
        assert len(overlays) == 2 and all(a.path.endswith(".png") for a in overlays)
        images = client.list_artifacts(run.info.run_id, "images")  # the overlays by step
        assert any(a.path.endswith(".png") for a in images)
        # the final metrics are the evaluation's, box-as-mask baseline included
        folder = client.download_artifacts(run.info.run_id, "evaluation")
        evaluation = json.loads(open(f"{folder}/metrics.json").read())
        for key in ("segm/AP", "segm/AP50", "bbox/AP", "box_as_mask/AP"):
            assert key in evaluation
            assert run.data.metrics[key] == pytest.approx(evaluation[key], nan_ok=True)
        assert run.data.tags[TAG_CHECKPOINT].startswith(str(sweep[2] / "runs"))
    losses = [
        client.get_metric_history(trials[name].info.run_id, "train/loss_pairwise")[-1].value
        for name in ("box_only", "projection_only")
    ]
    assert losses[0] > 0 and losses[1] == 0  # the regime decides the terms


def test_no_environment_secret_is_logged(sweep):
    _, runs, *_ = sweep
    for run in runs.values():
        logged = " ".join([*run.data.params.values(), *run.data.tags.values()])
        assert not [name for name, value in SECRETS.items() if value in logged], run.info.run_name


def test_a_failed_trial_ends_failed_and_the_sweep_goes_on(sweep, capsys):
    _, runs, *_ = sweep
    broken = runs["broken"]
    assert broken.info.status == "FAILED"
    assert "train/loss" not in broken.data.metrics
    assert runs["box_only"].info.status == "FINISHED"


def test_resuming_a_finished_sweep_reruns_only_its_failed_trial(sweep, mlflow_server):
    client, runs, folder, overrides = sweep
    histories = {
        name: client.get_metric_history(runs[name].info.run_id, "train/loss")
        for name in ("box_only", "projection_only")
    }
    argv = ["sweep", str(folder / "tiny.yaml"), "--resume", "--tracking-uri", mlflow_server]
    assert main([*argv, "--storage", str(folder / "runs"), *overrides]) == 0  # Tuner.restore
    experiment = runs["box_only"].info.experiment_id
    again = {run.info.run_name: run for run in client.search_runs([experiment])}
    assert set(again) == set(runs)  # the same parent and trial runs, none added
    assert again["broken"].info.status == "FAILED"  # retried, and failed again
    for name, history in histories.items():
        assert again[name].info.status == "FINISHED"
        assert client.get_metric_history(runs[name].info.run_id, "train/loss") == history


def test_rerun_reproduces_a_logged_run_with_overrides(sweep, mlflow_server, tmp_path):
    client, runs, *_ = sweep
    original = runs["box_only"]
    argv = ["rerun", original.info.run_id, "--tracking-uri", mlflow_server]
    argv += ["--storage", str(tmp_path / "runs"), "--set", "solver.max_iter=4"]
    assert main(argv) == 0
    experiment = original.info.experiment_id
    (rerun,) = [
        run
        for run in client.search_runs([experiment], "attributes.run_name = 'box_only'")
        if run.info.run_id != original.info.run_id
    ]
    assert rerun.info.status == "FINISHED" and "mlflow.parentRunId" not in rerun.data.tags
    logged = {
        run.info.run_id: yaml.safe_load(
            open(client.download_artifacts(run.info.run_id, "config/spec.yaml")).read()
        )
        for run in (original, rerun)
    }
    before, after = logged[original.info.run_id], logged[rerun.info.run_id]
    assert after["solver"].pop("max_iter") == 4 and before["solver"].pop("max_iter") == 6
    assert after == before
    changed = {
        key for key, value in rerun.data.params.items() if original.data.params.get(key) != value
    }
    assert changed == {"solver.max_iter"}


def test_evaluate_and_predict_from_a_logged_checkpoint(sweep, tmp_path, capsys):
    _, runs, folder, _ = sweep
    run = runs["box_only"]
    checkpoint = run.data.tags[TAG_CHECKPOINT]
    group = ["--group", "round=ellipse,ring"]
    assert main(["evaluate", checkpoint, *group, "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "evaluation" / "metrics.json").read_text())
    assert metrics["segm/AP"] == pytest.approx(run.data.metrics["segm/AP"])  # same model, data
    assert "segm_round/AP" in metrics and "segm_round/AP" not in run.data.metrics
    table = capsys.readouterr().out.splitlines()
    assert any(line.startswith("segm ") for line in table)
    assert any(line.startswith("box_as_mask ") for line in table)

    images = sorted((folder / "shapes" / "val" / "images").iterdir())
    argv = ["predict", checkpoint, *map(str, images), "--out", str(tmp_path / "p"), "--overlays"]
    assert main(argv) == 0
    predictions = json.loads((tmp_path / "p" / "predictions.json").read_text())
    assert {p["file_name"] for p in predictions} <= set(map(str, images))
    assert all({"bbox", "score", "segmentation", "category_id"} <= set(p) for p in predictions)
    assert sorted(p.name for p in (tmp_path / "p").glob("*.png")) == [
        f"{image.stem}.png" for image in images
    ]


def test_commands_name_a_bad_spec_or_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(write_tiny_spec(tmp_path).read_text() + "sovler: {}\n")
    assert main(["train", str(bad)]) == 2
    assert f"{bad}: sovler: unknown key" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing.pt")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
