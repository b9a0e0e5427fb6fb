"""Batched image augmentations on tensors (no per-image PIL work), for self-supervised encoders.

Inputs and outputs are float images in ``[-1, 1]`` of shape ``(B, C, H, W)``; randomness comes
from torch's generator, so the runner's seed makes training reproducible. torchvision's
transforms draw one set of random parameters per call, so every image of a batch would get the
same crop and the same jitter; these draw them per image, in a few tensor operations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "VIEWS",
    "Augment",
    "color_jitter",
    "natural_views",
    "random_affine",
    "random_grayscale",
    "random_resized_crop",
    "resolve_views",
    "rotate90",
]

# the view recipes a contrastive encoder can train on; "auto" picks one by the channels alone
VIEWS = ("auto", "affine", "natural")


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


def random_resized_crop(
    x: torch.Tensor,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """One random crop per image, resized back to the input size (bilinear): the crop's area
    is a fraction ``scale`` of the image's and its aspect ratio log-uniform in ``ratio``, as in
    torchvision's ``RandomResizedCrop``; a side longer than the image is clipped to it."""
    b = x.shape[0]
    dev, dt = x.device, x.dtype
    area = torch.empty(b, device=dev, dtype=dt).uniform_(*scale)
    log_r = torch.empty(b, device=dev, dtype=dt).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)  # fractions of the image's width and height
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(b, device=dev, dtype=dt) * 2 - 1) * (1 - w)  # the crop stays inside
    cy = (torch.rand(b, device=dev, dtype=dt) * 2 - 1) * (1 - h)
    zero = torch.zeros_like(w)
    theta = torch.stack([torch.stack([w, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(x01: torch.Tensor) -> torch.Tensor:
    """Luma (ITU-R 601, as torchvision) of ``(B, 3, H, W)`` images in [0, 1], ``(B, 1, H, W)``."""
    r, g, b = x01.unbind(1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


def color_jitter(
    x: torch.Tensor,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
    p: float = 0.8,
) -> torch.Tensor:
    """SimCLR's colour distortion on a batch, with probability ``p`` per image: brightness,
    contrast and saturation factors uniform in ``[1 - s, 1 + s]`` and a hue rotation of up to
    ``hue`` of a turn (in YIQ space), applied in that order (torchvision draws the order at
    random). Grayscale images get brightness and contrast only."""
    b, c = x.shape[:2]
    dev, dt = x.device, x.dtype

    def factor(s: float) -> torch.Tensor:
        return 1 + (torch.rand(b, 1, 1, 1, device=dev, dtype=dt) * 2 - 1) * s

    y = (x + 1) / 2
    bright, contr, sat = factor(brightness), factor(contrast), factor(saturation)
    angle = (torch.rand(b, device=dev, dtype=dt) * 2 - 1) * hue * 2 * math.pi
    apply = (torch.rand(b, 1, 1, 1, device=dev) < p).to(dt)
    out = (y * bright).clamp(0, 1)
    mean = (_gray(out) if c == 3 else out).mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - mean) * contr + mean).clamp(0, 1)
    if c == 3:
        gray = _gray(out)
        out = ((out - gray) * sat + gray).clamp(0, 1)
        # hue: rotate the chroma plane of YIQ by ``angle``
        rgb2yiq, yiq2rgb = _RGB2YIQ.to(dev), _YIQ2RGB.to(dev)
        cos, sin = torch.cos(angle), torch.sin(angle)
        one, zero = torch.ones_like(cos), torch.zeros_like(cos)
        rot = torch.stack(
            [
                torch.stack([one, zero, zero], 1),
                torch.stack([zero, cos, -sin], 1),
                torch.stack([zero, sin, cos], 1),
            ],
            1,
        )
        m = (yiq2rgb @ rot.float() @ rgb2yiq).to(dt)  # (B, 3, 3)
        out = torch.einsum("bij,bjhw->bihw", m, out).clamp(0, 1)
    return (apply * out + (1 - apply) * y) * 2 - 1


def random_grayscale(x: torch.Tensor, p: float = 0.2) -> torch.Tensor:
    """Each RGB image replaced by its luma (on all three channels) with probability ``p``."""
    if x.shape[1] != 3:
        return x
    gray = _gray((x + 1) / 2) * 2 - 1
    pick = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < p
    return torch.where(pick, gray.expand_as(x), x)


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
        crop: smallest area fraction of a random resized crop (natural images), 0 to disable.
        crop_max: largest area fraction of that crop (1: up to the whole image; a multi-crop
            encoder's small local views use less).
        color: SimCLR colour-jitter strength ``s`` (brightness, contrast, saturation
            ``0.8 s``, hue ``0.2 s``, with probability 0.8), 0 to disable.
        grayscale: probability of turning an RGB view gray, 0 to disable.
    """

    affine: bool = True
    hflip: bool = False
    jitter: float = 0.0
    noise: float = 0.0
    crop: float = 0.0
    crop_max: float = 1.0
    color: float = 0.0
    grayscale: float = 0.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.affine:
            x = random_affine(x)
        if self.crop > 0:
            x = random_resized_crop(x, scale=(self.crop, self.crop_max))
        if self.hflip:
            flip = torch.rand(x.shape[0], device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if self.jitter > 0:
            b = x.shape[0]
            bright = (torch.rand(b, 1, 1, 1, device=x.device) * 2 - 1) * self.jitter
            contrast = 1 + (torch.rand(b, 1, 1, 1, device=x.device) * 2 - 1) * self.jitter
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * contrast + mean + bright
        if self.color > 0:
            s = self.color
            x = color_jitter(x, 0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
        if self.grayscale > 0:
            x = random_grayscale(x, self.grayscale)
        if self.noise > 0:
            x = x + torch.randn_like(x) * self.noise
        return x.clamp(-1, 1)


def natural_views(noise: float = 0.0) -> Augment:
    """SimCLR's recipe for natural images (Chen et al. 2020, CIFAR-10 settings): a random
    resized crop of 20–100 % of the area, horizontal flips, colour jitter of strength 0.5
    (0.4 / 0.4 / 0.4 / 0.1) with probability 0.8, grayscale with probability 0.2."""
    return Augment(affine=False, hflip=True, crop=0.2, color=0.5, grayscale=0.2, noise=noise)


def resolve_views(views: str, in_channels: int) -> str:
    """The recipe ``views`` names; ``"auto"`` is ``"natural"`` for 3-channel (colour) images
    and ``"affine"`` otherwise: a rule on what the data is, never on its name."""
    if views not in VIEWS:
        from flowkit.errors import ConfigError

        raise ConfigError(f"views must be one of {', '.join(VIEWS)}, got {views!r}")
    if views == "auto":
        return "natural" if int(in_channels) == 3 else "affine"
    return views
