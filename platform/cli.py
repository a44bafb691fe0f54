"""The ``boxinst`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from boxinst.dashboards import cli as compare_cli
from boxinst.dashboards import compare
from boxinst.dashboards import tables as compare_tables
from boxinst.platform.bench import cli as bench_cli
from boxinst.platform.console import TrainProgress
from boxinst.platform.data import check, colour_prior, synth, voc
from boxinst.platform.data.coco import DatasetError
from boxinst.platform.data.decode import ImageError
from boxinst.platform.evaluation import coco
from boxinst.platform.inference import load_trained, predict_to_folder
from boxinst.platform.jobs import ClusterAuthError, submit
from boxinst.platform.metrics import KIND_SWEEP, TAG_KIND
from boxinst.platform.preflight import PreflightError
from boxinst.platform.ray_cluster import ClusterUnreachable, start_ray
from boxinst.platform.spec import SpecError, load_spec
from boxinst.platform.sweep import (
    check_resumable,
    latest_sweep,
    run_sweep,
    summary_table,
    trial_specs,
)
from boxinst.platform.tracking.models import ModelUriError, is_model_uri, register_model
from boxinst.platform.tracking.runs import SPEC_ARTIFACT, RunFailedError, train_tracked
from boxinst.platform.tracking.tracker import (
    Tracker,
    TrackingUnreachable,
    check_reachable,
    default_tracking_uri,
    runs_page,
)
from boxinst.platform.training import local
from boxinst.platform.training.loop import (
    CheckpointError,
    build_val_dataset,
    evaluate_model,
    evaluation_loader,
    prepare_data,
    write_evaluation,
    write_metrics,
)

#: ``boxinst --help``'s first words (plain text: help is read in a terminal)
DESCRIPTION = (
    "Instance segmentation from box annotations: CondInst trained with BoxInst's box-only mask "
    "losses (or with masks, or both), run on Ray Train, swept on Ray Tune, tracked in MLflow. "
    "Start with: boxinst sweep quickstart"
)


def _demo(args: argparse.Namespace) -> int:
    """The demo spec's regimes trained briefly on this machine alone, and their masks' table."""
    spec = load_spec(args.spec, args.set)
    out = Path(args.out)
    print(
        f"demo {spec.name}: {spec.solver.max_iter} iterations per trial on generated shapes, a "
        "trial per CPU core in this machine's processes (no Ray, no MLflow)"
    )
    results = local.train_trials(spec, out)
    print(f"\n{local.table(results)}")
    print(
        "\nmask IoU: held-out instances' masks, predicted at their true locations, against the "
        f"true shapes (filled-box IoU: their boxes'). Checkpoints: {out}/<trial>/"
    )
    return 0


def _data_synth(args: argparse.Namespace) -> int:
    """Write the generated COCO-format dataset and print its statistics."""
    try:
        cfg = synth.SynthConfig(
            seed=args.seed,
            train_images=args.train_images,
            val_images=args.val_images,
            min_size=args.min_size,
            max_size=args.max_size,
            max_objects=args.max_objects,
            low_contrast=args.low_contrast,
        )
    except ValueError as error:  # names the setting, e.g. "train_images -1: at least 1"
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"writing {cfg.train_images} train and {cfg.val_images} val images to {args.out}")
    stats = synth.synthesize(Path(args.out), cfg)
    for split, s in stats.items():
        print(
            f"\n{split}: {s['images']} images, {s['instances']} instances "
            f"({s['instances_per_image']:.2f} per image), mean mask/box fill {s['box_fill']:.3f}, "
            f"mask AP of the filled true boxes {s['box_as_mask_AP']:.1f}"
        )
        for name, c in s["per_class"].items():
            print(f"  {name:<16} {c['instances']:>6d} instances  box fill {c['box_fill']:.3f}")
    groups = "; ".join(f"{g}: {', '.join(n)}" for g, n in synth.CLASS_GROUPS.items())
    print(f"\nclass groups: {groups}")
    return 0


def _data_check(args: argparse.Namespace) -> int:
    """Validate a dataset; exit status 1 when it has problems."""
    annotations, images = check.resolve(Path(args.path))
    images = Path(args.images) if args.images else images
    problems = check.check_dataset(annotations, images)
    for problem in problems:
        print(problem)
    if problems:
        print(f"\n{len(problems)} problem(s) in {annotations}")
        return 1
    print(f"{annotations}: no problems")
    return 0


def _data_inspect(args: argparse.Namespace) -> int:
    """The colour prior's statistics of a dataset: can the pairwise term work, with which τ."""
    annotations, images = check.resolve(Path(args.path))
    images = Path(args.images) if args.images else images
    problems = check.check_dataset(annotations, images)
    if problems:
        print("\n".join(map(str, problems)), file=sys.stderr)
        print(
            f"error: {annotations} has problems; `boxinst data check` lists them", file=sys.stderr
        )
        return 2
    settings = colour_prior.PairwiseSettings(args.kernel_size, args.dilation, args.theta)
    stats = colour_prior.inspect_dataset(
        annotations, images, tuple(args.tau), args.max_images, settings
    )
    print(colour_prior.format_report(stats, settings))
    return 0


def _data_convert_voc(args: argparse.Namespace) -> int:
    """Convert Pascal VOC 2012 (+ SBD) to COCO format: train_aug and val."""
    print(f"converting {args.voc} and {args.sbd or 'no SBD'} to {args.out} (train_aug, val)")
    try:
        splits = voc.convert_voc(
            Path(args.voc), Path(args.sbd) if args.sbd else None, Path(args.out)
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for split, dataset in splits.items():
        print(f"{split}: {len(dataset['images'])} images, {len(dataset['annotations'])} instances")
    return 0


def _tracking_uri(args: argparse.Namespace) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else ./mlflow.db; an HTTP server must
    answer."""
    uri = args.tracking_uri or default_tracking_uri()
    check_reachable(uri)
    return uri


def _tracker(args: argparse.Namespace, experiment: str):
    """The MLflow experiment of a command (``--experiment``, else ``experiment``), reached
    after the checks of the run's data and before any Ray resources are asked for."""
    return Tracker(args.experiment or experiment, _tracking_uri(args))


def _closing_lines(tracker, what: str) -> str:
    local = not tracker.tracking_uri.startswith(("http://", "https://"))
    server = f"http://127.0.0.1:{UI_PORT}" if local else tracker.tracking_uri
    start = "boxinst ui, then " if local else ""
    return (
        f"\nMLflow: experiment {tracker.experiment!r} in {tracker.tracking_uri}\n"
        f"  open its runs:       {start}{runs_page(server, tracker.experiment_id)}\n"
        f"  compare the runs:    boxinst compare {what}"
    )


def _train_spec(spec, args: argparse.Namespace, experiment: str) -> int:
    prepare_data({spec.name: spec})
    tracker = _tracker(args, experiment)
    start_ray(args.address, [spec], args.verbose)
    ray_run = args.name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"training {spec.name} ({spec.regime.name}) as run {ray_run} under {args.storage}")
    progress = TrainProgress(spec.regime.name, spec.solver.max_iter, spec.reporting.print_every)
    run_id, metrics = train_tracked(
        spec,
        args.storage,
        tracker,
        ray_run,
        spec.regime.name,
        callbacks=[progress],
        verbose=args.verbose,
    )
    print(coco.format_table({k: v for k, v in metrics.items() if "/AP" in k}))
    _register(tracker, run_id, spec.reporting.registered_model)
    print(_closing_lines(tracker, f"--runs {run_id}"))
    return 0


def _register(tracker: Tracker, run_id: str | None, name: str | None) -> None:
    """Register run ``run_id``'s model as the next version of ``name``, if a name is given."""
    if name is None:
        return
    if run_id is None:
        print(f"\nno finished run has the metric to choose by: nothing registered as {name}")
        return
    uri = register_model(tracker.client, run_id, name)
    run_name = tracker.client.get_run(run_id).info.run_name
    print(f"\nregistered the model of {run_name} as {uri}")
    print(f"  predict with it:     boxinst predict {uri} IMAGE...")


def _sweep_spec(spec, args: argparse.Namespace, experiment: str) -> int:
    # each trial's data (an axis may change it), checked before any trial starts
    trials = trial_specs(spec) if spec.sweep and spec.sweep.axes else {spec.name: spec}
    prepare_data(trials)
    resume = latest_sweep(args.storage, spec.name) if args.resume == LATEST else args.resume
    if resume:
        check_resumable(args.storage, resume)
    tracker = _tracker(args, experiment)
    start_ray(args.address, trials.values(), args.verbose)
    print(
        f"sweep {spec.name}: {len(trials)} trials, tracked in MLflow experiment "
        f"{tracker.experiment!r}"
    )
    parent, results = run_sweep(spec, args.storage, tracker, resume, args.verbose)
    print(f"\n{summary_table(spec, results)}")
    gap = compare.supervision_gap(tracker.client, parent)
    if gap is not None:
        print(f"\n{gap.title}\n{compare_tables.formatted(gap).to_string(index=False)}")
    if spec.reporting.registered_model:
        best = tracker.best_child(parent, spec.sweep.metric, spec.sweep.mode)
        _register(tracker, best, spec.reporting.registered_model)
    print(_closing_lines(tracker, tracker.client.get_run(parent).info.run_name))
    return 0


def _run_overrides(args: argparse.Namespace) -> list[str]:
    """The ``--set`` overrides of a run command, with ``--register NAME`` as one of them."""
    register = [f"reporting.registered_model={args.register}"] if args.register else []
    return [*args.set, *register]


def _train(args: argparse.Namespace) -> int:
    """Train one spec on Ray Train, tracked in MLflow."""
    spec = load_spec(args.spec, _run_overrides(args))
    return _train_spec(spec, args, spec.name)


def _sweep(args: argparse.Namespace) -> int:
    """Run a spec's sweep on Ray Tune, tracked in MLflow."""
    spec = load_spec(args.spec, _run_overrides(args))
    return _sweep_spec(spec, args, spec.name)


def _rerun(args: argparse.Namespace) -> int:
    """Run a logged run or sweep again from its logged spec, with overrides."""
    client = MlflowClient(_tracking_uri(args))
    try:
        run = client.get_run(args.run_id)
        with tempfile.TemporaryDirectory() as folder:
            spec = load_spec(
                client.download_artifacts(args.run_id, SPEC_ARTIFACT, folder),
                _run_overrides(args),
            )
    except MlflowException as error:
        raise SpecError(
            f"run {args.run_id}: cannot read its logged spec ({error.message})"
        ) from None
    experiment = client.get_experiment(run.info.experiment_id).name
    print(f"rerunning {run.info.run_name} ({args.run_id}) of experiment {experiment!r}")
    if run.data.tags.get(TAG_KIND) == KIND_SWEEP:
        return _sweep_spec(spec, args, experiment)
    return _train_spec(spec, args, experiment)


def _evaluate(args: argparse.Namespace) -> int:
    """COCO mask and box AP of a model on its spec's validation set, or of a results file."""
    groups = dict(coco.parse_group(text) for text in args.group)
    if (args.model is None) == (args.predictions is None):
        raise coco.EvaluationInputError(
            "evaluate a model (MODEL) or a results file (--predictions with --gt): one of them"
        )
    if args.model is not None:
        return _evaluate_model(args, groups)
    if args.gt is None:
        raise coco.EvaluationInputError("--predictions needs --gt, its ground truth")
    metrics = coco.evaluate_files(args.gt, args.predictions, groups)
    print(coco.format_table(metrics))
    if args.out:
        write_metrics(Path(args.out), metrics)
        print(f"\nmetrics written under {args.out}")
    return 0


def _evaluate_model(args: argparse.Namespace, groups: dict[str, list[str]]) -> int:
    """``evaluate MODEL``: its spec's evaluation, with ``--group`` as extra class groups."""
    if args.gt is not None:
        raise coco.EvaluationInputError(
            "--gt goes with --predictions: a model is evaluated on its spec's validation set "
            "(another with --set data.val.annotations=... --set data.val.images=...)"
        )
    uri = _tracking_uri(args) if is_model_uri(args.model) else None
    overrides = [*args.set, *(f"evaluation.groups.{g}={json.dumps(m)}" for g, m in groups.items())]
    model, spec, _ = load_trained(args.model, overrides, uri)
    dataset = build_val_dataset(spec)
    print(f"evaluating {args.model} on {len(dataset)} images of {spec.data.val.annotations}")
    metrics, results = evaluate_model(spec, model, evaluation_loader(dataset))
    print(coco.format_table(metrics))
    if args.out:
        write_evaluation(Path(args.out), metrics, results, dataset, spec.evaluation.overlays)
        print(f"\nmetrics, predictions and overlays written under {args.out}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    """Predictions of a checkpoint on image files and folders: COCO JSON (and overlays)."""
    out = Path(args.out)
    if args.workers:
        start_ray(args.address, [], args.verbose)
    images, detections = predict_to_folder(
        args.checkpoint,
        args.images,
        out,
        args.set,
        _tracking_uri(args) if is_model_uri(args.checkpoint) else None,
        overlays=args.overlays,
        min_score=args.min_score,
        batch_size=args.batch_size,
        loader_workers=args.loader_workers,
        workers=args.workers,
    )
    print(f"{detections} detections on {images} image(s), written to {out / 'predictions.json'}")
    if args.overlays:
        print(f"one overlay PNG per image in {out}")
    return 0


def _submit(args: argparse.Namespace) -> int:
    """Submit a train or sweep of a spec to a Ray cluster through the Ray Jobs API."""
    job_id = submit(args.spec, args.set, args.address, args.storage, args.experiment)
    print(f"submitted job {job_id} to {args.address}")
    print(f"  follow it:  ray job logs --address {args.address} --follow {job_id}")
    return 0


def _ui(args: argparse.Namespace) -> int:
    """The MLflow UI of the local store, on 127.0.0.1 unless told otherwise."""
    uri = args.tracking_uri or default_tracking_uri()
    if not uri.startswith("sqlite") and "://" in uri:
        print(f"runs are tracked by the server {uri}: open it in a browser")
        return 0
    print(f"MLflow UI of {uri} on http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    command += ["--host", args.host, "--port", str(args.port)]
    # One worker and no GenAI job runner, enough for one user's local UI: it answers in 13 s on
    # an idle 2-core machine instead of 30 s (MLflow's 4 workers and job runner), and within
    # the tests' 3 minutes while trainings load the cores, where the default missed 1 minute.
    command += ["--workers", "1"]
    os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    # replaced by the server process, so that stopping this command stops the server
    os.execv(sys.executable, command)


#: The port of ``boxinst ui``.
UI_PORT = 5000
MODEL_HELP = "a checkpoint.pt or its folder, or an MLflow model: models:/NAME/VERSION"
TRACKING_HELP = "MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db)"

#: ``--resume`` without a name: the latest sweep of the spec.
LATEST = "latest"


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the spec (value read as YAML), e.g. --set solver.base_lr=0.02",
    )
    _add_placement_options(parser)


def _add_placement_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage",
        default="runs",
        help="checkpoints and Ray results: a folder or a URI such as s3://bucket/path (runs)",
    )
    parser.add_argument("--experiment", help="MLflow experiment (default: the spec's name)")
    parser.add_argument("--tracking-uri", help=TRACKING_HELP)
    parser.add_argument(
        "--register",
        metavar="NAME",
        help="register the model (a sweep: its best trial's) in MLflow's model registry as NAME",
    )
    parser.add_argument(
        "--address", help="an existing Ray cluster (e.g. auto, or ray://HEAD:10001); default: local"
    )
    parser.add_argument(
        "--verbose", action="store_true", help="Ray's own output too: Tune's tables, Train's logs"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="boxinst", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)

    demo_cmd = commands.add_parser(
        "demo", help="train each regime briefly on generated shapes, here, without Ray (CPU)"
    )
    demo_cmd.add_argument("spec", nargs="?", default="demo", help="a spec with trials (demo)")
    demo_cmd.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    demo_cmd.add_argument("--out", default="outputs/demo", help="checkpoints' folder")
    demo_cmd.set_defaults(handler=_demo)

    data = commands.add_parser("data", help="datasets: generate, check, convert")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    synth_cmd = data_commands.add_parser(
        "synth", help="write the generated shapes dataset in COCO format (train and val)"
    )
    defaults = synth.SynthConfig()
    synth_cmd.add_argument("out", help="output folder")
    synth_cmd.add_argument("--seed", type=int, default=defaults.seed)
    synth_cmd.add_argument("--train-images", type=int, default=defaults.train_images)
    synth_cmd.add_argument("--val-images", type=int, default=defaults.val_images)
    synth_cmd.add_argument("--min-size", type=int, default=defaults.min_size)
    synth_cmd.add_argument("--max-size", type=int, default=defaults.max_size)
    synth_cmd.add_argument("--max-objects", type=int, default=defaults.max_objects)
    synth_cmd.add_argument(
        "--low-contrast",
        type=float,
        default=defaults.low_contrast,
        help="share of objects coloured like the background under them",
    )
    synth_cmd.set_defaults(handler=_data_synth)

    check_cmd = data_commands.add_parser(
        "check", help="validate a COCO-format dataset and list every problem with its record"
    )
    check_cmd.add_argument("path", help="annotations JSON, or a folder with annotations.json")
    check_cmd.add_argument("--images", help="image folder (default: images/ beside the JSON)")
    check_cmd.set_defaults(handler=_data_check)

    inspect_cmd = data_commands.add_parser(
        "inspect",
        help="the colour prior of the pairwise term on a dataset: which τ, can it work at all",
    )
    inspect_cmd.add_argument("path", help="annotations JSON, or a folder with annotations.json")
    inspect_cmd.add_argument("--images", help="image folder (default: images/ beside the JSON)")
    inspect_cmd.add_argument(
        "--tau",
        type=float,
        nargs="+",
        default=list(colour_prior.TAUS),
        help="thresholds to measure",
    )
    inspect_cmd.add_argument("--max-images", type=int, default=300, help="images drawn (300)")
    loss_defaults = colour_prior.PairwiseSettings()
    inspect_cmd.add_argument("--kernel-size", type=int, default=loss_defaults.kernel_size)
    inspect_cmd.add_argument("--dilation", type=int, default=loss_defaults.dilation)
    inspect_cmd.add_argument("--theta", type=float, default=loss_defaults.theta)
    inspect_cmd.set_defaults(handler=_data_inspect)

    convert = data_commands.add_parser(
        "convert-voc", help="Pascal VOC 2012 + SBD to COCO format (train_aug 10,582 / val 1,449)"
    )
    convert.add_argument("--voc", required=True, help="VOC2012 folder (JPEGImages, Segmentation*)")
    convert.add_argument("--sbd", help="SBD 'dataset' folder (img, inst, train.txt, val.txt)")
    convert.add_argument("--out", required=True, help="output folder")
    convert.set_defaults(handler=_data_convert_voc)

    train = commands.add_parser("train", help="train one spec on Ray Train, tracked in MLflow")
    train.add_argument("spec", help="a spec file, or the name of a shipped spec (quickstart, ...)")
    _add_run_options(train)
    train.add_argument("--name", help="the run's name under the storage; an existing one resumes")
    train.set_defaults(handler=_train)

    sweep = commands.add_parser("sweep", help="run a spec's sweep on Ray Tune, tracked in MLflow")
    sweep.add_argument("spec", help="a spec file, or the name of a shipped spec (quickstart, ...)")
    _add_run_options(sweep)
    sweep.add_argument(
        "--resume",
        nargs="?",
        const=LATEST,
        metavar="SWEEP",
        help="continue an interrupted sweep (default: the spec's latest) instead of a new one",
    )
    sweep.set_defaults(handler=_sweep)

    rerun = commands.add_parser(
        "rerun", help="run a logged run or sweep again from its logged spec, with overrides"
    )
    rerun.add_argument("run_id", help="the MLflow run id of a run or of a sweep's parent run")
    _add_run_options(rerun)
    rerun.set_defaults(handler=_rerun, name=None, resume=None)

    submit = commands.add_parser(
        "submit", help="submit a spec's training or sweep to a Ray cluster (Ray Jobs API)"
    )
    submit.add_argument("spec", help="a spec file, or the name of a shipped spec")
    submit.add_argument(
        "--address", required=True, help="the cluster's Ray Jobs address, e.g. http://HEAD:8265"
    )
    submit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    submit.add_argument("--storage", default="runs", help="storage on the cluster (runs)")
    submit.add_argument("--experiment", help="MLflow experiment (default: the spec's name)")
    submit.set_defaults(handler=_submit)

    evaluate = commands.add_parser(
        "evaluate",
        help="COCO mask and box AP of a model on its validation set, or of a results file",
    )
    evaluate.add_argument(
        "model", nargs="?", help=f"{MODEL_HELP}; or, instead, --predictions and --gt"
    )
    evaluate.add_argument("--predictions", help="a COCO results JSON to score instead of a model")
    evaluate.add_argument("--gt", help="the COCO-format ground-truth JSON of --predictions")
    evaluate.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="NAME=cat1,cat2",
        help="also score a class group (category names or ids); repeatable",
    )
    evaluate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    evaluate.add_argument("--tracking-uri", help=TRACKING_HELP)
    evaluate.add_argument(
        "--out",
        help="write evaluation/metrics.json under this folder (a model's: with its "
        "predictions/results.json and overlays/)",
    )
    evaluate.set_defaults(handler=_evaluate)

    predict = commands.add_parser(
        "predict", help="masks of a checkpoint on images and folders: COCO JSON, overlays"
    )
    predict.add_argument("checkpoint", help=MODEL_HELP)
    predict.add_argument("--tracking-uri", help=TRACKING_HELP)
    predict.add_argument(
        "images", nargs="+", help="image files, and folders (their images, recursively)"
    )
    predict.add_argument("--out", default="outputs/predict", help="output folder")
    predict.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    predict.add_argument("--overlays", action="store_true", help="draw one PNG per image")
    predict.add_argument(
        "--min-score", type=float, default=0.3, help="lowest score drawn in the overlays"
    )
    predict.add_argument("--batch-size", type=int, default=8, help="images per batch (8)")
    predict.add_argument(
        "--loader-workers", type=int, default=2, help="processes reading the images (2)"
    )
    predict.add_argument(
        "--workers",
        type=int,
        default=0,
        help="Ray actors sharing the images, a GPU each where the cluster has them "
        "(default: predict in this process)",
    )
    predict.add_argument("--address", help="Ray cluster of --workers (default: a local Ray)")
    predict.add_argument("--verbose", action="store_true", help="Ray's own output too")
    predict.set_defaults(handler=_predict)

    ui = commands.add_parser("ui", help="the MLflow UI of the local store, on 127.0.0.1")
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    ui.add_argument("--port", type=int, default=UI_PORT)
    ui.add_argument("--tracking-uri", help="(default: MLFLOW_TRACKING_URI, else ./mlflow.db)")
    ui.set_defaults(handler=_ui)

    compare_cli.register(commands, default_tracking_uri)
    bench_cli.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not getattr(args, "verbose", False):  # MLflow's INFO lines (creating a store's tables)
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        return args.handler(args)
    except (
        SpecError,
        PreflightError,
        FileNotFoundError,
        TrackingUnreachable,
        ClusterAuthError,
        ClusterUnreachable,
        CheckpointError,
        DatasetError,
        ImageError,
        FileExistsError,
        ModelUriError,
        coco.EvaluationInputError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RunFailedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
