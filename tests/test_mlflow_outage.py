"""An MLflow server that goes away mid-run: training goes on, the metrics reported meanwhile are
kept and logged when the server is back (each step once), and a server that never comes back
fails the run with the unlogged metrics saved to a file."""

import json
import os
import threading
import time

import pytest
from conftest import FAST_TRAIN_POLL, MlflowServer, free_port
from mlflow.tracking import MlflowClient

from boxinst.platform.metrics import ARTIFACT_EVALUATION
from boxinst.platform.tracking.callback import MlflowCallback, MlflowUnreachableError
from boxinst.platform.tracking.runs import train_tracked
from boxinst.platform.tracking.tracker import Tracker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LOSS = "train/loss"
RAY_ENV = FAST_TRAIN_POLL  # the local_ray fixture's


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """An MLflow server of this module's own, which its tests may stop and start again."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-outage"))
    server.start()
    yield server
    server.stop()


def test_a_dead_server_costs_a_report_little_and_the_final_report_saves_what_it_could_not_log(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)  # MLflow's 7 retries
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    saved = tmp_path / "ray-run" / "mlflow-unlogged-run-1.json"
    callback = MlflowCallback("lost", dead, "run-1", saved, give_up_after=1)

    started = time.monotonic()
    for step in range(1, 6):
        callback.after_report(None, [{"iteration": step, LOSS: 1 / step}], None)
    assert time.monotonic() - started < 5  # one quick try per report, no back-off

    with pytest.raises(MlflowUnreachableError) as raised:
        callback.after_report(None, [{"iteration": 6, "segm/AP": 7.5, "final": True}], None)
    message = str(raised.value)
    assert dead in message and "run-1" in message and "6 metric values" in message
    assert str(saved) in message
    unlogged = json.loads(saved.read_text())
    assert unlogged["tracking_uri"] == dead and unlogged["run_id"] == "run-1"
    assert [(m["key"], m["step"]) for m in unlogged["metrics"]] == [
        *((LOSS, step) for step in range(1, 6)),
        ("segm/AP", 6),
    ]
    warnings = [r for r in caplog.records if r.name == "boxinst.platform.tracking.callback"]
    assert len(warnings) == 1 and "cannot be reached" in warnings[0].getMessage()
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # only set around each try


def test_kept_metrics_are_logged_once_and_steps_already_logged_are_skipped(
    server, tmp_path, caplog
):
    tracker = Tracker("resumed", server.uri)
    run_id = tracker.start("resumed")
    for step in (1, 2, 3):  # logged before the run was resumed
        tracker.log_metrics(run_id, {LOSS: float(step)}, step)
    callback = MlflowCallback("resumed", server.uri, run_id, tmp_path / "unlogged.json")

    def report(step, loss):
        callback.after_report(None, [{"iteration": step, LOSS: loss}], None)

    report(2, -1.0)  # reported again after the resume: skipped
    report(4, 4.0)
    server.stop()
    report(5, 5.0)
    report(6, 6.0)
    report(5, -1.0)  # a restart from the checkpoint at 4 reports 5 and 6 again
    report(6, -1.0)
    report(7, 7.0)
    server.start()
    report(8, 8.0)

    losses = MlflowClient(server.uri).get_metric_history(run_id, LOSS)
    assert [(m.step, m.value) for m in losses] == [(step, float(step)) for step in range(1, 9)]
    messages = [
        r.getMessage() for r in caplog.records if r.name == "boxinst.platform.tracking.callback"
    ]
    assert len(messages) == 2 and "is back" in messages[1]


def test_a_worker_failing_during_an_outage_leaves_the_unlogged_metrics_in_a_file(
    server, tmp_path, caplog
):
    tracker = Tracker("failed-in-outage", server.uri)
    run_id = tracker.start("failed-in-outage")
    saved = tmp_path / "unlogged.json"
    callback = MlflowCallback("failed-in-outage", server.uri, run_id, saved)

    def report(step, **extra):
        callback.after_report(None, [{"iteration": step, LOSS: float(step), **extra}], None)

    report(1)
    callback.after_exception(None, {0: RuntimeError("a worker died")})  # nothing pending
    assert not saved.exists()
    server.stop()
    report(2)
    report(3)
    callback.after_exception(None, {0: RuntimeError("a worker died")})
    unlogged = json.loads(saved.read_text())
    assert unlogged["run_id"] == run_id
    assert [(m["key"], m["step"]) for m in unlogged["metrics"]] == [(LOSS, 2), (LOSS, 3)]
    messages = [
        r.getMessage() for r in caplog.records if r.name == "boxinst.platform.tracking.callback"
    ]
    assert "a worker of run" in messages[-1] and str(saved) in messages[-1]

    server.start()  # the failed workers were replaced, the run goes on and ends
    report(4, final=True)
    losses = MlflowClient(server.uri).get_metric_history(run_id, LOSS)
    assert [m.step for m in losses] == [1, 2, 3, 4]
    assert not saved.exists()  # everything it held is in MLflow now


def test_training_goes_on_while_mlflow_is_down_and_its_history_is_complete(
    local_ray, server, tiny_spec, tmp_path
):
    max_iter = 80
    spec = tiny_spec(
        f"solver.max_iter={max_iter}",
        "solver.steps=[100]",
        "reporting={log_every: 1, checkpoint_every: 10}",
    )
    tracker = Tracker("outage", server.uri)
    client = MlflowClient(server.uri)
    outage: dict = {}

    def losses_logged() -> int:
        runs = client.search_runs([tracker.experiment_id])
        return len(client.get_metric_history(runs[0].info.run_id, LOSS)) if runs else 0

    def take_the_server_down_for_a_while():
        """Once some losses are logged, stop the server, and start it again seconds later."""
        try:
            deadline = time.monotonic() + 120
            while losses_logged() < 3:
                if time.monotonic() > deadline:
                    raise TimeoutError("no losses logged in 120 s")
                time.sleep(0.2)
            server.stop()
            outage["down"] = time.time()
            time.sleep(3)
            server.start()
            outage["back"] = time.time()
        except Exception as error:  # the test fails on it below
            outage["error"] = error

    thread = threading.Thread(target=take_the_server_down_for_a_while, daemon=True)
    thread.start()
    run_id, final = train_tracked(
        spec, tmp_path / "runs", tracker, ray_run="outage", run_name="outage"
    )
    thread.join(timeout=120)
    assert "error" not in outage and "back" in outage

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    losses = client.get_metric_history(run_id, LOSS)
    assert sorted(m.step for m in losses) == list(range(1, max_iter + 1))
    reported_while_down = [
        m for m in losses if outage["down"] * 1000 < m.timestamp < outage["back"] * 1000
    ]
    assert len(reported_while_down) >= 3  # training went on, and these were kept
    assert run.data.metrics["segm/AP"] == final["segm/AP"]
    assert [a.path for a in client.list_artifacts(run_id, ARTIFACT_EVALUATION)] == [
        f"{ARTIFACT_EVALUATION}/metrics.json"
    ]
    assert len(client.search_runs([tracker.experiment_id])) == 1
