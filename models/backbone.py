"""ResNet + FPN backbone producing P3-P7 (strides 8-128) as FCOS does, from torchvision parts."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

RESNET_DEPTHS = (10, 18, 34, 50, 101)
FPN_STRIDES = (8, 16, 32, 64, 128)


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


def build_backbone(
    depth: int = 50,
    weights: str | None = None,
    norm: str = "FrozenBN",
    trainable_layers: int = 3,
    out_channels: int = 256,
) -> BackboneWithFPN:
    """ResNet-``depth`` + FPN. Returns a module mapping ``[B, 3, H, W]`` to an ordered dict of
    five 256-channel maps P3..P7 (P6 and P7 computed from P5, as in FCOS).

    ``trainable_layers`` counts the ResNet stages from the top that are trained (3 freezes the
    stem and res2, detectron2's ``FREEZE_AT=2``); 5 trains everything.
    """
    resnet = _load_resnet(depth, weights, norm)
    stages = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        stages.append("bn1")
    for name, parameter in resnet.named_parameters():
        parameter.requires_grad_(any(name.startswith(stage) for stage in stages))

    stage_channels = resnet.fc.in_features // 4  # channels of layer2 (C3)
    return BackboneWithFPN(
        resnet,
        return_layers={"layer2": "p3", "layer3": "p4", "layer4": "p5"},
        in_channels_list=[stage_channels, stage_channels * 2, stage_channels * 4],
        out_channels=out_channels,
        extra_blocks=LastLevelP6P7(out_channels, out_channels),
    )
