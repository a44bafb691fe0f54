"""What a tracked sweep leaves in MLflow, as its users expect it, and what its console shows.

One tiny sweep (two regimes, a real local Ray, a real MLflow server on 127.0.0.1), run by the
``boxinst sweep`` command; then its trials' models, dataset inputs, system metrics and
overlays are read back from the server, the registered model predicts through
``boxinst predict models:/...``, and the MLflow UI is opened in headless Chromium.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from tempfile import TemporaryDirectory

import aiohttp
import mlflow.pytorch
import pytest
from conftest import free_port, write_tiny_spec
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from boxinst.models.condinst import CondInst
from boxinst.platform.metrics import TAG_CHECKPOINT, TAG_KIND, TAG_MODEL
from boxinst.platform.tracking.tracker import runs_page

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BIN = Path(sys.executable).parent
REGISTERED = "tiny-best"
ITERATIONS, EVERY = 8, 4


@pytest.fixture(scope="module")
def tracked(mlflow_server, tmp_path_factory):
    """The sweep's folder, its console output and the MLflow client of its server."""
    folder = tmp_path_factory.mktemp("tracked")
    spec = write_tiny_spec(folder)
    command = [
        str(BIN / "boxinst"), "sweep", str(spec), "--experiment", "tracked",
        "--register", REGISTERED,
        "--set", f"solver.max_iter={ITERATIONS}", "--set", "solver.steps=[6]",
        "--set", f"evaluation.every={EVERY}", "--set", "reporting.log_every=2",
        "--set", "sweep={axes: {regime: [box_only, fully_supervised]}}",
    ]  # fmt: skip
    # a sample of the system metrics every second (MLflow's default: every 10 s)
    env = {**os.environ, "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}
    env["MLFLOW_TRACKING_URI"] = mlflow_server
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
    (folder / "console.txt").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return folder, done.stdout + done.stderr, MlflowClient(mlflow_server)


def trials(client: MlflowClient):
    experiment = client.get_experiment_by_name("tracked")
    runs = client.search_runs([experiment.experiment_id], f"tags.`{TAG_KIND}` = 'trial'")
    assert sorted(run.info.run_name for run in runs) == ["box_only", "fully_supervised"]
    return runs


def test_the_console_shows_our_progress_lines_and_none_of_rays(tracked):
    _, output, _ = tracked
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in output.splitlines()]
    for trial in ("box_only", "fully_supervised"):
        for iteration in range(2, ITERATIONS + 1, 2):
            assert any(
                line.startswith(f"[{trial}] iter {iteration}/{ITERATIONS}  ") for line in lines
            )
        assert f"[{trial}] iter {EVERY}/{ITERATIONS}  evaluation: mask AP" in output
        assert f"[{trial}] iter {ITERATIONS}/{ITERATIONS}  done: mask AP" in output
    for noise in (
        "Reporting training result",  # Ray Train's line at every report
        "PlacementGroupCleaner",  # its State API warnings
        "Average Precision",  # the COCO evaluation's summary
        "Trial status",  # Tune's status table
        "View detailed results",  # Tune's header
        "Requesting resources",  # Ray Train's INFO lines
    ):
        assert noise not in output
    assert len(lines) < 50, "\n".join(lines)
    assert "registered the model of " in output and f"models:/{REGISTERED}/1" in output


def test_each_trial_logs_its_final_checkpoint_as_a_logged_model_with_its_metrics(tracked):
    _, _, client = tracked
    for run in trials(client):
        model_id = run.data.tags[TAG_MODEL].removeprefix("models:/")
        model = client.get_logged_model(model_id)
        assert model.source_run_id == run.info.run_id and model.status == "READY"
        assert model.experiment_id == run.info.experiment_id  # the UI's Models column
        linked = {metric.key: metric.value for metric in model.metrics}
        assert linked["segm/AP"] == run.data.metrics["segm/AP"]
        assert all(metric.step == ITERATIONS for metric in model.metrics)
        assert [output.model_id for output in run.outputs.model_outputs] == [model_id]


def test_the_best_trial_is_registered_and_predicts_as_its_checkpoint(
    tracked, tmp_path, monkeypatch
):
    folder, _, client = tracked
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)  # for mlflow.pytorch
    runs = trials(client)
    top = max(run.data.metrics["segm/AP"] for run in runs)  # the two may tie on a tiny run
    (version,) = client.search_model_versions(f"name = '{REGISTERED}'")
    assert version.run_id in {r.info.run_id for r in runs if r.data.metrics["segm/AP"] == top}
    uri = f"models:/{REGISTERED}/1"
    assert isinstance(mlflow.pytorch.load_model(uri, map_location="cpu"), CondInst)

    registered = client.get_run(version.run_id)
    image = folder / "shapes" / "val" / "images" / "000000.png"
    env = {**os.environ, "MLFLOW_TRACKING_URI": client.tracking_uri}
    outputs = {}
    for name, source in (("uri", uri), ("file", registered.data.tags[TAG_CHECKPOINT])):
        command = [
            str(BIN / "boxinst"),
            "predict",
            source,
            str(image),
            "--out",
            str(tmp_path / name),
        ]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs[name] = json.loads((tmp_path / name / "predictions.json").read_text())
    assert outputs["uri"] and outputs["uri"] == outputs["file"]


def test_a_model_uri_that_names_no_model_is_a_clear_error(tracked):
    _, _, client = tracked
    command = [str(BIN / "boxinst"), "predict", f"models:/{REGISTERED}/9", "x.png"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": client.tracking_uri}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"error: models:/{REGISTERED}/9 in {client.tracking_uri}" in done.stderr
    assert "Traceback" not in done.stderr


def test_trials_have_their_splits_as_dataset_inputs(tracked):
    folder, _, client = tracked
    files = {
        "training": folder / "shapes" / "train" / "annotations.json",
        "evaluation": folder / "shapes" / "val" / "annotations.json",
    }
    for run in trials(client):
        logged = {
            next(tag.value for tag in d.tags if tag.key == "mlflow.data.context"): d.dataset
            for d in run.inputs.dataset_inputs
        }
        assert set(logged) == set(files)
        trained_with = "none" if run.info.run_name == "box_only" else "all"
        for context, path in files.items():
            coco = json.loads(path.read_text())
            dataset = logged[context]
            assert dataset.name == f"shapes/{path.parent.name}"
            policy = trained_with if context == "training" else "all"
            content = hashlib.sha256(path.read_bytes()).hexdigest() + json.dumps(policy)
            assert dataset.digest == hashlib.sha256(content.encode()).hexdigest()[:16]
            assert json.loads(dataset.source) == {"uri": str(path)}
            profile = json.loads(dataset.profile)
            assert profile["images"] == len(coco["images"])
            assert profile["instances"] == len(coco["annotations"])
        policies = {
            context: json.loads(dataset.profile)["mask_policy"]
            for context, dataset in logged.items()
        }
        assert policies == {"training": trained_with, "evaluation": "all"}


def test_trials_log_system_metrics_once_per_step(tracked):
    _, _, client = tracked
    for run in trials(client):
        history = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
        assert history, sorted(run.data.metrics)
        steps = [metric.step for metric in history]
        assert steps == sorted(set(steps))
        assert "system/system_memory_usage_megabytes" in run.data.metrics


def test_every_evaluations_overlays_are_images_at_its_step(tracked):
    folder, _, client = tracked
    val = json.loads((folder / "shapes" / "val" / "annotations.json").read_text())
    drawn = {f"overlay~{image['id']}" for image in val["images"]}  # "/" is "~" in the names
    assert len(drawn) == 2  # fewer than evaluation.overlays: every validation image
    for run in trials(client):
        names = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
        logged = {
            (match["key"], int(match["step"]))
            for name in names
            if (match := re.match(r"images/(?P<key>.+?)\+step\+(?P<step>\d+)\+.*\.png$", name))
        }
        assert logged == {(key, step) for key in drawn for step in (EVERY, ITERATIONS)}


# --- the MLflow UI in headless Chromium --------------------------------------------------------


class Browser:
    """Headless Chromium driven over its DevTools protocol: open a page, run JavaScript in
    it, take a screenshot."""

    def __init__(self, size=(1600, 1000)):
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if binary is None:
            pytest.fail("Chromium is needed; install it: apt-get install -y chromium")
        self.port = free_port()
        self.profile = TemporaryDirectory(ignore_cleanup_errors=True)
        self.process = subprocess.Popen(
            [
                binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                f"--remote-debugging-port={self.port}", f"--user-data-dir={self.profile.name}",
                f"--window-size={size[0]},{size[1]}", "about:blank",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip

    def close(self) -> None:
        """Stop Chromium and its helper processes (its session), then remove its profile."""
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)
        self.profile.cleanup()

    def _page_socket(self) -> str:
        deadline = time.monotonic() + 60
        while True:
            try:
                url = f"http://127.0.0.1:{self.port}/json/list"
                with urllib.request.urlopen(url, timeout=2) as response:
                    pages = [t for t in json.load(response) if t["type"] == "page"]
                return pages[0]["webSocketDebuggerUrl"]
            except (OSError, IndexError):
                assert time.monotonic() < deadline, "Chromium did not start"
                time.sleep(0.3)

    def visit(self, url: str, steps: list[tuple[str, str]], screenshot: Path) -> str:
        """Open ``url``; for each step, wait (up to a minute) until the page's text contains
        the step's text, then run its JavaScript; save a screenshot; the page's text."""
        return asyncio.run(self._visit(url, steps, screenshot))

    async def _visit(self, url: str, steps, screenshot: Path) -> str:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(self._page_socket(), max_msg_size=0) as socket:
                calls = iter(range(1, 1 << 30))

                async def call(method: str, **params) -> dict:
                    number = next(calls)
                    await socket.send_json({"id": number, "method": method, "params": params})
                    async for message in socket:
                        answer = json.loads(message.data)
                        if answer.get("id") == number:
                            return answer.get("result", {})
                    raise AssertionError("Chromium closed the connection")

                async def text() -> str:
                    found = await call(
                        "Runtime.evaluate", expression="document.body.innerText", returnByValue=True
                    )
                    return found["result"].get("value", "")

                await call("Page.navigate", url=url)
                for wanted, script in steps:
                    deadline = time.monotonic() + 60
                    while wanted not in await text():
                        assert time.monotonic() < deadline, f"no {wanted!r} in:\n{await text()}"
                        await asyncio.sleep(0.5)
                    await call("Runtime.evaluate", expression=script)
                await asyncio.sleep(2)  # what the last step started settles
                shot = await call("Page.captureScreenshot", format="png")
                screenshot.write_bytes(base64.b64decode(shot["data"]))
                return await text()


#: Expands every parent run's row in the runs table (the sweep, to show its trials).
EXPAND_ROWS = (
    "document.querySelectorAll('button[data-component-id*=\"runnamecellrenderer\"]')"
    ".forEach(button => button.click())"
)


def open_runs_page(client: MlflowClient, experiment: str, screenshot: Path) -> str:
    """The runs page of ``experiment`` in the MLflow UI, its sweeps expanded: its text."""
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    sweep = client.search_runs([experiment_id], f"tags.`{TAG_KIND}` = 'sweep'")[0]
    child = client.search_runs(
        [experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{sweep.info.run_id}'"
    )[0]
    browser = Browser()
    try:
        return browser.visit(
            runs_page(client.tracking_uri, experiment_id),
            [(sweep.info.run_name, EXPAND_ROWS), (child.info.run_name, "")],
            screenshot,
        )
    finally:
        browser.close()


def test_the_mlflow_ui_opens_the_runs_with_their_datasets_and_models(tracked, tmp_path):
    _, _, client = tracked
    shown = open_runs_page(client, "tracked", tmp_path / "runs.png")
    assert "Run Name" in shown and "Token Usage" not in shown  # runs, not the GenAI overview
    for run in trials(client):
        assert run.info.run_name in shown
    assert "shapes/train" in shown  # the Dataset column
    # the Models column: the registered trial's model by its registered name and version,
    # the other's by its name in its run
    lines = [line.strip() for line in shown.splitlines()]
    assert lines.count(REGISTERED) == 1 and lines.count("model") == 1, shown
    assert (tmp_path / "runs.png").stat().st_size > 10_000
