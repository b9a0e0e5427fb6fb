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
    "published_table",
    "target_order",
]

METRICS = ("auc", "ap", "f1", "aupr_in", "aupr_out", "fpr95", "pixel_auc", "pro")
# protocol → (its title in reports, what one target is)
PROTOCOL_TITLES = {
    "loo": ("leave-one-class-out", "held-out class"),
    "one-class": ("one-class (one class normal, the others anomalous)", "normal class"),
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


def published_table(
    dataset: str, reference: dict[str, Any], targets: list[tuple[str, str]]
) -> tuple[dict[str, Any] | None, list[int | None]]:
    """The published table for this dataset's held-out classes and, per target, the index of
    its class in that table (``None`` where it has none). A dataset the figures are not keyed
    to (``folder``) gets a table when every held-out class's name is one of its classes
    (``airplane`` … ``truck`` for CIFAR-10), matched by name; otherwise by class index."""
    table = reference.get(dataset)
    by_name = False
    if not table:
        for other in reference.values():
            if not isinstance(other, dict) or "classes" not in other:
                continue
            known = set(other["classes"]) | set(other.get("aliases", []))
            if targets and all(name in known for _, name in targets):
                table, by_name = other, True
                break
    if not table:
        return None, []
    classes, aliases = table.get("classes", []), table.get("aliases", [])
    index: list[int | None] = []
    for t, name in targets:
        if by_name:
            index.append(classes.index(name) if name in classes else aliases.index(name))
        else:
            index.append(int(t) if t.isdigit() and int(t) < len(classes) else None)
    return table, index
