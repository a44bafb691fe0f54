"""CondInst's dynamic mask head: a tiny per-instance FCN whose weights come from the controller."""

from __future__ import annotations

import torch
from torch import nn

from boxinst.models.layers import aligned_bilinear, feature_locations

#: Normalisers of the relative coordinates, by FPN level of the instance (P3..P7).
MASK_SIZES_OF_INTEREST = (64, 128, 256, 512, 1024)


class DynamicMaskHead(nn.Module):
    """Applies ``num_layers`` 1x1 convs (``channels`` wide, ReLU between, 1 output channel) with
    per-instance weights to the mask features concatenated with the instance's relative
    coordinates; returns mask logits upsampled from the mask-feature stride to ``out_stride``.
    """

    def __init__(
        self,
        in_channels: int = 8,
        channels: int = 16,
        num_layers: int = 3,
        feature_stride: int = 8,
        out_stride: int = 4,
        sizes_of_interest: tuple[int, ...] = MASK_SIZES_OF_INTEREST,
    ):
        super().__init__()
        if feature_stride % out_stride:
            raise ValueError("the mask feature stride must be a multiple of the output stride")
        widths = [in_channels + 2] + [channels] * (num_layers - 1) + [1]
        self.layer_shapes = list(zip(widths[1:], widths[:-1], strict=True))  # (out, in) per layer
        self.feature_stride = feature_stride
        self.out_stride = out_stride
        self.register_buffer(
            "sizes_of_interest",
            torch.tensor(sizes_of_interest, dtype=torch.float32),
            persistent=False,
        )

    @property
    def num_params(self) -> int:
        """Number of dynamic parameters per instance: all weights, then all biases."""
        return sum(o * i + o for o, i in self.layer_shapes)

    def split_params(self, params: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``[N, num_params]`` -> per-layer weights ``[N, out, in]`` and biases ``[N, out, 1]``."""
        n = params.shape[0]
        sizes = [o * i for o, i in self.layer_shapes] + [o for o, _ in self.layer_shapes]
        chunks = params.split(sizes, dim=1)
        k = len(self.layer_shapes)
        weights = [
            c.reshape(n, o, i) for c, (o, i) in zip(chunks[:k], self.layer_shapes, strict=True)
        ]
        biases = [
            c.reshape(n, o, 1) for c, (o, _) in zip(chunks[k:], self.layer_shapes, strict=True)
        ]
        return weights, biases

    def forward(
        self,
        mask_features: torch.Tensor,
        params: torch.Tensor,
        instance_locations: torch.Tensor,
        instance_levels: torch.Tensor,
        image_indices: torch.Tensor,
    ) -> torch.Tensor:
        """Mask logits of N instances.

        Args:
            mask_features: ``[B, C, H, W]`` from the mask branch (stride ``feature_stride``).
            params: ``[N, num_params]`` controller outputs at each instance's location.
            instance_locations: ``[N, 2]`` (x, y) image coordinates of those locations.
            instance_levels: ``[N]`` FPN level index (0 = P3) of each instance.
            image_indices: ``[N]`` image of each instance in the batch.
        Returns:
            ``[N, H * s, W * s]`` logits at stride ``out_stride``, with
            ``s = feature_stride / out_stride``.
        """
        _, channels, h, w = mask_features.shape
        n = params.shape[0]
        if n == 0:
            factor = self.feature_stride // self.out_stride
            return mask_features.new_zeros(0, h * factor, w * factor)
        grid = feature_locations(h, w, self.feature_stride, device=mask_features.device)
        relative = instance_locations[:, :, None] - grid.t()[None]  # [N, 2, HW]
        relative = relative / self.sizes_of_interest[instance_levels][:, None, None]
        x = torch.cat(
            [
                relative.to(mask_features.dtype),
                mask_features[image_indices].reshape(n, channels, h * w),
            ],
            dim=1,
        )
        weights, biases = self.split_params(params)
        for layer, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
            x = torch.baddbmm(bias, weight, x)
            if layer < len(weights) - 1:
                x = torch.relu(x)
        logits = x.reshape(n, 1, h, w)
        return aligned_bilinear(logits, self.feature_stride // self.out_stride)[:, 0]
