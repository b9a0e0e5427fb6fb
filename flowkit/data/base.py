"""In-memory image sets (uint8 tensors) and batched conversions."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from flowkit.errors import DataError

__all__ = ["ImageSet", "default_data_root", "to_float", "resize_uint8", "as_uint8_images"]


def default_data_root() -> Path:
    """``$FLOWKIT_DATA`` or ``~/.cache/flowkit/data``."""
    return Path(os.environ.get("FLOWKIT_DATA") or Path.home() / ".cache" / "flowkit" / "data")


@dataclass
class ImageSet:
    """Images as a uint8 tensor ``(N, C, H, W)`` with integer labels.

    Attributes:
        images: uint8 tensor ``(N, C, H, W)``.
        labels: int64 tensor ``(N,)`` (class index; 0 for unlabeled data).
        classes: class names, indexed by label.
        name: where the images came from (a dataset name or folder).
        paths: source file per image, for images read from files.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str] = field(default_factory=lambda: ["0"])
    name: str = "images"
    paths: list[str] | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise DataError(
                f"{self.name}: images must be a uint8 tensor (N, C, H, W), "
                f"got {self.images.dtype} {tuple(self.images.shape)}"
            )
        self.labels = torch.as_tensor(self.labels, dtype=torch.long).reshape(-1)
        if len(self.labels) != len(self.images):
            raise DataError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, index: torch.Tensor | np.ndarray | list[int]) -> ImageSet:
        idx = torch.as_tensor(index, dtype=torch.long)
        paths = [self.paths[i] for i in idx.tolist()] if self.paths is not None else None
        return ImageSet(self.images[idx], self.labels[idx], self.classes, self.name, paths)

    @staticmethod
    def concat(sets: list[ImageSet], name: str | None = None) -> ImageSet:
        paths = None
        if all(s.paths is not None for s in sets):
            paths = [p for s in sets for p in s.paths]  # type: ignore[union-attr]
        return ImageSet(
            torch.cat([s.images for s in sets]),
            torch.cat([s.labels for s in sets]),
            sets[0].classes,
            name or sets[0].name,
            paths,
        )


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[0, 255]`` → float32 ``[-1, 1]`` (done per batch, on the model's device)."""
    return images.float().div_(127.5).sub_(1.0)


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize a uint8 batch ``(N, C, H, W)`` to ``size × size`` (bilinear, antialiased)."""
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk].float()
        part = F.interpolate(
            part, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        out[start : start + chunk] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out


def as_uint8_images(x: object, name: str = "images") -> torch.Tensor:
    """Accept an :class:`ImageSet`, uint8 tensor/array ``(N, C, H, W)`` or ``(N, H, W)``.

    Float input must already be in ``[0, 1]`` or ``[0, 255]``; NaNs are rejected.
    """
    if isinstance(x, ImageSet):
        return x.images
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if t.ndim == 3:
        t = t.unsqueeze(1)
    if t.ndim != 4:
        raise DataError(f"{name}: expected images of shape (N, C, H, W), got {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        return t
    if not t.is_floating_point():
        t = t.float()
    finite = torch.isfinite(t).flatten(1).all(1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        raise DataError(
            f"{name}: {len(bad)} image(s) contain NaN or inf values (indices {bad[:10]})"
        )
    hi = float(t.max()) if t.numel() else 0.0
    if t.min() < 0 or hi > 255:
        raise DataError(f"{name}: float images must lie in [0, 1] or [0, 255]")
    scale = 255.0 if hi <= 1.0 else 1.0
    return (t * scale).round().clamp(0, 255).to(torch.uint8)
