"""Datasets read from files: a folder in any layout, MVTec AD.

Decoding, the folder layouts and their rules live in :mod:`flowkit.images` (torch-free, shared
with the onnxruntime scoring path); this module turns them into :class:`ImageSet` tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from flowkit.data.base import ImageSet, check_split
from flowkit.errors import ConfigError, DataError, DatasetNotFoundError
from flowkit.images import (
    IMAGE_SUFFIXES,
    Layout,
    decode_image,
    detect_layout,
    find_images,
    labelled_files,
    layout_files,
    read_images,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "find_images",
    "decode_image",
    "load_images",
    "Layout",
    "detect_layout",
    "labelled_files",
    "folder",
    "mvtec",
    "mvtec_categories",
]


def load_images(
    files: list[Path], image_size: int, channels: int | None = None, skip_unreadable: bool = False
) -> tuple[torch.Tensor, list[Path]]:
    """:func:`flowkit.images.read_images` as a uint8 tensor ``(N, C, S, S)``."""
    arr, kept = read_images(files, image_size, channels, skip_unreadable)
    return torch.from_numpy(arr), kept


def folder(
    root: Any = None,
    split: str = "all",
    image_size: int = 32,
    download: bool = False,
    channels: int | None = None,
    skip_unreadable: bool = False,
) -> ImageSet:
    """A folder of image files in a layout people use (MVTec AD, normal/ + anomalous/, one
    folder per class, or flat); ``ImageSet.layout`` says which was found.

    ``split``: ``train`` (the normal training part), ``test`` (the evaluation part) or
    ``all``. Layouts with labelled anomalies set ``anomaly`` and ``is_test`` per image;
    layouts without a test part of their own get a fixed, seeded 80/20 split.
    """
    if root is None:
        raise ConfigError("the folder dataset needs a root: root=DIR, the folder of images")
    check_split(split)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"no such folder: {root}")
    layout = detect_layout(root)
    files: list[Path] = []
    labels: list[int] = []
    parts: list[str] = []
    for f, label, part in layout_files(root, layout):
        files.append(f)
        labels.append(label)
        parts.append(part)
    if split != "all":
        keep = [i for i, p in enumerate(parts) if p == split]
        files, labels, parts = ([x[i] for i in keep] for x in (files, labels, parts))
    if not files:
        raise DataError(f"{root}: no image files in the {split} part ({layout.describe(root)})")
    images, kept = load_images(files, image_size, channels, skip_unreadable)
    index = {f: i for i, f in enumerate(files)}
    rows = [index[f] for f in kept]
    label_t = torch.tensor([labels[i] for i in rows], dtype=torch.long)
    return ImageSet(
        images,
        label_t,
        layout.classes,
        root.name,
        [str(f) for f in kept],
        anomaly=(label_t != 0) if layout.labelled else None,
        is_test=torch.tensor([parts[i] == "test" for i in rows]) if layout.labelled else None,
        layout=layout.describe(root),
    )


def mvtec_categories(root: Any = None) -> list[str]:
    """The MVTec AD categories under ``root``: sub-folders holding ``train/good``."""
    from flowkit.data.base import default_data_root

    base = Path(root).expanduser() if root else default_data_root() / "mvtec"
    if not base.is_dir():
        return []
    return sorted(d.name for d in base.iterdir() if (d / "train" / "good").is_dir())


def mvtec(
    root: Any = None,
    split: str = "all",
    image_size: int = 32,
    download: bool = False,
    category: str | None = None,
    channels: int | None = None,
    skip_unreadable: bool = False,
) -> ImageSet:
    """One MVTec AD category (``mvtec:category=bottle``) from the unpacked archive under
    ``--data-root``; trains on ``train/good``, evaluates on ``test/``.

    MVTec AD has no download URL that works without accepting its licence, so the files are
    never downloaded: put the unpacked categories in the root (``ROOT/bottle/train/good``).
    """
    from flowkit.data.base import default_data_root

    base = Path(root).expanduser() if root else default_data_root() / "mvtec"
    found = mvtec_categories(base)
    where = (
        f"download MVTec AD from its site (the licence must be accepted by hand), unpack it "
        f"and pass the folder holding the categories as --data-root (e.g. {base}/bottle/train/"
        "good/*.png)"
    )
    if category is None:
        raise ConfigError(
            "mvtec needs a category: --dataset mvtec:category=NAME; "
            + (f"found under {base}: {', '.join(found)}" if found else f"none found: {where}")
        )
    if category not in found:
        import difflib

        close = difflib.get_close_matches(category, found, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise DatasetNotFoundError(
            f"MVTec AD category {category!r} is not in {base}{hint} "
            + (f"(found: {', '.join(found)})" if found else f"({where})")
        )
    data = folder(base / category, split, image_size, download, channels, skip_unreadable)
    data.name = f"mvtec/{category}"
    return data


mvtec.categories = mvtec_categories  # type: ignore[attr-defined]  # targets of "all"
