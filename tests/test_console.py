"""The console lines of a training: what a user watches instead of Ray's output."""

from __future__ import annotations

import logging
import logging.config
import os

import ray
from ray._private.authentication import authentication_token_setup

from boxinst.platform.console import (
    QUIETED,
    Progress,
    duration,
    quiet_ray_driver,
    quiet_ray_worker,
)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def losses(**extra) -> dict:
    return {
        "train/loss": 1.9124,
        "train/loss_cls": 0.61,
        "train/loss_box": 0.42,
        "train/loss_ctr": 0.66,
        "train/loss_mask": 0.0,  # box-only: no mask loss, left out of the line
        "train/loss_proj": 0.2051,
        "train/loss_pairwise": 0.0173,
        "train/lr": 0.002,
        "train/images_per_s": 18.24,
        **extra,
    }


def test_a_loss_line_has_the_iteration_the_time_left_the_terms_and_the_throughput():
    clock = Clock()
    progress = Progress(clock)
    first = progress.line("box_only", {**losses(), "iteration": 40}, 800)
    assert first == (
        "[box_only] iter 40/800  loss 1.912 (cls 0.61 box 0.42 ctr 0.66 proj 0.205 "
        "pairwise 0.0173)  lr 2.0e-03  18.2 img/s"
    )  # no time left yet: one report gives no rate
    clock.now += 50.0  # 80 iterations later: 0.625 s each, 680 left -> 425 s
    line = progress.line("box_only", {**losses(), "iteration": 120}, 800)
    assert line.startswith("[box_only] iter 120/800  eta 0:07:05  loss 1.912 (cls 0.61")


def test_loss_lines_come_every_print_period_and_at_the_end():
    progress = Progress(Clock())
    printed = [
        iteration
        for iteration in range(40, 801, 40)
        if progress.line("a", {**losses(), "iteration": iteration}, 800, every=200)
    ]
    assert printed == [200, 400, 600, 800]
    assert progress.line("b", {**losses(), "iteration": 90}, 90, every=200)  # the last


def test_runs_keep_their_own_rates():
    clock = Clock()
    progress = Progress(clock)
    progress.line("a", {**losses(), "iteration": 0}, 100)
    clock.now += 10.0
    progress.line("b", {**losses(), "iteration": 50}, 100)
    clock.now += 10.0
    # a: 20 iterations in 20 s, 80 left; b: 20 in 10 s, 30 left
    assert "eta 0:01:20" in progress.line("a", {**losses(), "iteration": 20}, 100)
    assert "eta 0:00:15" in progress.line("b", {**losses(), "iteration": 70}, 100)


def test_evaluation_and_final_lines_give_the_ap_numbers():
    progress = Progress(Clock())
    evaluation = {"iteration": 400, "segm/AP": 31.23, "box_as_mask/AP": 20.51, "bbox/AP": 40.06}
    assert progress.line("full", evaluation, 800) == (
        "[full] iter 400/800  evaluation: mask AP 31.2, box-as-mask AP 20.5, box AP 40.1"
    )
    final = {**evaluation, "iteration": 800, "final": True}
    assert progress.line("full", final, 800) == (
        "[full] iter 800/800  done: mask AP 31.2, box-as-mask AP 20.5, box AP 40.1"
    )


def test_a_checkpoint_report_prints_nothing():
    assert Progress(Clock()).line("a", {"iteration": 400}, 800) is None


def test_durations_are_hours_minutes_seconds():
    assert duration(0.4) == "0:00:00"
    assert duration(3725.6) == "1:02:06"
    assert duration(-3) == "0:00:00"


def test_the_worker_hook_filters_the_loggers_it_names_and_no_more(local_ray, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "")  # so that the address the hook sets goes after the test
    monkeypatch.delenv("RAY_ADDRESS")
    loggers = {name: logging.getLogger(name) for name in QUIETED}
    train = logging.getLogger("ray.train")
    filters = {name: list(logger.filters) for name, logger in loggers.items()}
    try:
        quiet_ray_worker()
        logging.config.dictConfig(  # what Ray Train does next: resets levels below ray.train
            {"version": 1, "disable_existing_loggers": False, "loggers": {"ray.train": {}}}
        )
        for name, logger in loggers.items():
            below = logger.makeRecord(name, QUIETED[name] - 10, __file__, 0, "x", (), None)
            at = logger.makeRecord(name, QUIETED[name], __file__, 0, "x", (), None)
            assert not logger.filter(below) and logger.filter(at)
        assert not train.filters  # Ray Train's own records stay LoggingConfig's
        assert os.environ["RAY_ADDRESS"] == ray.get_runtime_context().gcs_address
    finally:
        for name, logger in loggers.items():
            logger.filters = filters[name]


def test_the_driver_loses_rays_token_notice_and_keeps_its_errors():
    logger = logging.getLogger(authentication_token_setup.__name__)
    filters = list(logger.filters)
    try:
        quiet_ray_driver()
        notice = logger.makeRecord(logger.name, logging.WARNING, __file__, 0, "x", (), None)
        error = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, "x", (), None)
        assert not logger.filter(notice) and logger.filter(error)
    finally:
        logger.filters = filters
