"""CondInst (Tian et al., ECCV 2020), the network of BoxInst: BoxInst changes only its mask loss."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

from boxinst.models.backbone import FPN_STRIDES, build_backbone, check_backbone_options
from boxinst.models.dynamic_mask_head import DynamicMaskHead
from boxinst.models.fcos_head import FCOSHead
from boxinst.models.layers import aligned_bilinear, feature_locations
from boxinst.models.mask_branch import MaskBranch

#: ImageNet statistics of RGB images in [0, 255], as torchvision's ResNets expect.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
SIZE_DIVISIBILITY = 32


@dataclass
class CondInstConfig:
    """Architecture and inference settings; defaults are BoxInst's R-50 COCO model."""

    num_classes: int = 80
    backbone_depth: int = 50
    backbone_weights: str | None = None  # torchvision weights name, local file path, or None
    backbone_norm: str = "FrozenBN"
    trainable_backbone_layers: int = 3
    # Deformable 3x3 convs (Table 4's ResNet-DCN; AdelaiDet's *_dcni3 configs: stages [3, 4, 5],
    # interval 3, modulated): the ResNet stages (2..5: res2..res5) that get them, in every
    # interval-th block of each from its first; DCNv2 when modulated, else DCNv1.
    backbone_deform_stages: tuple[int, ...] = ()
    backbone_deform_interval: int = 1
    backbone_deform_modulated: bool = False
    fpn: Literal["FPN", "BiFPN"] = "FPN"  # Table 4's BiFPN rows: BiFPN, fpn_channels 160
    fpn_channels: int = 256
    bifpn_repeats: int = 6  # BiFPN cells: AdelaiDet's default, kept by its BoxInst configs
    # The official BiFPN's SyncBN normalises over the global batch; BN here sees each worker's
    # images, as the mask branch's (GN avoids that).
    bifpn_norm: Literal["BN", "GN"] = "BN"
    head_convs: int = 4
    head_norm: str = "GN"
    prior_prob: float = 0.01
    mask_branch_channels: int = 128
    mask_branch_convs: int = 4
    mask_branch_norm: str = "BN"  # CondInst's; per-worker statistics in a data-parallel run
    mask_feature_channels: int = 8
    mask_head_channels: int = 16  # BoxInst: 16, CondInst: 8
    mask_head_layers: int = 3
    mask_out_stride: int = 4
    # inference (CondInst's)
    score_threshold: float = 0.05
    threshold_with_centerness: bool = False  # CondInst: False; the official BoxInst configs: True
    pre_nms_topk: int = 1000
    nms_threshold: float = 0.6
    detections_per_image: int = 100
    mask_threshold: float = 0.5
    pixel_mean: tuple[float, float, float] = field(default=PIXEL_MEAN)
    pixel_std: tuple[float, float, float] = field(default=PIXEL_STD)

    def __post_init__(self) -> None:
        check_backbone_options(
            self.trainable_backbone_layers,
            self.backbone_deform_stages,
            self.backbone_deform_interval,
            self.fpn,
            self.bifpn_repeats,
        )


@dataclass
class HeadOutputs:
    """Dense outputs of one forward pass, levels P3..P7 flattened and concatenated.

    ``cls`` [B, M, C], ``box`` [B, M, 4] (ltrb in strides), ``centerness`` [B, M],
    ``params`` [B, M, P]; ``locations`` [M, 2], ``strides`` [M], ``levels`` [M] are shared by
    the batch; ``mask_features`` [B, 8, H/8, W/8].
    """

    cls: torch.Tensor
    box: torch.Tensor
    centerness: torch.Tensor
    params: torch.Tensor
    locations: torch.Tensor
    strides: torch.Tensor
    levels: torch.Tensor
    mask_features: torch.Tensor


class CondInst(nn.Module):
    """FCOS detector + controller + mask branch + dynamic mask head.

    Input images are RGB in [0, 255], ``[B, 3, H, W]`` with H and W multiples of 32 (pad them);
    the model normalises them itself.
    """

    def __init__(self, config: CondInstConfig):
        super().__init__()
        self.config = config
        self.backbone = build_backbone(
            config.backbone_depth,
            config.backbone_weights,
            config.backbone_norm,
            config.trainable_backbone_layers,
            config.fpn_channels,
            config.backbone_deform_stages,
            config.backbone_deform_interval,
            config.backbone_deform_modulated,
            config.fpn,
            config.bifpn_repeats,
            config.bifpn_norm,
        )
        self.mask_head = DynamicMaskHead(
            in_channels=config.mask_feature_channels,
            channels=config.mask_head_channels,
            num_layers=config.mask_head_layers,
            feature_stride=FPN_STRIDES[0],
            out_stride=config.mask_out_stride,
        )
        self.head = FCOSHead(
            config.num_classes,
            self.mask_head.num_params,
            num_levels=len(FPN_STRIDES),
            channels=config.fpn_channels,
            num_convs=config.head_convs,
            norm=config.head_norm,
            prior_prob=config.prior_prob,
        )
        self.mask_branch = MaskBranch(
            in_channels=config.fpn_channels,
            channels=config.mask_branch_channels,
            out_channels=config.mask_feature_channels,
            num_convs=config.mask_branch_convs,
            norm=config.mask_branch_norm,
        )
        self.register_buffer(
            "pixel_mean", torch.tensor(config.pixel_mean).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(config.pixel_std).view(1, 3, 1, 1), persistent=False
        )

    def forward(self, images: torch.Tensor) -> HeadOutputs:
        """Dense predictions for a padded batch of RGB images in [0, 255]."""
        h, w = images.shape[-2:]
        if h % SIZE_DIVISIBILITY or w % SIZE_DIVISIBILITY:
            raise ValueError(
                f"image batch of size {h}x{w}: pad height and width to multiples of 32"
            )
        features = list(self.backbone((images - self.pixel_mean) / self.pixel_std).values())
        dense = self.head(features)
        mask_features = self.mask_branch(features[:3])

        locations, strides, levels = [], [], []
        for level, (stride, cls) in enumerate(zip(FPN_STRIDES, dense["cls"], strict=True)):
            fh, fw = cls.shape[-2:]
            locations.append(feature_locations(fh, fw, stride, device=images.device))
            strides.append(torch.full((fh * fw,), float(stride), device=images.device))
            levels.append(torch.full((fh * fw,), level, dtype=torch.long, device=images.device))

        def flat(maps: list[torch.Tensor]) -> torch.Tensor:
            return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)

        return HeadOutputs(
            cls=flat(dense["cls"]),
            box=flat(dense["box"]),
            centerness=flat(dense["centerness"])[..., 0],
            params=flat(dense["params"]),
            locations=torch.cat(locations),
            strides=torch.cat(strides),
            levels=torch.cat(levels),
            mask_features=mask_features,
        )

    def instance_mask_logits(
        self, outputs: HeadOutputs, image_indices: torch.Tensor, location_indices: torch.Tensor
    ) -> torch.Tensor:
        """Full-image mask logits at 1/``mask_out_stride`` resolution, ``[N, H/4, W/4]``, of the
        instances predicted at the given (image, location) pairs."""
        return self.mask_head(
            outputs.mask_features,
            outputs.params[image_indices, location_indices],
            outputs.locations[location_indices],
            outputs.levels[location_indices],
            image_indices,
        )

    @torch.no_grad()
    def predict(
        self,
        images: torch.Tensor,
        image_sizes: list[tuple[int, int]],
        output_sizes: list[tuple[int, int]] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """CondInst inference on a padded batch.

        Per image: locations whose class score (times centerness when
        ``threshold_with_centerness``) exceeds ``score_threshold`` (at most
        ``pre_nms_topk`` per level), scored ``sqrt(cls * centerness)``, class-wise NMS, the
        ``detections_per_image`` best kept; their masks are upsampled to the input, cropped to
        the image, resized to the output size and thresholded.

        Args:
            image_sizes: (h, w) of each image inside the padded batch.
            output_sizes: (h, w) to return results at (e.g. the original image); defaults to
                ``image_sizes``.
        Returns:
            per image ``boxes`` [K, 4] xyxy, ``scores`` [K], ``labels`` [K] and
            ``masks`` [K, h, w] bool.
        """
        was_training = self.training
        self.eval()
        outputs = self(images)
        self.train(was_training)
        return self.detect(outputs, image_sizes, output_sizes)

    @torch.no_grad()
    def detect(
        self,
        outputs: HeadOutputs,
        image_sizes: list[tuple[int, int]],
        output_sizes: list[tuple[int, int]] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """The detections of :meth:`predict` from the dense outputs of an eval-mode forward."""
        output_sizes = output_sizes or image_sizes
        return [
            self._predict_image(outputs, i, image_sizes[i], output_sizes[i])
            for i in range(len(image_sizes))
        ]

    def _predict_image(self, outputs: HeadOutputs, index: int, image_size, output_size) -> dict:
        cfg = self.config
        cls = outputs.cls[index].sigmoid()
        scores = cls * outputs.centerness[index].sigmoid()[:, None]
        candidates = (scores if cfg.threshold_with_centerness else cls) > cfg.score_threshold

        keep_locations, keep_labels, keep_scores = [], [], []
        for level in range(len(FPN_STRIDES)):
            in_level = (outputs.levels == level).nonzero()[:, 0]
            level_candidates = candidates[in_level].nonzero()
            level_scores = scores[in_level][level_candidates[:, 0], level_candidates[:, 1]]
            if level_scores.numel() > cfg.pre_nms_topk:
                level_scores, top = level_scores.topk(cfg.pre_nms_topk)
                level_candidates = level_candidates[top]
            keep_locations.append(in_level[level_candidates[:, 0]])
            keep_labels.append(level_candidates[:, 1])
            keep_scores.append(level_scores)
        locations_idx = torch.cat(keep_locations)
        labels = torch.cat(keep_labels)
        scores = torch.cat(keep_scores).sqrt()

        ltrb = outputs.box[index, locations_idx] * outputs.strides[locations_idx, None]
        xy = outputs.locations[locations_idx]
        boxes = torch.cat([xy - ltrb[:, :2], xy + ltrb[:, 2:]], dim=1)
        h, w = image_size
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)

        keep = batched_nms(boxes, scores, labels, cfg.nms_threshold)[: cfg.detections_per_image]
        boxes, scores, labels, locations_idx = (
            boxes[keep],
            scores[keep],
            labels[keep],
            locations_idx[keep],
        )

        image_indices = torch.full_like(locations_idx, index)
        logits = self.instance_mask_logits(outputs, image_indices, locations_idx)
        probs = aligned_bilinear(logits[:, None].sigmoid(), cfg.mask_out_stride)[:, :, :h, :w]
        out_h, out_w = output_size
        if (out_h, out_w) != (h, w):
            probs = F.interpolate(probs, size=(out_h, out_w), mode="bilinear", align_corners=False)
            boxes = boxes * boxes.new_tensor([out_w / w, out_h / h, out_w / w, out_h / h])
        return {
            "boxes": boxes,
            "scores": scores,
            "labels": labels,
            "masks": probs[:, 0] > cfg.mask_threshold,
        }
