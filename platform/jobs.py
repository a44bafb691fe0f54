"""``boxinst submit``: a spec's training or sweep as a job on a Ray cluster (Ray Jobs API).

The job carries what it needs in its runtime environment: this package (its source folders
arranged as the ``boxinst`` package, a ``py_modules`` entry, so the cluster needs only the
dependencies) and the spec, merged with its ``extends`` chain but not resolved (relative data
paths are the cluster's). It runs ``python -m boxinst.platform.cli train|sweep`` with the same
overrides there; ``MLFLOW_TRACKING_URI`` is passed on when set, so the job logs to the team's
server. The spec is validated here first: a bad key fails before anything is submitted.

A cluster with token authentication (Ray's default since 2.59) that gets no token, or the
wrong one, is answered with :class:`ClusterAuthError`: where Ray looks for the token and how to
get the cluster's.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import yaml
from ray.exceptions import AuthenticationError
from ray.job_submission import JobSubmissionClient

from boxinst.platform.console import QUIET_WORKERS
from boxinst.platform.ray_cluster import ClusterUnreachable
from boxinst.platform.spec import find_spec, load_spec, read_spec
from boxinst.platform.training.ray_train import WORKER_ENV

#: The repo's folders and the names they have inside the ``boxinst`` package.
SOURCE = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = ("models", "losses", "platform", "dashboards", "experiments")
SPEC_FILE = "spec.yaml"


class ClusterAuthError(PermissionError):
    """The Ray cluster asked for an authentication token that this client does not have."""

    def __init__(self, address: str, rejected: bool):
        what = "rejected this client's token" if rejected else "requires a token and none was sent"
        super().__init__(
            f"the Ray cluster at {address} {what}. Ray reads the token from RAY_AUTH_TOKEN "
            "(the token itself), else RAY_AUTH_TOKEN_PATH (a file holding it), else "
            "~/.ray/auth_token, and sends it when RAY_AUTH_MODE=token. Print the cluster's "
            "token with `ray get-auth-token` on its head node, then, for example: "
            "RAY_AUTH_MODE=token RAY_AUTH_TOKEN=... boxinst submit ..."
        )


def _is_rejection(error: AuthenticationError) -> bool:
    """Ray's message for an HTTP 403 (a token was sent and is wrong); 401 means none was."""
    return error.message.startswith("Authentication failed")


def package_copy(folder: Path) -> Path:
    """``folder/boxinst``: this package's source, as the package Python imports."""
    package = folder / "boxinst"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in PACKAGE_FOLDERS:
        shutil.copytree(SOURCE / name, package / name, ignore=ignore)
    return package


def job_entrypoint(
    command: str, overrides: Sequence[str], storage: str, experiment: str | None
) -> str:
    words = ["python", "-m", "boxinst.platform.cli", command, SPEC_FILE, "--storage", storage]
    for override in overrides:
        words += ["--set", override]
    if experiment:
        words += ["--experiment", experiment]
    return shlex.join(words)


def submit(
    spec_name: str,
    overrides: Sequence[str],
    address: str,
    storage: str = "runs",
    experiment: str | None = None,
) -> str:
    """Submit ``boxinst sweep`` (a spec with sweep axes) or ``boxinst train`` of the spec to
    the Ray cluster at ``address``; returns the job id."""
    spec = load_spec(spec_name, overrides)  # fails here, with the key named, if it is bad
    command = "sweep" if spec.sweep is not None and spec.sweep.axes else "train"
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")
    env = {**WORKER_ENV, **({"MLFLOW_TRACKING_URI": tracking_uri} if tracking_uri else {})}
    with tempfile.TemporaryDirectory() as folder:
        working_dir, modules = Path(folder) / "job", Path(folder) / "modules"
        working_dir.mkdir()
        merged = read_spec(find_spec(spec_name))
        (working_dir / SPEC_FILE).write_text(yaml.safe_dump(merged, sort_keys=False))
        try:
            client = JobSubmissionClient(address)
            job = dict(
                entrypoint=job_entrypoint(command, overrides, storage, experiment),
                runtime_env={
                    "working_dir": str(working_dir),
                    "py_modules": [str(package_copy(modules))],
                    "env_vars": env,
                    **QUIET_WORKERS,
                },
            )
            return _submit_when_an_agent_is_up(client, job)
        except AuthenticationError as error:
            raise ClusterAuthError(address, _is_rejection(error)) from None
        except ConnectionError:  # what the client raises when nothing answers at the address
            raise ClusterUnreachable(
                f"no Ray Jobs server answers at {address}; check the address (the head's "
                "dashboard, http://HEAD:8265 by default) and that the cluster is up"
            ) from None


#: How long a submission waits for the cluster's job agent (a head just started, on a busy
#: machine, answers "No available agent" until its agent has registered).
AGENT_WAIT_S = 120.0


def _submit_when_an_agent_is_up(client: JobSubmissionClient, job: dict) -> str:
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as error:
            if "No available agent" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(2.0)
