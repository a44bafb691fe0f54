"""One training run of a spec: data, model, optimisation loop, checkpoints and evaluation.

:func:`run` is the one loop of everything that trains: each worker of a Ray Train run
(``train``, ``sweep``, the fidelity suite: :mod:`~boxinst.platform.training.ray_train` gives
it Ray's report, checkpoint and DDP wrapper), and a process alone (``boxinst demo`` and the
learning test: :mod:`~boxinst.platform.training.local`). It only asks ``torch.distributed``
whether it has peers.
A checkpoint holds everything a resumed run needs to continue exactly where it stopped:
model, optimiser, schedule, AMP scaler, iteration, and the random states of torch and of the
loop's own generators. It is written to a temporary file and renamed, so a crash while writing
leaves the previous one whole, and it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from boxinst.models.condinst import CondInst
from boxinst.platform import preflight
from boxinst.platform.data.box_prior import PriorSettings, ensure_priors, load_priors
from boxinst.platform.data.coco import CocoInstanceDataset
from boxinst.platform.data.collate import collate_instances
from boxinst.platform.data.policy import ClassMasks, parse_mask_policy
from boxinst.platform.data.synth import SynthConfig, synthesize
from boxinst.platform.data.transforms import eval_transform, train_transform
from boxinst.platform.evaluation.coco import (
    box_as_mask,
    box_likeness,
    collapse_warning,
    evaluate,
    predictions_to_coco_results,
    save_results,
    true_box_fill,
)
from boxinst.platform.evaluation.mask_quality import MaskIoU
from boxinst.platform.evaluation.overlays import write_overlays
from boxinst.platform.evaluation.shards import (
    ShardBatches,
    gather_batches,
    share_rank0_weights,
    world,
)
from boxinst.platform.metrics import (
    AP_STATS,
    ARTIFACT_EVALUATION,
    ARTIFACT_OVERLAYS,
    ARTIFACT_PREDICTIONS,
    BOX_LIKENESS_TRUE_FILL,
    FINAL,
    IMAGES_PER_SECOND,
    ITERATION,
    LEARNING_RATE,
    RESUMED_FROM,
    SEGM,
    SKIPPED_STEPS,
    TRAIN_LOSS,
    box_as_mask_name,
    metric_name,
    train_loss_name,
)
from boxinst.platform.spec import SpecError, TrainSpec
from boxinst.platform.training.objective import LossConfig, compute_losses
from boxinst.platform.training.solver import build_optimizer, build_scheduler

CHECKPOINT_FILE = "checkpoint.pt"


def prepare_data(runs: Mapping[str, TrainSpec]) -> None:
    """Before runs start (one, or a sweep's trials, by name): their generated datasets, the
    checks of each spec against its data (:mod:`boxinst.platform.preflight`, raising
    ``PreflightError``), then the box priors of the training sets whose regime learns from
    them (computed once, on every CPU of this machine)."""
    for spec in runs.values():
        generate_data(spec)
    preflight.check(runs)
    for spec in runs.values():
        if spec.regime.prior:
            box_prior_file(spec)


def generate_data(spec: TrainSpec) -> None:
    """Generate the spec's synthetic dataset where it is asked for and missing; one that is
    there but was generated with other settings is refused (training on it would measure
    another dataset than the spec says)."""
    synth = spec.data.synth
    if synth is None:
        return
    annotations = Path(spec.data.train.annotations)
    if not annotations.is_file():
        synthesize(annotations.parents[1], synth)
        return
    wanted = json.loads(json.dumps(dataclasses.asdict(synth)))
    try:
        found = json.loads(annotations.read_text()).get("info", {}).get("synth_config")
    except (OSError, ValueError, AttributeError):
        found = None
    # a setting added to the generator after the dataset was made counts at its default
    defaults = json.loads(json.dumps(dataclasses.asdict(SynthConfig())))
    found = {**defaults, **found} if isinstance(found, dict) else {}
    differ = sorted(k for k in wanted if found.get(k) != wanted[k])
    if differ:
        raise SpecError(
            f"data.synth: {annotations.parents[1]} holds a dataset generated with other settings "
            f"({', '.join(differ)} differ); remove it to generate it anew, or leave "
            "data.train and data.val unset to generate one in a folder of its own"
        )


def box_prior_file(spec: TrainSpec) -> Path:
    """The training set's GrabCut box priors, computed into ``data.box_priors`` if missing."""
    data = spec.data
    settings = PriorSettings(
        overlap_pass=data.prior_overlap_pass, background_start=data.prior_background_start
    )
    return ensure_priors(
        Path(data.train.annotations), Path(data.train.images), Path(data.box_priors), settings
    )


def build_datasets(spec: TrainSpec) -> tuple[CocoInstanceDataset, CocoInstanceDataset]:
    """Training set under the regime's mask policy (with its box priors when the regime learns
    from them), and the evaluation set (all masks)."""
    data = spec.data
    priors = load_priors(box_prior_file(spec)) if spec.regime.prior else None
    train = CocoInstanceDataset(
        data.train.annotations,
        data.train.images,
        train=True,
        mask_policy=spec.regime.masks,
        transform=train_transform(data.train_short_sizes, data.max_size, data.flip_prob, spec.seed),
        ignore_bottom=data.ignore_bottom,
        skip_bad_records=data.skip_bad_records,
        box_priors=priors,
    )
    return train, build_val_dataset(spec)


def build_val_dataset(spec: TrainSpec) -> CocoInstanceDataset:
    """The evaluation set: every image, every mask, the test-time resize."""
    data = spec.data
    return CocoInstanceDataset(
        data.val.annotations,
        data.val.images,
        train=False,
        mask_policy="all",
        transform=eval_transform(data.test_short_size, data.max_size),
        skip_bad_records=data.skip_bad_records,
    )


def evaluation_groups(spec: TrainSpec, category_names: tuple[str, ...]) -> dict[str, list[str]]:
    """The spec's class groups plus ``unseen``: the classes a class-wise mask policy leaves
    without masks (the paper's Tables 6 and 7)."""
    groups = dict(spec.evaluation.groups)
    policy = parse_mask_policy(spec.regime.masks)
    if isinstance(policy, ClassMasks):
        unseen = [name for name in category_names if name not in policy.classes]
        if unseen:
            groups["unseen"] = unseen
    return groups


@dataclass
class TrainState:
    model: CondInst
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    generator: torch.Generator
    iteration: int = 0
    skipped_steps: int = 0  # steps not taken for a non-finite loss

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "iteration": self.iteration,
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.iteration = state["iteration"]
        self.skipped_steps = state["skipped_steps"]


def save_checkpoint(
    state: TrainState, spec: TrainSpec, categories: list[dict], folder: Path
) -> Path:
    """Write ``folder/checkpoint.pt`` atomically (temporary file, fsync, rename): the training
    state, the resolved spec it trains and the ``categories`` of its classes (the training
    set's ``{"id", "name"}`` by class index), so that ``boxinst eval`` and ``predict`` rebuild
    the model and name its classes from the file alone."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CHECKPOINT_FILE
    partial = folder / f".{CHECKPOINT_FILE}.partial"
    with partial.open("wb") as file:
        torch.save({**state.state_dict(), "spec": spec.as_dict(), "categories": categories}, file)
        file.flush()
        os.fsync(file.fileno())
    partial.replace(path)
    return path


class CheckpointError(ValueError):
    """A file that is not a whole checkpoint (cut short, another format); the message names it."""


def load_checkpoint(path: Path) -> dict:
    """The state :func:`save_checkpoint` wrote, read with ``weights_only`` (no code runs)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises what its zip and unpickling layers meet
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({reason}): not a whole checkpoint written by "
            "boxinst training (cut short, or another file)"
        ) from None


def build_state(spec: TrainSpec, device: torch.device) -> TrainState:
    torch.manual_seed(spec.seed)
    model = CondInst(spec.model).to(device)
    optimizer = build_optimizer(model, spec.solver)
    return TrainState(
        model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, spec.solver),
        scaler=torch.amp.GradScaler(device.type, enabled=spec.solver.amp and device.type == "cuda"),
        generator=torch.Generator().manual_seed(spec.seed),
    )


class SeededSamples(Dataset):
    """A dataset read with ``(index, seed)`` keys: the transform is reseeded per sample, so a
    sample's augmentation depends on the run's seed, the pass and the index only."""

    def __init__(self, dataset: CocoInstanceDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        self.dataset.transform.reseed(seed)
        return self.dataset[index]


class ResumableSampler(Sampler[tuple[int, int]]):
    """This worker's share of a seeded shuffle of the dataset, one permutation per pass
    (``DistributedSampler``), yielding ``(index, per-sample seed)`` and able to start a pass
    part-way, so a resumed run sees exactly the samples and augmentations an uninterrupted one
    would."""

    def __init__(self, dataset, seed: int):
        rank, workers = world()
        self.inner = DistributedSampler(
            dataset,
            num_replicas=workers,
            rank=rank,
            shuffle=True,
            seed=seed,
            drop_last=True,
        )
        self.seed = seed
        self.skip = 0

    def start(self, epoch: int, skip: int) -> None:
        self.inner.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        base = (self.seed * 1_000_003 + self.inner.epoch) * 1_000_003
        return iter([(i, base + i) for i in list(self.inner)[self.skip :]])

    def __len__(self) -> int:
        return len(self.inner) - self.skip


def batches(loader: DataLoader, iteration: int) -> Iterator:
    """Endless batches from ``iteration`` on: pass ``iteration // len`` of the sampler, resumed
    at its batch ``iteration % len``."""
    sampler: ResumableSampler = loader.sampler
    per_pass = len(sampler.inner) // loader.batch_size
    epoch, offset = divmod(iteration, per_pass)
    while True:
        sampler.start(epoch, offset * loader.batch_size)
        yield from loader
        epoch, offset = epoch + 1, 0


def batch_to_device(
    images: torch.Tensor, targets: list[dict], device: torch.device
) -> tuple[torch.Tensor, list[dict]]:
    """A collated batch with its images and the tensors of its targets on ``device``."""
    targets = [
        {k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets
    ]
    return images.to(device), targets


class NonFiniteLossError(FloatingPointError):
    """A loss term was NaN or inf on some worker; the step was not taken."""

    def __init__(self, losses: dict[str, torch.Tensor], context: str = ""):
        self.losses = losses
        terms = ", ".join(f"{k}={v.item():g}" for k, v in losses.items())
        super().__init__(f"{context}non-finite loss ({terms}), the step was not taken")


def finite_on_every_worker(losses: dict[str, torch.Tensor]) -> bool:
    """Whether every loss term is finite on every worker. The workers agree (an all-reduce of
    the flag), so they skip a step together: a DDP backward on only some of them would hang."""
    finite = torch.stack([v.detach().float() for v in losses.values()]).isfinite().all()
    finite = finite.to(torch.int32)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    return bool(finite)


def optimisation_step(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: list[dict],
    loss_cfg: LossConfig,
    iteration: int,
    generator: torch.Generator | None,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    clip_grad_norm: float | None = None,
) -> dict[str, torch.Tensor]:
    """One training iteration: the losses (under autocast when ``scaler`` is enabled), backward
    through the scaler, gradient clipping when asked, the optimiser step. Returns the losses.

    A NaN or inf loss on any worker raises :class:`NonFiniteLossError` before the backward
    pass, leaving weights, optimiser state and the buffers the forward pass updates (batch
    norm's running statistics) as they were. (Overflowing fp16 gradients of a finite loss are
    the AMP scaler's business: it skips that step and lowers its scale.)"""
    buffers = [buffer.clone() for buffer in model.buffers()]
    with torch.autocast(images.device.type, enabled=scaler.is_enabled()):
        losses = compute_losses(model, images, targets, loss_cfg, iteration, generator)
    if not finite_on_every_worker(losses):
        with torch.no_grad():
            for buffer, saved in zip(model.buffers(), buffers, strict=True):
                buffer.copy_(saved)
        raise NonFiniteLossError(losses)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(sum(losses.values())).backward()
    if clip_grad_norm:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    return losses


def skip_step(spec: TrainSpec, state: TrainState, error: NonFiniteLossError) -> None:
    """Count the step of ``error`` as skipped, or fail the run as the spec says."""
    solver, where = spec.solver, f"iteration {state.iteration}: "
    if solver.on_nonfinite_loss == "fail":
        raise NonFiniteLossError(error.losses, where) from None
    state.skipped_steps += 1
    if state.skipped_steps > solver.max_skipped_steps:
        raise NonFiniteLossError(
            error.losses,
            f"more than solver.max_skipped_steps={solver.max_skipped_steps} skipped; {where}",
        ) from None
    print(f"warning: {where}{error} (skipped, {state.skipped_steps} so far)", flush=True)


def train_steps(
    spec: TrainSpec,
    state: TrainState,
    loader: DataLoader,
    until: int,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    log_every: int = 20,
    model: torch.nn.Module | None = None,
) -> None:
    """Optimise from ``state.iteration`` up to ``until`` (exclusive); every ``log_every``
    iterations ``on_log(iteration, metrics)`` with the losses of that iteration, the learning
    rate, the throughput since the last log (images/s over all workers) and the count of
    skipped steps. ``model`` is ``state.model`` or its DDP wrapper.

    A step with a non-finite loss is not taken (:func:`optimisation_step`); the run then fails
    with the iteration named, or, with ``solver.on_nonfinite_loss: skip``, goes on to the next
    batch until more than ``solver.max_skipped_steps`` steps were skipped."""
    device = next(state.model.parameters()).device
    loss_cfg = spec.loss_config()
    model = model or state.model
    model.train()
    workers = world()[1]
    stream = batches(loader, state.iteration)
    since, images_seen = time.perf_counter(), 0
    while state.iteration < until:
        images, targets = batch_to_device(*next(stream), device)
        try:
            losses = optimisation_step(
                model,
                images,
                targets,
                loss_cfg,
                state.iteration,
                state.generator,
                state.optimizer,
                state.scaler,
                spec.solver.clip_grad_norm,
            )
        except NonFiniteLossError as error:
            losses = error.losses
            skip_step(spec, state, error)
        learning_rate = state.optimizer.param_groups[0]["lr"]
        state.scheduler.step()
        state.iteration += 1
        images_seen += len(images) * workers
        if on_log is not None and (state.iteration % log_every == 0 or state.iteration == until):
            metrics = {train_loss_name(k): v.item() for k, v in losses.items()}
            metrics[TRAIN_LOSS] = sum(losses.values()).item()
            metrics[LEARNING_RATE] = learning_rate
            metrics[IMAGES_PER_SECOND] = images_seen / (time.perf_counter() - since)
            metrics[SKIPPED_STEPS] = state.skipped_steps
            on_log(state.iteration, metrics)
            since, images_seen = time.perf_counter(), 0


@torch.no_grad()
def predict_batches(
    model: CondInst, loader: DataLoader, loss_cfg: LossConfig
) -> list[tuple[list[dict], MaskIoU]]:
    """For each batch of an evaluation loader, the model's COCO results and the IoU sums of
    its masks at the true instances' locations (:mod:`boxinst.platform.evaluation.mask_quality`)."""
    device = next(model.parameters()).device
    dataset: CocoInstanceDataset = loader.dataset
    batches = []
    was_training = model.training
    model.eval()
    for images, targets in loader:
        images, targets = batch_to_device(images, targets, device)
        outputs = model(images)
        detections = model.detect(
            outputs, [t["image_size"] for t in targets], [t["original_size"] for t in targets]
        )
        results = predictions_to_coco_results(
            detections, [t["image_id"] for t in targets], dataset.category_ids
        )
        quality = MaskIoU()
        quality.add(model, outputs, targets, loss_cfg)
        batches.append((results, quality))
    model.train(was_training)
    return batches


def evaluate_model(
    spec: TrainSpec, model: CondInst, loader: DataLoader
) -> tuple[dict[str, float], list[dict]]:
    """Mask and box AP on the evaluation set, overall and per class group, the box-as-mask
    baseline of the same detections (the paper's Table 3), how box-like the masks are, and
    the masks' IoU at the true locations; with the COCO results scored.

    In a distributed run every worker calls it with its :func:`evaluation_loader`: each
    predicts its shard with rank 0's weights, rank 0 gathers and scores the whole set
    (:mod:`boxinst.platform.evaluation.shards`) and the other ranks return ``({}, [])``."""
    dataset: CocoInstanceDataset = loader.dataset
    share_rank0_weights(model, loader.batch_sampler)
    shard = predict_batches(model, loader, spec.loss_config())
    batches = gather_batches(loader.batch_sampler, shard)
    if batches is None:
        return {}, []
    results, quality = [], MaskIoU()
    for batch_results, batch_quality in batches:
        results += batch_results
        quality += batch_quality
    metrics = evaluate(dataset.coco, results, evaluation_groups(spec, dataset.category_names))
    baseline = evaluate(dataset.coco, box_as_mask(results, dataset.coco))
    metrics.update({box_as_mask_name(stat): baseline[metric_name(SEGM, stat)] for stat in AP_STATS})
    metrics.update(box_likeness(results))
    metrics[BOX_LIKENESS_TRUE_FILL] = true_box_fill(dataset.coco)
    metrics.update(quality.metrics())
    return metrics, results


def write_evaluation(
    folder: Path,
    metrics: dict[str, float],
    results: list[dict],
    dataset: CocoInstanceDataset,
    overlays: int,
) -> None:
    """The evaluation's files under ``folder``: ``evaluation/metrics.json``,
    ``predictions/results.json`` (COCO results) and ``overlays/<image id>.png`` for the first
    ``overlays`` images (the folders are the MLflow artifact paths)."""
    write_metrics(folder, metrics)
    save_results(folder / ARTIFACT_PREDICTIONS / "results.json", results)
    write_overlays(dataset, results, overlays, folder / ARTIFACT_OVERLAYS)


def write_metrics(folder: Path, metrics: dict[str, float]) -> None:
    """``folder/evaluation/metrics.json``: an evaluation's metrics by name."""
    (folder / ARTIFACT_EVALUATION).mkdir(parents=True, exist_ok=True)
    (folder / ARTIFACT_EVALUATION / "metrics.json").write_text(json.dumps(metrics, indent=2))


def write_overlays_into(
    folder: Path, dataset: CocoInstanceDataset, results: list[dict], spec: TrainSpec
) -> None:
    """An intermediate evaluation's overlays under ``folder`` (the MLflow callback logs them as
    images at the evaluation's step)."""
    write_overlays(dataset, results, spec.evaluation.overlays, folder / ARTIFACT_OVERLAYS)


def loaders(spec: TrainSpec, train_set, val_set) -> tuple[DataLoader, DataLoader]:
    """Training loader (``ims_per_batch`` split over the workers) and evaluation loader."""
    per_worker = max(spec.solver.ims_per_batch // world()[1], 1)
    train = DataLoader(
        SeededSamples(train_set),
        batch_size=per_worker,
        sampler=ResumableSampler(train_set, spec.seed),
        drop_last=True,
        num_workers=spec.data.loader_workers,
        collate_fn=collate_instances,
    )
    return train, evaluation_loader(val_set)


#: images per evaluation batch (on every worker)
EVALUATION_BATCH = 2


def evaluation_loader(dataset: CocoInstanceDataset) -> DataLoader:
    """The loader of this worker's shard of an evaluation set (all of it in a process alone),
    for :func:`evaluate_model`."""
    rank, workers = world()
    shard = ShardBatches(len(dataset), EVALUATION_BATCH, rank, workers)
    return DataLoader(dataset, batch_sampler=shard, collate_fn=collate_instances)


#: ``report(metrics, folder)``: a report of the run, made by every worker at the same
#: iterations (:data:`~boxinst.platform.metrics.ITERATION` among the metrics). At the reports
#: that checkpoint, ``folder`` is, on rank 0, a folder holding the checkpoint (and the files of
#: the evaluation reported, if any), there for the duration of the call; otherwise None.
Report = Callable[[dict, Path | None], None]


def run(
    spec: TrainSpec,
    device: torch.device,
    report: Report,
    resume: dict | None = None,
    wrap_model: Callable[[CondInst], torch.nn.Module] = lambda model: model,
) -> dict[str, float]:
    """Train ``spec`` on this worker from ``resume`` (a checkpoint's state) or from scratch,
    and return the final evaluation's metrics (rank 0; ``{}`` on the other ranks).

    It reports the losses every ``reporting.log_every`` iterations, a checkpoint every
    ``reporting.checkpoint_every``, a checkpoint with the COCO metrics and the overlays every
    ``evaluation.every`` (when set), and at the end the trained model's checkpoint, then the
    final evaluation in a checkpoint holding its files (:func:`write_evaluation`): a model is
    checkpointed before it is evaluated, so an evaluation that fails (an image that cannot be
    read, say) fails the run but cannot cost it the model. ``wrap_model`` gives the module that
    trains (DDP over the workers)."""
    train_set, val_set = build_datasets(spec)
    train_loader, val_loader = loaders(spec, train_set, val_set)
    state = build_state(spec, device)
    if resume is not None:
        state.load_state_dict(resume)
    resumed_from = state.iteration
    model = wrap_model(state.model)

    def checkpointed(metrics: dict, write_files: Callable[[Path], None] | None = None) -> None:
        if world()[0] != 0:
            report(metrics, None)
            return
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(state, spec, train_set.categories, Path(folder))
            if write_files is not None:
                write_files(Path(folder))
            report(metrics, Path(folder))

    def evaluated() -> tuple[dict, list[dict]]:
        metrics, results = evaluate_model(spec, state.model, val_loader)
        warn_of_collapse(spec, metrics, state.iteration)
        return metrics, results

    def log(iteration: int, losses: dict) -> None:
        report({**losses, ITERATION: iteration}, None)

    max_iter, every = spec.solver.max_iter, spec.evaluation.every
    while state.iteration < max_iter:
        until = next_stop(state.iteration, spec)
        train_steps(spec, state, train_loader, until, log, spec.reporting.log_every, model)
        if until == max_iter:
            break
        if until % spec.reporting.checkpoint_every == 0:
            checkpointed({ITERATION: until})
        if every and until % every == 0:
            metrics, results = evaluated()
            overlays = functools.partial(
                write_overlays_into, dataset=val_set, results=results, spec=spec
            )
            checkpointed({**metrics, ITERATION: until}, overlays)

    checkpointed({ITERATION: state.iteration})
    metrics, results = evaluated()
    files = functools.partial(
        write_evaluation,
        metrics=metrics,
        results=results,
        dataset=val_set,
        overlays=spec.evaluation.overlays,
    )
    final = {ITERATION: state.iteration, FINAL: True, RESUMED_FROM: resumed_from}
    checkpointed({**metrics, **final}, files)
    return metrics


def next_stop(iteration: int, spec: TrainSpec) -> int:
    """The first iteration after ``iteration`` that ends a stretch of training: a checkpoint,
    an evaluation, or the end."""
    stops = [spec.solver.max_iter]
    for every in (spec.reporting.checkpoint_every, spec.evaluation.every):
        if every:
            stops.append((iteration // every + 1) * every)
    return min(stops)


def warn_of_collapse(spec: TrainSpec, metrics: dict, iteration: int) -> None:
    """Print a warning when a box-supervised model's masks are collapsing (the diagnosis of
    :func:`~boxinst.platform.evaluation.coco.collapse_warning`)."""
    warning = collapse_warning(metrics) if spec.regime.box_supervised and metrics else None
    if warning:
        print(f"warning: {spec.name} ({spec.regime.name}), iteration {iteration}: {warning}")
