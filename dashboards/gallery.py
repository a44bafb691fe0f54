"""Mask overlays side by side: per configuration, the ``overlays/*.png`` of one of its trials,
lined up by image name so the same validation image sits in one row across regimes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from tempfile import TemporaryDirectory

import pandas as pd
from mlflow.tracking import MlflowClient

from boxinst.dashboards.runs import FINISHED, download_overlays


def collect(
    client: MlflowClient, trials: pd.DataFrame, labels: list[str], images: int = 4
) -> tuple[list[str], dict[str, dict[str, bytes]]]:
    """Image names (at most ``images``, those most configurations have) and
    ``{configuration label: {image name: PNG bytes}}`` in the order of ``labels``, from each
    configuration's first finished trial with overlays (lowest seed first), else its first
    unfinished one."""
    order = trials.assign(unfinished=trials["status"] != FINISHED)
    order = order.sort_values(["unfinished", "seed"] if "seed" in order else ["unfinished"])
    found: dict[str, dict[str, bytes]] = {}
    with TemporaryDirectory() as folder:
        for label in labels:
            for run_id in order.loc[order["label"] == label, "run_id"]:
                files = download_overlays(client, run_id, Path(folder) / run_id)
                if files:
                    found[label] = {f.stem: f.read_bytes() for f in files}
                    break
    counts = Counter(name for overlays in found.values() for name in overlays)
    names = sorted(counts, key=lambda n: (-counts[n], n))[:images]
    return names, {label: {n: o[n] for n in names if n in o} for label, o in found.items()}
