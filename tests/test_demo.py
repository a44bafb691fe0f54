"""`boxinst demo` on a seconds-long spec: its trials train in processes of this machine (no Ray,
no MLflow) through the one training loop, print their table and keep their checkpoints."""

from conftest import write_tiny_spec

from boxinst.platform.cli import main
from boxinst.platform.inference import load_trained
from boxinst.platform.metrics import MASK_IOU, MASK_IOU_BOX


def test_demo_trains_each_trial_prints_its_masks_and_keeps_its_checkpoint(tmp_path, capsys):
    spec = write_tiny_spec(tmp_path)
    out = tmp_path / "out"
    axes = "sweep={axes: {regime: [box_only, fully_supervised]}}"
    assert main(["demo", str(spec), "--set", axes, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = [line.split() for line in printed.splitlines() if line.strip()]
    header = next(i for i, row in enumerate(rows) if row[:3] == ["trial", "mask", "IoU"])
    assert [row[0] for row in rows[header + 1 : header + 3]] == ["box_only", "fully_supervised"]
    for trial in ("box_only", "fully_supervised"):
        _, trained, (_, names) = load_trained(str(out / trial), [], None)
        assert trained.regime.name == trial and trained.solver.max_iter == 6
        assert list(names.values())[:2] == ["ellipse", "ring"]
        metrics = (out / trial / "evaluation" / "metrics.json").read_text()
        assert MASK_IOU in metrics and MASK_IOU_BOX in metrics
