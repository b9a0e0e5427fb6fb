"""Aggregation of bench records: mean ± std over seeds per (dataset, protocol, target,
combination). Shared by the report tables, the plots and the CLI's summary."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "METRICS",
    "PROTOCOL_TITLES",
    "Aggregate",
    "aggregate",
    "combination_label",
    "target_order",
]

METRICS = ("auc", "ap", "f1", "aupr_in", "aupr_out", "fpr95")
# protocol → (its title in reports, what one target is)
PROTOCOL_TITLES = {
    "loo": ("leave-one-class-out", "held-out class"),
    "ood": ("out-of-distribution", "OOD set"),
    "given": ("the data's own test split", "category"),
}


@dataclass
class Aggregate:
    """Mean ± std over seeds of one (dataset, protocol, target, combination)."""

    dataset: str
    protocol: str
    target: str
    target_name: str
    combination: str
    config: dict[str, Any]
    plugins: dict[str, str]
    values: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    seeds: list[int] = field(default_factory=list)

    def mean(self, metric: str = "auc") -> float:
        v = self.values.get(metric, [])
        return float(np.mean(v)) if v else math.nan

    def std(self, metric: str = "auc") -> float:
        """Sample std over seeds; NaN (no estimate, left empty in the CSV) for one seed."""
        v = self.values.get(metric, [])
        return float(np.std(v, ddof=1)) if len(v) > 1 else math.nan

    def cell(self, metric: str = "auc") -> str:
        if not self.values.get(metric):
            return "-"
        n = len(self.values[metric])
        return (
            f"{self.mean(metric):.3f} ± {self.std(metric):.3f}"
            if n > 1
            else f"{self.mean(metric):.3f}"
        )


def combination_label(rec: dict[str, Any]) -> str:
    """The combination, with the plugin of any component that is not built in."""
    label = rec["combination"]
    extra = sorted({p for p in rec.get("plugins", {}).values() if p not in ("builtin", "?")})
    return f"{label} ({', '.join(extra)})" if extra else label


def aggregate(records: list[dict[str, Any]]) -> list[Aggregate]:
    groups: dict[tuple[str, ...], Aggregate] = {}
    for rec in records:
        if rec.get("status") != "ok":
            continue
        cfg = rec["config"]
        key = (cfg["dataset"], cfg["protocol"], str(cfg["target"]), combination_label(rec))
        agg = groups.get(key)
        if agg is None:
            agg = groups[key] = Aggregate(
                cfg["dataset"],
                cfg["protocol"],
                str(cfg["target"]),
                str(rec.get("target_name", cfg["target"])),
                key[3],
                cfg,
                rec.get("plugins", {}),
            )
        agg.seeds.append(cfg["seed"])
        for m in METRICS:
            if m in rec.get("metrics", {}):
                agg.values[m].append(float(rec["metrics"][m]))
    return list(groups.values())


def target_order(aggs: list[Aggregate]) -> list[tuple[str, str]]:
    """Targets in a stable order: numeric class indices first, in order, then names."""
    seen = {(a.target, a.target_name) for a in aggs}
    return sorted(
        seen, key=lambda t: (not t[0].isdigit(), int(t[0]) if t[0].isdigit() else 0, t[0])
    )
