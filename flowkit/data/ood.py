"""Out-of-distribution sets that can be built on any machine, for the ``ood-digits`` suite.

Each is a dataset factory like the others (``split``, ``image_size``, ``channels``), so a suite
names them in ``out_datasets``. Their ``train``/``test``/``all`` splits are the same images.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from flowkit.data.base import ImageSet, check_split, match_channels, resize_uint8
from flowkit.data.sources import digits

__all__ = [
    "digits_inverted",
    "digits_flipped",
    "digits_blurred",
    "digits_dimmed",
    "digits_superposed",
    "uniform_noise",
    "constant",
    "sample_patches",
]


def _ood(images: torch.Tensor, name: str) -> ImageSet:
    return ImageSet(images, torch.zeros(len(images), dtype=torch.long), [name], name)


def _from_digits(name: str, split: str, image_size: int, channels: int, transform: Any) -> ImageSet:
    """An OOD set made by transforming the embedded digits' uint8 images."""
    return _ood(match_channels(transform(digits(split, image_size).images), channels), name)


def digits_inverted(
    split: str = "test",
    image_size: int = 32,
    root: Any = None,
    download: bool = False,
    channels: int = 1,
) -> ImageSet:
    """The embedded digits with inverted intensities (dark strokes on white)."""
    return _from_digits("digits_inverted", split, image_size, channels, lambda x: 255 - x)


def digits_flipped(
    split: str = "test",
    image_size: int = 32,
    root: Any = None,
    download: bool = False,
    channels: int = 1,
) -> ImageSet:
    """The embedded digits upside down (flipped vertically)."""
    return _from_digits(
        "digits_flipped", split, image_size, channels, lambda x: x.flip(-2).contiguous()
    )


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a uint8 batch (replicate padding)."""
    radius = max(1, int(3 * sigma + 0.5))
    k = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(k**2) / (2 * sigma**2))
    k = (k / k.sum()).to(torch.float32)
    c = images.shape[1]
    x = images.float()
    x = F.conv2d(
        F.pad(x, (radius, radius, 0, 0), mode="replicate"),
        k.view(1, 1, 1, -1).repeat(c, 1, 1, 1),
        groups=c,
    )
    x = F.conv2d(
        F.pad(x, (0, 0, radius, radius), mode="replicate"),
        k.view(1, 1, -1, 1).repeat(c, 1, 1, 1),
        groups=c,
    )
    return x.round().clamp(0, 255).to(torch.uint8)


def digits_blurred(
    split: str = "test",
    image_size: int = 32,
    root: Any = None,
    download: bool = False,
    channels: int = 1,
    sigma: float = 1.5,
) -> ImageSet:
    """The embedded digits, Gaussian-blurred: smoother, simpler images that raw likelihood
    tends to prefer (the failure of the paper's Figure 1)."""
    return _from_digits(
        "digits_blurred", split, image_size, channels, lambda x: gaussian_blur(x, sigma)
    )


def digits_dimmed(
    split: str = "test",
    image_size: int = 32,
    root: Any = None,
    download: bool = False,
    channels: int = 1,
    factor: float = 0.7,
) -> ImageSet:
    """The embedded digits at reduced contrast (intensities × ``factor``)."""
    return _from_digits(
        "digits_dimmed",
        split,
        image_size,
        channels,
        lambda x: (x.float() * factor).round().clamp(0, 255).to(torch.uint8),
    )


def digits_superposed(
    split: str = "test",
    image_size: int = 32,
    root: Any = None,
    download: bool = False,
    channels: int = 1,
    seed: int = 0,
) -> ImageSet:
    """The average of two different embedded digits (a plausible-looking non-digit)."""

    def superpose(x: torch.Tensor) -> torch.Tensor:
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        return ((x.float() + x[perm].float()) / 2).round().to(torch.uint8)

    return _from_digits("digits_superposed", split, image_size, channels, superpose)


def _random_images(
    name: str, n: int, shape: tuple[int, int, int], seed: int, solid: bool
) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    if solid:  # one grey level per image
        levels = torch.randint(0, 256, (n, 1, 1, 1), generator=g, dtype=torch.uint8)
        return _ood(levels.expand(n, c, h, w).contiguous(), name)
    return _ood(torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8), name)


def uniform_noise(
    split: str = "test",
    image_size: int = 32,
    root: Any = None,
    download: bool = False,
    channels: int = 1,
    n: int = 360,
    seed: int = 0,
) -> ImageSet:
    """Images of independent uniform pixel noise (maximal complexity)."""
    check_split(split)
    return _random_images("uniform_noise", n, (channels, image_size, image_size), seed, False)


def constant(
    split: str = "test",
    image_size: int = 32,
    root: Any = None,
    download: bool = False,
    channels: int = 1,
    n: int = 360,
    seed: int = 0,
) -> ImageSet:
    """Blank images of one random grey level each (minimal complexity)."""
    check_split(split)
    return _random_images("constant", n, (channels, image_size, image_size), seed, True)


def sample_patches(
    split: str = "test",
    image_size: int = 32,
    root: Any = None,
    download: bool = False,
    channels: int = 1,
    patch: int = 64,
    stride: int = 48,
) -> ImageSet:
    """Patches of scikit-learn's two bundled photographs (china.jpg, flower.jpg), resized."""
    from sklearn.datasets import load_sample_images

    check_split(split)
    tiles = []
    for img in load_sample_images().images:
        arr = np.asarray(img, dtype=np.uint8)
        for y in range(0, arr.shape[0] - patch + 1, stride):
            for x in range(0, arr.shape[1] - patch + 1, stride):
                tiles.append(arr[y : y + patch, x : x + patch])
    images = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).contiguous()
    images = resize_uint8(images, image_size)
    return _ood(match_channels(images, channels), "sample_patches")
