"""The shipped experiment specs hold the paper's recipes, and the cluster files can run them."""

import itertools
import json
import re
import shlex
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest
import ray.autoscaler
import yaml
from PIL import Image

from boxinst.platform.data.policy import COCO_CLASSES, NONVOC60, VOC20
from boxinst.platform.data.voc import VOC_CLASSES, convert_voc
from boxinst.platform.spec import EXPERIMENTS, SpecError, load_spec
from boxinst.platform.sweep import trial_spec
from boxinst.platform.training.loop import evaluation_groups

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "platform" / "cluster"
ABSTRACT = {"coco_base"}
SHIPPED = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))
RUNNABLE = [name for name in SHIPPED if name not in ABSTRACT]
COCO_RECIPES = {  # name: (backbone depth, max_iter, steps), Table 4 and §3.1
    "coco_r50_1x": (50, 90_000, [60_000, 80_000]),
    "coco_r50_3x": (50, 270_000, [210_000, 250_000]),
    "coco_r101_1x": (101, 90_000, [60_000, 80_000]),
    "coco_r101_3x": (101, 270_000, [210_000, 250_000]),
    "coco_r101_bifpn_3x": (101, 270_000, [210_000, 250_000]),
    "coco_r101_bifpn_dcn_3x": (101, 270_000, [210_000, 250_000]),
}
PAPER_SPECS = {
    *COCO_RECIPES,
    "coco_fully_supervised",
    "coco_semi_voc20",
    "coco_semi_nonvoc60",
    "ablation_tau",
    "ablation_neighbourhood",
    "ablation_terms",
    "voc",
}


def flatten(data, prefix=""):
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat = {}
    for key, value in (data or {}).items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def trials(name):
    """The spec of every trial of a shipped sweep, as the sweep builds them: the grid of its axes
    set on the resolved spec."""
    spec = load_spec(name)
    base = {key: value for key, value in spec.as_dict().items() if key != "sweep"}
    axes = spec.sweep.axes
    return [
        trial_spec(base, dict(zip(axes, values, strict=True)), name)
        for values in itertools.product(*axes.values())
    ]


def test_the_paper_specs_are_shipped():
    assert PAPER_SPECS <= set(SHIPPED), sorted(PAPER_SPECS - set(SHIPPED))


@pytest.mark.parametrize("name", RUNNABLE)
def test_every_shipped_spec_validates_with_its_sweep_axes(name):
    spec = load_spec(name)  # validates every axis value too
    assert spec.name == name
    if spec.sweep:  # no two trials of the grid train the same thing
        resolved = [json.dumps(t.as_dict(), sort_keys=True) for t in trials(name)]
        assert len(set(resolved)) == len(resolved) > 1


@pytest.mark.parametrize("name", [n for n in sorted(PAPER_SPECS) if load_spec(n).sweep])
def test_gpu_sweeps_start_every_trial_for_the_autoscaler(name):
    """With no GPU node up yet, the sweep would otherwise run its trials one by one."""
    spec = load_spec(name)
    assert spec.resources.use_gpu and spec.sweep.max_concurrent == len(trials(name))


@pytest.mark.parametrize("name", sorted(PAPER_SPECS))
def test_paper_specs_cite_their_table(name):
    lines = (EXPERIMENTS / f"{name}.yaml").read_text().splitlines()
    assert any(re.match(r"#.*Tables? \d", line) for line in lines), name


def test_the_base_is_abstract():
    with pytest.raises(SpecError) as error:
        load_spec("coco_base")
    assert "regime: Field required" in str(error.value)


@pytest.mark.parametrize("name", sorted(COCO_RECIPES))
def test_coco_recipes_hold_the_papers_numbers(name, tmp_path, monkeypatch):
    depth, max_iter, steps = COCO_RECIPES[name]
    monkeypatch.chdir(tmp_path)  # data paths are taken from the working directory
    spec = load_spec(name)
    assert spec.model.backbone_depth == depth and spec.model.backbone_weights == "IMAGENET1K_V1"
    assert (spec.solver.max_iter, spec.solver.steps) == (max_iter, steps)
    assert (spec.solver.ims_per_batch, spec.solver.base_lr, spec.solver.gamma) == (16, 0.01, 0.1)
    assert spec.solver.optimizer == "sgd"
    assert spec.regime.masks == "none" and spec.regime.projection and spec.regime.pairwise
    assert spec.model.num_classes == 80 and spec.model.mask_head_channels == 16
    assert spec.model.mask_head_layers == 3 and spec.model.mask_out_stride == 4
    loss = spec.loss_config()
    assert (loss.pairwise_kernel_size, loss.pairwise_dilation, loss.pairwise_tau) == (3, 2, 0.1)
    assert loss.color_theta == 2.0
    assert spec.data.train_short_sizes == list(range(640, 801, 32))  # multi-scale training
    assert (spec.data.max_size, spec.data.test_short_size) == (1333, 800)
    assert spec.data.ignore_bottom == 10
    coco = tmp_path / "data" / "coco"
    assert spec.data.train.annotations == str(coco / "annotations/instances_train2017.json")
    assert spec.data.val.annotations == str(coco / "annotations/instances_val2017.json")
    assert spec.data.train.images == str(coco / "train2017")
    assert spec.data.val.images == str(coco / "val2017")
    assert spec.resources.num_workers == 8 and spec.resources.use_gpu
    per_gpu = spec.solver.ims_per_batch // spec.resources.num_workers
    assert per_gpu == 2  # §3.1: 2 images per GPU
    assert spec.sweep is None


def test_fully_supervised_reference_differs_only_in_regime():
    full, boxes = load_spec("coco_fully_supervised").as_dict(), load_spec("coco_r50_1x").as_dict()
    assert full["regime"]["masks"] == "all"
    assert not full["regime"]["projection"] and not full["regime"]["pairwise"]
    different = {key for key in full if full[key] != boxes[key]}
    assert different == {"name", "regime"}


@pytest.mark.parametrize("name", ["quickstart", "demo", "fidelity"])
def test_the_platforms_own_specs_train_the_box_prior_alone_beside_the_papers_box_only(name):
    regimes = {spec.regime.name: spec for spec in trials(name)}
    default = regimes["prior_only"].loss_config()
    assert (default.use_prior, default.use_projection, default.use_pairwise) == (True, False, False)
    assert regimes["prior_only"].regime.box_supervised  # its masks are watched for collapse
    paper = regimes["box_only"].loss_config()
    assert (paper.use_prior, paper.use_projection, paper.use_pairwise) == (False, True, True)
    assert load_spec(name).regime.name == "prior_only"  # `boxinst train quickstart`, say


@pytest.mark.parametrize(
    "name,seen,unseen",
    [("coco_semi_voc20", VOC20, NONVOC60), ("coco_semi_nonvoc60", NONVOC60, VOC20)],
)
def test_semi_supervised_sweeps_have_each_row_and_score_the_unseen_classes(name, seen, unseen):
    spec = load_spec(name)
    assert spec.sweep.metric == "segm_unseen/AP" and spec.sweep.mode == "max"
    assert spec.sweep.scheduler == "none"  # every row trains to the end
    rows = trials(name)
    # Tables 6 and 7: no box terms, projection only, projection + pairwise.
    assert sorted((t.regime.projection, t.regime.pairwise) for t in rows) == [
        (False, False),
        (True, False),
        (True, True),
    ]
    assert len({t.regime.name for t in rows}) == 3
    for trial in rows:
        assert trial.solver.max_iter == 90_000 and trial.model.backbone_depth == 50
        groups = evaluation_groups(trial, COCO_CLASSES)
        assert set(groups["unseen"]) == unseen and len(groups["unseen"]) == len(unseen)
        assert not set(groups["unseen"]) & seen
    single = spec.regime  # `boxinst train` on the sweep spec: the BoxInst row
    assert single.projection and single.pairwise and single.masks == rows[-1].regime.masks


def test_ablation_tau_holds_table_1a():
    assert [t.loss.pairwise_tau for t in trials("ablation_tau")] == [0.0, 0.1, 0.2]


def test_ablation_neighbourhood_holds_table_1b():
    settings = {
        (t.loss.pairwise_kernel_size, t.loss.pairwise_dilation)
        for t in trials("ablation_neighbourhood")
    }
    assert settings == {(3, 1), (3, 2), (5, 1), (5, 2)}
    assert all(t.loss.pairwise_tau == 0.1 for t in trials("ablation_neighbourhood"))


def test_ablation_terms_holds_table_3():
    rows = trials("ablation_terms")
    assert [(t.regime.masks, t.regime.projection, t.regime.pairwise) for t in rows] == [
        ("none", True, False),
        ("none", True, True),
    ]


@pytest.mark.parametrize("name", ["ablation_tau", "ablation_neighbourhood", "ablation_terms"])
def test_ablations_train_the_full_1x_box_only_model(name):
    """The paper's ablations are R-50 1x runs (§3.3); only the swept key differs per trial."""
    base = flatten(load_spec("coco_r50_1x").as_dict())
    swept = set(load_spec(name).sweep.axes)
    for trial in trials(name):
        resolved = flatten(trial.as_dict())
        changed = {k for k in resolved.keys() | base.keys() if resolved.get(k) != base.get(k)}
        changed = {k for k in changed if k != "name" and not k.startswith("sweep")}
        assert all(any(k.startswith(s) for s in swept) for k in changed), changed


def write_voc(root):
    """A VOC 2012 tree of one train and one val image, each with one person."""
    sets = root / "ImageSets" / "Segmentation"
    for folder in ("JPEGImages", "SegmentationObject", "SegmentationClass"):
        (root / folder).mkdir(parents=True)
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("t\n")
    (sets / "val.txt").write_text("v\n")
    for image_id in "tv":
        cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.jpg"), np.zeros((20, 30, 3), np.uint8))
        indices = np.zeros((20, 30), np.uint8)
        indices[5:15, 5:20] = 1
        Image.fromarray(indices, mode="P").save(root / "SegmentationObject" / f"{image_id}.png")
        Image.fromarray(indices * 15, mode="P").save(root / "SegmentationClass" / f"{image_id}.png")


def test_voc_spec_reads_what_convert_voc_writes(tmp_path, monkeypatch):
    """`boxinst data convert-voc --out data/voc` then `boxinst train voc`, in one directory."""
    write_voc(tmp_path / "VOC2012")
    monkeypatch.chdir(tmp_path)
    convert_voc(Path("VOC2012"), None, Path("data/voc"))
    spec = load_spec("voc")
    for split, image in ((spec.data.train, "t.jpg"), (spec.data.val, "v.jpg")):
        coco = json.loads(Path(split.annotations).read_text())
        assert [c["name"] for c in coco["categories"]] == list(VOC_CLASSES)
        assert len(coco["annotations"]) == 1
        assert (Path(split.images) / image).is_file()
    assert spec.model.num_classes == len(VOC_CLASSES)
    # §3.1: batch 8, 20k iterations, lr / 10 at 15k, flipping as the only augmentation.
    assert (spec.solver.ims_per_batch, spec.solver.max_iter, spec.solver.steps) == (
        8,
        20_000,
        [15_000],
    )
    assert spec.solver.base_lr == 0.01
    assert len(spec.data.train_short_sizes) == 1 and spec.data.flip_prob == 0.5
    assert spec.data.ignore_bottom == 0  # COCO's artefact only
    assert spec.regime.name == "box_only"


def test_readme_lists_every_spec_with_its_command():
    rows = [
        line
        for line in (EXPERIMENTS / "README.md").read_text().splitlines()
        if line.startswith("| `")
    ]
    listed = {re.match(r"\| `([^`]+)`", row).group(1): row for row in rows}
    assert set(listed) == set(SHIPPED)
    for name in RUNNABLE:
        command = "sweep" if load_spec(name).sweep else "train"
        assert f"`boxinst {command} {name}`" in listed[name], listed[name]


# --- cluster files ------------------------------------------------------------------------------

SECRETISH = re.compile(r"SECRET|PASSWORD|TOKEN|KEY|CREDENTIAL|MLFLOW_TRACKING_URI", re.I)


def assert_no_inline_secrets(text):
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)  # an AWS access key id
    assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text)  # a URI with user:password
    assert not re.search(r"(?i)(password|secret_access_key|token)\s*[:=]\s*\S", text)


def containers(rayjob):
    cluster = rayjob["spec"]["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


@pytest.fixture(scope="module")
def rayjob():
    return yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())


def test_rayjob_is_a_kuberay_job_with_a_gpu_worker_group(rayjob):
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    assert rayjob["spec"]["shutdownAfterJobFinishes"] is True
    workers = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpus = [
        int(c["resources"]["limits"]["nvidia.com/gpu"])
        for group in workers
        for c in group["template"]["spec"]["containers"]
        if "nvidia.com/gpu" in c["resources"].get("limits", {})
    ]
    assert gpus and min(gpus) >= 1
    for group in workers:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_rayjob_entrypoint_runs_a_shipped_sweep_that_fits_a_worker(rayjob):
    words = shlex.split(rayjob["spec"]["entrypoint"])
    assert words[:2] == ["boxinst", "sweep"]
    spec = load_spec(words[2])  # a shipped spec, by name
    assert spec.sweep is not None and words[2] in SHIPPED
    assert "--storage" in words and words[words.index("--storage") + 1].startswith("s3://")
    worker = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    limits = worker["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= spec.resources.num_workers  # one trial per node
    assert float(limits["cpu"]) >= spec.resources.num_workers * spec.resources.cpus_per_worker


def test_rayjob_takes_mlflow_from_a_secret_and_inlines_none(rayjob):
    assert_no_inline_secrets((CLUSTER / "rayjob.yaml").read_text())
    for container in containers(rayjob):
        env = {e["name"]: e for e in container.get("env", [])}
        assert "secretKeyRef" in env["MLFLOW_TRACKING_URI"]["valueFrom"], container["name"]
        for name, entry in env.items():
            if SECRETISH.search(name):
                assert "value" not in entry and "secretKeyRef" in entry["valueFrom"], name


@pytest.fixture(scope="module")
def launcher():
    return yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())


def test_cluster_launcher_config_is_valid_for_ray(launcher):
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(launcher, schema)
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types
    assert sum(t.get("min_workers", 0) for t in types.values()) <= launcher["max_workers"]
    assert any(t.get("max_workers", 0) > 0 for t in types.values())


def test_cluster_launcher_installs_this_repository(launcher):
    (remote, local), *_ = launcher["file_mounts"].items()
    assert (REPO / local / "pyproject.toml").is_file()  # `ray up` runs from the repository root
    assert any("pip install" in c and remote in c for c in launcher["setup_commands"])
    # rsync leaves out local clutter, never a folder of the package (platform/data!)
    needed = ["models", "losses", "platform", "platform/data", "experiments", "dashboards"]
    for pattern in launcher["rsync_exclude"]:
        for folder in needed:
            if pattern.startswith("/"):
                assert folder != pattern.strip("/"), pattern
            else:
                assert Path(folder).name != pattern.removeprefix("**/"), pattern


def test_cluster_launcher_takes_mlflow_from_a_file_and_inlines_no_secret(launcher):
    text = (CLUSTER / "ray-cluster.yaml").read_text()
    assert_no_inline_secrets(text)
    options = " ".join(launcher["docker"]["run_options"])
    assert "--env-file" in options and "MLFLOW_TRACKING_URI=" not in options
