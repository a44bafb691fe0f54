"""The ``boxinst compare`` command, registered on the boxinst CLI by :func:`register`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from mlflow.tracking import MlflowClient

from boxinst.dashboards import compare, runs, tables

HELP = """Compare sweeps the way the BoxInst paper does: tables in its layouts (regimes, tau,
neighbourhood, semi-supervised; mean ± std over seeds; the paper's numbers beside ours for its
recipes), plots and mask overlays, printed and written as a self-contained HTML report that is
also logged on each sweep's parent run as report/compare.html."""


def _compare(args: argparse.Namespace) -> int:
    if not args.targets and not args.runs:
        print("error: name a sweep, an experiment, or runs with --runs", file=sys.stderr)
        return 2
    client = MlflowClient(args.tracking_uri or args.default_tracking_uri())
    try:
        comparison = compare.compare(client, args.targets, args.runs)
    except runs.SelectionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for table in comparison.tables:
        print(f"\n{table.title}\n{tables.formatted(table).to_string(index=False)}")
    logged = compare.write(client, comparison, Path(args.out))
    print(f"\nreport written to {args.out}")
    for run_id in logged:
        print(f"logged as report/compare.html on sweep run {run_id}")
    return 0


def register(commands: argparse._SubParsersAction, default_tracking_uri: Callable[[], str]) -> None:
    """Add ``compare`` to the boxinst CLI's subcommands; ``default_tracking_uri`` gives the
    store the platform tracks runs in when no URI is named."""
    parser = commands.add_parser(
        "compare", help="tables, plots and an HTML report of sweeps and runs", description=HELP
    )
    parser.add_argument(
        "targets",
        nargs="*",
        metavar="SWEEP_OR_EXPERIMENT",
        help="a sweep's parent run id, an experiment name (all its sweeps), or a sweep's run "
        "name (the latest sweep of that name)",
    )
    parser.add_argument("--runs", nargs="+", default=[], metavar="ID", help="single runs by id")
    parser.add_argument("--out", default="report.html", help="the HTML report (report.html)")
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)",
    )
    parser.set_defaults(handler=_compare, default_tracking_uri=default_tracking_uri)
