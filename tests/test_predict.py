"""``boxinst predict`` at scale: folders read recursively, batches streamed into one COCO results
file, overlays when asked for, Ray actors sharing the images with the same results as one
process, and predictions labelled by the checkpoint's own categories."""

import json
import shutil

import pytest
import torch
from conftest import write_tiny_spec

from boxinst.platform.cli import main
from boxinst.platform.inference import image_files, predict_to_folder
from boxinst.platform.spec import load_spec
from boxinst.platform.training.loop import (
    build_state,
    build_val_dataset,
    prepare_data,
    save_checkpoint,
)

#: an untrained model detects its full 100 per image at score threshold 0
EVERYTHING = ["model.score_threshold=0.0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An untrained checkpoint of the tiny spec (with its categories), one without them (as
    written before checkpoints kept them), and a folder of seven images in two levels."""
    folder = tmp_path_factory.mktemp("predict")
    spec = load_spec(write_tiny_spec(folder))
    prepare_data({spec.name: spec})
    state = build_state(spec, torch.device("cpu"))
    categories = build_val_dataset(spec).categories
    checkpoint = save_checkpoint(state, spec, categories, folder / "model")
    older = save_checkpoint(state, spec, [], folder / "older")
    source = sorted((folder / "shapes" / "train" / "images").glob("*.png"))[:7]
    images = folder / "images"
    for index, path in enumerate(source):
        target = images / ("nested/deeper" if index % 2 else "") / f"{index}{path.suffix.upper()}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    (images / "notes.txt").write_text("not an image")
    return checkpoint, older, images


def test_folders_are_read_recursively_for_images_only(trained, tmp_path):
    *_, images = trained
    files = image_files([images])
    assert len(files) == 7 and all(f.suffix == ".PNG" for f in files)
    assert files == sorted(files) and any("deeper" in str(f) for f in files)
    assert image_files([files[0], images])[1:] == files  # files as given, folders expanded
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=f"folder {tmp_path / 'empty'} holds no image"):
        image_files([tmp_path / "empty"])


def test_a_folder_streams_into_one_results_file_and_overlays_come_when_asked(
    trained, tmp_path, capsys
):
    checkpoint, _, images = trained
    out = tmp_path / "out"
    argv = ["predict", str(checkpoint), str(images), "--out", str(out), "--batch-size", "3"]
    assert main([*argv, "--set", EVERYTHING[0]]) == 0
    assert "700 detections on 7 image(s)" in capsys.readouterr().out
    predictions = json.loads((out / "predictions.json").read_text())
    assert len(predictions) == 700 and not list(out.glob("*.png"))
    files = [str(f) for f in image_files([images])]
    assert sorted({p["image_id"] for p in predictions}) == list(range(7))
    assert all(files[p["image_id"]] == p["file_name"] for p in predictions)

    assert main([*argv, "--overlays", "--out", str(tmp_path / "drawn")]) == 0
    assert len(list((tmp_path / "drawn").glob("*.png"))) == 7


def test_ray_actors_predict_what_one_process_does(trained, local_ray, tmp_path):
    """Four chunks of two images over two actors of one CPU each: the same file, in order."""
    checkpoint, _, images = trained
    options = dict(overrides=EVERYTHING, batch_size=2, loader_workers=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each actor computes
    try:
        predict_to_folder(str(checkpoint), [images], tmp_path / "one", **options)
    finally:
        torch.set_num_threads(threads)
    predict_to_folder(str(checkpoint), [images], tmp_path / "two", workers=2, **options)
    one = json.loads((tmp_path / "one" / "predictions.json").read_text())
    two = json.loads((tmp_path / "two" / "predictions.json").read_text())
    assert len(one) == 700 and two == one


def test_predictions_are_labelled_by_the_checkpoints_categories(trained, tmp_path):
    """Without the training data (its validation annotations gone), a checkpoint's own
    categories label the classes; one without them falls back to the class indices."""
    checkpoint, older, images = trained
    state = torch.load(checkpoint, weights_only=True)
    state["categories"] = [{"id": 100 + i, "name": f"kind {i}"} for i in range(7)]
    renamed = tmp_path / "renamed.pt"
    torch.save(state, renamed)
    away = [*EVERYTHING, "data.val.annotations=/nowhere/annotations.json"]
    for path, ids in ((renamed, range(100, 107)), (older, range(7))):
        out = tmp_path / path.stem
        predict_to_folder(str(path), [images], out, away, loader_workers=0)
        found = {p["category_id"] for p in json.loads((out / "predictions.json").read_text())}
        assert found and found <= set(ids)
