"""Shared helpers of the test suite."""

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from boxinst.platform.quick_train import small_model_config


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
