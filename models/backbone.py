"""ResNet + FPN (or BiFPN) backbone producing P3-P7 (strides 8-128) as FCOS does, from torchvision
parts; optionally with deformable 3x3 convs in chosen ResNet stages (the paper's Table 4)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from boxinst.models.bifpn import BackboneWithBiFPN
from boxinst.models.deform import deform_resnet

RESNET_DEPTHS = (10, 18, 34, 50, 101)
FPN_STRIDES = (8, 16, 32, 64, 128)
#: ResNet stages by their detectron2 names res2..res5 (torchvision's layer1..layer4).
RESNET_STAGES = (2, 3, 4, 5)
FEATURE_PYRAMIDS = ("FPN", "BiFPN")


class BackboneWeightsError(RuntimeError):
    """ImageNet weights were asked for but could not be loaded."""


def _load_resnet(depth: int, weights: str | None, norm: str) -> nn.Module:
    """A torchvision ResNet with ImageNet ``weights``: None (random init), a torchvision weights
    name (``"DEFAULT"``, ``"IMAGENET1K_V1"``, ... fetched by torchvision's API into its cache), or
    the path of a local state-dict file. Depth 10 (torchvision's ResNet with one basic block per
    stage, random init only) is the light backbone of the CPU quickstart."""
    if depth not in RESNET_DEPTHS:
        raise ValueError(f"ResNet depth {depth} is not one of {RESNET_DEPTHS}")
    name = f"resnet{depth}"
    norm_layer = {"FrozenBN": FrozenBatchNorm2d, "BN": nn.BatchNorm2d}.get(norm)
    if norm_layer is None:
        raise ValueError(f"unknown backbone norm {norm!r}: expected 'FrozenBN' or 'BN'")
    if depth == 10:
        if weights is not None:
            raise BackboneWeightsError(
                "ResNet-10 has no ImageNet weights: it is for training from scratch"
            )
        return ResNet(BasicBlock, [1, 1, 1, 1], norm_layer=norm_layer)
    builder = getattr(torchvision.models, name)
    if weights is None:
        return builder(weights=None, norm_layer=norm_layer)

    path = Path(weights).expanduser()
    if path.suffix in {".pth", ".pt"} or path.exists():
        if not path.is_file():
            raise BackboneWeightsError(f"backbone weights file {path} does not exist")
        model = builder(weights=None, norm_layer=norm_layer)
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        return model

    try:
        enum = torchvision.models.get_model_weights(name)[weights]
    except KeyError as err:
        raise BackboneWeightsError(
            f"{weights!r} is neither a file nor a torchvision weights name of {name}"
        ) from err
    try:
        return builder(weights=enum, norm_layer=norm_layer)
    except Exception as err:  # no network, proxy, corrupt cache: one message says what to do
        raise BackboneWeightsError(
            f"could not load the ImageNet weights {name}.{weights} ({err}). Without network "
            f"access, download {enum.url} on another machine and either put it in "
            f"{torch.hub.get_dir()}/checkpoints/ or pass its path as the backbone weights; "
            "set the weights to null to train from scratch."
        ) from err


def check_backbone_options(
    trainable_layers: int = 3,
    deform_stages: Sequence[int] = (),
    deform_interval: int = 1,
    fpn: str = "FPN",
    bifpn_repeats: int = 6,
) -> None:
    """Raise a ValueError naming the setting :func:`build_backbone` cannot build. The model
    config calls it too, so that a spec with such a setting fails before a run starts."""
    if fpn not in FEATURE_PYRAMIDS:
        raise ValueError(f"fpn {fpn!r}: expected one of {FEATURE_PYRAMIDS}")
    if not set(deform_stages) <= set(RESNET_STAGES):
        raise ValueError(
            f"backbone_deform_stages {list(deform_stages)}: the ResNet stages are "
            f"{list(RESNET_STAGES)} (res2..res5)"
        )
    if deform_interval < 1:
        raise ValueError(f"backbone_deform_interval {deform_interval}: must be at least 1")
    frozen = sorted(stage for stage in deform_stages if stage < 6 - trainable_layers)
    if frozen:
        raise ValueError(
            f"backbone_deform_stages: res{frozen[0]} is frozen by trainable_backbone_layers="
            f"{trainable_layers}, so its offsets would stay zero"
        )
    if bifpn_repeats < 1:
        raise ValueError(f"bifpn_repeats {bifpn_repeats}: must be at least 1")


def build_backbone(
    depth: int = 50,
    weights: str | None = None,
    norm: str = "FrozenBN",
    trainable_layers: int = 3,
    out_channels: int = 256,
    deform_stages: Sequence[int] = (),
    deform_interval: int = 1,
    deform_modulated: bool = False,
    fpn: str = "FPN",
    bifpn_repeats: int = 6,
    bifpn_norm: str = "BN",
) -> nn.Module:
    """ResNet-``depth`` + FPN or BiFPN. Returns a module mapping ``[B, 3, H, W]`` to an ordered
    dict of five ``out_channels``-wide maps P3..P7 (P6 and P7 from P5 as in FCOS for the FPN;
    from C5 by pooling as in AdelaiDet for the BiFPN, see :mod:`boxinst.models.bifpn`).

    ``trainable_layers`` counts the ResNet stages from the top that are trained (3 freezes the
    stem and res2, detectron2's ``FREEZE_AT=2``); 5 trains everything.

    ``deform_stages`` (2..5 for res2..res5) get deformable 3x3 convs in every
    ``deform_interval``-th block, DCNv2 when ``deform_modulated`` (:func:`deform_resnet`),
    after the ImageNet weights are loaded (a frozen stage cannot be one of them: its offsets
    would never leave zero). ``bifpn_repeats`` and ``bifpn_norm`` set the BiFPN's cells.
    """
    check_backbone_options(trainable_layers, deform_stages, deform_interval, fpn, bifpn_repeats)
    resnet = _load_resnet(depth, weights, norm)
    deform_resnet(resnet, deform_stages, deform_interval, deform_modulated)
    stages = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        stages.append("bn1")
    for name, parameter in resnet.named_parameters():
        parameter.requires_grad_(any(name.startswith(stage) for stage in stages))

    stage_channels = resnet.fc.in_features // 4  # channels of layer2 (C3)
    in_channels = [stage_channels, stage_channels * 2, stage_channels * 4]
    if fpn == "BiFPN":
        return BackboneWithBiFPN(resnet, in_channels, out_channels, bifpn_repeats, bifpn_norm)
    return BackboneWithFPN(
        resnet,
        return_layers={"layer2": "p3", "layer3": "p4", "layer4": "p5"},
        in_channels_list=in_channels,
        out_channels=out_channels,
        extra_blocks=LastLevelP6P7(out_channels, out_channels),
    )
