"""``boxinst bench``: every benchmark runs end to end at a tiny size through the command line and
writes its JSON; the numbers themselves are measured by running the commands, not here."""

import argparse
import json
import os
import statistics

import pytest
import torch

from boxinst.platform.bench.cli import register

TINY = {
    "mask-loss": ["--size", "64", "96", "--instances", "6", "--repeats", "1", "--threads", "1"],
    "train-step": ["--configs", "small", "--small-size", "64", "--repeats", "1"],
    "data": ["--images", "4", "--workers", "0", "1", "--batch", "2"],
    "eval": ["--images", "3", "--detections", "10"],
    "eval-workers": ["--images", "5", "--repeats", "1"],
    "inference": ["--configs", "coco", "--size", "64", "96", "--repeats", "1"],
    "preflight": ["--images", "5"],
    "priors": ["--images", "3", "--style", "textured", "--workers", "1"],
}


def bench(tmp_path, *argv: str) -> dict:
    """Run ``boxinst bench ARGV --out FILE`` as the CLI does and return the JSON it wrote."""
    parser = argparse.ArgumentParser(prog="boxinst")
    register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "bench.json"
    args = parser.parse_args(["bench", *argv, "--out", str(out)])
    threads = torch.get_num_threads()
    try:
        assert args.handler(args) == 0
    finally:
        torch.set_num_threads(threads)  # --threads sets them for the process
    return json.loads(out.read_text())


def check_environment(payload: dict, argv: list[str]) -> None:
    env = payload["environment"]
    assert env["command"] == " ".join(["boxinst", "bench", *argv])
    assert env["torch"] == torch.__version__ and env["cpu_count"] == os.cpu_count()
    assert env["date"][:2] == "20"
    if "--threads" in argv:
        assert env["torch_threads"] == int(argv[argv.index("--threads") + 1])
    # the load before the run is recorded, and whether the machine was idle then
    load = env["load_average_1min_at_start"]
    assert load >= 0 and env["idle_at_start"] == (load < 0.25 * os.cpu_count())


def check_mask_loss(result: dict) -> None:
    crop, full = result["crop_local"], result["full_image"]
    assert crop["value"] == pytest.approx(full["value"], abs=1e-5) and crop["value"] > 0
    assert result["value_difference"] <= 1e-5 and result["grad_max_difference"] <= 1e-5
    assert crop["peak_mib"] > 0 and full["peak_mib"] > 0
    assert result["time_ratio"] == pytest.approx(full["median_s"] / crop["median_s"])
    assert result["batch"]["mask_cells"] == [16, 24]


def check_models(result: dict, configs: list[str]) -> None:
    assert list(result["configs"]) == configs
    sizes = {"small": [64, 64], "coco": [64, 96]}
    for name, r in result["configs"].items():
        assert r["batch"] == {"small": 8, "coco": 2}[name] and r["image_size"] == sizes[name]
        assert r["images_per_s"] == pytest.approx(r["batch"] / r["median_s"])


def check_train_step(result: dict, configs: list[str]) -> None:
    check_models(result, configs)
    assert result["autocast"] == torch.cuda.is_available()
    assert not result["channels_last"] and not result["torch_compile"]


def check_data(result: dict, workers: list[str]) -> None:
    assert list(result["workers"]) == workers
    for r in result["workers"].values():
        assert r["images_per_s"] == pytest.approx(result["images"] / r["seconds"])


def check_eval(result: dict, images: int, detections: int) -> None:
    assert result["images"] == images and result["detections_per_image"] == detections
    assert set(result["scorers"]) == {"pycocotools", "faster-coco-eval"}
    assert all(r["evaluate_s"] > 0 for r in result["scorers"].values())
    assert result["largest_difference"] < 1e-6  # the same numbers from both scorers
    # a jittered copy of every ground-truth instance is among the detections, scored highest
    assert result["segm_AP"] > 30


def check_eval_workers(result: dict, images: int) -> None:
    assert result["images"] == images and result["workers"] == 2
    assert result["same_metrics"]  # the sharded evaluation scores what rank 0 alone does
    assert result["ratio"] == pytest.approx(result["sharded_s"] / result["rank0_s"])


def check_inference(result: dict, configs: list[str]) -> None:
    check_models(result, configs)
    # score threshold 0: every image yields its full 100 detections
    assert all(r["detections_per_image"] == 100 for r in result["configs"].values())


def check_preflight(result: dict, images: int) -> None:
    assert result["images"] == images and result["annotations"] > 0
    assert result["problems"] == 0  # the generated file is sound, its images all there
    assert all(seconds > 0 for seconds in result["seconds"].values())


def check_priors(result: dict, images: int, style: str) -> None:
    assert result["images"] == images and result["style"] == style and result["instances"] > 0
    plain, started = result["settings"]["plain"], result["settings"]["background_start"]
    for r in (plain, started):
        assert len(r["seconds"]) == 2 and r["median_s"] == pytest.approx(
            statistics.median(r["seconds"])
        )
        assert 0 < r["kept"] <= 1 and 0.5 < r["iou"] <= 1  # better than most boxes would be
        assert r["iou"] >= min(r["iou_per_class"].values())
    assert result["time_ratio"] == pytest.approx(started["median_s"] / plain["median_s"])


CHECKS = {
    "mask-loss": check_mask_loss,
    "train-step": lambda result: check_train_step(result, ["small"]),
    "data": lambda result: check_data(result, ["0", "1"]),
    "eval": lambda result: check_eval(result, 3, 10),
    "eval-workers": lambda result: check_eval_workers(result, 5),
    "inference": lambda result: check_inference(result, ["coco"]),
    "preflight": lambda result: check_preflight(result, 5),
    "priors": lambda result: check_priors(result, 3, "textured"),
}


@pytest.mark.parametrize("name", list(TINY))
def test_each_benchmark_runs_and_writes_its_json(tmp_path, name):
    payload = bench(tmp_path, name, *TINY[name])
    assert payload["benchmark"] == name
    check_environment(payload, [name, *TINY[name]])
    CHECKS[name](payload["result"])


def test_all_writes_every_benchmark_into_one_json(tmp_path):
    argv = ["all", "--size", "64", "96", "--small-size", "64", "--repeats", "1", "--images", "3"]
    payload = bench(tmp_path, *argv)
    check_environment(payload, argv)
    results = payload["results"]
    assert list(results) == list(TINY)
    check_mask_loss(results["mask-loss"])
    check_train_step(results["train-step"], ["small", "coco"])
    check_data(results["data"], ["0", "1", "2"])
    check_eval(results["eval"], 3, 100)
    check_eval_workers(results["eval-workers"], 3)
    check_inference(results["inference"], ["small", "coco"])
    check_preflight(results["preflight"], 3)
    check_priors(results["priors"], 3, "flat")
