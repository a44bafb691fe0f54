"""`boxinst evaluate` on a generated dataset, as a user runs it."""

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
    out = tmp_path / "metrics.json"
    argv = ["evaluate", "--gt", str(val_split), "--predictions", str(predictions)]
    assert main([*argv, "--group", "curved=ellipse,ring,crescent", "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["segm/AP"] == metrics["bbox/AP"] == metrics["segm_curved/AP"] == 100.0
    assert "segm_curved" in capsys.readouterr().out


def test_evaluate_names_the_missing_file(val_split, tmp_path, capsys):
    missing = tmp_path / "nothing.json"
    assert main(["evaluate", "--gt", str(val_split), "--predictions", str(missing)]) == 2
    assert f"predictions file {missing} does not exist" in capsys.readouterr().err
