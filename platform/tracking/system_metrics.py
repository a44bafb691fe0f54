"""System metrics of a training run: CPU, memory, disk and network (and GPU, with ``pynvml``)
of the node of its rank-0 worker, logged by MLflow's ``SystemMetricsMonitor`` into the run as
``system/...`` every 10 s while the worker trains.

The monitor runs in a thread of the rank-0 worker, the one process of a run that is sure to be
on a node that trains (the Train controller and a sweep's trial run wherever Ray puts them).
A resumed run goes on from its last system step. The monitor talks to MLflow failing fast
(:data:`~boxinst.platform.tracking.callback.FAIL_FAST`): an MLflow server that is down costs the
run its system metrics from then on, never a wait.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from boxinst.platform.environment import environment
from boxinst.platform.tracking.callback import FAIL_FAST


@contextmanager
def system_metrics(tracking_uri: str, run_id: str) -> Iterator[None]:
    """Monitor this node into MLflow run ``run_id`` while the block runs."""
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # its start and stop
    with environment(FAIL_FAST):
        monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=tracking_uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()
