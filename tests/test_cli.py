"""`boxinst evaluate` of a results file on a generated dataset, as a user runs it (of a model:
``test_platform.py`` and ``test_bad_runs.py``)."""

import json

import pytest

from boxinst.platform.cli import main
from boxinst.platform.data.synth import SynthConfig, synthesize


@pytest.fixture(scope="module")
def val_split(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, SynthConfig(seed=5, train_images=1, val_images=6, min_size=64, max_size=96))
    return out / "val" / "annotations.json"


def test_evaluate_scores_perfect_predictions_and_writes_metrics(val_split, tmp_path, capsys):
    gt = json.loads(val_split.read_text())
    perfect = [
        {key: a[key] for key in ("image_id", "category_id", "bbox", "segmentation")}
        | {"score": 1.0}
        for a in gt["annotations"]
    ]
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps(perfect))
    out = tmp_path / "scored"
    argv = ["evaluate", "--gt", str(val_split), "--predictions", str(predictions)]
    assert main([*argv, "--group", "curved=ellipse,ring,crescent", "--out", str(out)]) == 0
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert metrics["segm/AP"] == metrics["bbox/AP"] == metrics["segm_curved/AP"] == 100.0
    assert "segm_curved" in capsys.readouterr().out


def test_evaluate_names_the_missing_file(val_split, tmp_path, capsys):
    missing = tmp_path / "nothing.json"
    assert main(["evaluate", "--gt", str(val_split), "--predictions", str(missing)]) == 2
    assert f"predictions file {missing} does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        ([], "evaluate a model (MODEL) or a results file"),
        (["model.pt", "--predictions", "p.json", "--gt", "g.json"], "one of them"),
        (["--predictions", "p.json"], "--predictions needs --gt"),
        (["model.pt", "--gt", "g.json"], "--gt goes with --predictions"),
    ],
)
def test_evaluate_says_which_inputs_it_takes(argv, fragment, capsys):
    assert main(["evaluate", *argv]) == 2
    assert fragment in capsys.readouterr().err
