"""The ``boxinst bench`` commands: one per benchmark and ``all``. Each prints its table and
writes JSON (``--out``, default ``outputs/bench/NAME.json``) holding the result and the
environment it ran in (the command, torch version, CPU count, device, date).

Options left out take the defaults of the benchmark's ``run`` function.
"""

from __future__ import annotations

import argparse
import inspect
import os
from types import ModuleType

import torch

from boxinst.platform.bench import (
    coco_eval,
    eval_workers,
    inference,
    loading,
    mask_loss,
    preflight,
    priors,
    train_step,
)
from boxinst.platform.bench.batches import CONFIGS
from boxinst.platform.bench.harness import DEFAULT_OUT_DIR, environment, machine_load, write_json
from boxinst.platform.data.shapes import STYLES

#: command -> (module with ``run`` and ``summary``, help)
BENCHMARKS: dict[str, tuple[ModuleType, str]] = {
    "mask-loss": (
        mask_loss,
        "BoxInst mask loss forward+backward: crop-local vs full-image pairwise term",
    ),
    "train-step": (train_step, "training iteration time, small CPU model and R-50 COCO model"),
    "data": (loading, "data-loading images/s per DataLoader worker count"),
    "eval": (coco_eval, "COCO mask+box evaluation time of a COCO-sized results file"),
    "eval-workers": (
        eval_workers,
        "a run's evaluation by rank 0 alone and sharded over its Ray Train workers",
    ),
    "inference": (inference, "CondInst.predict images/s, small CPU model and R-50 COCO model"),
    "preflight": (preflight, "the checks before a run on a COCO-sized annotation file"),
    "priors": (priors, "GrabCut box priors' time and quality, plain and background start"),
}


#: the options of ``bench all``, passed to every benchmark that takes them
ALL_OPTIONS = ("size", "small_size", "repeats", "images")


def _size(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--size", nargs=2, type=int, metavar=("H", "W"), help="COCO-sized images (800 1333)"
    )


def _repeats(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, help="timed repetitions (median reported)")


def _threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's, one per core); 1 keeps the timings steadier "
        "on a CPU that other work shares",
    )


def _configs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--configs",
        nargs="+",
        choices=list(CONFIGS),
        help="(small coco; coco_r101_bifpn and coco_r101_bifpn_dcn are the BiFPN and DCN rows "
        "of the paper's Table 4, coco_r50_bifpn AdelaiDet's R-50 BiFPN config)",
    )
    parser.add_argument("--small-size", type=int, help="side of the small model's images (160)")


def _arguments(name: str, parser: argparse.ArgumentParser) -> None:
    """The options of benchmark ``name``; their names are its ``run`` parameters'."""
    if name == "mask-loss":
        _size(parser)
        parser.add_argument("--batch", type=int, help="images (2)")
        parser.add_argument("--instances", type=int, help="instances per image (20)")
        parser.add_argument("--seed", type=int, help="(0)")
        _repeats(parser)
    elif name == "train-step":
        _configs(parser)
        _size(parser)
        _repeats(parser)
        parser.add_argument("--channels-last", action="store_true", default=None)
        parser.add_argument(
            "--torch-compile", action="store_true", default=None, help="torch.compile the model"
        )
    elif name == "data":
        parser.add_argument("--images", type=int, help="images of the generated dataset (256)")
        parser.add_argument("--workers", nargs="+", type=int, help="worker counts (0 1 2)")
        parser.add_argument("--batch", type=int, help="(8)")
    elif name == "eval":
        parser.add_argument("--images", type=int, help="images (5000)")
        parser.add_argument("--detections", type=int, help="detections per image (100)")
    elif name == "eval-workers":
        parser.add_argument("--images", type=int, help="generated validation images (200)")
        parser.add_argument("--workers", type=int, help="Ray Train workers of 1 CPU (2)")
        _repeats(parser)
    elif name == "inference":
        _configs(parser)
        _size(parser)
        _repeats(parser)
    elif name == "preflight":
        parser.add_argument("--images", type=int, help="images (118287, COCO train2017's)")
    elif name == "priors":
        parser.add_argument("--images", type=int, help="generated training images (400)")
        parser.add_argument("--style", choices=list(STYLES), help="the data's style (flat)")
        parser.add_argument("--workers", type=int, help="worker processes (2)")


def _options(args: argparse.Namespace, names) -> dict:
    """The options given among ``names``, lists as tuples."""
    return {
        key: tuple(value) if isinstance(value, list) else value
        for key, value in vars(args).items()
        if key in names and value is not None
    }


def _command(name: str, options: dict) -> list[str]:
    """The ``boxinst`` arguments that give ``options`` (recorded with the results)."""
    argv = ["bench", name]
    for key, value in options.items():
        argv.append("--" + key.replace("_", "-"))
        if value is not True:
            argv += [str(v) for v in value] if isinstance(value, tuple) else [str(value)]
    return argv


def _set_threads(args: argparse.Namespace) -> dict:
    """Apply ``--threads``; the option as recorded in the command."""
    if args.threads is None:
        return {}
    torch.set_num_threads(args.threads)
    return {"threads": args.threads}


def _check_load() -> dict:
    """The machine's load before the benchmark, with a warning when it is not idle."""
    load = machine_load()
    if not load["idle_at_start"]:
        print(
            f"warning: the machine is busy (1-minute load average "
            f"{load['load_average_1min_at_start']:.1f} on {os.cpu_count()} CPUs): the timings "
            "will be slower than on an idle machine; ratios measured side by side still hold",
            flush=True,
        )
    return load


def _write(args: argparse.Namespace, name: str, options: dict, payload: dict, load: dict) -> None:
    path = write_json(
        args.out or DEFAULT_OUT_DIR / f"{name}.json",
        {"benchmark": name, "environment": environment(_command(name, options), load), **payload},
    )
    print(f"\nwritten to {path}")


def _run_one(args: argparse.Namespace) -> int:
    module, _ = BENCHMARKS[args.benchmark]
    load = _check_load()
    threads = _set_threads(args)
    options = _options(args, inspect.signature(module.run).parameters)
    result = module.run(**options)
    print(module.summary(result))
    _write(args, args.benchmark, {**options, **threads}, {"result": result}, load)
    return 0


def _run_all(args: argparse.Namespace) -> int:
    load = _check_load()
    threads = _set_threads(args)
    results = {}
    for name, (module, _) in BENCHMARKS.items():
        print(f"== {name}", flush=True)
        results[name] = module.run(**_options(args, inspect.signature(module.run).parameters))
        print(module.summary(results[name]) + "\n", flush=True)
    _write(args, "all", {**_options(args, ALL_OPTIONS), **threads}, {"results": results}, load)
    return 0


def register(commands) -> None:
    """Add ``bench`` and its sub-commands to the ``boxinst`` CLI's sub-parsers."""
    bench = commands.add_parser("bench", help="benchmarks: loss, training, data, eval, inference")
    benchmarks = bench.add_subparsers(dest="benchmark", required=True)
    for name, (_, help_text) in BENCHMARKS.items():
        parser = benchmarks.add_parser(name, help=help_text)
        _arguments(name, parser)
        _threads(parser)
        parser.add_argument("--out", help=f"JSON file (default {DEFAULT_OUT_DIR}/{name}.json)")
        parser.set_defaults(handler=_run_one)
    everything = benchmarks.add_parser("all", help="every benchmark, one JSON")
    _size(everything)
    everything.add_argument("--small-size", type=int, help="side of the small model's images")
    _repeats(everything)
    everything.add_argument(
        "--images", type=int, help="images of the data, eval and eval-workers benchmarks"
    )
    _threads(everything)
    everything.add_argument("--out", help=f"JSON file (default {DEFAULT_OUT_DIR}/all.json)")
    everything.set_defaults(handler=_run_all)
