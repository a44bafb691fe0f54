"""Shared helpers of the test suite."""

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import ray
import yaml

from boxinst.platform.data.synth import SynthConfig, synthesize
from boxinst.platform.spec import load_spec
from boxinst.platform.training.loop import prepare_data


def write_ray_token(path: Path) -> Path:
    """A new Ray authentication token (Ray's own format: 32 random bytes in hex) in ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(secrets.token_hex(32))
    return path


def pytest_configure(config):
    """Every Ray the tests start uses a token of the test session's own: a local ``ray.init()``
    turns token authentication on by default (Ray 2.59+) and would otherwise read, or create,
    ``~/.ray/auth_token`` in the real home folder."""
    folder = Path(tempfile.mkdtemp(prefix="boxinst-tests-ray-auth-"))
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(write_ray_token(folder / "auth_token"))
    os.environ.pop("RAY_AUTH_TOKEN", None)  # it would take precedence over the file


#: pytest's exit status, kept by :func:`pytest_sessionfinish` for :func:`pytest_unconfigure`.
EXIT_STATUS = pytest.StashKey[int]()


def pytest_sessionfinish(session, exitstatus):
    session.config.stash[EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Remove the session's Ray token; then end the process with pytest's exit status, its
    report written, without the interpreter's teardown. That teardown crashed (SIGSEGV, exit
    139) in two of about six fresh-clone runs after every test had passed and the summary was
    printed, and in none of the runs that looked for it; which of the native libraries the
    suite loads (torch, Ray, OpenCV, faster-coco-eval) crashes there is not known. No test's
    verdict depends on it: they have all been reported when this runs."""
    shutil.rmtree(Path(os.environ["RAY_AUTH_TOKEN_PATH"]).parent, ignore_errors=True)
    if EXIT_STATUS in config.stash:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(config.stash[EXIT_STATUS])


#: The CPU-sized CondInst of the quickstart (ResNet-10 from scratch, 64-channel FPN).
QUICKSTART_MODEL = load_spec("quickstart").model


def cpu_model_config(**overrides):
    """The quickstart's model config with ``overrides`` (3 classes unless given)."""
    return dataclasses.replace(QUICKSTART_MODEL, **{"num_classes": 3, **overrides})


@pytest.fixture
def make_config():
    """:func:`cpu_model_config`, for tests that build models."""
    return cpu_model_config


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the time of asking)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


#: The Ray Train controller takes one report per poll of its workers, every 2 s by default: a
#: test that reports at every iteration would be paced by it. For a module's ``RAY_ENV``.
FAST_TRAIN_POLL = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}


@pytest.fixture(scope="module")
def local_ray(request):
    """A Ray of the test module's own (``address="local"``: never a cluster that ``ray start``
    left on the machine), started with the module's ``RAY_ENV`` (if any) in its environment,
    which every Ray process inherits."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in getattr(request.module, "RAY_ENV", {}).items():
            patch.setenv(name, value)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield
        ray.shutdown()


class MlflowServer:
    """A real MLflow tracking server on 127.0.0.1 (SQLite store, local artifacts under
    ``root``) that can be stopped and started again on the same port with the same store."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def start(self) -> str:
        """Start the server and wait until it answers; returns its URI."""
        command = [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "artifacts"),
            "--workers", "1",
        ]  # fmt: skip
        # one worker and no job runner (MLflow's GenAI jobs): it starts in seconds, not in
        # half a minute on a small, busy machine
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        log = self.root / "server.log"
        with log.open("a") as output:  # a session of its own: stop() ends its workers too
            self.process = subprocess.Popen(
                command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 120  # 60 s were missed while trainings load the cores
        while not self._healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mlflow server did not start: {log.read_text()}")
            time.sleep(0.3)
        return self.uri

    def stop(self) -> None:
        """Terminate the server (its process group) and wait until its port is closed."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)
        deadline = time.monotonic() + 30
        while self._healthy() and time.monotonic() < deadline:
            time.sleep(0.1)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on 127.0.0.1 (SQLite store, local artifacts)."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    yield server.start()
    server.stop()


def write_tiny_spec(folder: Path) -> Path:
    """``folder/tiny.yaml``: a seconds-long run on generated shapes kept under ``folder``."""
    root = folder / "shapes"
    split = lambda name: {  # noqa: E731
        "annotations": f"{root}/{name}/annotations.json",
        "images": f"{root}/{name}/images",
    }
    data = {
        "name": "tiny",
        "regime": "box_only",
        "data": {
            "train": split("train"),
            "val": split("val"),
            "synth": {
                "seed": 2,
                "train_images": 8,
                "val_images": 2,
                "min_size": 64,
                "max_size": 80,
            },
            "train_short_sizes": [64, 72],
            "max_size": 96,
            "test_short_size": 64,
            "loader_workers": 0,
        },
        "model": dataclasses.asdict(
            cpu_model_config(num_classes=7, head_convs=1, mask_branch_convs=1)
        ),
        "solver": {"ims_per_batch": 2, "max_iter": 6, "steps": [4], "warmup_iters": 2},
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(data))))
    return path


@pytest.fixture
def tiny_spec(tmp_path):
    """Load a spec of a seconds-long run on generated shapes, with ``--set`` style overrides;
    its dataset is generated under ``tmp_path``."""

    def load(*overrides: str):
        spec = load_spec(write_tiny_spec(tmp_path), list(overrides))
        prepare_data({spec.name: spec})
        return spec

    return load


def session_processes(session: int) -> list[int]:
    """The live (not zombie) processes of a session (``/proc/PID/stat``: state, ppid, pgrp,
    session after the command's name)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        state, _, _, sid = stat[stat.rindex(")") + 2 :].split()[:4]
        if int(sid) == session and state != "Z":
            found.append(int(entry.name))
    return found


def kill_session(session: int, timeout: float = 30) -> None:
    """SIGKILL every process of ``session`` until none is left.

    Killing the driver's process group is not enough: Ray starts each worker in a process
    group of its own, and they outlive the driver, a worker still starting up by a minute."""
    deadline = time.monotonic() + timeout
    while processes := session_processes(session):
        if time.monotonic() > deadline:
            raise AssertionError(f"processes of the killed driver linger: {processes}")
        for pid in processes:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


@pytest.fixture(scope="session")
def sound(tmp_path_factory):
    """A sound generated training split (seed 1: 4 images of 64-80 px), made once."""
    out = tmp_path_factory.mktemp("sound")
    synthesize(out, SynthConfig(seed=1, train_images=4, val_images=1, min_size=64, max_size=80))
    return out / "train"


@pytest.fixture
def split(sound, tmp_path):
    """A fresh copy of the sound split, to break."""
    return Path(shutil.copytree(sound, tmp_path / "train"))
