"""A run of a spec on generated data: checkpoints resume exactly; evaluation scores the model."""

import math

import pytest
import torch

from boxinst.platform.metrics import IMAGES_PER_SECOND, LEARNING_RATE
from boxinst.platform.training import (
    build_datasets,
    build_state,
    evaluate_model,
    evaluation_groups,
    load_checkpoint,
    loaders,
    save_checkpoint,
    train_steps,
)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def spec(tiny_spec):
    return tiny_spec(
        "seed=1",
        "regime={name: semi, masks: {classes: [ellipse, star]}}",
        "loss.pairwise_warmup_iters=2",
        "solver.base_lr=0.005",
    )


def run(spec, start_state=None, until=None):
    train_set, val_set = build_datasets(spec)
    train_loader, _ = loaders(spec, train_set, val_set)
    state = build_state(spec, torch.device("cpu"))
    if start_state is not None:
        state.load_state_dict(start_state)
    logged = []
    train_steps(
        spec,
        state,
        train_loader,
        until or spec.solver.max_iter,
        lambda i, m: logged.append((i, m)),
        1,
    )
    return state, logged


def test_resumed_run_equals_uninterrupted_run(spec, tmp_path):
    """Bit for bit on one CPU thread (with several, reductions make even two uninterrupted
    runs differ by ~1e-7 per step); a resume that missed any state (data order, augmentation,
    schedule, optimiser, RNG) differs by tens of percent."""
    straight, straight_log = run(spec)
    first, _ = run(spec, until=3)  # interrupted after 3 of 6 iterations
    path = save_checkpoint(first, spec, tmp_path / "ckpt")
    resumed, resumed_log = run(spec, start_state=load_checkpoint(path))
    assert resumed.iteration == straight.iteration == 6
    assert [i for i, _ in resumed_log] == [4, 5, 6]
    for (i, a), (j, b) in zip(straight_log[3:], resumed_log, strict=True):
        assert a.pop(IMAGES_PER_SECOND) > 0 and b.pop(IMAGES_PER_SECOND) > 0  # a clock's
        assert i == j and a == b and LEARNING_RATE in a
    for name, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name


def test_checkpoint_is_atomic_and_safe_to_load(spec, tmp_path):
    state, _ = run(spec, until=1)
    folder = tmp_path / "ckpt"
    save_checkpoint(state, spec, folder)
    assert [p.name for p in folder.iterdir()] == ["checkpoint.pt"]  # no partial file left
    loaded = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert loaded["iteration"] == 1 and set(loaded) >= {"model", "optimizer", "scheduler", "scaler"}
    assert type(spec).model_validate(loaded["spec"]) == spec


def test_evaluation_reports_all_and_unseen_classes(spec):
    train_set, val_set = build_datasets(spec)
    _, val_loader = loaders(spec, train_set, val_set)
    state, _ = run(spec, until=2)
    assert set(evaluation_groups(spec, val_set.category_names)["unseen"]) == {
        "ring",
        "crescent",
        "triangle",
        "bar",
        "rounded_polygon",
    }
    metrics, results = evaluate_model(spec, state.model, val_loader)
    assert all(r["image_id"] in val_set.image_ids for r in results)
    for key in ("segm/AP", "bbox/AP", "segm_unseen/AP", "bbox_unseen/AP", "box_as_mask/AP"):
        assert key in metrics and (math.isnan(metrics[key]) or 0 <= metrics[key] <= 100)
