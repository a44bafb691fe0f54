"""RGB -> LAB on the device against scikit-image's rgb2lab, the conversion of the official code."""

import numpy as np
import torch
from skimage.color import rgb2lab

from boxinst.losses.color import images_to_lab


def test_images_to_lab_matches_skimage_on_pooled_images():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    ours = images_to_lab(torch.from_numpy(image).permute(2, 0, 1)[None], mask_stride=4)[0]

    pooled = image.astype(np.float32).reshape(8, 4, 12, 4, 3).mean(axis=(1, 3)) / 255.0
    reference = rgb2lab(pooled.astype(np.float64))  # D65, 2° observer
    np.testing.assert_allclose(ours.permute(1, 2, 0).numpy(), reference, atol=1e-3)


def test_images_to_lab_known_colours():
    colours = torch.tensor([[255, 255, 255], [0, 0, 0], [255, 0, 0]], dtype=torch.float32)
    images = colours[:, :, None, None].expand(3, 3, 4, 4)
    lab = images_to_lab(images, mask_stride=4)[:, :, 0, 0]
    # white and black: L = 100 / 0 with a = b = 0; sRGB red: (53.24, 80.09, 67.20)
    torch.testing.assert_close(lab[0], torch.tensor([100.0, 0.0, 0.0]), atol=0.05, rtol=0)
    torch.testing.assert_close(lab[1], torch.tensor([0.0, 0.0, 0.0]), atol=0.05, rtol=0)
    torch.testing.assert_close(lab[2], torch.tensor([53.24, 80.09, 67.20]), atol=0.1, rtol=0)
