"""Fault tolerance with real components: local Ray clusters and a real MLflow server on 127.0.0.1.

A Ray Train worker killed in the middle of a tracked training is replaced, the training goes on
from its latest checkpoint, and its MLflow run keeps one history. A sweep driver killed while
its trials run (its whole process tree, as when its machine dies) is resumed by
``boxinst sweep --resume``: the trial that had finished is kept as it is, the interrupted ones
go on (from their checkpoints) into the same MLflow runs.
"""

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import FAST_TRAIN_POLL, kill_session, write_tiny_spec
from mlflow.tracking import MlflowClient
from ray._private import state as ray_state

from boxinst.platform.cli import main
from boxinst.platform.metrics import KIND_SWEEP, KIND_TRIAL, TAG_AXES, TAG_KIND, TAG_RAY_RUN
from boxinst.platform.sweep import TUNE_STATE_PERIOD
from boxinst.platform.tracking.runs import train_tracked
from boxinst.platform.tracking.tracker import Tracker

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds processes in /proc"),
]

#: What the Ray Train controller writes into a run's folder each time it registers a checkpoint.
SNAPSHOT = "checkpoint_manager_snapshot.json"
#: The actor class of Ray Train's (V2) workers.
WORKER_CLASS = "RayTrainWorker"
RAY_ENV = FAST_TRAIN_POLL  # the local_ray fixture's (trials of a sweep resumed in-process too)
LOSS = "train/loss"


def wait_for(condition, timeout: float, what: str, stop=lambda: False):
    """Poll ``condition`` until it returns something truthy (returned); fail after ``timeout``
    seconds, or as soon as ``stop()`` is true."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if stop():
            raise AssertionError(f"gave up waiting for {what}: what it watched has ended")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def latest_checkpoint(run_folder: Path) -> dict | None:
    """The report of the latest checkpoint that the Ray Train controller of the run in
    ``run_folder`` registered (the one a restart resumes from), if any."""
    try:  # Ray writes it whole (boxinst.platform.training.storage): never seen half written
        snapshot = json.loads((run_folder / SNAPSHOT).read_text())
    except FileNotFoundError:  # no checkpoint yet
        return None
    latest = snapshot.get("latest_checkpoint_result")
    return latest["metrics"] if latest else None


def checkpoint_iteration(run_folder: Path) -> int | None:
    report = latest_checkpoint(run_folder)
    return int(report["iteration"]) if report else None


def checkpoint_folders(run_folder: Path) -> set[str]:
    return {path.name for path in run_folder.glob("checkpoint_*")}


def alive_train_workers() -> dict[str, int]:
    """Actor id -> process id of the live Ray Train workers of this process's cluster.

    From the GCS actor table: the public ``ray.util.state`` API needs the dashboard, and its
    default address (127.0.0.1:8265) could be another cluster's on a shared machine."""
    return {
        actor_id: info["Pid"]
        for actor_id, info in ray_state.actors().items()
        if info["ActorClassName"] == WORKER_CLASS and info["State"] == "ALIVE" and info["Pid"]
    }


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def loss_steps(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, LOSS))


def histories(client: MlflowClient, run_id: str) -> dict[str, list[tuple]]:
    """Every metric of a run: its (step, value, timestamp) history (NaN as None, to compare)."""
    return {
        key: sorted(
            (m.step, None if math.isnan(m.value) else m.value, m.timestamp)
            for m in client.get_metric_history(run_id, key)
        )
        for key in client.get_run(run_id).data.metrics
    }


def test_a_killed_worker_is_replaced_and_resumes_from_its_checkpoint(
    local_ray, mlflow_server, tiny_spec, tmp_path
):
    """SIGKILL of the Ray Train worker process in the middle of a tracked training: Ray Train
    starts a new worker (``resources.max_failures``), which resumes from the latest registered
    checkpoint, not from scratch; ``train_tracked`` returns normally, and the one MLflow run of
    the training ends FINISHED with one ``train/loss`` value per iteration: none missing, and
    none twice, though the worker was killed steps past its checkpoint, which the new one
    reports again."""
    max_iter = 30
    spec = tiny_spec(
        f"solver.max_iter={max_iter}",
        "solver.steps=[100]",
        "reporting={log_every: 1, checkpoint_every: 5}",
        "resources={num_workers: 1, cpus_per_worker: 1, max_failures: 2}",
    )
    storage, ray_run = tmp_path / "runs", "killed-worker"
    tracker = Tracker("fault-tolerance-worker", mlflow_server)
    client = MlflowClient(mlflow_server)  # the killer thread's
    trained = threading.Event()
    kill: dict = {}

    def past_a_checkpoint() -> tuple[int, int] | None:
        """The latest registered checkpoint and the last step in MLflow, once MLflow has
        steps after that checkpoint (which the new worker reports again)."""
        checkpoint = checkpoint_iteration(storage / ray_run)
        runs = client.search_runs([tracker.experiment_id])
        logged = loss_steps(client, runs[0].info.run_id) if runs else []
        if checkpoint and logged and logged[-1] >= checkpoint + 2:
            return checkpoint, logged[-1]
        return None

    def kill_the_worker():
        try:
            checkpoint, logged = wait_for(
                past_a_checkpoint, 300, "steps after a checkpoint", stop=trained.is_set
            )
            assert logged < max_iter, "training ended first: nothing to kill"
            (pid,) = wait_for(alive_train_workers, 30, "the live worker").values()
            assert WORKER_CLASS in command_line(pid)  # its process title: the worker's process
            kill.update(pid=pid, checkpoint=checkpoint, logged=logged)
            kill["training"] = not trained.is_set()
            os.kill(pid, signal.SIGKILL)
        except BaseException as error:
            kill["error"] = error

    killer = threading.Thread(target=kill_the_worker, daemon=True)
    killer.start()
    try:
        run_id, metrics = train_tracked(spec, storage, tracker, ray_run, run_name="worker killed")
    finally:
        trained.set()
        killer.join(timeout=60)
    if "error" in kill:
        raise kill["error"]
    assert kill["training"], "the worker was killed after training had ended"
    assert kill["pid"] not in alive_train_workers().values()

    # the new worker went on from the checkpoint registered before the kill (or a later one),
    # reporting again steps that MLflow already had
    assert metrics["iteration"] == max_iter
    assert kill["checkpoint"] <= metrics["resumed_from"] < kill["logged"]

    runs = client.search_runs([tracker.experiment_id])
    assert [run.info.run_id for run in runs] == [run_id]
    assert runs[0].info.status == "FINISHED"
    assert loss_steps(client, run_id) == list(range(1, max_iter + 1))


#: The sweep's trials by their length: two at once, the first short, the second long enough to
#: be training (past a checkpoint) when the first has ended and the third has started. Between
#: those two moments Ray starts the third trial's process: about 10 s on an idle 2-core machine,
#: in which the long trial trains some 40 iterations; at 100 it had once ended first, in CI.
SHORT, LONG, THIRD = 6, 300, 8
SWEEP = {"axes": {"solver.max_iter": [SHORT, LONG, THIRD]}, "max_concurrent": 2}
#: What the sweep driver prints (Tune's progress) when it starts a trial.
TRIAL_STARTED = re.compile(r"Trial (\S+) started")


def test_a_sweep_whose_driver_was_killed_resumes_where_it_stopped(
    local_ray, mlflow_server, tmp_path
):
    """``boxinst sweep`` (a process with a Ray of its own) killed, its whole process tree at once,
    as soon as a trial has finished and Tune has started the next one, while another trains;
    then ``boxinst sweep --resume``: it succeeds; the finished trial is not run again (its
    metrics, end time and checkpoints stay as they were); the interrupted ones go on in their
    MLflow runs, the one that was training from its checkpoint, each with one ``train/loss``
    value per iteration, none twice; one parent run and one nested run per trial, all FINISHED.

    The state a resume restores is the one Tune last saved. A sweep saves it at every step of
    Tune's loop (``TUNE_STATE_PERIOD``), so it records the end of a trial before the next one
    starts, whenever the driver dies. With Tune's default period (10 s or more) a kill a few
    seconds after a trial ended, as here, finds it still running in the saved state (unless a
    periodic save fell in between), and the resumed sweep runs it again. Saving that often, a
    kill often lands while Tune writes its state: the storage writes files whole
    (:mod:`boxinst.platform.training.storage`), where Ray's plain local file system once left
    the searcher's state empty here, and Tune's restore started a new, empty experiment."""
    spec, storage = write_tiny_spec(tmp_path), tmp_path / "runs"
    options = ["--tracking-uri", mlflow_server, "--storage", str(storage)]
    options += ["--experiment", "fault-tolerance-sweep"]
    options += ["--set", f"sweep={json.dumps(SWEEP)}", "--set", "solver.steps=[100]"]
    options += ["--set", "reporting={log_every: 1, checkpoint_every: 5}"]
    options += ["--set", "resources={num_workers: 1, cpus_per_worker: 1}"]
    options += ["--verbose"]  # Tune's own lines, which say when it starts a trial
    # a Ray of its own (not a cluster that `ray start` left here), Tune's state saved as the
    # platform sets it, not as this environment may
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", *TUNE_STATE_PERIOD)}
    env.update(FAST_TRAIN_POLL, PYTHONUNBUFFERED="1")  # its output (Tune's progress) as it comes
    boxinst = str(Path(sys.executable).parent / "boxinst")
    log = tmp_path / "driver.log"
    with log.open("w") as output:
        driver = subprocess.Popen(
            [boxinst, "sweep", str(spec), "--address", "local", *options],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # a session of its own: all its processes are found again
        )
    client = MlflowClient(mlflow_server)

    def trials() -> dict[int, object]:
        """The trial runs logged so far, by their length."""
        experiment = client.get_experiment_by_name("fault-tolerance-sweep")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        return {
            json.loads(run.data.tags[TAG_AXES])["solver.max_iter"]: run
            for run in runs
            if run.data.tags.get(TAG_KIND) == KIND_TRIAL
        }

    def first_ended_and_third_started() -> bool:
        """The first trial's MLflow run is FINISHED, and Tune says it started a third trial
        (which has not necessarily created its MLflow run yet)."""
        runs = trials()
        started = set(TRIAL_STARTED.findall(log.read_text()))
        return SHORT in runs and runs[SHORT].info.status == "FINISHED" and len(started) == 3

    try:
        wait_for(
            first_ended_and_third_started,
            timeout=400,
            what="the first trial to end and the third to start",
            stop=lambda: driver.poll() is not None,
        )
    except AssertionError as error:
        raise AssertionError(f"{error}\n{log.read_text()[-3000:]}") from None
    finally:
        kill_session(driver.pid)  # the driver and all its Ray processes, at once
        driver.wait(timeout=30)

    runs = trials()
    folder = {length: storage / run.data.tags[TAG_RAY_RUN] for length, run in runs.items()}
    interrupted = checkpoint_iteration(folder[LONG])
    assert interrupted is not None and interrupted < LONG, "the long trial was not training"
    assert runs[LONG].info.status == "RUNNING"
    assert loss_steps(client, runs[LONG].info.run_id)  # it had logged some steps
    finished = runs[SHORT]
    finished_metrics = histories(client, finished.info.run_id)
    finished_checkpoints = checkpoint_folders(folder[SHORT])
    finished_report = latest_checkpoint(folder[SHORT])
    assert finished_report["iteration"] == SHORT and finished_report["final"]

    assert main(["sweep", str(spec), "--resume", *options]) == 0

    experiment = client.get_experiment_by_name("fault-tolerance-sweep").experiment_id
    everything = client.search_runs([experiment])
    (parent,) = [run for run in everything if run.data.tags[TAG_KIND] == KIND_SWEEP]
    assert parent.info.status == "FINISHED"
    after = trials()
    assert len(everything) == 1 + len(SWEEP["axes"]["solver.max_iter"])  # one run per trial
    assert set(after) == {SHORT, LONG, THIRD}
    for length, run in runs.items():  # those it had before the kill: the same
        assert after[length].info.run_id == run.info.run_id
    for run in after.values():
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id

    # the finished trial was left alone: no training, evaluation, checkpoint or logging again
    assert after[SHORT].info.end_time == finished.info.end_time
    assert histories(client, finished.info.run_id) == finished_metrics
    assert checkpoint_folders(folder[SHORT]) == finished_checkpoints
    assert latest_checkpoint(folder[SHORT]) == finished_report

    # the interrupted trials went on to their end, the long one from its checkpoint
    final = latest_checkpoint(folder[LONG])
    assert final["final"] and final["iteration"] == LONG
    assert interrupted <= final["resumed_from"] < LONG
    for length in (LONG, THIRD):
        assert loss_steps(client, after[length].info.run_id) == list(range(1, length + 1))
