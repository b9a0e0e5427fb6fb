"""Evaluation protocols (GANomaly-style, leakage-free).

- Leave-one-class-out: the normal images of every split are pooled, shuffled with the seed and
  split 80/20; the test set also gets every image of the held-out class.
- One-class (the protocol most later papers report): one class is normal, every other class
  anomalous; the normal class's images are shuffled with the seed and split 80/20; the test
  set also gets every image of the other classes.
- Out-of-distribution: train on dataset A's train split; test A's test split against B.

Validation (early stopping, threshold, scorer calibration) is carved later from the normal
*training* part by the Detector; it never sees the test set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from flowkit.data.base import ImageSet
from flowkit.errors import ConfigError

__all__ = [
    "Split",
    "class_index",
    "leave_one_class_out",
    "one_class",
    "out_of_distribution",
    "labelled_split",
]


@dataclass
class Split:
    """Normal training images and a labelled test set (``is_anomaly`` True for anomalies)."""

    train: ImageSet
    test: ImageSet
    is_anomaly: torch.Tensor

    def describe(self) -> str:
        n_anom = int(self.is_anomaly.sum())
        return (
            f"{len(self.train)} normal training images; test: "
            f"{len(self.test) - n_anom} normal + {n_anom} anomalous"
        )

    def localization(self, maps: Any, scores: Any) -> dict[str, object] | None:
        """Image ROC AUC, pixel ROC AUC, PRO and the per-defect-type figures
        (:func:`flowkit.metrics.localization_metrics`) of anomaly maps ``(N, H, W)`` of the
        test images, for a test set that carries masks; ``None`` without maps or masks."""
        if maps is None or self.test.masks is None:
            return None
        from flowkit.metrics import localization_metrics

        types = self.test.defect_types or [
            "defect" if a else "good" for a in self.is_anomaly.tolist()
        ]
        return localization_metrics(self.test.masks[:, 0].numpy(), np.asarray(maps), scores, types)


def class_index(data: ImageSet, anomaly_class: int | str) -> int:
    """A class by index or by name (``"c_dog"``, or ``"3"`` for index 3 when no class is
    called ``"3"``); an unknown name is refused with the closest ones."""
    if isinstance(anomaly_class, str):
        if anomaly_class in data.classes:
            return data.classes.index(anomaly_class)
        if anomaly_class.strip().lstrip("-").isdigit():
            return int(anomaly_class)
        import difflib

        close = difflib.get_close_matches(anomaly_class, data.classes, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ConfigError(
            f"{data.name} has no class {anomaly_class!r}{hint} Its classes: "
            f"{', '.join(f'{i} {c!r}' for i, c in enumerate(data.classes))}"
        )
    return int(anomaly_class)


def leave_one_class_out(
    data: ImageSet, anomaly_class: int | str, seed: int = 0, test_fraction: float = 0.2
) -> Split:
    """Hold class ``anomaly_class`` (an index or a class name) out as the anomaly; the other
    classes are normal."""
    if data.labelled_anomalies:
        raise ConfigError(
            f"{data.name} has its own test part with labelled anomalies ({data.layout}); "
            "holding a class out does not apply: leave --anomaly-class out"
        )
    anomaly_class = _checked_class(data, anomaly_class, "anomaly class")
    return _split(data, data.labels != anomaly_class, seed, test_fraction)


def one_class(
    data: ImageSet, normal_class: int | str, seed: int = 0, test_fraction: float = 0.2
) -> Split:
    """Class ``normal_class`` (an index or a class name) is normal, every other class
    anomalous: the one-class protocol (a seeded 80/20 split of the normal class, the other
    classes' images all in the test set)."""
    if data.labelled_anomalies:
        raise ConfigError(
            f"{data.name} has its own test part with labelled anomalies ({data.layout}); "
            "one class as normal does not apply"
        )
    normal_class = _checked_class(data, normal_class, "normal class")
    if len(data.classes) < 2:
        raise ConfigError(f"{data.name} has one class: no other class to be anomalous")
    return _split(data, data.labels == normal_class, seed, test_fraction)


def _checked_class(data: ImageSet, target: int | str, what: str) -> int:
    index = class_index(data, target)
    if not 0 <= index < len(data.classes):
        raise ConfigError(
            f"{what} must be in 0..{len(data.classes) - 1} for {data.name}, got {index}"
        )
    if not bool((data.labels == index).any()):
        raise ConfigError(f"{data.name} has no image of class {index} ({data.classes[index]!r})")
    return index


def _split(data: ImageSet, normal: torch.Tensor, seed: int, test_fraction: float) -> Split:
    """Normal images (``normal``) shuffled with ``seed``, ``test_fraction`` of them tested
    beside every other image (the anomalies)."""
    normal_idx = normal.nonzero().flatten()
    anomal_idx = (~normal).nonzero().flatten()
    order = normal_idx[
        torch.randperm(len(normal_idx), generator=torch.Generator().manual_seed(seed))
    ]
    n_test = int(round(len(order) * test_fraction))
    train = data.subset(order[n_test:])
    test = data.subset(torch.cat([order[:n_test], anomal_idx]))
    return Split(
        train,
        test,
        torch.cat(
            [torch.zeros(n_test, dtype=torch.bool), torch.ones(len(anomal_idx), dtype=torch.bool)]
        ),
    )


def labelled_split(data: ImageSet) -> Split:
    """The data's own split (MVTec AD's ``train/good`` vs ``test/``): train on the normal
    images of the training part, evaluate on the test part with its anomaly labels."""
    if not data.labelled_anomalies:
        raise ConfigError(
            f"{data.name} does not say which images are anomalies; use --anomaly-class "
            "(leave-one-class-out) or a folder in the MVTec AD or normal/ + anomalous/ layout"
        )
    assert data.anomaly is not None and data.is_test is not None
    train_idx = (~data.is_test & ~data.anomaly).nonzero().flatten()
    test_idx = data.is_test.nonzero().flatten()
    if len(train_idx) == 0:
        raise ConfigError(f"{data.name}: no normal training images")
    if len(test_idx) == 0:
        raise ConfigError(f"{data.name}: no test images to evaluate on")
    return Split(data.subset(train_idx), data.subset(test_idx), data.anomaly[test_idx])


def out_of_distribution(train: ImageSet, test_in: ImageSet, test_out: ImageSet) -> Split:
    """Train on ``train`` (all classes normal); test ``test_in`` (normal) vs ``test_out``."""
    if test_in.shape != test_out.shape:
        raise ConfigError(
            f"in- and out-of-distribution images differ in shape: "
            f"{test_in.shape} vs {test_out.shape}"
        )
    test = ImageSet(
        torch.cat([test_in.images, test_out.images]),
        torch.cat([test_in.labels, test_out.labels]),
        test_in.classes,
        f"{test_in.name}+{test_out.name}",
    )
    return Split(
        train,
        test,
        torch.cat(
            [
                torch.zeros(len(test_in), dtype=torch.bool),
                torch.ones(len(test_out), dtype=torch.bool),
            ]
        ),
    )
