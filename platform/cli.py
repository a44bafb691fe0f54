"""The ``boxinst`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from boxinst.platform import evaluation, quick_train
from boxinst.platform.data import check, synth, voc


def _demo(args: argparse.Namespace) -> int:
    """Short trainings on generated shapes, one per regime, and a table of their mask quality."""
    configs = [
        quick_train.QuickTrainConfig(regime=regime, iterations=args.iterations, seed=args.seed)
        for regime in args.regimes
    ]
    print(
        f"training {', '.join(args.regimes)}: {configs[0].iterations} iterations each on "
        f"{configs[0].train_images} generated images, side by side on the CPU cores"
    )
    results = quick_train.run_parallel(configs, log_every=args.log_every)

    print(f"\n{'regime':<18} {'mask IoU':>9} {'box-as-mask IoU':>16} {'instances':>10} {'time':>7}")
    for regime, m in zip(args.regimes, results, strict=True):
        print(
            f"{regime:<18} {m['mask_iou']:>9.3f} {m['box_iou']:>16.3f} "
            f"{m['instances']:>10d} {m['seconds']:>6.0f}s"
        )
    print(
        "\nmask IoU: held-out instances' masks, predicted at their ground-truth locations, "
        "against the true shapes"
    )
    return 0


def _data_synth(args: argparse.Namespace) -> int:
    """Write the generated COCO-format dataset and print its statistics."""
    cfg = synth.SynthConfig(
        seed=args.seed,
        train_images=args.train_images,
        val_images=args.val_images,
        min_size=args.min_size,
        max_size=args.max_size,
        max_objects=args.max_objects,
        low_contrast=args.low_contrast,
    )
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
    problems = check.check_dataset(annotations, Path(args.images) if args.images else images)
    for problem in problems:
        print(problem)
    if problems:
        print(f"\n{len(problems)} problem(s) in {annotations}")
        return 1
    print(f"{annotations}: no problems")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    """Score a COCO results file with the training's own evaluation code."""
    try:
        groups = dict(evaluation.parse_group(text) for text in args.group)
        metrics = evaluation.evaluate_files(args.gt, args.predictions, groups)
    except evaluation.EvaluationInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(evaluation.format_table(metrics))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(metrics, indent=2))
        print(f"\nmetrics written to {args.out}")
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
    for split, coco in splits.items():
        print(f"{split}: {len(coco['images'])} images, {len(coco['annotations'])} instances")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="boxinst", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="train briefly on generated shapes under each regime (CPU)"
    )
    demo.add_argument(
        "--regimes", nargs="+", default=list(quick_train.REGIMES), choices=list(quick_train.REGIMES)
    )
    demo.add_argument("--iterations", type=int, default=quick_train.QuickTrainConfig.iterations)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--log-every", type=int, default=50)
    demo.set_defaults(handler=_demo)

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

    convert = data_commands.add_parser(
        "convert-voc", help="Pascal VOC 2012 + SBD to COCO format (train_aug 10,582 / val 1,449)"
    )
    convert.add_argument("--voc", required=True, help="VOC2012 folder (JPEGImages, Segmentation*)")
    convert.add_argument("--sbd", help="SBD 'dataset' folder (img, inst, train.txt, val.txt)")
    convert.add_argument("--out", required=True, help="output folder")
    convert.set_defaults(handler=_data_convert_voc)

    evaluate = commands.add_parser(
        "evaluate", help="COCO mask and box AP of a results file, over all classes and groups"
    )
    evaluate.add_argument("--gt", required=True, help="COCO-format ground-truth JSON")
    evaluate.add_argument("--predictions", required=True, help="COCO results JSON")
    evaluate.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="NAME=cat1,cat2",
        help="also score a class group (category names or ids); repeatable",
    )
    evaluate.add_argument("--out", help="write the metrics as JSON, keyed by metric name")
    evaluate.set_defaults(handler=_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
