"""Experiment specs: YAML files validated into typed config objects before anything starts.

A spec may ``extends:`` a base spec (a path relative to it, or the name of a spec shipped in
``experiments/``); the child's keys are merged into the base's recursively. Command-line
overrides ``--set a.b=c`` are applied last, their values read as YAML (``--set seed=3``,
``--set loss.pairwise_tau=0.2``, ``--set regime=projection_only``).

A wrong key or value is a :class:`SpecError` naming it (``model.num_clases: unknown key``),
raised before Ray or MLflow are touched. YAML is read with ``yaml.safe_load`` only.

The regime of a run is one section: the mask policy of its instances and the BoxInst terms
used for the instances without a mask. It is a preset name (``box_only``, ``projection_only``,
``fully_supervised``) or a mapping; the loss section sets how terms are computed, never whether.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass as validated

from boxinst.models.condinst import CondInstConfig
from boxinst.platform.data.box_prior import PriorSettings
from boxinst.platform.data.policy import parse_mask_policy
from boxinst.platform.data.synth import SynthConfig
from boxinst.platform.data.transforms import (
    COCO_MAX_SIZE,
    COCO_TEST_SHORT_SIZE,
    COCO_TRAIN_SHORT_SIZES,
)
from boxinst.platform.training.objective import LossConfig

#: Where the shipped specs live (the repo's experiments/ folder).
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

_STRICT = ConfigDict(extra="forbid")
ModelSpec = validated(CondInstConfig, config=_STRICT)
LossSpec = validated(LossConfig, config=_STRICT)
SynthSpec = validated(SynthConfig, config=_STRICT)

#: Named regimes: mask policy and box terms. Semi-supervised ones name their class group.
REGIME_PRESETS: dict[str, dict[str, Any]] = {
    "box_only": {"masks": "none", "projection": True, "pairwise": True},
    # BoxInst's terms and the dice to GrabCut's masks of the boxes (data/box_prior.py)
    "box_only_grabcut": {"masks": "none", "projection": True, "pairwise": True, "prior": True},
    # the dice to GrabCut's masks of the boxes alone: the platform's default, the box-only regime
    # nearest full supervision across the fidelity suite's four styles (README)
    "prior_only": {"masks": "none", "projection": False, "pairwise": False, "prior": True},
    "projection_only": {"masks": "none", "projection": True, "pairwise": False},
    "fully_supervised": {"masks": "all", "projection": False, "pairwise": False},
}
_BOX_TERMS = ("use_projection", "use_pairwise", "use_prior")


def expand_regime(regime: Any) -> Any:
    """A preset name as its mapping; anything else as it is (validation judges it)."""
    if not isinstance(regime, str):
        return regime
    if regime not in REGIME_PRESETS:
        raise ValueError(f"regime: unknown preset {regime!r}; presets: {list(REGIME_PRESETS)}")
    return {"name": regime, **REGIME_PRESETS[regime]}


class SpecError(ValueError):
    """A spec that cannot run; the message names the file and the key."""


class Spec(BaseModel):
    model_config = _STRICT


class Regime(Spec):
    """Which instances keep their mask, and the BoxInst terms of the others (Eq. 6)."""

    name: str
    masks: str | dict[str, Any] = "none"
    projection: bool = True
    pairwise: bool = True
    prior: bool = False  # dice to GrabCut's masks of the boxes (data/box_prior.py)

    @field_validator("masks")
    @classmethod
    def _valid_policy(cls, masks):
        parse_mask_policy(masks)  # raises ValueError naming the bad key or value
        return masks

    @property
    def box_supervised(self) -> bool:
        """Whether some instances learn their masks from boxes (a box term on, not every mask)."""
        return self.masks != "all" and (self.projection or self.pairwise or self.prior)


class Split(Spec):
    """A COCO-format split; relative paths are taken from the working directory of the command
    that loads the spec, and kept absolute from then on (Ray workers run elsewhere)."""

    annotations: str
    images: str

    @field_validator("annotations", "images")
    @classmethod
    def _absolute(cls, path: str) -> str:
        return str(Path(path).expanduser().absolute())


class Data(Spec):
    """The training and evaluation splits. With ``synth`` the dataset is generated before the
    run where it is missing: at ``train``/``val`` when given, else in a folder of ``generated``
    named after the generator's settings, so that every generator setting (a sweep axis over
    ``data.synth.style``, say) has a dataset of its own."""

    train: Split | None = None
    val: Split | None = None
    synth: SynthSpec | None = None
    #: where the generated datasets without paths go, and where the GrabCut box priors are
    #: cached (regime.prior); absolute, defaults included, so a resolved spec round-trips
    generated: str = Field("data/generated", validate_default=True)
    box_priors: str = Field("data/box_priors", validate_default=True)
    #: GrabCut cuts overlapping boxes again, the pixels another box holds unsure (box_prior.py)
    prior_overlap_pass: bool = PriorSettings.overlap_pass
    #: GrabCut starts the pixels of a box that look like the background continued into it as
    #: probable background (box_prior.py)
    prior_background_start: bool = PriorSettings.background_start
    ignore_bottom: int = Field(0, ge=0)
    skip_bad_records: bool = False
    train_short_sizes: list[PositiveInt] = Field(
        default_factory=lambda: list(COCO_TRAIN_SHORT_SIZES), min_length=1
    )
    max_size: PositiveInt = COCO_MAX_SIZE
    test_short_size: PositiveInt = COCO_TEST_SHORT_SIZE
    flip_prob: float = Field(0.5, ge=0, le=1)
    loader_workers: int = Field(2, ge=0)

    #: The splits derived from ``synth`` (not given): left out of the resolved spec, so that a
    #: trial that changes ``synth`` derives its own.
    _derived: set[str] = PrivateAttr(default_factory=set)

    @field_validator("box_priors", "generated")
    @classmethod
    def _absolute(cls, path: str) -> str:
        return str(Path(path).expanduser().absolute())

    @model_validator(mode="after")
    def _generated_paths(self) -> Data:
        missing = [name for name in ("train", "val") if getattr(self, name) is None]
        if missing and self.synth is None:
            raise ValueError(
                f"data.{missing[0]}: required (annotations and images), unless data.synth "
                "generates the dataset"
            )
        if missing:
            settings = json.dumps(dataclasses.asdict(self.synth), sort_keys=True)
            digest = hashlib.sha256(settings.encode()).hexdigest()[:10]
            root = Path(self.generated) / f"{self.synth.style}-{digest}"
            self._derived = set(missing)
            for name in missing:
                split = {
                    "annotations": root / name / "annotations.json",
                    "images": root / name / "images",
                }
                setattr(self, name, Split(**{k: str(v) for k, v in split.items()}))
        return self


class Solver(Spec):
    """SGD with linear warm-up and step decay, as the paper's COCO recipe (1x: 90k iterations,
    batch 16, lr 0.01, /10 at 60k and 80k)."""

    optimizer: Literal["sgd", "adamw"] = "sgd"
    base_lr: float = Field(0.01, gt=0)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    ims_per_batch: int = Field(16, ge=1)
    max_iter: int = Field(90_000, ge=1)
    steps: list[int] = Field(default_factory=lambda: [60_000, 80_000])
    gamma: float = 0.1
    warmup_iters: int = Field(1000, ge=0)
    warmup_factor: float = 0.001
    clip_grad_norm: float | None = None
    amp: bool = True  # on CUDA only
    # A NaN or inf loss never reaches the weights: the step is not taken, and the run fails
    # ("fail") or goes on without it ("skip"), failing once more than max_skipped_steps were.
    on_nonfinite_loss: Literal["fail", "skip"] = "fail"
    max_skipped_steps: int = Field(20, ge=0)


class Evaluation(Spec):
    every: int = Field(0, ge=0)  # iterations between evaluations; 0: at the end only
    groups: dict[str, list[str]] = Field(default_factory=dict)  # extra class groups to score
    overlays: int = Field(4, ge=0)  # validation images drawn with their predicted masks


class Reporting(Spec):
    log_every: int = Field(20, ge=1)  # iterations between reported losses (MLflow's curves)
    # iterations between a run's loss lines on the console, a multiple of log_every (default)
    print_every: int | None = Field(None, ge=1)
    checkpoint_every: int = Field(1000, ge=1)  # iterations between checkpoints
    # the model registry's name for what a run trains (`train`: its model; `sweep`: its best
    # trial's, by sweep.metric); --register NAME sets it; unset, nothing is registered
    registered_model: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _printed_when_reported(self) -> Reporting:
        if self.print_every is None:
            self.print_every = self.log_every
        if self.print_every % self.log_every:
            raise ValueError(
                f"reporting.print_every {self.print_every}: a multiple of reporting.log_every "
                f"({self.log_every}), the iterations whose losses are reported"
            )
        return self


class Resources(Spec):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1, gt=0)
    max_failures: int = Field(0, ge=-1)  # worker-group restarts from the last checkpoint; -1: any
    # Ray's placement of the workers: PACK fills a node first, STRICT_SPREAD one per node.
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"


class Sweep(Spec):
    """Axes over any key of the spec (dotted), each a list of values: a grid."""

    axes: dict[str, list[Any]] = Field(default_factory=dict)
    num_samples: int = Field(1, ge=1)
    max_concurrent: int | None = Field(None, ge=1)
    scheduler: Literal["none", "asha"] = "none"
    metric: str = "segm/AP"
    mode: Literal["max", "min"] = "max"


class TrainSpec(Spec):
    name: str
    seed: int = 0
    regime: Regime
    data: Data
    model: ModelSpec = Field(default_factory=ModelSpec)
    loss: LossSpec = Field(default_factory=LossSpec)
    solver: Solver = Field(default_factory=Solver)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    reporting: Reporting = Field(default_factory=Reporting)
    resources: Resources = Field(default_factory=Resources)
    sweep: Sweep | None = None

    @model_validator(mode="before")
    @classmethod
    def _expand_regime(cls, data: Any) -> Any:
        if isinstance(data, dict) and "regime" in data:
            data = {**data, "regime": expand_regime(data["regime"])}
        if isinstance(data, dict) and isinstance(data.get("loss"), dict):
            terms = [key for key in _BOX_TERMS if key in data["loss"]]
            if terms:
                raise ValueError(
                    f"loss.{terms[0]}: the box terms are chosen by the regime "
                    "(regime.projection / regime.pairwise)"
                )
        return data

    @model_validator(mode="after")
    def _asha_needs_evaluations(self) -> TrainSpec:
        if self.sweep and self.sweep.scheduler == "asha" and not self.evaluation.every:
            raise ValueError(
                "sweep.scheduler: asha stops trials on their evaluations; set evaluation.every"
            )
        return self

    def as_dict(self) -> dict:
        """The resolved spec as plain JSON-able data, valid input of ``TrainSpec`` again (the
        box-term switches of the loss are left to the regime, as in a spec file)."""
        exclude = {"loss": set(_BOX_TERMS), "data": set(self.data._derived)}
        return self.model_dump(mode="json", exclude=exclude)

    def loss_config(self) -> LossConfig:
        """The objective's loss settings, the box terms taken from the regime."""
        values = {k: getattr(self.loss, k) for k in LossConfig.__dataclass_fields__}
        values.update(
            use_projection=self.regime.projection,
            use_pairwise=self.regime.pairwise,
            use_prior=self.regime.prior,
        )
        return LossConfig(**values)


def _merge(base: dict, child: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def find_spec(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    """A spec file: a path (relative to ``relative_to`` when given) or a shipped spec's name."""
    candidates = [Path(name_or_path)]
    if relative_to is not None:
        candidates.insert(0, relative_to / name_or_path)
    candidates.append(EXPERIMENTS / f"{name_or_path}.yaml")
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    shipped = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))
    raise SpecError(f"spec {name_or_path!s} is neither a file nor a shipped spec {shipped}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping with a key twice (PyYAML keeps the last one
    silently: a spec with two ``solver:`` sections would lose the first)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # refused by the SafeLoader's own mapping, below
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def _read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: plain data only


def read_spec(path: Path, _seen: tuple[Path, ...] = ()) -> dict:
    """The spec's mapping with its ``extends`` chain merged in."""
    if path in _seen:
        raise SpecError(f"{path}: extends itself through {' -> '.join(map(str, _seen))}")
    try:
        data = _read_yaml(path.read_text())
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a spec is a mapping of keys, not {type(data).__name__}")
    base = data.pop("extends", None)
    if base is None:
        return data
    return _merge(read_spec(find_spec(base, path.parent), (*_seen, path)), data)


def set_key(data: dict, dotted: str, value: Any) -> dict:
    """A copy of ``data`` with ``a.b.c`` set to ``value`` (intermediate mappings created)."""
    data = copy.deepcopy(data)
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        child = node.get(key)
        if node is data and key == "regime":  # a preset's fields can be overridden one by one
            try:
                child = expand_regime(child)
            except ValueError as error:
                raise SpecError(f"--set {dotted}: {error}") from None
        node[key] = child if isinstance(child, dict) else {}
        node = node[key]
    node[leaf] = value
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` -> ``("a.b", value read as YAML)``."""
    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise SpecError(f"--set {text!r}: expected KEY=VALUE, e.g. --set solver.base_lr=0.02")
    try:
        return key.strip(), _read_yaml(value) if value.strip() else ""
    except yaml.YAMLError as error:
        raise SpecError(f"--set {text!r}: the value is not valid YAML ({error})") from None


def validate(data: dict, source: str) -> TrainSpec:
    """Typed spec of a mapping, or a SpecError listing each bad key of ``source``."""
    try:
        return TrainSpec.model_validate(data)
    except ValidationError as error:
        lines = []
        for problem in error.errors():
            key = ".".join(str(part) for part in problem["loc"]) or "(top level)"
            message = problem["msg"].removeprefix("Value error, ")
            if problem["type"] in {"extra_forbidden", "unexpected_keyword_argument"}:
                message = "unknown key"
            lines.append(f"{source}: {key}: {message}")
        raise SpecError("\n".join(lines)) from None


def load_spec(name_or_path: str | Path, overrides: list[str] = ()) -> TrainSpec:
    """Read, merge, override and validate a spec; its sweep axes are checked value by value."""
    path = find_spec(name_or_path)
    data = read_spec(path)
    for text in overrides:
        data = set_key(data, *parse_override(text))
    spec = validate(data, str(path))
    for key, values in (spec.sweep.axes if spec.sweep else {}).items():
        if not values:
            raise SpecError(f"{path}: sweep.axes.{key}: an axis needs at least one value")
        for value in values:
            validate(set_key(data, key, value), f"{path} (sweep axis {key}={value!r})")
    return spec
