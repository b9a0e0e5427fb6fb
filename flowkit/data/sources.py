"""Built-in datasets: embedded digits, torchvision MNIST/CIFAR-10/SVHN, synthetic fake data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowkit.data.base import SPLITS, ImageSet, check_split, default_data_root, resize_uint8
from flowkit.errors import DatasetNotFoundError

__all__ = ["digits", "mnist", "cifar10", "svhn", "fake", "SPLITS"]


def _split_indices(n: int, split: str, seed: int = 0, test_fraction: float = 0.2) -> np.ndarray:
    """A fixed split for datasets that ship without one."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    if split == "test":
        return np.sort(order[:n_test])
    if split == "train":
        return np.sort(order[n_test:])
    return np.arange(n)


def digits(
    split: str = "all", image_size: int = 32, root: Any = None, download: bool = False
) -> ImageSet:
    """scikit-learn's bundled handwritten digits (1,797 images, 10 classes), resized.

    Real data that ships with scikit-learn, so it works with no network: flowkit's embedded
    default. ``train``/``test`` is a fixed 80/20 split.
    """
    from sklearn.datasets import load_digits

    check_split(split)
    bunch = load_digits()
    images = torch.from_numpy((bunch.images * (255.0 / 16.0)).round().astype(np.uint8))
    images = resize_uint8(images.unsqueeze(1), image_size)
    idx = _split_indices(len(images), split)
    return ImageSet(
        images[idx], torch.from_numpy(bunch.target[idx]), [str(c) for c in range(10)], "digits"
    )


_WHERE = {
    "mnist": "the four files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (unpacked) in {root}/MNIST/raw/",
    "cifar10": "the unpacked archive cifar-10-python.tar.gz, i.e. the folder "
    "{root}/cifar-10-batches-py/ with data_batch_1 ... data_batch_5, test_batch and batches.meta",
    "svhn": "train_32x32.mat and test_32x32.mat (the 'cropped digits' format 2) in {root}/",
}


def _not_found(name: str, root: Path, cause: BaseException | None) -> DatasetNotFoundError:
    how = (
        f"could not be downloaded ({type(cause).__name__}: {cause})"
        if cause
        else "downloading is disabled"
    )
    return DatasetNotFoundError(
        f"{name} is not in {root} and {how}. On a machine with network "
        f"access, download it (e.g. with torchvision) and place {_WHERE[name].format(root=root)}; "
        f"then pass --data-root {root} (or set FLOWKIT_DATA). The files are read with "
        "download disabled, so no network is needed once they are there."
    )


def _torchvision(name: str, cls_name: str, root: Any, download: bool, **kwargs: Any) -> Any:
    import torchvision.datasets as tvd

    root_path = Path(root).expanduser() if root else default_data_root()
    cls = getattr(tvd, cls_name)
    try:
        return cls(str(root_path), download=False, **kwargs)
    except (RuntimeError, FileNotFoundError, OSError) as exc:
        first_error: BaseException = exc
    if not download:
        raise _not_found(name, root_path, None) from None
    try:
        root_path.mkdir(parents=True, exist_ok=True)
        return cls(str(root_path), download=True, **kwargs)
    except Exception as exc:  # no network, a proxy, a bad mirror: all end the same way
        raise _not_found(name, root_path, exc) from first_error


def _both_splits(load: Any, split: str) -> list[Any]:
    check_split(split)
    return (
        [load(True)]
        if split == "train"
        else [load(False)]
        if split == "test"
        else [load(True), load(False)]
    )


def mnist(
    split: str = "all", image_size: int = 32, root: Any = None, download: bool = True
) -> ImageSet:
    """MNIST (torchvision), 28×28 resized to ``image_size`` (32 in the paper)."""
    parts = _both_splits(
        lambda train: _torchvision("mnist", "MNIST", root, download, train=train), split
    )
    images = torch.cat([torch.as_tensor(p.data, dtype=torch.uint8) for p in parts]).unsqueeze(1)
    labels = torch.cat([torch.as_tensor(p.targets, dtype=torch.long) for p in parts])
    return ImageSet(resize_uint8(images, image_size), labels, [str(c) for c in range(10)], "mnist")


CIFAR10_CLASSES = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar10(
    split: str = "all", image_size: int = 32, root: Any = None, download: bool = True
) -> ImageSet:
    """CIFAR-10 (torchvision), 32×32 RGB."""
    parts = _both_splits(
        lambda train: _torchvision("cifar10", "CIFAR10", root, download, train=train), split
    )
    images = torch.cat([torch.from_numpy(np.asarray(p.data)) for p in parts]).permute(0, 3, 1, 2)
    labels = torch.cat([torch.as_tensor(p.targets, dtype=torch.long) for p in parts])
    return ImageSet(
        resize_uint8(images.contiguous(), image_size), labels, CIFAR10_CLASSES, "cifar10"
    )


def svhn(
    split: str = "all", image_size: int = 32, root: Any = None, download: bool = True
) -> ImageSet:
    """SVHN cropped digits (torchvision), 32×32 RGB; label 0 is the digit 0."""
    parts = _both_splits(
        lambda train: _torchvision(
            "svhn", "SVHN", root, download, split="train" if train else "test"
        ),
        split,
    )
    images = torch.cat([torch.from_numpy(np.asarray(p.data)) for p in parts])
    labels = torch.cat([torch.as_tensor(np.asarray(p.labels), dtype=torch.long) for p in parts])
    return ImageSet(
        resize_uint8(images.contiguous(), image_size), labels, [str(c) for c in range(10)], "svhn"
    )


def fake(
    split: str = "all",
    image_size: int = 32,
    root: Any = None,
    download: bool = False,
    channels: int = 1,
    classes: int = 4,
    per_class: int = 80,
    seed: int = 0,
) -> ImageSet:
    """Synthetic images for tests: class ``k`` is a bright blob at its own place, plus noise."""
    check_split(split)
    g = torch.Generator().manual_seed(seed)
    n = classes * per_class
    labels = torch.arange(classes).repeat_interleave(per_class)
    angle = 2 * torch.pi * labels.float() / classes
    centre = image_size / 2 + image_size / 4 * torch.stack([angle.cos(), angle.sin()], 1)
    centre += torch.randn(n, 2, generator=g) * image_size / 32
    yy, xx = torch.meshgrid(torch.arange(image_size), torch.arange(image_size), indexing="ij")
    d2 = (xx[None] - centre[:, 0, None, None]) ** 2 + (yy[None] - centre[:, 1, None, None]) ** 2
    img = torch.exp(-d2 / (2 * (image_size / 10) ** 2)) * 220
    img = (
        img[:, None].repeat(1, channels, 1, 1)
        + torch.rand(n, channels, image_size, image_size, generator=g) * 30
    )
    images = img.clamp(0, 255).to(torch.uint8)
    idx = _split_indices(n, split, seed)
    return ImageSet(images[idx], labels[idx], [str(c) for c in range(classes)], "fake")
