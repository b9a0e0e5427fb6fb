"""Images read from files: a folder dataset and a loader for ``flowkit score``."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowkit.data.base import ImageSet
from flowkit.errors import DataError

__all__ = ["IMAGE_SUFFIXES", "find_images", "load_images", "folder"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


def find_images(paths: Iterable[str | Path]) -> list[Path]:
    """Image files among ``paths`` (folders searched recursively, sorted)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise DataError(f"no such file or folder: {p}")
    return found


def load_images(
    files: list[Path], image_size: int, channels: int | None = None, skip_unreadable: bool = False
) -> tuple[torch.Tensor, list[Path]]:
    """Decode, convert (L or RGB) and resize files to a uint8 tensor ``(N, C, S, S)``.

    ``channels=None`` chooses 1 when every image is grayscale, else 3. Unreadable files are
    named in one :class:`DataError` (or skipped with a warning if ``skip_unreadable``).
    """
    from PIL import Image, UnidentifiedImageError

    if not files:
        raise DataError("no image files found")
    decoded: list[Any] = []
    kept: list[Path] = []
    bad: list[str] = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                decoded.append(im.copy())
                kept.append(f)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            bad.append(f"{f} ({type(exc).__name__}: {str(exc)[:80]})")
    if bad:
        msg = f"{len(bad)} of {len(files)} image file(s) could not be read: " + "; ".join(bad[:10])
        if len(bad) > 10:
            msg += f"; and {len(bad) - 10} more"
        if not skip_unreadable or not decoded:
            raise DataError(msg)
        warnings.warn(msg + " (skipped)", stacklevel=2)
    if channels is None:
        channels = 1 if all(im.mode in ("1", "L", "I", "I;16", "F") for im in decoded) else 3
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(decoded), image_size, image_size, channels), dtype=np.uint8)
    for i, im in enumerate(decoded):
        im = im.convert(mode).resize((image_size, image_size), Image.BILINEAR)
        out[i] = np.asarray(im).reshape(image_size, image_size, channels)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), kept


def folder(
    root: Any = None,
    split: str = "all",
    image_size: int = 32,
    download: bool = False,
    channels: int | None = None,
    skip_unreadable: bool = False,
) -> ImageSet:
    """A folder of image files. Sub-folders are classes; ``normal/`` + ``anomalous/`` are
    labelled 0 and 1. Unreadable files are named in the error."""
    if root is None:
        from flowkit.errors import ConfigError

        raise ConfigError("the folder dataset needs a root: --data-root DIR")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"no such folder: {root}")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir())
    if {d.name for d in subdirs} >= {"normal"}:
        classes = ["normal", "anomalous"]
        groups = [(0, root / "normal"), (1, root / "anomalous")]
    elif subdirs:
        classes = [d.name for d in subdirs]
        groups = list(enumerate(subdirs))
    else:
        classes, groups = ["normal"], [(0, root)]
    files: list[Path] = []
    labels: list[int] = []
    for label, d in groups:
        found = find_images([d]) if d.exists() else []
        files += found
        labels += [label] * len(found)
    images, kept = load_images(files, image_size, channels, skip_unreadable)
    label_of = dict(zip(files, labels, strict=True))
    return ImageSet(
        images,
        torch.tensor([label_of[f] for f in kept]),
        classes,
        root.name,
        [str(f) for f in kept],
    )
