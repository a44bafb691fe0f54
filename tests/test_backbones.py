"""The backbones of Table 4's strongest models: deformable convs in the ResNet and the BiFPN.

Fast CPU tests on small ResNets and tiny images; the shipped specs' R-101 models are only built
(parameter counts against AdelaiDet's layer structure), never trained here."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN

from boxinst.models.backbone import build_backbone
from boxinst.models.bifpn import BackboneWithBiFPN, BiFPNCell, FastFusion
from boxinst.models.condinst import CondInst
from boxinst.models.deform import DeformableConv2d
from boxinst.platform.bench.batches import CONFIGS, shapes_batch
from boxinst.platform.metrics import TRAIN_LOSS
from boxinst.platform.spec import SpecError, TrainSpec, load_spec
from boxinst.platform.training.loop import (
    build_datasets,
    build_state,
    load_checkpoint,
    loaders,
    optimisation_step,
    save_checkpoint,
    train_steps,
)
from boxinst.platform.training.objective import LossConfig

#: a small model with both: DCNv2 in every block of res3-res5 and a 2-cell BiFPN of 32 channels
DCN_BIFPN = {
    "fpn": "BiFPN",
    "fpn_channels": 32,
    "bifpn_repeats": 2,
    "backbone_deform_stages": (3, 4, 5),
    "backbone_deform_modulated": True,
}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def offsets(module: nn.Module) -> dict[str, nn.Conv2d]:
    return {n: m.offset for n, m in module.named_modules() if isinstance(m, DeformableConv2d)}


# --- AdelaiDet's layer structure, counted from its code -------------------------------------

BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def official_resnet(depth: int, stages=(), interval: int = 1, modulated: bool = False) -> int:
    """Parameters of detectron2's ResNet with FrozenBN (its norms hold buffers only): the stem,
    then per bottleneck block conv1, conv2, conv3 (no biases) and the first block's shortcut;
    a ``DeformBottleneckBlock`` adds ``conv2_offset``, a 3x3 conv with bias to 27 channels
    (18 unmodulated). AdelaiDet's ``make_stage_intervals``: block ``i`` when ``i % interval``
    is 0."""
    total, in_channels = 7 * 7 * 3 * 64, 64
    for stage, blocks in zip((2, 3, 4, 5), BLOCKS[depth], strict=True):
        width = 64 * 2 ** (stage - 2)
        for index in range(blocks):
            total += in_channels * width + 9 * width * width + width * 4 * width
            if index == 0:
                total += in_channels * 4 * width
            if stage in stages and index % interval == 0:
                total += (27 if modulated else 18) * (9 * width + 1)
            in_channels = 4 * width
    return total


def official_fpn(channels: int = 256) -> int:
    """detectron2's FPN without norm over res3-res5 (1x1 laterals and 3x3 outputs, with biases)
    and AdelaiDet's ``LastLevelP6P7`` on P5 (two 3x3 stride-2 convs with biases)."""
    laterals = sum(c * channels + channels for c in (512, 1024, 2048))
    return laterals + 5 * (9 * channels * channels + channels)


def official_bifpn(channels: int = 160, repeats: int = 6) -> int:
    """AdelaiDet's ``BiFPN`` with SyncBN (2 affine parameters per channel): P6 from res5 by a
    1x1 conv without bias (``FeatureMapResampler``; P7 is a max pool), the first cell's 1x1
    laterals of res3, res4, res5 (with bias: ``lateral_{i}_f{i}``, one per input, the later
    additions of the same name replacing it), and per cell 8 nodes, each a 3x3 conv without
    bias + norm, with 2, 2, 2, 2, 3, 3, 3, 2 fusion weights."""
    norm = 2 * channels
    p6 = 2048 * channels + norm
    laterals = sum(c * channels + channels + norm for c in (512, 1024, 2048))
    cell = 8 * (9 * channels * channels + norm) + 19
    return p6 + laterals + repeats * cell


# --- BiFPN --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 96), (128, 192)])
def test_bifpn_gives_the_levels_of_the_fpn(size):
    """P3-P7 at the FPN's sizes (so the FCOS head and its locations are the same), of the
    BiFPN's width."""
    kwargs = {"norm": "BN", "trainable_layers": 5, "out_channels": 32}
    fpn = build_backbone(18, **kwargs)
    bifpn = build_backbone(18, fpn="BiFPN", bifpn_repeats=2, **kwargs)
    assert isinstance(fpn, BackboneWithFPN) and isinstance(bifpn, BackboneWithBiFPN)
    images = torch.rand(2, 3, *size)
    expected = {name: level.shape for name, level in fpn(images).items()}
    assert {name: level.shape for name, level in bifpn(images).items()} == expected
    assert list(expected) == ["p3", "p4", "p5", "p6", "p7"]


def test_bifpn_cells_have_adelaidets_nodes_and_weights():
    cell = BiFPNCell(5, 32, "BN")
    nodes = [*cell.top_down, *cell.bottom_up]
    assert len(nodes) == 8  # 4 top-down, 4 bottom-up
    assert [node.weights.numel() for node in nodes] == [2, 2, 2, 2, 3, 3, 3, 2]
    backbone = build_backbone(18, norm="BN", out_channels=128, fpn="BiFPN", bifpn_repeats=3)
    assert len(backbone.fpn.cells) == 3
    # ResNet-18's C3 has 128 channels already: no lateral there, as in AdelaiDet
    laterals = [type(lateral) for lateral in backbone.fpn.laterals]
    assert laterals == [nn.Identity, nn.Sequential, nn.Sequential]


def test_fast_fusion_is_a_normalised_weighted_sum_then_swish_and_conv():
    torch.manual_seed(0)
    node = FastFusion(3, 4, "BN").eval()
    with torch.no_grad():
        node.weights.copy_(torch.tensor([1.0, 3.0, -2.0]))  # ReLU: the third input is off
    inputs = [torch.randn(2, 4, 5, 6) for _ in range(3)]
    fused = (1.0 * inputs[0] + 3.0 * inputs[1]) / (4.0 + FastFusion.EPS)
    expected = node.norm(node.conv(fused * fused.sigmoid()))
    torch.testing.assert_close(node(inputs), expected)


# --- deformable convs ---------------------------------------------------------------------


@pytest.mark.parametrize("modulated", [False, True])
@pytest.mark.parametrize("depth", [18, 50])  # BasicBlock, Bottleneck
def test_deformable_backbone_at_init_is_the_plain_one(depth, modulated):
    """Same weights, zero offsets (and modulation 1): the same features. The plain backbone's
    state dict loads into the deformable one, whose only new parameters are the offset convs."""
    torch.manual_seed(0)
    kwargs = {"norm": "BN", "trainable_layers": 5, "out_channels": 32}
    plain = build_backbone(depth, **kwargs).eval()
    deformable = build_backbone(
        depth, deform_stages=(2, 3, 4, 5), deform_modulated=modulated, **kwargs
    ).eval()
    missing, unexpected = deformable.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected
    assert sorted(missing) == sorted(
        f"{name}.offset.{p}" for name in offsets(deformable) for p in ("weight", "bias")
    )
    assert len(offsets(deformable)) == sum(BLOCKS.get(depth, (2, 2, 2, 2)))
    images = torch.rand(2, 3, 64, 64) * 4
    with torch.no_grad():
        expected, actual = plain(images), deformable(images)
    for name, level in expected.items():
        scale = level.abs().max().item()
        torch.testing.assert_close(actual[name], level, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("stride", [1, 2])
def test_deformable_conv_starts_as_its_conv_and_learns_offsets(stride):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, stride=stride, padding=1, bias=False)
    deformable = DeformableConv2d(conv, modulated=True)
    assert deformable.weight is conv.weight and deformable.offset.out_channels == 27
    images = torch.randn(2, 8, 9, 10, requires_grad=True)
    out = deformable(images)
    torch.testing.assert_close(out, conv(images), rtol=1e-5, atol=1e-5)
    (out * torch.randn_like(out)).sum().backward()
    gradient = deformable.offset.weight.grad
    assert gradient is not None and gradient.abs().sum() > 0 and torch.isfinite(gradient).all()
    assert deformable.offset.bias.grad.abs().sum() > 0


NAN_OFFSETS = """
import torch
from torch import nn
from boxinst.models.deform import DeformableConv2d
deformable = DeformableConv2d(nn.Conv2d(64, 64, 3, padding=1, bias=False), modulated=True)
images = torch.randn(2, 64, 16, 16)
images[0, :, 3, 4] = float("nan")  # NaN offsets around it
out = deformable(images)
print(out[0].isnan().any().item(), out[1].isfinite().all().item())
"""


def test_nan_offsets_give_nan_outputs_not_a_crash():
    """A diverged step must reach the loss as NaN (the platform then skips it); torchvision's
    kernel alone crashes the process on NaN offsets, hence a process of its own here."""
    result = subprocess.run(
        [sys.executable, "-c", NAN_OFFSETS], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", "True"]


def test_imagenet_weights_load_into_the_deformable_resnet(tmp_path):
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    backbone = build_backbone(18, weights=str(path), deform_stages=(3, 4, 5))
    block = backbone.body.layer3[0]
    assert isinstance(block.conv2, DeformableConv2d)
    torch.testing.assert_close(block.conv2.weight, reference.layer3[0].conv2.weight)
    assert block.conv2.offset.weight.requires_grad and not block.conv2.offset.weight.any()


def test_the_dcni3_interval_deforms_every_third_block_of_res3_to_res5():
    backbone = build_backbone(
        101, deform_stages=(3, 4, 5), deform_interval=3, deform_modulated=True
    )
    deformed = {
        stage: [i for i, b in enumerate(getattr(backbone.body, f"layer{stage - 1}"))
                if isinstance(b.conv2, DeformableConv2d)]
        for stage in (2, 3, 4, 5)
    }  # fmt: skip
    assert deformed == {2: [], 3: [0, 3], 4: list(range(0, 23, 3)), 5: [0]}
    assert all(conv.out_channels == 27 for conv in offsets(backbone).values())


def test_a_deformable_stage_must_be_trained():
    with pytest.raises(ValueError, match="res2 is frozen"):
        build_backbone(18, trainable_layers=3, deform_stages=(2, 3))
    with pytest.raises(ValueError, match="the ResNet stages are"):
        build_backbone(18, deform_stages=(6,))


# --- the shipped specs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,overrides,official",
    [
        ("coco_r101_3x", [], official_resnet(101) + official_fpn()),
        ("coco_r101_bifpn_3x", [], official_resnet(101) + official_bifpn()),
        (
            "coco_r101_bifpn_dcn_3x",
            [],
            official_resnet(101, (3, 4, 5), 3, modulated=True) + official_bifpn(),
        ),
        (  # what AdelaiDet's BiFPN code builds from that config: no interval, all 30 blocks
            "coco_r101_bifpn_dcn_3x",
            ["model.backbone_deform_interval=1"],
            official_resnet(101, (3, 4, 5), 1, modulated=True) + official_bifpn(),
        ),
    ],
)
def test_backbone_parameters_match_adelaidets_structure(name, overrides, official):
    model = load_spec(name, ["model.backbone_weights=null", *overrides]).model
    backbone = CondInst(model).backbone
    assert count(backbone) == official


def test_the_table_4_specs_set_the_official_backbones():
    bifpn = load_spec("coco_r101_bifpn_3x").model
    assert (bifpn.backbone_depth, bifpn.fpn, bifpn.fpn_channels, bifpn.bifpn_repeats) == (
        101,
        "BiFPN",
        160,
        6,
    )
    assert bifpn.backbone_deform_stages == ()
    dcn = load_spec("coco_r101_bifpn_dcn_3x").model
    assert dcn.backbone_deform_stages == (3, 4, 5) and dcn.backbone_deform_interval == 3
    assert dcn.backbone_deform_modulated
    plain = {"backbone_deform_interval": 1, "backbone_deform_modulated": False}
    assert dataclasses.replace(dcn, backbone_deform_stages=(), **plain) == bifpn


@pytest.mark.parametrize(
    "bench,spec",
    [("coco_r101_bifpn", "coco_r101_bifpn_3x"), ("coco_r101_bifpn_dcn", "coco_r101_bifpn_dcn_3x")],
)
def test_the_benchmarks_run_the_shipped_models(bench, spec):
    shipped = dataclasses.asdict(load_spec(spec).model)
    assert dataclasses.asdict(CONFIGS[bench][0]) == {**shipped, "backbone_weights": None}


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.backbone_deform_stages=[3, 6]", "backbone_deform_stages"),
        ("model.backbone_deform_stages=[2, 3]", "res2 is frozen"),
        ("model.backbone_deform_interval=0", "backbone_deform_interval"),
        ("model.bifpn_repeats=0", "bifpn_repeats"),
        ("model.fpn=bifpn", "model.fpn"),
        ("model.bifpn_norm=SyncBN", "model.bifpn_norm"),
    ],
)
def test_bad_backbone_settings_fail_the_spec(override, message):
    with pytest.raises(SpecError, match=message):
        load_spec("coco_r101_bifpn_dcn_3x", [override])


def test_default_settings_keep_the_fpn_model(make_config):
    """Existing specs and checkpoints: no deformable conv, no BiFPN, the same parameter names."""
    model = CondInst(make_config())
    assert isinstance(model.backbone, BackboneWithFPN) and not offsets(model)
    assert not any("offset" in key or "cells" in key for key in model.state_dict())


# --- training -----------------------------------------------------------------------------


def test_a_few_steps_lower_the_loss_and_move_the_offsets(make_config):
    torch.manual_seed(0)
    model = CondInst(make_config(num_classes=7, **DCN_BIFPN)).train()
    images, targets = shapes_batch(2, 64, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss_cfg = LossConfig(pairwise_warmup_iters=0)
    generator = torch.Generator().manual_seed(0)
    totals = []
    for iteration in range(8):
        losses = optimisation_step(
            model, images, targets, loss_cfg, iteration, generator, optimizer, scaler
        )
        totals.append(sum(losses.values()).item())
    assert totals[-1] < 0.8 * totals[0], totals
    moved = [conv.weight.abs().sum().item() for conv in offsets(model).values()]
    assert len(moved) == 3 and all(value > 0 for value in moved)  # ResNet-10: res3-res5's block


def test_a_run_of_the_new_backbones_checkpoints_and_resumes(tiny_spec, tmp_path):
    """Through the platform: a spec with both backbones trains on generated shapes, and its
    checkpoint (weights and resolved spec) rebuilds the same model."""
    spec = tiny_spec(*(f"model.{key}={json.dumps(value)}" for key, value in DCN_BIFPN.items()))
    train_set, val_set = build_datasets(spec)
    train_loader, _ = loaders(spec, train_set, val_set)
    state = build_state(spec, torch.device("cpu"))
    logged = []
    train_steps(spec, state, train_loader, 3, lambda i, m: logged.append(m), 1)
    assert len(logged) == 3 and all(torch.isfinite(torch.tensor(m[TRAIN_LOSS])) for m in logged)

    checkpoint = load_checkpoint(save_checkpoint(state, spec, [], tmp_path / "run"))
    restored = build_state(TrainSpec.model_validate(checkpoint["spec"]), torch.device("cpu"))
    restored.load_state_dict(checkpoint)
    images = torch.rand(2, 3, 64, 64) * 255
    state.model.eval(), restored.model.eval()
    with torch.no_grad():
        expected, actual = state.model(images), restored.model(images)
    for field in ("cls", "box", "centerness", "params", "mask_features"):
        torch.testing.assert_close(getattr(actual, field), getattr(expected, field))
    assert checkpoint["spec"]["model"]["backbone_deform_stages"] == [3, 4, 5]
