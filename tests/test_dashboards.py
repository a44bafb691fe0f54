"""``boxinst compare`` against a real MLflow server: a sweep logged with the platform's Tracker
(two seeds per regime, a τ axis, a semi-supervised regime, a failed and a running trial, mask
overlays) must come out in the paper's tables with exactly the logged numbers, and its HTML report
must render in headless Chromium with its plots and without console errors."""

import argparse
import base64
import io
import itertools
import json
import math
import re
import shutil
import statistics
import subprocess
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from boxinst.dashboards import cli, compare, paper, runs, tables
from boxinst.platform.cli import main as boxinst_main
from boxinst.platform.metrics import (
    AP_STATS,
    BOX_AS_MASK,
    IMAGES_PER_SECOND,
    KIND_SWEEP,
    KIND_TRIAL,
    TAG_AXES,
    TAG_KIND,
    TAG_REGIME,
    TAG_SPEC,
    TRAIN_LOSS,
    metric_name,
)
from boxinst.platform.tracking.tracker import Tracker

pytestmark = pytest.mark.integration

CHROMIUM_INSTALL = "apt-get update && apt-get install -y chromium"
SPEC = "coco_r50_1x"  # a paper recipe: Table 3's numbers go beside ours
REGIMES = {
    "box_only": {"masks": "none", "projection": True, "pairwise": True},
    "projection_only": {"masks": "none", "projection": True, "pairwise": False},
    "voc20_masks_proj_pairwise": {
        "masks": {"classes": ["voc20"]},
        "projection": True,
        "pairwise": True,
    },
    "fully_supervised": {"masks": "all", "projection": False, "pairwise": False},
}
# (regime, tau, seed, status): two finished seeds per configuration, a failed and a running trial
TRIALS = [
    *((regime, 0.1, seed, "FINISHED") for regime in REGIMES for seed in (0, 1)),
    *(("box_only", 0.2, seed, "FINISHED") for seed in (0, 1)),
    ("projection_only", 0.1, 2, "FAILED"),
    ("fully_supervised", 0.1, 2, "RUNNING"),
]
SEGM = [metric_name("segm", s) for s in AP_STATS]
UNSEEN = [metric_name("segm", s, "unseen") for s in AP_STATS[:3]]
BASELINE = [f"{BOX_AS_MASK}/{s}" for s in AP_STATS]


def final_metrics(index: int, regime: str) -> dict[str, float]:
    """Distinct, known numbers for trial ``index``."""
    values = {m: 10.0 + 3 * index + 0.7 * j + (0.37 * index) ** 2 for j, m in enumerate(SEGM)}
    values |= {f"bbox/{s}": 30.0 + index + j for j, s in enumerate(AP_STATS)}
    values |= {m: 5.0 + 0.5 * index + 0.11 * j for j, m in enumerate(BASELINE)}
    if regime.startswith("voc20"):
        values |= {m: 8.0 + 1.9 * index + j for j, m in enumerate(UNSEEN)}
    return values


def overlay_png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", (24, 24), (90, 90, 90))
    image.paste(colour, (6, 6, 18, 18))
    image.save(buffer, "PNG")
    return buffer.getvalue()


def log_sweep(uri: str, experiment: str, folder: Path, trials=TRIALS, spec=SPEC) -> dict:
    """A sweep as the platform logs it; returns its ids and the trials' logged metrics."""
    tracker = Tracker(experiment, uri)
    parent = tracker.start(
        f"{experiment}-sweep", {"name": spec}, tags={TAG_KIND: KIND_SWEEP, TAG_SPEC: spec}
    )
    logged = []
    for index, (regime, tau, seed, status) in enumerate(trials):
        axes = {"regime": regime, "seed": seed, "loss.pairwise_tau": tau}
        params = {"name": spec, "seed": seed, "regime": {"name": regime, **REGIMES[regime]}}
        params["loss"] = {"pairwise_tau": tau, "pairwise_kernel_size": 3, "pairwise_dilation": 2}
        tags = {
            TAG_KIND: KIND_TRIAL,
            TAG_SPEC: spec,
            TAG_REGIME: regime,
            TAG_AXES: json.dumps(axes),
        }
        run_id = tracker.start(f"{regime} tau={tau} seed={seed}", params, parent, tags)
        metrics = final_metrics(index, regime)
        for step in (0, 15, 30):  # the AP numbers come with the last iteration's losses
            train = {TRAIN_LOSS: 3.0 / (1 + step) + index, IMAGES_PER_SECOND: 40.0 + index + step}
            tracker.log_metrics(run_id, train | (metrics if step == 30 else {}), step=step)
        if seed == 0:
            image = folder / f"{index}" / "17.png"
            image.parent.mkdir()
            image.write_bytes(overlay_png(((40 * index) % 256, 120, 200)))
            tracker.log_artifact(run_id, image, "overlays")
        if status != "RUNNING":
            tracker.finish(run_id, status)
        logged.append({"run_id": run_id, "regime": regime, "tau": tau, "seed": seed})
        logged[-1] |= {"status": status, "metrics": metrics}
    return {"parent": parent, "name": f"{experiment}-sweep", "trials": logged}


@pytest.fixture(scope="module")
def sweep(mlflow_server, tmp_path_factory):
    return log_sweep(mlflow_server, "dashboards", tmp_path_factory.mktemp("overlays"))


@pytest.fixture(scope="module")
def comparison(mlflow_server, sweep):
    return compare.compare(MlflowClient(mlflow_server), [sweep["parent"]], [])


def table(comparison, kind: str, title_part: str = "") -> tables.Table:
    (found,) = [t for t in comparison.tables if t.kind == kind and title_part in t.title]
    return found.frame


def expected(sweep, metric: str, **where) -> tuple[float, float]:
    """Mean and sample std of a metric over the finished trials matching ``where``."""
    values = [
        t["metrics"][metric]
        for t in sweep["trials"]
        if t["status"] == "FINISHED" and all(t[k] == v for k, v in where.items())
    ]
    return statistics.mean(values), statistics.stdev(values)


def ours(frame, **where):
    """The one row of our own (not the paper's) with these identity values."""
    rows = frame[frame["source"] == tables.OURS]
    for key, value in where.items():
        rows = rows[rows[key] == value]
    assert len(rows) == 1, rows
    return rows.iloc[0]


CONFIGURATIONS = [("box_only", 0.1), ("box_only", 0.2), ("projection_only", 0.1)]
CONFIGURATIONS += [("voc20_masks_proj_pairwise", 0.1), ("fully_supervised", 0.1)]


@pytest.mark.parametrize(("regime", "tau"), CONFIGURATIONS)
def test_regimes_table_is_mean_and_std_over_seeds_of_the_logged_ap(comparison, sweep, regime, tau):
    row = ours(table(comparison, "regimes"), regime=regime, **{"loss.pairwise_tau": tau})
    for metric in SEGM:
        mean, std = expected(sweep, metric, regime=regime, tau=tau)
        assert row[metric] == pytest.approx(mean, abs=1e-9)
        assert row[metric + tables.STD] == pytest.approx(std, abs=1e-9)
    masks = REGIMES[regime]["masks"]
    assert row["masks"] == (masks if isinstance(masks, str) else "classes: voc20")
    assert row["projection"] == REGIMES[regime]["projection"]


def test_box_as_mask_row_pools_every_finished_trial(comparison, sweep):
    row = ours(table(comparison, "regimes"), regime=paper.BOX_AS_MASK_ROW)
    for column, metric in zip(SEGM, BASELINE, strict=True):
        mean, std = expected(sweep, metric)
        assert (row[column], row[column + tables.STD]) == pytest.approx((mean, std), abs=1e-9)
    assert row["trials"] == "10 finished, 1 failed, 1 running"


def test_failed_and_running_trials_are_listed_with_empty_ap(comparison, sweep):
    frame = table(comparison, "trials")
    assert len(frame) == len(TRIALS)
    for trial in sweep["trials"]:
        rows = frame[frame["run"] == f"{trial['regime']} tau={trial['tau']} seed={trial['seed']}"]
        assert len(rows) == 1
        row = rows.iloc[0]
        assert row["status"] == trial["status"]
        if trial["status"] == "FINISHED":
            assert row["segm/AP"] == trial["metrics"]["segm/AP"]
        else:  # the running trial logged a segm/AP mid-training: not a result yet
            assert row[["segm/AP", "segm/AP50", "bbox/AP"]].isna().all()
    regimes = table(comparison, "regimes")
    assert ours(regimes, regime="projection_only")["trials"] == "2 finished, 1 failed"
    assert ours(regimes, regime="fully_supervised")["trials"] == "2 finished, 1 running"
    (sweep_row,) = table(comparison, "sweeps").to_dict("records")
    assert sweep_row["status"] == "RUNNING" and sweep_row["sweep_id"] == sweep["parent"]
    assert sweep_row["trials"] == "10 finished, 1 failed, 1 running"


def test_tau_table_has_a_row_per_threshold_of_the_pairwise_trials(comparison, sweep):
    frame = table(comparison, "tau")
    mine = frame[frame["source"] == tables.OURS]
    assert set(mine["regime"]) == {"box_only", "voc20_masks_proj_pairwise"}
    for tau in (0.1, 0.2):
        mean, std = expected(sweep, "segm/AP", regime="box_only", tau=tau)
        row = ours(frame, regime="box_only", **{tables.TAU: tau})
        assert (row["segm/AP"], row["segm/AP" + tables.STD]) == pytest.approx((mean, std))
    assert list(mine[tables.TAU])[:2] == [0.1, 0.1] and list(mine[tables.TAU])[-1] == 0.2


def test_semi_supervised_table_has_all_class_and_unseen_ap(comparison, sweep):
    frame = table(comparison, "semi", "'unseen'")
    row = ours(frame, regime="voc20_masks_proj_pairwise")
    for metric in [*SEGM[:3], *UNSEEN]:
        mean, std = expected(sweep, metric, regime="voc20_masks_proj_pairwise")
        assert (row[metric], row[metric + tables.STD]) == pytest.approx((mean, std))
    assert ours(frame, regime="box_only", **{tables.TAU: 0.2})[UNSEEN].isna().all()


def test_no_table_for_an_axis_the_runs_do_not_have(comparison):
    kinds = [t.kind for t in comparison.tables]
    assert kinds == ["sweeps", "trials", "regimes", "gap", "tau", "semi"]


def test_supervision_gap_pairs_box_supervision_with_full_supervision_by_seed(sweep, comparison):
    rows = {
        (r["regime"], r["loss.pairwise_tau"]): r for _, r in table(comparison, "gap").iterrows()
    }
    assert set(rows) == {("box_only", 0.1), ("box_only", 0.2), ("projection_only", 0.1)}
    ap, baseline = "segm/AP", f"{BOX_AS_MASK}/AP"

    def finished(regime, tau=0.1):
        trials = [t for t in sweep["trials"] if (t["regime"], t["tau"]) == (regime, tau)]
        return {t["seed"]: t["metrics"] for t in trials if t["status"] == "FINISHED"}

    full = finished("fully_supervised")
    for regime in ("box_only", "projection_only"):
        mine, row = finished(regime), rows[(regime, 0.1)]
        assert row[ap] == pytest.approx(statistics.mean(m[ap] for m in mine.values()))
        assert row[tables.WORST_SEED] == pytest.approx(min(m[ap] for m in mine.values()))
        full_mean = statistics.mean(m[ap] for m in full.values())
        assert row[tables.FULL_AP] == pytest.approx(full_mean)
        assert row[tables.RATIO] == pytest.approx(row[ap] / full_mean)
        ratios = [mine[seed][ap] / full[seed][ap] for seed in mine]  # seed by seed
        assert row[tables.WORST_RATIO] == pytest.approx(min(ratios))
        worst = min(m[ap] / m[baseline] for m in mine.values())
        assert row[tables.WORST_BOX_RATIO] == pytest.approx(worst)
    assert math.isnan(rows[("box_only", 0.2)][tables.FULL_AP])  # no full supervision at τ 0.2
    assert "1 failed" in rows[("projection_only", 0.1)]["trials"]


def test_a_sweeps_own_settings_do_not_tell_configurations_apart():
    """Two sweeps of one spec with other axes (``--set sweep.axes.seed=[1,2]``) compare as one
    set of configurations; the sweeps' settings never become a column beside the sweep's name."""
    trials = pd.DataFrame(
        {
            "regime": ["box_only", "box_only"],
            "spec": ["fidelity", "fidelity"],
            "sweep": ["fidelity-1", "fidelity-2"],
            "sweep.axes.seed": ["[0, 1, 2]", "[1, 2]"],
            "loss.pairwise_tau": ["0.1", "0.2"],
            "seed": ["0", "1"],
        }
    )
    trials.attrs["params"] = ["loss.pairwise_tau", "seed", "sweep", "sweep.axes.seed"]
    assert tables.setting_keys(trials) == ["regime", "loss.pairwise_tau"]


def test_paper_numbers_sit_beside_ours_marked_as_the_papers(comparison):
    rows = table(comparison, "regimes").to_dict("records")
    beside = {
        mine["regime"]: theirs
        for mine, theirs in itertools.pairwise(rows)
        if mine["source"] == tables.OURS and theirs["source"] != tables.OURS
    }
    assert beside[paper.BOX_AS_MASK_ROW]["segm/AP"] == 10.6  # Table 3, "box mask"
    assert beside["projection_only"]["segm/AP"] == 21.2  # Table 3, L_proj
    assert beside["box_only"]["segm/AP"] == 30.7  # Table 3, both terms
    assert beside["fully_supervised"]["segm/AP"] == 35.6  # Table 2, dice loss
    assert all(r["source"].startswith("paper, Table") for r in rows if r["source"] != tables.OURS)
    assert [r["segm/AP75"] for r in rows if r["source"] != tables.OURS] == [4.6, 17.7, 31.1, 37.8]
    text = tables.formatted(comparison.tables[2]).to_string()
    assert "paper, Table 3, COCO val2017" in text and "30.7" in text


def test_cli_prints_tables_writes_and_logs_the_report(mlflow_server, sweep, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="boxinst")
    cli.register(parser.add_subparsers(dest="command", required=True), lambda: mlflow_server)
    out = tmp_path / "report.html"
    args = parser.parse_args(
        ["compare", sweep["name"], "--out", str(out), "--tracking-uri", mlflow_server]
    )
    assert args.handler(args) == 0
    printed = capsys.readouterr().out
    assert "Supervision regimes (paper Table 3)" in printed and "1 failed" in printed
    box_only = expected(sweep, "segm/AP", regime="box_only", tau=0.2)
    assert f"{box_only[0]:.2f} ± {box_only[1]:.2f}" in printed
    client = MlflowClient(mlflow_server)
    logged = client.download_artifacts(sweep["parent"], "report/compare.html", str(tmp_path))
    assert Path(logged).read_text() == out.read_text()
    assert "data:image/png;base64," in out.read_text()


def test_unknown_names_are_clear_errors(mlflow_server, capsys):
    client = MlflowClient(mlflow_server)
    with pytest.raises(runs.SelectionError, match="neither a sweep"):
        compare.compare(client, ["no-such-sweep"], [])
    parser = argparse.ArgumentParser(prog="boxinst")
    cli.register(parser.add_subparsers(), lambda: mlflow_server)
    args = parser.parse_args(["compare", "--runs", "0" * 32])
    assert args.handler(args) == 2
    assert "no run with id" in capsys.readouterr().err


def test_experiment_name_and_local_sqlite_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the store's artifacts go to ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trials = [("box_only", 0.1, 0, "FINISHED"), ("box_only", 0.1, 1, "KILLED")]
    logged = log_sweep(uri, "local", tmp_path, trials, spec="quickstart")
    client = MlflowClient(uri)
    result = compare.compare(client, ["local"], [])
    row = ours(table(result, "regimes"), regime="box_only")
    assert row["segm/AP"] == logged["trials"][0]["metrics"]["segm/AP"]
    assert row["trials"] == "1 finished, 1 killed"
    assert (table(result, "regimes")["source"] == tables.OURS).all()  # not a paper recipe
    # `boxinst compare` reads the platform's default store (./mlflow.db) when given no URI
    assert boxinst_main(["compare", "local", "--out", str(tmp_path / "r.html")]) == 0
    assert [a.path for a in client.list_artifacts(logged["parent"], "report")] == [
        "report/compare.html"
    ]


# --- the report in a browser ------------------------------------------------------------------


def render(page: Path, screenshot: Path, size=(1400, 6000)) -> list[str]:
    """Load ``page`` in headless Chromium, save a screenshot; the console messages it logged."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail(f"Chromium is needed to check the HTML report; install it: {CHROMIUM_INSTALL}")
    with TemporaryDirectory() as profile:
        result = subprocess.run(
            [
                binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}",
                f"--window-size={size[0]},{size[1]}", f"--screenshot={screenshot}", page.as_uri(),
            ],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert screenshot.is_file(), result.stderr[-3000:]
    return [line for line in result.stderr.splitlines() if re.search(r":CONSOLE|Uncaught", line)]


def test_browser_check_catches_console_errors(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    (message,) = render(page, tmp_path / "broken.png", (300, 200))
    assert "Uncaught ReferenceError" in message


def colourful_share(png: Path) -> float:
    """The share of pixels that are clearly coloured (plots, overlays; not text or rules)."""
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return float(np.mean(pixels.max(axis=2) - pixels.min(axis=2) > 60))


def test_report_renders_in_chromium_with_its_plots(comparison, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(comparison.html)
    assert not re.search(r"(src|href)=\"https?:", comparison.html), "the report fetches nothing"
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', comparison.html)
    assert len(images) >= 4 + 4  # four plots, the overlays of four configurations
    for data in images:
        Image.open(io.BytesIO(base64.b64decode(data))).verify()
    screenshot = tmp_path / "report.png"
    assert render(page, screenshot) == []
    image = Image.open(screenshot)
    assert image.size == (1400, 6000)
    # the page without its images: 0 coloured pixels, ~400 colours (anti-aliased text)
    assert len(image.convert("RGB").getcolors(1 << 20) or ()) > 1000
    assert colourful_share(screenshot) > 0.01
