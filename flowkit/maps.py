"""Anomaly maps: the per-position scores of a spatial density, as one map per image.

A spatial flow (:mod:`flowkit.flows.spatial`) gives each scale's map of negative
log-likelihood per position and channel. :class:`MapHead` turns them into the anomaly map at
the model's input resolution: each scale upsampled (bilinear) to ``size × size``, the scales
averaged, then smoothed by a Gaussian of standard deviation ``4 · size / 256`` pixels (the
smoothing FastFlow, CFLOW-AD and PatchCore use, scaled with the image). It is plain torch
convolution and interpolation, so the ONNX export computes the same map.

The map of an image of another size or aspect is this map resized (bilinear) to the
image's own size (:func:`flowkit.heatmaps.resize_map`): images are squashed to the model's
square input and their maps stretched back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MapHead", "SIGMA_AT_256", "gaussian_kernel"]

#: The smoothing's standard deviation, in pixels of a 256-pixel map (scaled with the size).
SIGMA_AT_256 = 4.0


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalised 1-D Gaussian of standard deviation ``sigma``, ``2 · ⌈4σ⌉ + 1`` taps."""
    radius = max(1, math.ceil(4 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


class MapHead(nn.Module):
    """Per-scale maps ``[(B, h, w), ...]`` → the anomaly map ``(B, size, size)``."""

    def __init__(self, size: int, sigma: float | None = None) -> None:
        super().__init__()
        self.size = int(size)
        self.sigma = float(SIGMA_AT_256 * size / 256 if sigma is None else sigma)
        self.register_buffer("kernel", gaussian_kernel(self.sigma), persistent=False)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        up = [
            F.interpolate(
                m[:, None].float(),
                size=(self.size, self.size),
                mode="bilinear",
                align_corners=False,
            )
            for m in maps
        ]
        x = torch.stack(up).mean(0)  # (B, 1, size, size)
        k = self.kernel
        pad = len(k) // 2
        x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
        x = F.conv2d(F.pad(x, (0, 0, pad, pad), mode="replicate"), k.view(1, 1, -1, 1))
        return x[:, 0]
