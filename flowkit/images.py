"""Images without torch: the input contract on arrays, decoding image files, folder layouts.

This module imports numpy and Pillow only, so the onnxruntime scoring path
(:class:`flowkit.runtime.OnnxDetector`, ``flowkit score --backend onnx``) runs where torch is
not installed. :mod:`flowkit.data` builds its tensors on it.

**The input contract** (:func:`as_uint8_array`): images are ``(N, C, H, W)`` (or ``(N, H, W)``
for one channel); integer images are ``[0, 255]``; float images lie in a *declared*
``value_range`` (default ``[0, 1]``) mapped linearly onto ``[0, 255]``. Nothing is inferred from
the batch, so an image's pixels (and its score) never depend on the images beside it.

**Decoding** (:func:`decode_image`) maps each mode Pillow reads onto 8-bit L or RGB:

- ``I;16`` (and ``I;16B``/``I;16L``): 16-bit values ``0..65535`` are rescaled to ``0..255``
  (``v / 257``);
- ``I`` (32-bit integers) by the range its pixels are in, as ``F`` is: ``0..255`` as an
  8-bit image, else ``0..65535`` as a 16-bit one; negative pixels or pixels above 65535 are
  refused with the range found, never clipped;
- ``F`` (float): read as ``[0, 1]`` (the float input contract) or, when a pixel is above 1,
  as ``[0, 255]``; anything else (negative, above 255, NaN) is refused, never clipped;
- ``1``, ``P`` (palette), ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: Pillow's own conversions;
- ``LA``, ``RGBA``, ``PA`` and palettes with transparency: alpha-composited onto **black**
  (``pixel * alpha / 255``), so a transparent background reads as dark, as in MNIST-style
  data;
- RGB → one channel uses Pillow's ITU-R 601-2 luma; one channel → RGB repeats it;
- an EXIF orientation tag (phone and camera photos) is applied first, as every viewer does
  (:func:`PIL.ImageOps.exif_transpose`), so a photo stored rotated reads upright.

**Folder layouts** (:func:`detect_layout`), said out loud and never guessed silently:

- **MVTec AD**: ``train/good/`` (normal, for training), ``test/good/`` + ``test/<defect>/``
  (evaluation), ``ground_truth/`` (masks, never read as images);
- **normal/anomalous**: ``normal/`` and optionally ``anomalous/``; a fixed, seeded 20% of the
  normal images joins the anomalies as the test part;
- **classes**: one sub-folder per class (for leave-one-class-out);
- **flat**: image files directly in the folder, all normal.

Anything else (images beside class folders, ``train/`` without ``good/``, unknown names next
to ``normal/``) is refused with a message showing these layouts.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flowkit.errors import ConfigError, DataError

__all__ = [
    "IMAGE_SUFFIXES",
    "as_uint8_array",
    "check_input_shape",
    "check_value_range",
    "find_images",
    "decode_image",
    "upright",
    "read_mask",
    "image_size_of",
    "read_images",
    "Layout",
    "detect_layout",
    "labelled_files",
    "check_unambiguous",
    "layout_files",
]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
TEST_FRACTION = 0.2  # of normal images, for layouts that ship no test split

LAYOUTS_HELP = (
    "expected one of these layouts: MVTec AD (train/good/, test/good/, test/<defect>/, "
    "optional ground_truth/); normal/ + anomalous/; one sub-folder per class; or image files "
    "directly in the folder"
)


def find_images(paths: Iterable[str | Path]) -> list[Path]:
    """Image files among ``paths`` (folders searched recursively, sorted), each once however
    often the paths name it (``a a/0.png a``: a/0.png once, where it first appears). Only
    regular files are images: a folder named ``d.png`` is searched, never opened, and a FIFO
    or device named ``*.png`` is passed over in a folder and refused when named. Symbolic
    links to folders are followed, each real folder searched once (a link back to a folder
    above it is no loop)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(
                f for f in _walk(p) if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
            )
        elif p.is_file():
            found.append(p)
        elif p.exists():
            raise DataError(f"{p} is not a regular file (a FIFO, socket or device?)")
        else:
            raise DataError(f"no such file or folder: {p}")
    seen: set[Path] = set()
    unique = []
    for f in found:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def _walk(root: Path) -> Iterator[Path]:
    """Every file under ``root``, following links to folders, each real folder once."""
    import os

    seen: set[str] = set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []  # a folder reached again through a link: searched already
            continue
        seen.add(real)
        # real folders before links, so that a folder is found under its own name first
        dirs.sort(key=lambda d, f=folder: (os.path.islink(os.path.join(f, d)), d))
        yield from (Path(folder) / n for n in names)


def _composite_on_black(im: Any) -> np.ndarray:
    """An image with alpha as 8-bit L or RGB, composited onto black."""
    has_color = im.mode not in ("LA", "La")
    rgba = np.asarray(im.convert("RGBA" if has_color else "LA"), dtype=np.float64)
    alpha = rgba[..., -1:] / 255.0
    out = np.rint(rgba[..., :-1] * alpha).astype(np.uint8)
    return out if has_color else out[..., 0]


def _float_to_8bit(arr: np.ndarray) -> np.ndarray:
    """A float (``F``) image by the range its pixels are in, never clipped: ``[0, 1]`` (the
    array contract's float range) or, if any pixel is above 1, ``[0, 255]`` (an 8-bit image
    stored as floats). Each image is read alone, so its pixels never depend on others'."""
    if not np.isfinite(arr).all():
        raise DataError("a float (F) image with NaN or infinite pixels")
    low, high = float(arr.min()), float(arr.max())
    if low >= 0.0 and high <= 1.0:
        return np.rint(arr * 255.0).astype(np.uint8)
    if low >= 0.0 and high <= 255.0:
        return np.rint(arr).astype(np.uint8)
    raise DataError(
        f"a float (F) image with pixels in [{low:g}, {high:g}]: flowkit reads float images "
        "in [0, 1] or [0, 255]; rescale it (or save it as 8 or 16 bit)"
    )


def _int32_to_8bit(arr: np.ndarray) -> np.ndarray:
    """A 32-bit integer (``I``) image by the range its pixels are in: ``0..255`` (8-bit values
    stored wide) as they are, ``0..65535`` as 16-bit (``v / 257``); anything else is refused
    with the range found. Each image is read alone, as float images are."""
    low, high = int(arr.min()), int(arr.max())
    if low >= 0 and high <= 255:
        return arr.astype(np.uint8)
    if low >= 0 and high <= 65535:
        return np.rint(arr / 257.0).astype(np.uint8)
    raise DataError(
        f"a 32-bit integer (I) image with pixels in [{low}, {high}]: flowkit reads them as "
        "8-bit (0..255) or 16-bit (0..65535) values; rescale it (or save it as 8 or 16 bit)"
    )


def _to_8bit(im: Any) -> np.ndarray:
    """``(H, W)`` for grayscale modes or ``(H, W, 3)``, uint8, per the module's rules."""
    mode = im.mode
    if mode == "I":  # 32-bit integers: by their range, never clipped
        return _int32_to_8bit(np.asarray(im).astype(np.int64))
    if mode.startswith("I;16"):  # 16-bit data: 0..65535 by construction
        arr = np.asarray(im).astype(np.float64)
        return np.rint(arr / 257.0).astype(np.uint8)
    if mode == "F":
        return _float_to_8bit(np.asarray(im, dtype=np.float64))
    if mode in ("LA", "La", "RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in im.info):
        return _composite_on_black(im)
    if mode == "L":
        return np.asarray(im)
    if mode == "1":
        return np.asarray(im.convert("L"))
    return np.asarray(im.convert("RGB"))  # RGB, P, CMYK, YCbCr, LAB, HSV, RGBX


def _to_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    """uint8 ``(H, W, 1 or 3)`` → ``(H, W, channels)``: luma (ITU-R 601-2) or repetition."""
    from PIL import Image

    if channels == 1 and arr.shape[-1] == 3:
        return np.asarray(Image.fromarray(arr, "RGB").convert("L"))[..., None]
    if channels == 3 and arr.shape[-1] == 1:
        return np.repeat(arr, 3, axis=-1)
    return arr


def decode_image(im: Any, channels: int) -> np.ndarray:
    """A Pillow image as uint8 ``(H, W, channels)`` (1 or 3), by the module's rules (its EXIF
    orientation applied)."""
    arr = _to_8bit(upright(im))
    return _to_channels(arr if arr.ndim == 3 else arr[..., None], channels)


def _resize(arr: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if arr.shape[:2] == (size, size):
        return arr
    planes = [
        np.asarray(Image.fromarray(arr[..., c]).resize((size, size), Image.BILINEAR))
        for c in range(arr.shape[-1])
    ]
    return np.stack(planes, axis=-1)


def _open(f: Path) -> Any:
    from PIL import Image

    im = Image.open(f)
    im.load()
    return upright(im)


#: The EXIF tag of an image's orientation (1: stored upright).
_ORIENTATION = 0x0112


def upright(im: Any) -> Any:
    """``im`` as a viewer shows it: its EXIF orientation applied (a copy), or itself."""
    from PIL import ImageOps

    try:
        orientation = im.getexif().get(_ORIENTATION, 1)
    except Exception:  # unreadable EXIF: show it as stored, as viewers do
        return im
    if orientation in (None, 1):
        return im
    turned = ImageOps.exif_transpose(im)
    if turned is not im:
        im.close()
    return turned


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


def bad_images(mask: np.ndarray, what: str) -> str:
    """``"2 image(s) <what> (indices [1, 7])"``: which images of a batch are refused."""
    bad = np.flatnonzero(mask).tolist()
    more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
    return f"{len(bad)} image(s) {what} (indices {bad[:10]}{more})"


def as_uint8_array(
    x: object, name: str = "images", value_range: tuple[float, float] = (0.0, 1.0)
) -> np.ndarray:
    """Images as a uint8 array ``(N, C, H, W)``, by the input contract (module doc).

    Values outside the contract, NaN or inf, empty batches and non-numeric arrays raise a
    :class:`DataError` naming the offending images.
    """
    if isinstance(x, (list, tuple)) and x:
        shapes = [tuple(np.shape(item)) for item in x]
        if len(set(shapes)) > 1:
            first = shapes[0]
            other = next(i for i, s in enumerate(shapes) if s != first)
            raise DataError(
                f"{name}: a list of images of different shapes ({first} at index 0, "
                f"{shapes[other]} at index {other}); resize them to one size first "
                "(flowkit.images.read_images does this for image files)"
            )
    arr = np.asarray(x)
    if arr.dtype.kind == "c":
        raise DataError(f"{name}: complex values are not images")
    if arr.dtype.kind not in "biuf":
        raise DataError(
            f"{name}: expected a numeric image array, got dtype {arr.dtype} "
            "(decode image files first, e.g. with flowkit.images.read_images)"
        )
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise DataError(f"{name}: expected images of shape (N, C, H, W), got {arr.shape}")
    if len(arr) == 0:
        raise DataError(f"{name}: the batch is empty (0 images)")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * np.uint8(255)
    flat = arr.reshape(len(arr), -1)
    if arr.dtype.kind in "iu":
        out = (flat < 0).any(1) | (flat > 255).any(1)
        if out.any():
            raise DataError(
                f"{name}: integer images must lie in [0, 255]; "
                f"{bad_images(out, 'do not')}; rescale 16-bit images to 8 bit first"
            )
        return arr.astype(np.uint8)
    lo, hi = check_value_range(value_range)
    nonfinite = ~np.isfinite(flat).all(1)
    if nonfinite.any():
        raise DataError(f"{name}: {bad_images(nonfinite, 'contain NaN or inf values')}")
    out = (flat < lo).any(1) | (flat > hi).any(1)
    if out.any():
        raise DataError(
            f"{name}: float images must lie in [{lo:g}, {hi:g}] (the declared value_range); "
            f"{bad_images(out, 'do not')}. Pass uint8 images for [0, 255] data, or set "
            "value_range"
        )
    scaled = (arr.astype(np.float64) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def check_unambiguous(x: object, expected: tuple[int, int, int]) -> None:
    """Refuse a 3-D batch ``(A, H, W)`` of the model's size whose first axis could be a
    channel count (3 or 4, or the model's own): it reads as A one-channel images or as one
    A-channel image, and the wrong guess would score silently. Refuse channels-last images
    (``(N, H, W, C)`` or one ``(H, W, C)``, as PIL and most image libraries give them) with
    the transpose that makes them ``(N, C, H, W)``. Only arrays and tensors are read this
    way: a dataset object (an ``ImageSet``, whose ``shape`` is one image's ``(C, H, W)``)
    declares its layout."""
    if not any(hasattr(x, a) for a in ("__array__", "__array_interface__", "__dlpack__")):
        return
    shape = tuple(getattr(x, "shape", ()) or ())
    if not shape and hasattr(x, "__array_interface__"):  # a PIL image: (H, W[, C])
        shape = tuple(np.asarray(x).shape)
    c, h, w = expected
    if len(shape) in (3, 4) and shape[-3:] != expected and shape[-3:] == (h, w, c):
        what, how = (
            ("one channels-last image (H, W, C)", "x.transpose(2, 0, 1)[None]")
            if len(shape) == 3
            else ("channels-last images (N, H, W, C)", "x.transpose(0, 3, 1, 2)")
        )
        raise DataError(
            f"images of shape {shape} are {what}; this model takes "
            f"(N, C, H, W) = (N, {c}, {h}, {w}): pass {how} (numpy; .permute for torch)"
        )
    if len(shape) == 3 and shape[1:] == (h, w) and shape[0] > 1 and shape[0] in (3, 4, c):
        a = shape[0]
        raise DataError(
            f"images of shape {shape} are ambiguous: {a} one-channel {h}×{w} images (N, H, W) "
            f"or one {a}-channel image (C, H, W); say which with x[:, None] (N, 1, H, W) or "
            "x[None] (1, C, H, W)"
        )


def check_input_shape(got: tuple[int, ...], expected: tuple[int, int, int]) -> None:
    """Refuse images of another ``(C, H, W)`` than a fitted model's, in one line."""
    if tuple(got) != tuple(expected):
        c, h, w = expected
        raise DataError(
            f"this model expects {c}-channel {h}×{w} images, got {got[0]}-channel "
            f"{got[1]}×{got[2]}; convert or resize them first (flowkit score does this "
            "for image files)"
        )


def read_images(
    files: list[Path],
    image_size: int,
    channels: int | None = None,
    skip_unreadable: bool = False,
    *,
    warn: bool = True,
) -> tuple[np.ndarray, list[Path]]:
    """Decode (every Pillow mode, see the module doc) and resize files to a uint8 array
    ``(N, C, S, S)``.

    ``channels=None`` chooses 1 when every image is grayscale, else 3. Unreadable files —
    corrupt, truncated, not images, or over Pillow's decompression-bomb limit — are named in
    one :class:`DataError` (or skipped with a warning if ``skip_unreadable``; ``warn=False``
    for a caller that reports the files missing from ``kept`` itself).
    """
    from PIL import Image, UnidentifiedImageError

    if not files:
        raise DataError("no image files found")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(f"image_size must be a positive integer, got {image_size!r}")
    if channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels}")
    arrays: list[np.ndarray] = []  # native 8-bit L or RGB, already resized (bounded memory)
    kept: list[Path] = []
    bad: list[str] = []
    for f in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = _open(f)
            with im:
                arr = _to_8bit(im)
            arrays.append(_resize(arr if arr.ndim == 3 else arr[..., None], image_size))
            kept.append(f)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            bad.append(f"{f} ({type(exc).__name__}: {str(exc)[:160]})")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            bad.append(
                f"{f} (over Pillow's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} "
                f"pixels: {str(exc)[:80]}; raise PIL.Image.MAX_IMAGE_PIXELS if you trust it)"
            )
    if bad:
        msg = f"{len(bad)} of {len(files)} image file(s) could not be read: " + "; ".join(bad[:10])
        if len(bad) > 10:
            msg += f"; and {len(bad) - 10} more"
        if not skip_unreadable or not arrays:
            if arrays:
                msg += " (--skip-unreadable skips them)"
            raise DataError(msg)
        if warn:
            warnings.warn(msg + " (skipped)", stacklevel=2)
    if channels is None:
        channels = 1 if all(a.shape[-1] == 1 for a in arrays) else 3
    out = np.stack([_to_channels(a, channels) for a in arrays])
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2)), kept


def image_size_of(f: Path) -> tuple[int, int]:
    """``(height, width)`` of an image file as a viewer shows it (its EXIF orientation
    applied), read from its header."""
    from PIL import Image

    with Image.open(f) as im:
        orientation = im.getexif().get(_ORIENTATION, 1)
        w, h = im.size
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


#: A mask pixel at or above this value is defective (masks are 0 / 255, with a few boundary
#: pixels in between).
MASK_LEVEL = 128


def read_mask(f: Path | None, image_hw: tuple[int, int], size: int, image: Path) -> np.ndarray:
    """A pixel mask as bool ``(size, size)``, resized as its image is (squashed to a square,
    bilinear), so that mask and image pixels stay in register: binarized at
    :data:`MASK_LEVEL` at its own size, then a resized pixel is defective where at least half
    of what it covers is. ``f=None``: an empty mask (a defect-free image). A mask of another
    size than its image, or that cannot be read, is refused naming both files; a colour mask
    is read by its luma."""
    from PIL import Image, UnidentifiedImageError

    if f is None:
        return np.zeros((size, size), dtype=bool)
    try:
        with Image.open(f) as im:
            im.load()
            gray = np.asarray(im.convert("L") if im.mode != "L" else im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"the mask {f} of {image} cannot be read ({type(exc).__name__})") from None
    if gray.shape != tuple(image_hw):
        raise DataError(
            f"the mask {f} is {gray.shape[1]}×{gray.shape[0]} but its image {image} is "
            f"{image_hw[1]}×{image_hw[0]}: a mask must match its image pixel for pixel"
        )
    binary = np.where(gray >= MASK_LEVEL, 255, 0).astype(np.uint8)
    return _resize(binary[..., None], size)[..., 0] >= 128


@dataclass
class Layout:
    """What :func:`detect_layout` found: image groups with class labels and a test part.

    Attributes:
        kind: ``"mvtec"``, ``"normal-anomalous"``, ``"classes"`` or ``"flat"``.
        classes: class names by label (label 0 is normal for labelled layouts).
        groups: ``(folder, label, part)``; ``part`` is ``"train"``, ``"test"`` or ``"any"``
            (to be split with a fixed seed).
        labelled: whether the layout says which images are anomalies.
    """

    kind: str
    classes: list[str]
    groups: list[tuple[Path, int, str]]
    labelled: bool

    def describe(self, root: Path) -> str:
        if self.kind == "mvtec":
            return (
                f"MVTec AD layout in {root}: training on train/good; evaluating on test/ "
                f"({', '.join(self.classes)}); pixel masks from ground_truth/ where it is"
            )
        if self.kind == "normal-anomalous":
            return (
                f"normal/ + anomalous/ layout in {root}: training on {1 - TEST_FRACTION:.0%} of "
                f"normal/; evaluating on the other {TEST_FRACTION:.0%} and anomalous/"
            )
        if self.kind == "classes":
            return f"one folder per class in {root}: {', '.join(self.classes)}"
        return f"a flat folder of images in {root}, all normal"


def _has_images(d: Path, recursive: bool = True) -> bool:
    it = _walk(d) if recursive else d.iterdir()  # the files find_images would find
    return any(f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES for f in it)


def _ambiguous(root: Path, why: str) -> DataError:
    return DataError(f"{root}: ambiguous folder layout ({why}); {LAYOUTS_HELP}")


def detect_layout(root: Path) -> Layout:
    """The layout of ``root`` (see the module doc); ambiguous trees raise :class:`DataError`."""
    subdirs = {d.name: d for d in sorted(root.iterdir()) if d.is_dir() and d.name[0] != "."}
    loose = _has_images(root, recursive=False)
    names = set(subdirs)
    if "train" in names or "test" in names:
        train, test = subdirs.get("train"), subdirs.get("test")
        if train is None or not (train / "good").is_dir():
            raise _ambiguous(root, "train/ must hold good/ (MVTec AD)")
        extra = names - {"train", "test", "ground_truth", "license", "readme"}
        if extra or loose:
            what = ", ".join(sorted(extra)) or "loose image files"
            raise _ambiguous(root, f"{what} beside train/ and test/")
        groups: list[tuple[Path, int, str]] = [(train / "good", 0, "train")]
        classes = ["good"]
        if test is not None:
            defects = sorted(d.name for d in test.iterdir() if d.is_dir() and d.name != "good")
            classes += defects
            if (test / "good").is_dir():
                groups.append((test / "good", 0, "test"))
            groups += [(test / d, i, "test") for i, d in enumerate(defects, 1)]
        return Layout("mvtec", classes, groups, labelled=True)
    if "ground_truth" in names:
        raise _ambiguous(root, "ground_truth/ without train/ and test/")
    if "normal" in names:
        anomal = [n for n in ("anomalous", "anomaly", "abnormal") if n in names]
        extra = names - {"normal", *anomal}
        if extra or loose or len(anomal) > 1:
            what = ", ".join(sorted(extra)) or (
                "loose image files" if loose else "both " + ", ".join(anomal)
            )
            raise _ambiguous(root, f"{what} beside normal/")
        groups = [(subdirs["normal"], 0, "any")]
        groups += [(subdirs[a], 1, "test") for a in anomal]
        return Layout("normal-anomalous", ["normal", "anomalous"], groups, labelled=True)
    with_images = [n for n, d in subdirs.items() if _has_images(d)]
    if with_images and loose:
        raise _ambiguous(root, "image files both directly in it and in sub-folders")
    if with_images:
        # every class folder keeps its index (sorted order), an empty one too: dropping it
        # would shift the indices of the others
        classes = sorted(n for n in subdirs if not n.startswith("."))
        empty = [n for n in classes if n not in with_images]
        if empty:
            warnings.warn(
                f"{root}: class folder(s) {', '.join(map(repr, empty))} hold no images; "
                "they keep their class index "
                f"({', '.join(str(classes.index(n)) for n in empty)}) with no images",
                stacklevel=2,
            )
        return Layout(
            "classes", classes, [(subdirs[c], i, "any") for i, c in enumerate(classes)], False
        )
    return Layout("flat", ["normal"], [(root, 0, "any")], labelled=False)


def layout_files(root: Path, layout: Layout | None = None) -> list[tuple[Path, int, str]]:
    """``(file, label, part)`` for every image of a folder, ``part`` being ``"train"`` or
    ``"test"``: a group that has no part of its own (``normal/``) gets a fixed, seeded split,
    :data:`TEST_FRACTION` of it for the test part, the same for training and scoring."""
    import numpy as np

    layout = layout or detect_layout(root)
    out: list[tuple[Path, int, str]] = []
    for d, label, part in layout.groups:
        found = find_images([d])
        if part == "any":
            order = np.random.default_rng(0).permutation(len(found))
            test = set(order[: int(round(len(found) * TEST_FRACTION))].tolist())
            out += [(f, label, "test" if i in test else "train") for i, f in enumerate(found)]
        else:
            out += [(f, label, part) for f in found]
    return out


def labelled_files(root: Path) -> tuple[list[Path], dict[Path, bool]] | None:
    """For a folder in a labelled layout (MVTec AD, normal/ + anomalous/): every image file,
    and ``is_anomaly`` for the files of its **evaluation part** only (``test/``; for
    normal/ + anomalous/, the normal images training held out and ``anomalous/``), so that
    metrics never count training images as normal test images. ``None`` for other layouts.
    MVTec's ``ground_truth/`` masks are not among the files."""
    layout = detect_layout(root)
    if not layout.labelled:
        return None
    files = layout_files(root, layout)
    return [f for f, _, _ in files], {f: label != 0 for f, label, part in files if part == "test"}
