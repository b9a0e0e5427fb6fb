"""Batched image augmentations on tensors (no per-image PIL work), for self-supervised encoders.

Inputs and outputs are float images in ``[-1, 1]`` of shape ``(B, C, H, W)``; randomness comes
from torch's generator, so the runner's seed makes training reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Augment", "random_affine", "rotate90"]


def random_affine(
    x: torch.Tensor,
    degrees: float = 15.0,
    translate: float = 0.1,
    scale: tuple[float, float] = (0.9, 1.1),
    shear: float = 5.0,
) -> torch.Tensor:
    """One random affine warp per image (rotation, translation, scale, shear), bilinear."""
    b = x.shape[0]
    dev, dt = x.device, x.dtype
    angle = (torch.rand(b, device=dev, dtype=dt) * 2 - 1) * math.radians(degrees)
    sh = (torch.rand(b, device=dev, dtype=dt) * 2 - 1) * math.radians(shear)
    s = torch.empty(b, device=dev, dtype=dt).uniform_(*scale)
    t = (torch.rand(b, 2, device=dev, dtype=dt) * 2 - 1) * translate * 2  # grid units span 2
    cos, sin = torch.cos(angle), torch.sin(angle + sh)
    theta = torch.stack(
        [
            torch.stack([cos / s, -sin / s, t[:, 0]], 1),
            torch.stack([torch.sin(angle) / s, torch.cos(angle + sh) / s, t[:, 1]], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # pad with the background value (-1, black) rather than zeros (mid grey)
    return (
        F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1
    )


def rotate90(x: torch.Tensor, k: int) -> torch.Tensor:
    """Rotate every image by ``k`` × 90 degrees."""
    return torch.rot90(x, k, dims=(-2, -1))


@dataclass
class Augment:
    """The augmentation pipeline of a contrastive encoder.

    Args:
        affine: random affine warps (the default; digits and most images).
        hflip: random horizontal flips (natural images; off for digits, where a flip changes
            the meaning).
        jitter: brightness/contrast jitter strength (natural images), 0 to disable.
        noise: additive Gaussian noise std.
    """

    affine: bool = True
    hflip: bool = False
    jitter: float = 0.0
    noise: float = 0.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.affine:
            x = random_affine(x)
        if self.hflip:
            flip = torch.rand(x.shape[0], device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if self.jitter > 0:
            b = x.shape[0]
            bright = (torch.rand(b, 1, 1, 1, device=x.device) * 2 - 1) * self.jitter
            contrast = 1 + (torch.rand(b, 1, 1, 1, device=x.device) * 2 - 1) * self.jitter
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * contrast + mean + bright
        if self.noise > 0:
            x = x + torch.randn_like(x) * self.noise
        return x.clamp(-1, 1)
