"""Bad input to the commands that run things (`train`, `sweep`, `eval`, `predict`, `evaluate`,
`submit`, `data synth`): each case ends in exit status 2 and one message that names the file,
the record or the key, with no Python traceback, before Ray or MLflow start where it can be
known then. (Bad datasets through `data check` and the loader: tests/test_bad_data.py.)"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import ray
import torch
from conftest import free_port, write_tiny_spec
from mlflow.tracking import MlflowClient

from boxinst.platform.cli import main
from boxinst.platform.metrics import TAG_CHECKPOINT
from boxinst.platform.spec import load_spec
from boxinst.platform.tracking.runs import RunFailedError, train_tracked
from boxinst.platform.tracking.tracker import Tracker
from boxinst.platform.training.loop import (
    CHECKPOINT_FILE,
    build_state,
    build_val_dataset,
    generate_data,
    load_checkpoint,
    prepare_data,
    save_checkpoint,
)


@pytest.fixture(autouse=True)
def in_a_folder_of_its_own(tmp_path, monkeypatch):
    """Each test in its own working directory: a local MLflow store puts artifacts there."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny spec with its generated data, and the folder it lives in."""
    folder = tmp_path_factory.mktemp("bad-runs")
    spec_file = write_tiny_spec(folder)
    spec = load_spec(spec_file)
    prepare_data({spec.name: spec})
    return spec_file, spec, folder


@pytest.fixture(scope="module")
def checkpoint(tiny):
    """An untrained checkpoint of the tiny spec: what `eval` and `predict` read."""
    _, spec, folder = tiny
    categories = build_val_dataset(spec).categories
    return save_checkpoint(
        build_state(spec, torch.device("cpu")), spec, categories, folder / "model"
    )


def edited_annotations(spec, folder: Path, split: str, change) -> Path:
    """A copy of a split's annotation file, changed by ``change(data)``, beside its images."""
    source = Path(getattr(spec.data, split).annotations)
    data = json.loads(source.read_text())
    change(data)
    path = folder / f"{split}-edited.json"
    path.write_text(json.dumps(data))
    return path


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out + err


def assert_refused(code: int, output: str, *fragments: str, status: int = 2) -> None:
    assert code == status, output
    assert "Traceback" not in output, output
    for fragment in fragments:
        assert fragment in output, output


# --- train: the spec and its overrides ---------------------------------------------------------

SET_CASES = [
    ("yaml-of-a-value", "solver.max_iter=[1", "--set 'solver.max_iter=[1': the value is not valid"),
    ("no-equals", "solver.max_iter", "expected KEY=VALUE"),
    ("max-iter-zero", "solver.max_iter=0", "solver.max_iter"),
    ("negative-lr", "solver.base_lr=-1", "solver.base_lr"),
    ("unknown-key", "solver.max_iters=3", "solver.max_iters: unknown key"),
    ("unknown-preset", "regime=box_onyl", "unknown preset 'box_onyl'"),
    ("empty-sizes", "data.train_short_sizes=[]", "data.train_short_sizes"),
    ("zero-size", "data.train_short_sizes=[0]", "data.train_short_sizes.0"),
    ("zero-test-size", "data.test_short_size=0", "data.test_short_size"),
    ("flip-prob", "data.flip_prob=2", "data.flip_prob"),
    ("num-workers-zero", "resources.num_workers=0", "resources.num_workers"),
    ("placement", "resources.placement_strategy=ANYWHERE", "resources.placement_strategy"),
    ("box-term-in-loss", "loss.use_pairwise=false", "loss.use_pairwise: the box terms"),
    ("asha-without-evaluations", "sweep={scheduler: asha}", "sweep.scheduler: asha"),
    ("synth-style", "data.synth.style=wavy", "style 'wavy'"),
    ("synth-no-images", "data.synth.train_images=0", "train_images 0: at least 1"),
    # what only the data knows: found before Ray or MLflow start
    ("classes-below-categories", "model.num_classes=3", "model.num_classes: 3, but"),
    ("batch-above-dataset", "solver.ims_per_batch=64", "solver.ims_per_batch: 64 images"),
    ("unknown-group", "evaluation.groups={g: [zebra]}", "evaluation.groups.g: ['zebra']"),
    ("empty-group", "evaluation.groups={g: []}", "evaluation.groups.g: no classes"),
    ("unknown-mask-class", "regime.masks={classes: [zebra]}", "regime.masks: mask policy"),
    ("missing-val-file", "data.val.annotations=/nonexistent/val.json", "data.val: /nonexistent"),
    ("missing-image-folder", "data.train.images=/nonexistent", "image folder does not exist"),
]


@pytest.mark.parametrize(
    ("override", "fragment"), [c[1:] for c in SET_CASES], ids=[c[0] for c in SET_CASES]
)
def test_train_refuses_a_bad_override_before_anything_starts(tiny, capsys, override, fragment):
    spec_file, _, folder = tiny
    store = folder / f"mlflow-{time.monotonic_ns()}.db"
    code, output = run(
        capsys, "train", str(spec_file), "--set", override, "--tracking-uri", f"sqlite:///{store}"
    )
    assert_refused(code, output, fragment)
    assert not ray.is_initialized()
    assert not store.exists()  # MLflow was not touched either


def _rename_category(data):
    data["categories"][0]["name"] = "renamed"


def _drop_segmentation(data):
    data["annotations"][0].pop("segmentation")


def _nan_box(data):
    data["annotations"][1]["bbox"][0] = float("nan")


def _escape(data):
    data["images"][0]["file_name"] = "../../outside.png"


def _missing_file(data):
    data["images"][0]["file_name"] = "not-there.png"


DATA_CASES = [
    pytest.param(
        "val",
        _rename_category,
        [],
        ["data.val", "has other categories than"],
        id="val-categories-differ",
    ),
    pytest.param(
        "train",
        _drop_segmentation,
        ["regime=fully_supervised"],
        ["regime.masks", "annotation id 1 (image id 1) has no segmentation, but the mask policy"],
        id="mask-policy-without-segmentation",
    ),
    pytest.param(
        "train",
        _nan_box,
        [],
        ["data.train", "annotation id 2: has a malformed bbox"],
        id="bad-record",
    ),
    pytest.param(
        "train",
        _escape,
        [],
        ["data.train", "image id 1: file_name '../../outside.png'"],
        id="path-escapes",
    ),
    pytest.param(
        "train",
        _missing_file,
        [],
        ["data.train", "not-there.png: image id 1: image file does"],
        id="missing-image",
    ),
]


@pytest.mark.parametrize(("split", "change", "extra", "fragments"), DATA_CASES)
def test_train_checks_the_data_against_the_spec_first(
    tiny, tmp_path, capsys, split, change, extra, fragments
):
    spec_file, spec, _ = tiny
    edited = edited_annotations(spec, tmp_path, split, change)
    images = getattr(spec.data, split).images
    overrides = [f"data.{split}.annotations={edited}", f"data.{split}.images={images}", *extra]
    argv = ["train", str(spec_file), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    code, output = run(capsys, *argv, *(part for o in overrides for part in ("--set", o)))
    assert_refused(code, output, *fragments)
    assert not ray.is_initialized()


def test_a_sweep_names_the_trials_a_problem_concerns(tiny, tmp_path, capsys):
    spec_file, _, _ = tiny
    axes = "sweep={axes: {model.num_classes: [7, 3], solver.ims_per_batch: [2, 64]}}"
    argv = ["sweep", str(spec_file), "--set", axes, "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
    code, output = run(capsys, *argv)
    assert_refused(code, output, "found before the 4 trials started")
    assert "model.num_classes: 3, but" in output
    assert "(trials: box_only model.num_classes=3 solver.ims_per_batch=2;" in output
    assert "solver.ims_per_batch: 64 images" in output


def test_a_sweep_axis_without_values_is_named(tiny, tmp_path, capsys):
    spec_file, _, _ = tiny
    argv = ["sweep", str(spec_file), "--set", "sweep={axes: {seed: []}}"]
    code, output = run(capsys, *argv, "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
    assert_refused(code, output, "sweep.axes.seed: an axis needs at least one value")


def test_a_spec_with_a_section_twice_is_refused(tiny, tmp_path, capsys):
    spec_file, _, _ = tiny
    twice = tmp_path / "twice.yaml"
    twice.write_text(spec_file.read_text() + "solver:\n  max_iter: 3\n")
    code, output = run(capsys, "train", str(twice))
    assert_refused(code, output, str(twice), "key 'solver' appears twice", "line")


def test_an_unknown_spec_is_named(capsys):
    code, output = run(capsys, "train", "no-such-spec")
    assert_refused(code, output, "spec no-such-spec is neither a file nor a shipped spec")


# --- train: the cluster ------------------------------------------------------------------------

ADDRESS_CASES = [
    ("nothing-listening", "127.0.0.1:{port}", "no Ray cluster answers at 127.0.0.1:"),
    ("client-nothing-listening", "ray://127.0.0.1:{port}", "no Ray cluster answers at ray://"),
    ("not-an-address", "bogus", "Ray address 'bogus'"),
]


@pytest.mark.parametrize(
    ("address", "fragment"), [c[1:] for c in ADDRESS_CASES], ids=[c[0] for c in ADDRESS_CASES]
)
def test_an_unreachable_address_fails_in_seconds(tiny, tmp_path, capsys, address, fragment):
    spec_file, _, _ = tiny
    address = address.format(port=free_port())
    start = time.monotonic()
    argv = ["train", str(spec_file), "--address", address]
    code, output = run(capsys, *argv, "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
    assert_refused(code, output, fragment)
    assert time.monotonic() - start < 30
    assert not ray.is_initialized()


def test_workers_the_local_ray_cannot_hold_are_refused(tiny, tmp_path, capsys):
    spec_file, _, _ = tiny
    overrides = ["--set", "resources.cpus_per_worker=64"]
    argv = ["train", str(spec_file), *overrides, "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
    try:
        code, output = run(capsys, *argv, "--storage", str(tmp_path / "runs"))
    finally:
        ray.shutdown()
    assert_refused(code, output, "resources: tiny needs 64 CPUs", "the local Ray has")


def test_submit_to_nothing_names_the_address(tiny, capsys):
    spec_file, _, _ = tiny
    address = f"http://127.0.0.1:{free_port()}"
    code, output = run(capsys, "submit", str(spec_file), "--address", address)
    assert_refused(code, output, f"no Ray Jobs server answers at {address}")


# --- eval and predict: checkpoints and images --------------------------------------------------


def _truncated(checkpoint: Path, folder: Path) -> Path:
    path = folder / "cut.pt"
    path.write_bytes(checkpoint.read_bytes()[:5000])
    return path


def _yaml(checkpoint: Path, folder: Path) -> Path:
    path = folder / "spec.yaml"
    path.write_text("name: tiny\n")
    return path


def _no_spec(checkpoint: Path, folder: Path) -> Path:
    path = folder / "weights.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    return path


def _empty(checkpoint: Path, folder: Path) -> Path:
    path = folder / "empty.pt"
    path.write_bytes(b"")
    return path


def _absent(checkpoint: Path, folder: Path) -> Path:
    return folder / "absent.pt"


CHECKPOINT_CASES = [
    ("cut-short", _truncated, "cannot be read"),
    ("a-yaml-file", _yaml, "cannot be read"),
    ("no-spec", _no_spec, "holds no spec and model"),
    ("empty-file", _empty, "cannot be read"),
    ("absent", _absent, "no checkpoint at"),
]


@pytest.mark.parametrize("command", ["evaluate", "predict"])
@pytest.mark.parametrize(
    ("make", "fragment"), [c[1:] for c in CHECKPOINT_CASES], ids=[c[0] for c in CHECKPOINT_CASES]
)
def test_a_bad_checkpoint_is_named(checkpoint, tmp_path, capsys, command, make, fragment):
    path = make(checkpoint, tmp_path)
    images = [str(next(checkpoint.parents[1].glob("shapes/val/images/*.png")))]
    argv = [command, str(path), *(images if command == "predict" else [])]
    code, output = run(capsys, *argv)
    assert_refused(code, output, str(path), fragment)


def test_evaluate_names_a_missing_validation_set(checkpoint, capsys):
    argv = ["evaluate", str(checkpoint), "--set", "data.val.annotations=/nonexistent/val.json"]
    code, output = run(capsys, *argv)
    assert_refused(code, output, "/nonexistent/val.json: file: does not exist")


def test_overrides_that_change_the_model_are_named(checkpoint, capsys):
    code, output = run(capsys, "evaluate", str(checkpoint), "--set", "model.num_classes=3")
    assert_refused(code, output, str(checkpoint), "do not fit the model", "--set overrides")


def test_predict_refuses_before_inference(checkpoint, tmp_path, capsys):
    image = next(checkpoint.parents[1].glob("shapes/val/images/*.png"))
    taken = tmp_path / "taken"
    taken.write_text("a file")
    code, output = run(capsys, "predict", str(checkpoint), str(image), "--out", str(taken))
    assert_refused(code, output, f"--out {taken} is a file")
    missing = tmp_path / "missing.png"
    code, output = run(capsys, "predict", str(checkpoint), str(image), str(missing))
    assert_refused(code, output, f"not found: {missing}")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    out = tmp_path / "out"
    code, output = run(capsys, "predict", str(checkpoint), str(corrupt), "--out", str(out))
    assert_refused(code, output, f"image file {corrupt} cannot be read")
    assert not (out / "predictions.json").exists()


def test_two_images_of_one_name_get_two_overlays(checkpoint, tmp_path, capsys):
    image = next(checkpoint.parents[1].glob("shapes/val/images/*.png"))
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(image, tmp_path / folder / "x.png")
    out = tmp_path / "out"
    argv = ["predict", str(checkpoint), str(tmp_path / "a/x.png"), str(tmp_path / "b/x.png")]
    code, output = run(capsys, *argv, "--out", str(out), "--overlays")
    assert code == 0, output
    assert sorted(p.name for p in out.glob("*.png")) == ["x-2.png", "x.png"]


# --- evaluate: ground truth and predictions ----------------------------------------------------


def _gt_nan_box(data):
    data["annotations"][0]["bbox"][2] = float("nan")


def _gt_rle_size(data):
    data["annotations"][0]["segmentation"] = {"size": [3, 3], "counts": [9]}


def _gt_dangling(data):
    data["annotations"][0]["image_id"] = 999


def _gt_duplicate_image(data):
    data["images"].append(dict(data["images"][0]))


def _gt_no_categories(data):
    data["categories"] = []


GT_CASES = [
    ("nan-box", _gt_nan_box, "annotation id 1: has a malformed bbox"),
    ("rle-of-another-size", _gt_rle_size, "annotation id 1: has an RLE of size [3, 3]"),
    ("dangling-image-id", _gt_dangling, "annotation id 1: refers to unknown image id 999"),
    ("image-twice", _gt_duplicate_image, "image id 1: appears 2 times"),
    ("no-categories", _gt_no_categories, "has no categories"),
]


@pytest.mark.parametrize(
    ("change", "fragment"), [c[1:] for c in GT_CASES], ids=[c[0] for c in GT_CASES]
)
def test_evaluate_validates_the_ground_truth(tiny, tmp_path, capsys, change, fragment):
    _, spec, _ = tiny
    gt = edited_annotations(spec, tmp_path, "val", change)
    predictions = tmp_path / "predictions.json"
    predictions.write_text("[]")
    code, output = run(capsys, "evaluate", "--gt", str(gt), "--predictions", str(predictions))
    assert_refused(code, output, f"ground-truth file {gt}", fragment)


PREDICTION_CASES = [
    pytest.param("[{", "is not valid JSON", id="not-json"),
    pytest.param({"image_id": 1}, "must hold a JSON list", id="not-a-list"),
    pytest.param([{"segmentation": None}], "record 0: missing segmentation", id="no-mask"),
    pytest.param([{"image_id": 999}], "record 0: image_id 999 is not in", id="unknown-image"),
    pytest.param([{"category_id": 99}], "record 0: category_id 99 is not in", id="unknown-class"),
    pytest.param([{"score": float("nan")}], "must be 4 and 1 finite numbers", id="nan-score"),
    pytest.param([{"bbox": [0, 0, 1]}], "must be 4 and 1 finite numbers", id="3-number-box"),
    pytest.param(
        [{"segmentation": {"size": [1, 1], "counts": "~~"}}],
        "segmentation: an RLE of size",
        id="rle-of-another-size",
    ),
    pytest.param(
        [{"segmentation": "counts"}],
        "segmentation: an RLE expected, not str",
        id="segmentation-a-string",
    ),
    pytest.param(
        [{"segmentation": {"size": [79, 79], "counts": "~~~"}}],
        "an RLE string with bad char",
        id="rle-bad-characters",
    ),
]


@pytest.mark.parametrize(("content", "fragment"), PREDICTION_CASES)
def test_evaluate_names_a_bad_predictions_file(tiny, tmp_path, capsys, content, fragment):
    """``content``: the file's text, or JSON data; a list's objects change a sound detection."""
    _, spec, _ = tiny
    image = json.loads(Path(spec.data.val.annotations).read_text())["images"][0]
    sound = {"image_id": image["id"], "category_id": 1, "bbox": [0, 0, 8, 8], "score": 0.9}
    sound["segmentation"] = {
        "size": [image["height"], image["width"]],
        "counts": [image["height"] * image["width"]],
    }
    if isinstance(content, list):
        content = [{k: v for k, v in {**sound, **c}.items() if v is not None} for c in content]
    predictions = tmp_path / "predictions.json"
    predictions.write_text(content if isinstance(content, str) else json.dumps(content))
    argv = ["evaluate", "--gt", spec.data.val.annotations, "--predictions", str(predictions)]
    code, output = run(capsys, *argv)
    assert_refused(code, output, str(predictions), fragment)


def test_evaluate_names_a_bad_group(tiny, tmp_path, capsys):
    _, spec, _ = tiny
    predictions = tmp_path / "predictions.json"
    predictions.write_text("[]")
    argv = ["evaluate", "--gt", spec.data.val.annotations, "--predictions", str(predictions)]
    code, output = run(capsys, *argv, "--group", "g=zebra")
    assert_refused(code, output, "class group member 'zebra'")


# --- data synth --------------------------------------------------------------------------------

SYNTH_CASES = [
    ("no-train-images", ["--train-images", "-1"], "train_images -1: at least 1"),
    ("no-objects", ["--max-objects", "0"], "max_objects 0: at least 1"),
    ("sizes-crossed", ["--min-size", "90", "--max-size", "80"], "min_size 90, max_size 80"),
    ("contrast-share", ["--low-contrast", "1.5"], "low_contrast 1.5"),
]


@pytest.mark.parametrize(
    ("options", "fragment"), [c[1:] for c in SYNTH_CASES], ids=[c[0] for c in SYNTH_CASES]
)
def test_data_synth_refuses_settings_it_cannot_generate(tmp_path, capsys, options, fragment):
    code, output = run(capsys, "data", "synth", str(tmp_path / "out"), *options)
    assert_refused(code, output, fragment)
    assert not (tmp_path / "out").exists()


# --- a failure late in a run never costs the trained model -------------------------------------


def assert_the_trained_model_is_kept(checkpoint: str, spec) -> None:
    state = load_checkpoint(Path(checkpoint) / CHECKPOINT_FILE)
    assert state["iteration"] == spec.solver.max_iter
    assert state["spec"]["name"] == spec.name


@pytest.mark.slow
def test_a_corrupt_validation_image_fails_the_run_but_keeps_its_model(tmp_path, capsys):
    spec_file = write_tiny_spec(tmp_path)
    spec = load_spec(spec_file)
    prepare_data({spec.name: spec})
    image = sorted(Path(spec.data.val.images).glob("*.png"))[1]
    image.write_bytes(image.read_bytes()[:60])  # its header passes the checks before start
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["train", str(spec_file), "--storage", str(tmp_path / "runs"), "--tracking-uri", store]
    try:
        code, output = run(capsys, *argv, "--name", "late")
    finally:
        ray.shutdown()
    # (the worker's traceback is in Ray's log lines above it; the command's own error is last)
    assert code == 1, output
    error = output[output.rindex("error: run late") :]
    assert f"image file {image}" in error and "its latest checkpoint is kept:" in error, error
    checkpoint = error.split("its latest checkpoint is kept: ")[1].split()[0]
    assert_the_trained_model_is_kept(checkpoint, spec)
    (run_info,) = MlflowClient(store).search_runs(
        [MlflowClient(store).get_experiment_by_name("tiny").experiment_id]
    )
    assert run_info.info.status == "FAILED"
    assert run_info.data.tags[TAG_CHECKPOINT] == checkpoint


@pytest.mark.slow
def test_an_evaluation_group_unknown_to_the_data_fails_the_run_but_keeps_its_model(tmp_path):
    # train_tracked is what a sweep's trials run, past the checks `boxinst train` makes first
    spec_file = write_tiny_spec(tmp_path)
    spec = load_spec(spec_file, ["evaluation.groups={g: [zebra]}"])
    generate_data(spec)  # unchecked: the spec is known bad
    tracker = Tracker("tiny", f"sqlite:///{tmp_path / 'mlflow.db'}")
    ray.init(address="local", include_dashboard=False)
    try:
        with pytest.raises(RunFailedError, match="'zebra' is neither a category") as failed:
            train_tracked(spec, tmp_path / "runs", tracker, "late", "box_only")
    finally:
        ray.shutdown()
    assert_the_trained_model_is_kept(failed.value.checkpoint, spec)
