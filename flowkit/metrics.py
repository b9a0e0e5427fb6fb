"""Evaluation metrics (scikit-learn); anomalies are the positive class, scores higher = more
anomalous."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score, roc_curve

from flowkit.errors import DataError

__all__ = [
    "detection_metrics",
    "ood_metrics",
    "pixel_auc",
    "image_pixel_aucs",
    "pro_curve",
    "pro_score",
    "localization_metrics",
    "PRO_MAX_FPR",
]

#: PRO is integrated up to this false-positive rate (MVTec AD's convention) and normalised.
PRO_MAX_FPR = 0.3


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


def _pixels(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks (bool) and maps (float64) of one shape ``(N, H, W)``, checked."""
    m = np.asarray(masks)
    a = np.asarray(maps, dtype=np.float64)
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if m.shape != a.shape or m.ndim != 3:
        raise DataError(f"masks {m.shape} and anomaly maps {a.shape} must have one shape (N, H, W)")
    if not np.isfinite(a).all():
        raise DataError("anomaly maps contain NaN or infinite values")
    return m.astype(bool), a


def pixel_auc(masks: np.ndarray, maps: np.ndarray) -> float:
    """ROC AUC over every test pixel pooled (defect pixels positive), as MVTec AD reports it."""
    m, a = _pixels(masks, maps)
    if m.all() or not m.any():
        raise DataError("pixel AUROC needs both defect and defect-free pixels")
    return float(roc_auc_score(m.ravel(), a.ravel()))


def image_pixel_aucs(masks: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Each image's own pixel ROC AUC: its defect pixels against its other pixels, NaN for
    an image without both. Where inside an image the map is high, whatever its level against
    other images (which the pooled :func:`pixel_auc` mixes in)."""
    m, a = _pixels(masks, maps)
    out = np.full(len(m), np.nan)
    for i, (mask, amap) in enumerate(zip(m, a, strict=True)):
        if mask.any() and not mask.all():
            out[i] = roc_auc_score(mask.ravel(), amap.ravel())
    return out


def pro_curve(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The per-region-overlap curve: for every threshold on the maps (highest first), the
    false-positive rate over defect-free pixels and the mean, over every connected defect
    region of every image (8-connectivity), of the share of the region above the threshold.
    Returns ``(fpr, pro)``, both from 0, one point per distinct map value."""
    from scipy import ndimage

    m, a = _pixels(masks, maps)
    weight = np.zeros(m.shape, dtype=np.float64)  # each region's pixels share 1 / regions
    regions = 0
    labelled = []
    for i in range(len(m)):
        lab, n = ndimage.label(m[i], structure=np.ones((3, 3), dtype=int))
        labelled.append((lab, n))
        regions += n
    if regions == 0:
        raise DataError("PRO needs at least one defect region in the masks")
    normal = int((~m).sum())
    if normal == 0:
        raise DataError("PRO needs defect-free pixels (its false-positive rate is over them)")
    for i, (lab, n) in enumerate(labelled):
        if n:
            sizes = np.bincount(lab.ravel())
            w = np.where(lab > 0, 1.0 / sizes[lab], 0.0)
            weight[i] = w / regions
    order = np.argsort(-a.ravel(), kind="stable")
    values = a.ravel()[order]
    pro = np.cumsum(weight.ravel()[order])
    fpr = np.cumsum((~m).ravel()[order]) / normal
    last = np.r_[values[1:] != values[:-1], True]  # a threshold takes all its ties at once
    return np.r_[0.0, fpr[last]], np.r_[0.0, pro[last]]


def pro_score(masks: np.ndarray, maps: np.ndarray, max_fpr: float = PRO_MAX_FPR) -> float:
    """PRO: the area under the per-region-overlap curve up to ``max_fpr`` (0.3), divided by
    ``max_fpr`` so that a perfect map scores 1 (Bergmann et al., MVTec AD, 2021)."""
    fpr, pro = pro_curve(masks, maps)
    if not 0 < max_fpr <= 1:
        raise DataError(f"max_fpr must be in (0, 1], got {max_fpr}")
    keep = fpr <= max_fpr
    x, y = fpr[keep], pro[keep]
    if x[-1] < max_fpr:  # the curve at exactly max_fpr, by linear interpolation
        j = int(np.searchsorted(fpr, max_fpr))
        if j < len(fpr):
            t = (max_fpr - fpr[j - 1]) / (fpr[j] - fpr[j - 1])
            x = np.r_[x, max_fpr]
            y = np.r_[y, pro[j - 1] + t * (pro[j] - pro[j - 1])]
    area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))  # the trapezoid rule
    return area / max_fpr


def localization_metrics(
    masks: np.ndarray,
    maps: np.ndarray,
    image_scores: np.ndarray,
    defect_types: list[str],
    normal: str = "good",
) -> dict[str, object]:
    """Image ROC AUC, pixel ROC AUC and PRO over the whole test set, and per defect type
    (each type's images against every normal test image), with the median over the type's
    images of each one's own pixel ROC AUC (:func:`image_pixel_aucs`; None if no image of
    the type has both defect and defect-free pixels)."""
    m, a = _pixels(masks, maps)
    own = image_pixel_aucs(m, a)
    types = np.asarray(defect_types)
    is_normal = types == normal
    s = np.asarray(image_scores, dtype=np.float64)
    out: dict[str, object] = {
        "auc": float(roc_auc_score(~is_normal, s)),
        "pixel_auc": pixel_auc(m, a),
        "pro": pro_score(m, a),
    }
    per_type = {}
    for kind in sorted(set(types[~is_normal].tolist())):
        pick = is_normal | (types == kind)
        per_type[kind] = {
            "auc": float(roc_auc_score(types[pick] == kind, s[pick])),
            "pixel_auc": pixel_auc(m[pick], a[pick]),
            "pro": pro_score(m[pick], a[pick]),
            "own_pixel_auc": _median_or_none(own[types == kind]),
            "images": int((types == kind).sum()),
        }
    out["per_type"] = per_type
    return out


def _median_or_none(values: np.ndarray) -> float | None:
    kept = values[~np.isnan(values)]
    return float(np.median(kept)) if len(kept) else None
