"""Experiment specs: typed, validated, extendable, overridable; errors name the key."""

import pytest
import yaml

from boxinst.models.condinst import CondInstConfig
from boxinst.platform.spec import SpecError, load_spec
from boxinst.platform.training.objective import LossConfig

BASE = {
    "name": "base",
    "regime": "box_only",
    "data": {
        "train": {"annotations": "d/train/annotations.json", "images": "d/train/images"},
        "val": {"annotations": "d/val/annotations.json", "images": "d/val/images"},
    },
    "model": {"num_classes": 7, "backbone_depth": 18},
    "solver": {"max_iter": 100, "steps": [80]},
}


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_spec_becomes_typed_configs(tmp_path):
    spec = load_spec(write(tmp_path, "base.yaml", BASE))
    assert isinstance(spec.model, CondInstConfig) and spec.model.num_classes == 7
    assert spec.model.mask_head_channels == 16  # BoxInst's default
    assert spec.regime.name == "box_only" and spec.regime.masks == "none"
    loss = spec.loss_config()
    assert isinstance(loss, LossConfig) and loss.use_projection and loss.use_pairwise
    assert loss.pairwise_tau == 0.1 and spec.solver.steps == [80]


def test_resolved_spec_round_trips(tmp_path):
    spec = load_spec(write(tmp_path, "base.yaml", BASE), ["regime=projection_only"])
    again = type(spec).model_validate(spec.as_dict())
    assert again == spec and not again.loss_config().use_pairwise


def test_extends_merges_recursively_and_overrides_come_last(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(
        tmp_path,
        "child.yaml",
        {"extends": "base.yaml", "name": "child", "model": {"mask_head_channels": 8}},
    )
    spec = load_spec(child, ["loss.pairwise_tau=0.3", "regime=projection_only", "seed=4"])
    assert spec.name == "child" and spec.seed == 4
    assert spec.model.num_classes == 7 and spec.model.mask_head_channels == 8
    assert spec.loss.pairwise_tau == 0.3
    assert spec.regime.name == "projection_only" and not spec.loss_config().use_pairwise


def test_a_preset_field_can_be_overridden(tmp_path):
    spec = load_spec(write(tmp_path, "p.yaml", BASE), ["regime.pairwise=false", "regime.name=mine"])
    assert spec.regime.masks == "none" and spec.regime.projection and not spec.regime.pairwise
    with pytest.raises(SpecError, match=r"--set regime\.pairwise: regime: unknown preset"):
        load_spec(write(tmp_path, "q.yaml", {**BASE, "regime": "boxy"}), ["regime.pairwise=false"])


def test_semi_supervised_regime_as_a_mapping(tmp_path):
    regime = {"name": "semi_voc20", "masks": {"classes": ["voc20"]}, "pairwise": False}
    spec = load_spec(write(tmp_path, "s.yaml", {**BASE, "regime": regime}))
    assert spec.regime.masks == {"classes": ["voc20"]} and spec.regime.projection


@pytest.mark.parametrize(
    "change,message",
    [
        ({"model": {"num_clases": 7}}, "model.num_clases: unknown key"),
        ({"solver": {"base_lr": "fast"}}, "solver.base_lr: Input should be a valid number"),
        ({"solver": {"base_lr": -1}}, "solver.base_lr: Input should be greater than 0"),
        ({"regime": "boxy"}, "regime: unknown preset 'boxy'"),
        ({"regime": {"name": "r", "masks": {"fraction": 2}}}, "regime.masks"),
        ({"loss": {"use_pairwise": False}}, "loss.use_pairwise: the box terms are chosen by"),
        ({"data": {"train": {"annotations": "a"}}}, "data.train.images: Field required"),
        ({"sweep": {"axes": {"loss.pairwise_tau": []}}}, "sweep.axes.loss.pairwise_tau: an axis"),
        (
            {"sweep": {"axes": {"loss.tau": [0.1]}}},
            "sweep axis loss.tau=0.1): loss.tau: unknown key",
        ),
        (
            {"data": {"synth": {"object_size": [0.3, 0.6]}}},
            "data.synth: object_size [0.3, 0.6]: radii are fractions of the image's shorter side",
        ),
        (
            {"sweep": {"axes": {"seed": [0, 1]}, "scheduler": "asha"}},
            "asha stops trials on their evaluations; set evaluation.every",
        ),
        (
            {"sweep": {"axes": {"solver.max_iter": [10, 0]}}},
            "solver.max_iter=0): solver.max_iter: Input should be greater than or equal to 1",
        ),
    ],
)
def test_bad_specs_name_the_file_and_key(tmp_path, change, message):
    data = {**BASE, **change}
    if "data" in change:
        data["data"] = {**BASE["data"], **change["data"]}
    path = write(tmp_path, "bad.yaml", data)
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_unreadable_specs(tmp_path):
    (tmp_path / "broken.yaml").write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(tmp_path / "broken.yaml")
    write(tmp_path, "loop.yaml", {**BASE, "extends": "loop.yaml"})
    with pytest.raises(SpecError, match="extends itself"):
        load_spec(tmp_path / "loop.yaml")
    with pytest.raises(SpecError, match="neither a file nor a shipped spec"):
        load_spec(tmp_path / "missing.yaml")
    with pytest.raises(SpecError, match="expected KEY=VALUE"):
        load_spec(write(tmp_path, "ok.yaml", BASE), ["seed"])


def test_specs_are_parsed_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)


def test_console_period_defaults_to_the_report_period_and_must_be_a_multiple_of_it():
    assert load_spec("quickstart", ["reporting.print_every=null"]).reporting.print_every == 40
    assert load_spec("quickstart").reporting.print_every == 200
    with pytest.raises(SpecError, match=r"print_every 50: a multiple of reporting\.log_every"):
        load_spec("quickstart", ["reporting.print_every=50"])
