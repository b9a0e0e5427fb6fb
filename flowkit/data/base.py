"""In-memory image sets (uint8 tensors) and batched conversions."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from flowkit.errors import ConfigError, DataError

__all__ = [
    "ImageSet",
    "default_data_root",
    "to_float",
    "resize_uint8",
    "as_uint8_images",
    "check_dataset_object",
    "check_split",
    "check_value_range",
    "DATASET_KEYWORDS",
    "SPLITS",
]

# What every dataset factory receives, beside the user's options.
DATASET_KEYWORDS = ("root", "split", "image_size", "download")
SPLITS = ("train", "test", "all")


def check_split(split: str) -> None:
    """Refuse a split that is not ``train``, ``test`` or ``all`` (for dataset factories)."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")


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
        anomaly: bool per image, for data that says which images are anomalies (MVTec AD,
            ``normal/`` + ``anomalous/``); ``None`` otherwise.
        is_test: bool per image, the data's own evaluation part (with ``anomaly``).
        layout: how the data was found, in words (folder datasets).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str] = field(default_factory=lambda: ["0"])
    name: str = "images"
    paths: list[str] | None = None
    anomaly: torch.Tensor | None = None
    is_test: torch.Tensor | None = None
    layout: str | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise DataError(
                f"{self.name}: images must be a uint8 tensor (N, C, H, W), "
                f"got {self.images.dtype} {tuple(self.images.shape)}"
            )
        self.labels = torch.as_tensor(self.labels, dtype=torch.long).reshape(-1)
        if len(self.labels) != len(self.images):
            raise DataError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")
        for attr in ("anomaly", "is_test"):
            mask = getattr(self, attr)
            if mask is not None:
                mask = torch.as_tensor(mask, dtype=torch.bool).reshape(-1)
                if len(mask) != len(self.images):
                    raise DataError(f"{self.name}: {attr} has {len(mask)} entries")
                setattr(self, attr, mask)

    @property
    def labelled_anomalies(self) -> bool:
        """Whether the data says which images are anomalies and which form its test part."""
        return self.anomaly is not None and self.is_test is not None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, index: torch.Tensor | np.ndarray | list[int]) -> ImageSet:
        idx = torch.as_tensor(index, dtype=torch.long)
        paths = [self.paths[i] for i in idx.tolist()] if self.paths is not None else None
        return ImageSet(
            self.images[idx],
            self.labels[idx],
            self.classes,
            self.name,
            paths,
            self.anomaly[idx] if self.anomaly is not None else None,
            self.is_test[idx] if self.is_test is not None else None,
            self.layout,
        )

    @staticmethod
    def concat(sets: list[ImageSet], name: str | None = None) -> ImageSet:
        paths = None
        if all(s.paths is not None for s in sets):
            paths = [p for s in sets for p in s.paths]  # type: ignore[union-attr]

        def masks(attr: str) -> torch.Tensor | None:
            parts = [getattr(s, attr) for s in sets]
            return torch.cat(parts) if all(p is not None for p in parts) else None

        return ImageSet(
            torch.cat([s.images for s in sets]),
            torch.cat([s.labels for s in sets]),
            sets[0].classes,
            name or sets[0].name,
            paths,
            masks("anomaly"),
            masks("is_test"),
            sets[0].layout,
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


def check_value_range(value_range: object) -> tuple[float, float]:
    """``(lo, hi)`` of a declared float range: two finite numbers with ``lo < hi``."""
    if (
        not isinstance(value_range, (tuple, list))
        or len(value_range) != 2
        or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in value_range
        )
        or not value_range[0] < value_range[1]
    ):
        raise ConfigError(
            f"value_range must be two finite numbers (lo, hi), lo < hi; got {value_range!r}"
        )
    return float(value_range[0]), float(value_range[1])


def _bad_images(mask: torch.Tensor, what: str) -> str:
    """``"2 image(s) <what> (indices [1, 7])"``: which images of a batch are refused."""
    bad = mask.nonzero().flatten().tolist()
    more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
    return f"{len(bad)} image(s) {what} (indices {bad[:10]}{more})"


def as_uint8_images(
    x: object, name: str = "images", value_range: tuple[float, float] = (0.0, 1.0)
) -> torch.Tensor:
    """Images as a uint8 tensor ``(N, C, H, W)``, by a fixed input contract.

    The contract is declared, never guessed from the batch, so an image's pixels (and its
    score) never depend on the other images beside it:

    - uint8 (and other integer types): ``[0, 255]``;
    - float: ``value_range`` (default ``[0, 1]``), mapped linearly onto ``[0, 255]``;
    - an :class:`ImageSet` gives its images; ``(N, H, W)`` is read as one channel.

    Values outside the contract, NaN or inf, empty batches and non-numeric arrays raise a
    :class:`DataError` naming the offending images.
    """
    if isinstance(x, ImageSet):
        return x.images
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
    else:
        arr = np.asarray(x)
        if arr.dtype.kind not in "biuf":
            raise DataError(
                f"{name}: expected a numeric image array, got dtype {arr.dtype} "
                "(decode image files first, e.g. with flowkit.data.load_images)"
            )
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_complex():
        raise DataError(f"{name}: complex values are not images")
    if t.ndim == 3:
        t = t.unsqueeze(1)
    if t.ndim != 4:
        raise DataError(f"{name}: expected images of shape (N, C, H, W), got {tuple(t.shape)}")
    if len(t) == 0:
        raise DataError(f"{name}: the batch is empty (0 images)")
    if t.dtype == torch.uint8:
        return t
    if t.dtype == torch.bool:
        return t.to(torch.uint8) * 255
    flat = t.flatten(1)
    if not t.is_floating_point():
        out = (flat < 0).any(1) | (flat > 255).any(1)
        if bool(out.any()):
            raise DataError(
                f"{name}: integer images must lie in [0, 255]; "
                f"{_bad_images(out, 'do not')}; rescale 16-bit images to 8 bit first"
            )
        return t.to(torch.uint8)
    lo, hi = check_value_range(value_range)
    nonfinite = ~torch.isfinite(flat).all(1)
    if bool(nonfinite.any()):
        raise DataError(f"{name}: {_bad_images(nonfinite, 'contain NaN or inf values')}")
    out = (flat < lo).any(1) | (flat > hi).any(1)
    if bool(out.any()):
        raise DataError(
            f"{name}: float images must lie in [{lo:g}, {hi:g}] (the declared value_range); "
            f"{_bad_images(out, 'do not')}. Pass uint8 images for [0, 255] data, or set "
            "value_range"
        )
    scaled = (t.double() - lo) * (255.0 / (hi - lo))
    return scaled.round_().clamp_(0, 255).to(torch.uint8)


def check_dataset_object(data: object, what: str) -> ImageSet:
    """A dataset factory must return an :class:`ImageSet` (checked where it is created)."""
    if not isinstance(data, ImageSet):
        raise DataError(f"{what} returned {type(data).__name__}, not a flowkit.data.ImageSet")
    if len(data) == 0:
        raise DataError(f"{what} returned no images")
    return data
