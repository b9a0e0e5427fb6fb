"""In-memory image sets (uint8 tensors) and batched conversions."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from flowkit.errors import ConfigError, DataError
from flowkit.images import as_uint8_array, check_value_range

__all__ = [
    "ImageSet",
    "match_channels",
    "default_data_root",
    "to_float",
    "resize_uint8",
    "as_uint8_images",
    "check_dataset_object",
    "check_split",
    "check_value_range",
    "DATASET_KEYWORDS",
    "SPLITS",
    "CAPABILITIES",
]

# What every dataset factory receives, beside the user's options.
DATASET_KEYWORDS = ("root", "split", "image_size", "download")
SPLITS = ("train", "test", "all")

#: What an :class:`ImageSet` may carry beyond its images (declared fields, ``None`` when the
#: data has none), and what each gives. A dataset factory's own capability (``categories``)
#: is declared on its registry entry (:data:`flowkit.registry.datasets`).
CAPABILITIES: dict[str, str] = {
    "labels": "a class index per image (always; 0 for unlabelled data)",
    "classes": "the class names the labels index",
    "anomaly": "which images are anomalies (data with labelled anomalies: MVTec AD, "
    "normal/ + anomalous/)",
    "is_test": "the data's own evaluation part (its native split; with anomaly)",
    "masks": "a pixel mask per image, (N, 1, H, W) bool, True where the defect is",
    "defect_types": "the defect type of each image ('good' for normal ones)",
    "paths": "the source file of each image",
}


def check_split(split: str) -> None:
    """Refuse a split that is not ``train``, ``test`` or ``all`` (for dataset factories)."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")


def default_data_root() -> Path:
    """``$FLOWKIT_DATA`` or ``~/.cache/flowkit/data``."""
    return Path(os.environ.get("FLOWKIT_DATA") or Path.home() / ".cache" / "flowkit" / "data")


def match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 images ``(N, C, H, W)`` with ``channels`` channels: grayscale repeated to RGB, or
    RGB turned to its luma (ITU-R 601)."""
    if images.shape[1] == channels:
        return images
    if channels == 3 and images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1).contiguous()
    if channels == 1 and images.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    raise DataError(f"cannot turn {images.shape[1]}-channel images into {channels}-channel ones")


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
        masks: pixel masks ``(N, 1, H, W)`` (bool, True on the defect), for data with them.
        defect_types: each image's defect type (``"good"`` for normal images), for data
            with them.

    What a set carries is :attr:`capabilities` (:data:`CAPABILITIES`).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str] = field(default_factory=lambda: ["0"])
    name: str = "images"
    paths: list[str] | None = None
    anomaly: torch.Tensor | None = None
    is_test: torch.Tensor | None = None
    layout: str | None = None
    masks: torch.Tensor | None = None
    defect_types: list[str] | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise DataError(
                f"{self.name}: images must be a uint8 tensor (N, C, H, W), "
                f"got {self.images.dtype} {tuple(self.images.shape)}"
            )
        self.labels = torch.as_tensor(self.labels, dtype=torch.long).reshape(-1)
        if len(self.labels) != len(self.images):
            raise DataError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")
        self.anomaly = self._per_image(self.anomaly, "anomaly")
        self.is_test = self._per_image(self.is_test, "is_test")
        if self.masks is not None:
            self.masks = torch.as_tensor(self.masks).bool()
            n, _, h, w = self.images.shape
            if tuple(self.masks.shape) != (n, 1, h, w):
                raise DataError(
                    f"{self.name}: masks must have shape {(n, 1, h, w)} (one per image, the "
                    f"images' size), got {tuple(self.masks.shape)}"
                )
        if self.defect_types is not None and len(self.defect_types) != len(self.images):
            raise DataError(f"{self.name}: defect_types has {len(self.defect_types)} entries")

    def _per_image(self, mask: torch.Tensor | None, what: str) -> torch.Tensor | None:
        """A bool per image, or ``None``."""
        if mask is None:
            return None
        mask = torch.as_tensor(mask, dtype=torch.bool).reshape(-1)
        if len(mask) != len(self.images):
            raise DataError(f"{self.name}: {what} has {len(mask)} entries")
        return mask

    @property
    def capabilities(self) -> tuple[str, ...]:
        """What this set carries beyond its images (:data:`CAPABILITIES`)."""
        have = {
            "labels": True,
            "classes": bool(self.classes),
            "anomaly": self.anomaly is not None,
            "is_test": self.is_test is not None,
            "masks": self.masks is not None,
            "defect_types": self.defect_types is not None,
            "paths": self.paths is not None,
        }
        return tuple(name for name in CAPABILITIES if have[name])

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
            self.masks[idx] if self.masks is not None else None,
            [self.defect_types[i] for i in idx.tolist()] if self.defect_types is not None else None,
        )

    @staticmethod
    def concat(sets: list[ImageSet], name: str | None = None) -> ImageSet:
        paths = None
        if all(s.paths is not None for s in sets):
            paths = [p for s in sets for p in s.paths]  # type: ignore[union-attr]

        def joined(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
            return torch.cat(parts) if all(p is not None for p in parts) else None  # type: ignore[arg-type]

        types = None
        if all(s.defect_types is not None for s in sets):
            types = [t for s in sets for t in s.defect_types]  # type: ignore[union-attr]
        return ImageSet(
            torch.cat([s.images for s in sets]),
            torch.cat([s.labels for s in sets]),
            sets[0].classes,
            name or sets[0].name,
            paths,
            joined([s.anomaly for s in sets]),
            joined([s.is_test for s in sets]),
            sets[0].layout,
            joined([s.masks for s in sets]),
            types,
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


def as_uint8_images(
    x: object, name: str = "images", value_range: tuple[float, float] = (0.0, 1.0)
) -> torch.Tensor:
    """Images as a uint8 tensor ``(N, C, H, W)``, by the fixed input contract of
    :func:`flowkit.images.as_uint8_array` (an :class:`ImageSet` gives its images).

    The contract is declared, never guessed from the batch, so an image's pixels (and its
    score) never depend on the other images beside it. Values outside it, NaN or inf, empty
    batches and non-numeric arrays raise a :class:`DataError` naming the offending images.
    """
    if isinstance(x, ImageSet):
        return x.images
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.dtype == torch.uint8 and t.ndim == 4 and len(t):
            return t
        if t.is_complex():
            raise DataError(f"{name}: complex values are not images")
        if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
            t = t.double()  # bf16/fp16 have no numpy dtype
        x = t.numpy()
    arr = as_uint8_array(x, name, value_range)
    # a read-only buffer (a PIL image's, np.frombuffer's) is copied: torch wants to own it
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


def check_dataset_object(data: object, what: str) -> ImageSet:
    """A dataset factory must return an :class:`ImageSet` (checked where it is created)."""
    if not isinstance(data, ImageSet):
        raise DataError(f"{what} returned {type(data).__name__}, not a flowkit.data.ImageSet")
    if len(data) == 0:
        raise DataError(f"{what} returned no images")
    return data
