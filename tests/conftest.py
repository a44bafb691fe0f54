"""Shared helpers of the test suite."""

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from boxinst.platform.quick_train import small_model_config
from boxinst.platform.spec import load_spec
from boxinst.platform.training import prepare_data


@pytest.fixture
def make_config():
    """The CPU-sized CondInst config (3 classes unless overridden)."""
    return lambda **overrides: small_model_config(**{"num_classes": 3, **overrides})


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on 127.0.0.1 (SQLite store, local artifacts)."""
    root = tmp_path_factory.mktemp("mlflow")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    log = (root / "server.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=1) as response:
                if response.status == 200:
                    break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError(
                    f"mlflow server did not start: {(root / 'server.log').read_text()}"
                ) from None
            time.sleep(0.3)
    yield uri
    server.terminate()
    server.wait(timeout=30)
    log.close()


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
        "model": small_model_config(num_classes=7, head_convs=1, mask_branch_convs=1).__dict__,
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
        prepare_data(spec)
        return spec

    return load
