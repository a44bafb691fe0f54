"""What ``boxinst train`` and ``sweep`` print while they train: a line per run every
``reporting.print_every`` iterations, and at its evaluations and its end.

A progress line is what detectron2's ``CommonMetricPrinter`` made familiar: the run, the
iteration against the total, the time left, the losses, the learning rate and the throughput
(here cut in two)::

    [box_only] iter 120/800  eta 0:04:10  loss 1.912 (cls 0.61 box 0.42 ctr 0.66 proj 0.21
        pairwise 0.02)  lr 2.0e-03  18.2 img/s

An evaluation's line gives its AP numbers; a run's last line says it is done. The time left is
the wall time per iteration since the run's first report in this command (evaluations and
checkpoints included) times the iterations left.

Ray's own console output is turned down at its source: Ray Train's ``ray.train`` logs at
WARNING (``RunConfig(logging_config=...)``), Ray Tune's status tables off, the driver's Ray
logger at WARNING (and its token notice off: :func:`quiet_ray_driver`), and in the worker
processes of the Rays boxinst starts (a local one, a submitted job's) three loggers that the
levels above miss (:func:`quiet_ray_worker`); ``--verbose`` gives all of it back.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from collections.abc import Callable, Mapping

import ray
from ray._private.authentication import authentication_token_setup
from ray.train.v2._internal.execution import context as train_context
from ray.train.v2._internal.execution.controller import placement_group_cleaner
from ray.train.v2._internal.execution.scaling_policy import autoscaling_coordinator_client
from ray.train.v2.api.callback import UserCallback
from ray.tune import Callback

from boxinst.platform.metrics import (
    BBOX_AP,
    FINAL,
    IMAGES_PER_SECOND,
    ITERATION,
    LEARNING_RATE,
    LOSSES,
    SEGM_AP,
    TRAIN_LOSS,
    box_as_mask_name,
    train_loss_name,
)

#: The console's verbosity, as each part of Ray takes it: (quiet, verbose).
RAY_TRAIN_LOG_LEVEL = ("WARNING", "INFO")
RAY_TUNE_VERBOSITY = (0, 2)
#: Tune's console output engine: its new one prints a header and a results path even when
#: silent (verbosity 0), the legacy one prints nothing then.
RAY_TUNE_OUTPUT = ({"RAY_AIR_NEW_OUTPUT": "0"}, {})
RAY_DRIVER_LOG_LEVEL = (logging.WARNING, logging.INFO)


class AtLeast(logging.Filter):
    """Passes the records of ``level`` and above. A filter, not a logger level: Ray Train
    configures its loggers in each of its processes after the setup hook has run, and that
    resets the levels of the loggers under ``ray.train`` (not their filters)."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


#: The loggers of Ray's processes that :func:`quiet_ray_worker` turns down, and their level.
QUIETED = {
    train_context.__file__: logging.WARNING,
    placement_group_cleaner.__name__: logging.ERROR,
    autoscaling_coordinator_client.__name__: logging.ERROR,
}


def quiet_ray_worker() -> None:
    """Ray's ``worker_process_setup_hook`` for the Rays boxinst starts, run in each of their
    worker processes (:data:`QUIETED`). Two of Ray Train's loggers escape ``LoggingConfig``
    (Ray 2.60), and one warns of what is harmless here:

    - the worker context's, named by its file path rather than its module, so not under
      ``ray.train``: its INFO line at every report ("Reporting training result N: ..." with the
      whole metrics dict) goes out;
    - the placement-group cleaner's, an actor outside the Train run that warns every second
      that the State API is unavailable: it is, on a Ray without its dashboard (the State
      API's server, which costs 1-3 s of start-up and about 930 MiB in 10 processes on a
      2-core machine), so the cleaner cannot do its job there. Its job, removing the placement
      group of a Train controller that died, concerns long-lived clusters, which run their
      dashboard; a local Ray's go with it. It is also given its own cluster's address, which
      its State API client would otherwise look for, and fail on (a traceback) while another
      Ray runs on the machine;
    - the Train controller's autoscaling requests, which time out after 5 s while the machine
      is busy starting a sweep's processes, with a 20-line traceback that Ray calls "safe to
      ignore" when transient (they are sent again every 20 s). A Train run that cannot get
      its workers still says so, from its scheduler.
    """
    for name, level in QUIETED.items():
        logging.getLogger(name).addFilter(AtLeast(level))
    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)


def quiet_ray_driver() -> None:
    """Turn down, in this process, what a local Ray's start logs at WARNING that is no news:
    that the new local cluster requires a token, which Ray then keeps in ``~/.ray`` (Ray
    2.59+; a token-less cluster's warning, an ERROR, still shows)."""
    logging.getLogger(authentication_token_setup.__name__).addFilter(AtLeast(logging.ERROR))


#: The part of a runtime environment that installs :func:`quiet_ray_worker`.
QUIET_WORKERS = {"worker_process_setup_hook": f"{__name__}.quiet_ray_worker"}

#: The short names of the loss terms in a progress line (``loss_pairwise`` -> ``pairwise``).
SHORT_LOSS = {train_loss_name(loss): loss.removeprefix("loss_") for loss in LOSSES}
#: The AP numbers of an evaluation's line, with their labels.
EVALUATION = {SEGM_AP: "mask AP", box_as_mask_name("AP"): "box-as-mask AP", BBOX_AP: "box AP"}


def duration(seconds: float) -> str:
    """``0:04:10``: hours, minutes and seconds, rounded to the second."""
    return str(datetime.timedelta(seconds=round(max(seconds, 0))))


class Progress:
    """The console lines of runs, each known by name with its total iterations and how often
    it prints its losses; keeps, per run, when and at which iteration its first report came
    (the time left is measured from it). ``clock`` is injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._first: dict[str, tuple[float, int]] = {}

    def line(self, name: str, report: Mapping, total: int, every: int = 1) -> str | None:
        """The line of one report of run ``name``, or None for a report with nothing to show
        (a checkpoint's, or losses at an iteration that is not a multiple of ``every``)."""
        iteration = int(report[ITERATION])
        now = self.clock()
        start_time, start_iteration = self._first.setdefault(name, (now, iteration))
        head = f"[{name}] iter {iteration}/{total}"
        if report.get(FINAL):
            return f"{head}  done{evaluation_text(report)}"
        if SEGM_AP in report:
            return f"{head}  evaluation{evaluation_text(report)}"
        if TRAIN_LOSS not in report or (iteration % every and iteration != total):
            return None
        eta = ""
        if iteration > start_iteration:
            per_iteration = (now - start_time) / (iteration - start_iteration)
            eta = f"  eta {duration(per_iteration * (total - iteration))}"
        terms = " ".join(  # the terms of the regime: the others are zero
            f"{short} {report[key]:.3g}" for key, short in SHORT_LOSS.items() if report.get(key)
        )
        return (
            f"{head}{eta}  loss {report[TRAIN_LOSS]:.3f} ({terms})  "
            f"lr {report[LEARNING_RATE]:.1e}  {report[IMAGES_PER_SECOND]:.1f} img/s"
        )


def evaluation_text(report: Mapping) -> str:
    """``: mask AP 31.2, box-as-mask AP 20.5, box AP 40.1`` (the numbers the report has)."""
    numbers = [f"{label} {report[key]:.1f}" for key, label in EVALUATION.items() if key in report]
    return f": {', '.join(numbers)}" if numbers else ""


class TrainProgress(UserCallback):
    """Prints the progress lines of one Ray Train run (on its Train controller, whose output
    Ray forwards to the driver's console), named ``name``, of ``total`` iterations, its losses
    printed every ``every``."""

    def __init__(self, name: str, total: int, every: int):
        self.name, self.total, self.every = name, total, every
        self.progress = Progress()

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        line = self.progress.line(self.name, metrics[0], self.total, self.every)
        if line:
            print(line, flush=True)


class SweepProgress(Callback):
    """Prints the progress lines of a sweep's trials, on the sweep's driver; ``describe``
    gives a trial's name, total iterations and loss-line period from its Tune config."""

    def __init__(self, describe: Callable[[dict], tuple[str, int, int]]):
        self.describe = describe
        self.progress = Progress()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        name, total, every = self.describe(trial.config)
        line = self.progress.line(name, result, total, every)
        if line:
            print(line, flush=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        name = self.describe(trial.config)[0]
        print(f"[{name}] FAILED (the sweep goes on; its summary lists the trial)", flush=True)
