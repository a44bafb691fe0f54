"""The ``boxinst`` command line."""

from __future__ import annotations

import argparse
import sys

from boxinst.platform import quick_train


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
