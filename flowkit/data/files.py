"""Datasets read from files: a folder in any layout, MVTec AD.

Decoding, the folder layouts and their rules live in :mod:`flowkit.images` (torch-free, shared
with the onnxruntime scoring path); this module turns them into :class:`ImageSet` tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowkit.data.base import ImageSet, check_split
from flowkit.errors import ConfigError, DataError, DatasetNotFoundError
from flowkit.images import (
    IMAGE_SUFFIXES,
    Layout,
    decode_image,
    detect_layout,
    find_images,
    image_size_of,
    labelled_files,
    layout_files,
    read_images,
    read_mask,
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
    "mtd",
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
    with_masks = layout.kind == "mvtec" and (root / "ground_truth").is_dir()
    # every defect image's mask is found before any image is decoded
    mask_files = (
        [
            _mvtec_mask(root, f, layout.classes[label])
            for f, label in zip(files, labels, strict=True)
        ]
        if with_masks
        else None
    )
    images, kept = load_images(files, image_size, channels, skip_unreadable)
    index = {f: i for i, f in enumerate(files)}
    rows = [index[f] for f in kept]
    label_t = torch.tensor([labels[i] for i in rows], dtype=torch.long)
    masks = types = None
    if mask_files is not None:
        types = [layout.classes[labels[i]] for i in rows]
        masks = _masks(kept, [mask_files[i] for i in rows], image_size)
    return ImageSet(
        images,
        label_t,
        layout.classes,
        root.name,
        [str(f) for f in kept],
        anomaly=(label_t != 0) if layout.labelled else None,
        is_test=torch.tensor([parts[i] == "test" for i in rows]) if layout.labelled else None,
        layout=layout.describe(root),
        masks=masks,
        defect_types=types,
    )


def _masks(images: list[Path], masks: list[Path | None], size: int) -> torch.Tensor:
    """Each image's mask (``None``: empty) as bool ``(N, 1, size, size)``, resized as the
    images are (:func:`flowkit.images.read_mask`)."""
    out = [read_mask(m, image_size_of(f), size, f) for f, m in zip(images, masks, strict=True)]
    return torch.from_numpy(np.stack(out))[:, None]


def _mvtec_mask(root: Path, image: Path, defect: str) -> Path | None:
    """MVTec AD's mask of a test image: ``ground_truth/<type>/<stem>_mask.png``; none for a
    ``good`` image (or a training one)."""
    if defect == "good":
        return None
    mask = root / "ground_truth" / defect / f"{image.stem}_mask.png"
    if not mask.is_file():
        raise DataError(f"{image} is a {defect} image but its mask {mask} is missing")
    return mask


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


#: The defect-free class of the Magnetic Tile Defects dataset, by its folder name.
MTD_NORMAL = "MT_Free"


def mtd(
    root: Any = None,
    split: str = "all",
    image_size: int = 256,
    download: bool = False,
    seed: int = 0,
    train_fraction: float = 0.8,
    skip_unreadable: bool = False,
) -> ImageSet:
    """The Magnetic Tile Defects dataset (Huang, Qiu & Yuan 2020) in its native layout: one
    folder per class (``MT_Free``, ``MT_Blowhole``, ``MT_Break``, ``MT_Crack``, ``MT_Fray``,
    ``MT_Uneven``), each image (JPEG) beside its mask (PNG, same stem) in ``Imgs/``.

    A seeded split (``seed``): ``train_fraction`` of the defect-free images train; the rest
    and every defective image test. Masks are binarized at 128 (a few boundary pixels lie in
    between); images of any size are squashed to ``image_size`` square (bilinear), their
    masks the same way. Classes: ``good`` and the defect types (the folder names without
    ``MT_``); each image carries its defect type, its mask and its path.
    """
    check_split(split)
    if root is None:
        raise ConfigError("the mtd dataset needs a root: --data-root DIR, the folder of MT_*/")
    base = Path(root).expanduser()
    classes_found = sorted(d.name for d in base.glob("MT_*") if d.is_dir()) if base.is_dir() else []
    if MTD_NORMAL not in classes_found:
        raise DatasetNotFoundError(
            f"no Magnetic Tile Defects data in {base}: expected {MTD_NORMAL}/Imgs/*.jpg (with a "
            ".png mask beside each) and MT_<Defect>/Imgs/ folders (the dataset's native layout)"
        )
    if not isinstance(train_fraction, float) or not 0.0 < train_fraction < 1.0:
        raise ConfigError(f"mtd: train_fraction must be in (0, 1), got {train_fraction!r}")
    defects = [c for c in classes_found if c != MTD_NORMAL]
    classes = ["good"] + [c.removeprefix("MT_") for c in defects]
    files: list[Path] = []
    labels: list[int] = []
    parts: list[str] = []
    for label, folder_name in enumerate([MTD_NORMAL, *defects]):
        images = _mtd_images(base / folder_name)
        if label == 0:
            order = np.random.default_rng(seed).permutation(len(images))
            train = set(order[: int(round(len(images) * train_fraction))].tolist())
            parts += ["train" if i in train else "test" for i in range(len(images))]
        else:
            parts += ["test"] * len(images)
        files += images
        labels += [label] * len(images)
    keep = [i for i, p in enumerate(parts) if split in ("all", p)]
    files, labels, parts = ([x[i] for i in keep] for x in (files, labels, parts))
    # every defect image's mask is there before any image is decoded
    missing = [
        str(f.with_suffix(".png"))
        for f, label in zip(files, labels, strict=True)
        if label and not f.with_suffix(".png").is_file()
    ]
    if missing:
        raise DataError(
            f"{len(missing)} defect image(s) have no mask beside them: {', '.join(missing[:5])}"
        )
    images_t, kept = load_images(files, image_size, 1, skip_unreadable)
    index = {f: i for i, f in enumerate(files)}
    rows = [index[f] for f in kept]
    label_t = torch.tensor([labels[i] for i in rows], dtype=torch.long)
    masks = [
        f.with_suffix(".png") if labels[i] else _optional(f.with_suffix(".png"))
        for f, i in zip(kept, rows, strict=True)
    ]
    return ImageSet(
        images_t,
        label_t,
        classes,
        f"mtd ({base.name})",
        [str(f) for f in kept],
        anomaly=label_t != 0,
        is_test=torch.tensor([parts[i] == "test" for i in rows]),
        layout=f"Magnetic Tile Defects in {base}: {len(defects)} defect types; training on "
        f"{train_fraction:.0%} of {MTD_NORMAL} (seed {seed})",
        masks=_masks(kept, masks, image_size),
        defect_types=[classes[labels[i]] for i in rows],
    )


def _optional(mask: Path) -> Path | None:
    return mask if mask.is_file() else None  # a defect-free image's mask is empty anyway


def _mtd_images(folder: Path) -> list[Path]:
    """A class folder's images: every image file in ``Imgs/`` (or the folder itself) but the
    PNG masks beside them."""
    where = folder / "Imgs" if (folder / "Imgs").is_dir() else folder
    return [f for f in find_images([where]) if f.suffix.lower() != ".png"]
