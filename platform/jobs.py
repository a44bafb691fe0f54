"""``boxinst submit``: a spec's training or sweep as a job on a Ray cluster (Ray Jobs API).

The job carries what it needs in its runtime environment: this package (its source folders
arranged as the ``boxinst`` package, a ``py_modules`` entry, so the cluster needs only the
dependencies) and the spec, merged with its ``extends`` chain but not resolved (relative data
paths are the cluster's). It runs ``python -m boxinst.platform.cli train|sweep`` with the same
overrides there; ``MLFLOW_TRACKING_URI`` is passed on when set, so the job logs to the team's
server. The spec is validated here first: a bad key fails before anything is submitted.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import yaml
from ray.job_submission import JobSubmissionClient

from boxinst.platform.ray_train import WORKER_ENV
from boxinst.platform.spec import find_spec, load_spec, read_spec

#: The repo's folders and the names they have inside the ``boxinst`` package.
SOURCE = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = ("models", "losses", "platform", "dashboards", "experiments")
SPEC_FILE = "spec.yaml"


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
        return JobSubmissionClient(address).submit_job(
            entrypoint=job_entrypoint(command, overrides, storage, experiment),
            runtime_env={
                "working_dir": str(working_dir),
                "py_modules": [str(package_copy(modules))],
                "env_vars": env,
            },
        )
