"""A run of a spec on generated data: checkpoints resume exactly; evaluation scores the model."""

import math
import subprocess
import sys
import time

import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from boxinst.platform.data.collate import collate_instances
from boxinst.platform.metrics import (
    FINAL,
    IMAGES_PER_SECOND,
    LEARNING_RATE,
    SKIPPED_STEPS,
    TRAIN_LOSS,
)
from boxinst.platform.training import loop
from boxinst.platform.training.loop import (
    CHECKPOINT_FILE,
    NonFiniteLossError,
    ResumableSampler,
    SeededSamples,
    batch_to_device,
    build_datasets,
    build_state,
    evaluate_model,
    evaluation_groups,
    load_checkpoint,
    loaders,
    optimisation_step,
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


class PoisonedSamples(SeededSamples):
    """The training samples with a NaN pixel in the image of one dataset index."""

    def __init__(self, dataset, poisoned: int):
        super().__init__(dataset)
        self.poisoned = poisoned

    def __getitem__(self, key):
        image, target = super().__getitem__(key)
        if key[0] == self.poisoned:
            image = image.float()
            image[0, 0, 0] = math.nan
        return image, target


def poisoned_loader(spec, poisoned: int) -> DataLoader:
    """The training loader of ``loaders`` (same order, same augmentation) with one sample
    poisoned."""
    train_set, _ = build_datasets(spec)
    return DataLoader(
        PoisonedSamples(train_set, poisoned),
        batch_size=spec.solver.ims_per_batch,
        sampler=ResumableSampler(train_set, spec.seed),
        collate_fn=collate_instances,
    )


def run(spec, start_state=None, until=None, train_loader=None):
    if train_loader is None:
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
    path = save_checkpoint(first, spec, [], tmp_path / "ckpt")
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
    save_checkpoint(state, spec, [], folder)
    assert [p.name for p in folder.iterdir()] == ["checkpoint.pt"]  # no partial file left
    loaded = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert loaded["iteration"] == 1 and set(loaded) >= {"model", "optimizer", "scheduler", "scaler"}
    assert type(spec).model_validate(loaded["spec"]) == spec


def test_a_non_finite_loss_leaves_weights_and_optimiser_untouched(spec):
    state, _ = run(spec, until=1)  # momentum buffers exist
    before = {
        "model": {k: v.clone() for k, v in state.model.state_dict().items()},
        "momentum": [s["momentum_buffer"].clone() for s in state.optimizer.state.values()],
    }
    images, targets = next(iter(poisoned_loader(spec, poisoned=0)))
    images, targets = batch_to_device(images, targets, torch.device("cpu"))
    images[0, 0, 0, 0] = math.nan
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(loss_cls=nan"):
        optimisation_step(
            state.model,
            images,
            targets,
            spec.loss_config(),
            1,
            state.generator,
            state.optimizer,
            state.scaler,
        )
    for name, value in state.model.state_dict().items():
        assert torch.equal(value, before["model"][name]), name
    momentum = [s["momentum_buffer"] for s in state.optimizer.state.values()]
    assert all(map(torch.equal, momentum, before["momentum"]))


def iterations_reading(spec, index: int, iterations: int) -> list[int]:
    """The iterations whose batch holds dataset ``index`` (the sampler's order)."""
    train_set, _ = build_datasets(spec)
    sampler, batch = ResumableSampler(train_set, spec.seed), spec.solver.ims_per_batch
    per_pass = len(sampler) // batch
    found = []
    for iteration in range(iterations):
        epoch, offset = divmod(iteration, per_pass)
        sampler.start(epoch, 0)
        keys = list(sampler)[offset * batch : (offset + 1) * batch]
        if index in [i for i, _ in keys]:
            found.append(iteration)
    return found


def test_non_finite_steps_are_skipped_and_counted_when_asked(tiny_spec):
    spec = tiny_spec("solver.on_nonfinite_loss=skip", "solver.max_skipped_steps=3")
    poisoned = iterations_reading(spec, 3, spec.solver.max_iter)
    assert 1 <= len(poisoned) <= 3
    state, logged = run(spec, train_loader=poisoned_loader(spec, 3))
    assert state.iteration == spec.solver.max_iter and state.skipped_steps == len(poisoned)
    for iteration, metrics in logged:  # logged after iteration - 1 ran
        assert math.isnan(metrics[TRAIN_LOSS]) == (iteration - 1 in poisoned), iteration
        assert metrics[SKIPPED_STEPS] == sum(i < iteration for i in poisoned)
    assert all(torch.isfinite(p).all() for p in state.model.parameters())
    resumed = build_state(spec, torch.device("cpu"))
    resumed.load_state_dict(state.state_dict())  # the count survives a resume
    assert resumed.skipped_steps == len(poisoned)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], r"iteration {first}: non-finite loss"),
        (
            ["solver.on_nonfinite_loss=skip", "solver.max_skipped_steps=0"],
            r"more than solver.max_skipped_steps=0 skipped; iteration {first}: non-finite",
        ),
    ],
    ids=["fail", "skip-limit"],
)
def test_a_non_finite_loss_fails_the_run_by_default_or_past_the_skip_limit(
    tiny_spec, overrides, message
):
    spec = tiny_spec(*overrides)
    first = iterations_reading(spec, 3, spec.solver.max_iter)[0]
    with pytest.raises(NonFiniteLossError, match=message.format(first=first)):
        run(spec, train_loader=poisoned_loader(spec, 3))


#: Writes checkpoints of the spec's training state (iteration 1, 2, ...) into a folder, forever.
CHECKPOINT_WRITER = """
import sys
from pathlib import Path
import torch
from boxinst.platform.spec import load_spec
from boxinst.platform.training.loop import build_state, save_checkpoint
spec = load_spec(sys.argv[1])
state = build_state(spec, torch.device("cpu"))
while True:
    state.iteration += 1
    save_checkpoint(state, spec, [], Path(sys.argv[2]))
"""


def kill_while_writing(spec_file, folder) -> list:
    """Start the writer, SIGKILL it as soon as a file sits next to a finished checkpoint (a
    later one being written); the files left beside the checkpoint (none if the kill came
    just after the writer's rename)."""
    writer = subprocess.Popen([sys.executable, "-c", CHECKPOINT_WRITER, spec_file, folder])
    finished = folder / "checkpoint.pt"
    deadline = time.monotonic() + 120
    try:
        while writer.poll() is None and time.monotonic() < deadline:
            if finished.exists() and any(p != finished for p in folder.iterdir()):
                break
    finally:
        writer.kill()
        writer.wait()
    return [p for p in folder.iterdir() if p != finished] if finished.exists() else []


def test_a_process_killed_while_writing_a_checkpoint_leaves_the_previous_one(spec, tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec.as_dict()))
    for attempt in range(5):
        left = kill_while_writing(spec_file, tmp_path / f"ckpt{attempt}")
        if left:
            break
    assert left, "the writer was never killed while writing a checkpoint"
    state = torch.load(left[0].parent / "checkpoint.pt", weights_only=True)
    assert state["iteration"] >= 1 and type(spec).model_validate(state["spec"]) == spec


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


def test_evaluations_during_a_run_do_not_change_what_it_trains(tiny_spec):
    """A run evaluated every two iterations ends with the weights of the same run evaluated at
    its end only: an evaluation changes nothing that training uses (weights, batch-norm
    statistics, which an evaluation in training mode would update, random streams)."""
    trained = []

    def keep_final_weights(metrics, folder):
        if folder is not None and metrics.get(FINAL):
            trained.append(load_checkpoint(folder / CHECKPOINT_FILE)["model"])

    for every in (0, 2):
        spec = tiny_spec(f"evaluation.every={every}", "evaluation.overlays=0")
        loop.run(spec, torch.device("cpu"), keep_final_weights)
    assert trained[0].keys() == trained[1].keys()
    for name, weights in trained[0].items():
        assert torch.equal(weights, trained[1][name]), name
