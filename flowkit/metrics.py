"""Evaluation metrics (scikit-learn); anomalies are the positive class, scores higher = more
anomalous."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score, roc_curve

from flowkit.errors import DataError

__all__ = ["detection_metrics", "ood_metrics"]


def detection_metrics(
    is_anomaly: np.ndarray, scores: np.ndarray, threshold: float
) -> dict[str, float]:
    """ROC AUC, average precision, and F1 of the rule ``score > threshold``."""
    y = np.asarray(is_anomaly, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.all() or not y.any():
        raise DataError(
            f"metrics need both normal and anomalous test images; got {int(y.sum())} "
            f"anomalous of {len(y)}"
        )
    if not np.isfinite(s).all():
        s = np.nan_to_num(s, nan=np.inf, posinf=np.finfo(np.float64).max)
    return {
        "auc": float(roc_auc_score(y, s)),
        "ap": float(average_precision_score(y, s)),
        "f1": float(f1_score(y, s > threshold, zero_division=0.0)),
    }


def ood_metrics(is_anomaly: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """AUPR with in-distribution as positive (aupr_in) and OOD as positive (aupr_out), and
    the false-positive rate on OOD data when 95% of in-distribution data is accepted."""
    y = np.asarray(is_anomaly, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    # in-distribution is "positive" at low scores: flip both
    fpr, tpr, _ = roc_curve(~y, -s)
    return {
        "aupr_in": float(average_precision_score(~y, -s)),
        "aupr_out": float(average_precision_score(y, s)),
        "fpr95": float(fpr[np.searchsorted(tpr, 0.95, side="left")]),
    }
