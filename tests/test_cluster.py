"""Commands that talk to servers: `boxinst submit` to a real Ray cluster started with
`ray start --head` (Ray Jobs API), and `boxinst ui` bound to 127.0.0.1."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port, write_tiny_spec
from mlflow.tracking import MlflowClient
from ray.job_submission import JobStatus, JobSubmissionClient

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses a local TCP socket listens on at ``port`` (from /proc/net/tcp)."""
    addresses = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            addresses.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return addresses


def wait_for(url: str, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{url} did not answer") from None
            time.sleep(0.3)


def test_ui_serves_the_local_store_on_loopback_only(tmp_path):
    port = free_port()
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [str(BIN / "boxinst"), "ui", "--port", str(port), "--tracking-uri", store]
    ui = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", ui)
        assert listening_addresses(port) == {"127.0.0.1"}
    finally:
        ui.terminate()  # the server itself: the command became it
        ui.wait(timeout=30)
    deadline = time.monotonic() + 30
    while listening_addresses(port):  # its workers stop with it
        assert time.monotonic() < deadline, "the UI's workers outlived it"
        time.sleep(0.5)


@pytest.fixture
def ray_head(tmp_path):
    """A Ray cluster started as a user starts one, with its Jobs API on 127.0.0.1."""
    dashboard = free_port()
    command = [str(BIN / "ray"), "start", "--head", "--num-cpus=2", "--node-ip-address=127.0.0.1"]
    command += [f"--port={free_port()}", "--include-dashboard=true"]
    command += ["--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}"]
    # started from the environment's shell, so a job's `python` is the environment's
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(command, check=True, capture_output=True, cwd=tmp_path, env=env)
    yield f"http://127.0.0.1:{dashboard}"
    subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True)


@pytest.mark.slow
def test_submit_runs_a_spec_as_a_ray_job_tracked_in_mlflow(ray_head, mlflow_server, tmp_path):
    spec = write_tiny_spec(tmp_path)  # its data is generated on the cluster, from its synth key
    # as a user reaches a cluster with token authentication (Ray's default since 2.59)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "MLFLOW_TRACKING_URI": mlflow_server}
    command = [str(BIN / "boxinst"), "submit", str(spec), "--address", ray_head]
    command += ["--storage", str(tmp_path / "runs"), "--set", "solver.max_iter=2"]
    submitted = subprocess.run(
        [*command, "--experiment", "submitted"], env=env, capture_output=True, text=True
    )
    assert submitted.returncode == 0, submitted.stderr
    assert "submitted job" in submitted.stdout

    token = (Path.home() / ".ray" / "auth_token").read_text().strip()
    jobs = JobSubmissionClient(ray_head, headers={"Authorization": f"Bearer {token}"})
    (job,) = jobs.list_jobs()
    deadline = time.monotonic() + 300
    while jobs.get_job_status(job.submission_id) not in {JobStatus.SUCCEEDED, JobStatus.FAILED}:
        assert time.monotonic() < deadline, jobs.get_job_logs(job.submission_id)
        time.sleep(2)
    logs = jobs.get_job_logs(job.submission_id)
    assert jobs.get_job_status(job.submission_id) == JobStatus.SUCCEEDED, logs
    assert "box_as_mask " in logs  # the job printed its evaluation table
    assert "Running per image evaluation" not in logs  # pycocotools' prints stay quiet

    client = MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name("submitted").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["solver.max_iter"] == "2"
    assert "segm/AP" in run.data.metrics
