"""A tiny frozen encoder of feature maps (two random convolutions, strides 2 and 4) and a
tree of synthetic defect images in the Magnetic Tile layout: the map path end to end, in
seconds, without pretrained weights. Imported by the tests (and, through the registry, by
spawned workers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from flowkit import Encoder
from flowkit.registry import encoders


def _side(size: int) -> int:
    return (size - 1) // 2 + 1  # a 3×3 convolution, stride 2, padding 1


class TinyMaps(Encoder):
    """Random, frozen: 8 channels at stride 2 and 8 at stride 4."""

    trainable = False

    def __init__(self, in_channels: int = 1, image_size: int = 32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv1 = nn.Conv2d(in_channels, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.5)
                conv.bias.zero_()
        self.input_shape = (in_channels, image_size, image_size)
        a = _side(image_size)
        b = _side(a)
        self.feature_maps = ((8, a, a), (8, b, b))
        self.embed_dim = 8 * a * a + 8 * b * b

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.tanh(self.conv1(x))
        b = torch.tanh(self.conv2(a))
        return torch.cat([a.flatten(1), b.flatten(1)], 1)


def maps_test(in_channels: int = 1, image_size: int = 32) -> TinyMaps:
    """Feature maps of two random, frozen convolutions (for tests)."""
    return TinyMaps(in_channels, image_size)


def register() -> None:
    if "maps_test" not in encoders:
        encoders.register("maps_test")(maps_test)


register()


def write_blotches(root: Path, free: int = 40, defects: int = 8, seed: int = 0) -> Path:
    """Smooth grey tiles of a few sizes (defect-free, with empty masks) and tiles with a
    bright square blotch (type ``Blotch``) whose mask marks it, in the native Magnetic Tile
    layout (``MT_Free/Imgs``, ``MT_Blotch/Imgs``, JPEG image + PNG mask)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for folder, n, bad in (("MT_Free", free, False), ("MT_Blotch", defects, True)):
        where = root / folder / "Imgs"
        where.mkdir(parents=True)
        for i in range(n):
            h, w = ((40, 56), (48, 48), (36, 60))[i % 3]
            yy, xx = np.mgrid[0:h, 0:w]
            tile = 90 + 20 * np.sin(xx / 7 + i) + rng.normal(0, 3, (h, w))
            mask = np.zeros((h, w), np.uint8)
            if bad:
                s = h // 3
                y, x = int(rng.integers(0, h - s)), int(rng.integers(0, w - s))
                tile[y : y + s, x : x + s] = 230
                mask[y : y + s, x : x + s] = 255
            Image.fromarray(np.clip(tile, 0, 255).astype(np.uint8)).save(
                where / f"exp0_num_{i}.jpg", quality=95
            )
            Image.fromarray(mask).save(where / f"exp0_num_{i}.png")
    return root
