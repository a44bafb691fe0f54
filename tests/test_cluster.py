"""Commands that talk to servers: `boxinst submit` to a real Ray cluster started with
`ray start --head` (Ray Jobs API), and `boxinst ui` bound to 127.0.0.1."""

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port, kill_session, write_ray_token, write_tiny_spec
from mlflow.tracking import MlflowClient
from ray.job_submission import JobStatus, JobSubmissionClient

from boxinst.platform.jobs import AGENT_WAIT_S

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


def wait_for(url: str, process: subprocess.Popen, seconds: float = 180) -> None:
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


class RayHead:
    """A Ray cluster started as a user starts one (``ray start --head``), with token
    authentication on and a token of its own, and its Jobs API on 127.0.0.1."""

    def __init__(self, folder: Path):
        self.token = write_ray_token(folder / "head_token").read_text()
        self.address = f"http://127.0.0.1:{free_port()}"
        self.auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(folder / "head_token")}
        command = [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=2"]
        self.gcs = f"127.0.0.1:{free_port()}"
        command += ["--node-ip-address=127.0.0.1", f"--port={self.gcs.rsplit(':', 1)[1]}"]
        command += ["--include-dashboard=true", "--dashboard-host=127.0.0.1"]
        command += [f"--dashboard-port={self.address.rsplit(':', 1)[1]}"]
        # started from the environment's shell, so a job's `python` is the environment's
        path = f"{BIN}{os.pathsep}{os.environ['PATH']}"
        env = {**os.environ, **self.auth, "PATH": path}
        # in the foreground, in a session of its own: stop() ends this cluster's processes and
        # no other (`ray stop` would end every Ray on the machine, a user's own among them)
        with (folder / "head.log").open("w") as log:
            self.process = subprocess.Popen(
                command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 180
        while True:
            try:
                self.jobs().list_jobs()
                break
            except (ConnectionError, RuntimeError):  # not up yet, or its Jobs API not yet
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    log_text = (folder / "head.log").read_text()
                    raise AssertionError(f"ray head did not start: {log_text}") from None
                time.sleep(1)

    def client_env(self, **extra: str) -> dict[str, str]:
        """The environment of a client that holds the head's token."""
        return {**os.environ, **self.auth, **extra}

    def jobs(self) -> JobSubmissionClient:
        return JobSubmissionClient(self.address, headers={"Authorization": f"Bearer {self.token}"})

    def stop(self) -> None:
        """End this cluster's processes, and forget it as the machine's current Ray cluster
        (where a plain ``ray.init()`` would look for it, as `ray stop` does)."""
        kill_session(self.process.pid)
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if current.exists() and current.read_text().strip() == self.gcs:
            current.unlink()


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    head = RayHead(tmp_path_factory.mktemp("ray-head"))
    yield head
    head.stop()


def run_submit(head: RayHead, spec: Path, env: dict[str, str], *options: str):
    command = [str(BIN / "boxinst"), "submit", str(spec), "--address", head.address, *options]
    # submit waits up to AGENT_WAIT_S for a new head's job agent, then uploads the package
    timeout = AGENT_WAIT_S + 120
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def without_token(home: Path, **extra: str) -> dict[str, str]:
    """A client environment with no Ray token anywhere: none in the environment, and a home
    folder of its own without ``~/.ray``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_TOKEN")}
    return {**env, "HOME": str(home), **extra}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("client", "says"),
    [
        ({}, "requires a token and none was sent"),  # a client that does not know of tokens
        ({"RAY_AUTH_MODE": "token"}, "requires a token and none was sent"),
        ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}, "rejected this client's token"),
    ],
    ids=["auth-mode-unset", "auth-mode-token", "wrong-token"],
)
def test_submit_without_the_clusters_token_says_where_to_get_it(ray_head, tmp_path, client, says):
    spec = write_tiny_spec(tmp_path)
    submitted = run_submit(ray_head, spec, without_token(tmp_path, **client))
    assert submitted.returncode == 2, submitted.stderr
    assert "Traceback" not in submitted.stderr
    message = submitted.stderr
    assert ray_head.address in message and says in message
    for source in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token"):
        assert source in message
    assert "ray get-auth-token" in message
    assert ray_head.jobs().list_jobs() == []  # nothing was submitted


@pytest.mark.slow
def test_submit_runs_a_spec_as_a_ray_job_tracked_in_mlflow(ray_head, mlflow_server, tmp_path):
    spec = write_tiny_spec(tmp_path)  # its data is generated on the cluster, from its synth key
    # as a user reaches a cluster with token authentication: the head's token in a file
    env = ray_head.client_env(MLFLOW_TRACKING_URI=mlflow_server)
    options = ["--storage", str(tmp_path / "runs"), "--set", "solver.max_iter=2"]
    submitted = run_submit(ray_head, spec, env, *options, "--experiment", "submitted")
    assert submitted.returncode == 0, submitted.stderr
    assert "submitted job" in submitted.stdout

    jobs = ray_head.jobs()
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
