"""benchmarks/defects_breakdown.py: where pooled pixel figures are lost, on hand-made maps."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "defects_breakdown.py"
spec = importlib.util.spec_from_file_location("defects_breakdown", SCRIPT)
breakdown_mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(breakdown_mod)


def _row(lines, first):
    line = next(line for line in lines if line.startswith(f"| {first} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_a_type_mapped_outside_its_masks_is_found_and_bounded():
    rng = np.random.default_rng(0)
    n, size = 8, 16
    types = np.array(["good"] * 4 + ["spot"] * 2 + ["band"] * 2)
    masks = np.zeros((n, size, size), bool)
    maps = rng.uniform(0.0, 0.1, (n, size, size))
    for i in (4, 5):  # spots: the map is high exactly on them
        masks[i, 4:7, 4:7] = True
        maps[i, 4:7, 4:7] = 1.0
    for i in (6, 7):  # bands: the image is raised, the map is high outside the band
        masks[i, :8] = True
        maps[i] += 0.5
        maps[i, 8:] += 0.3
    scores = maps.reshape(n, -1).max(axis=1)
    lines = breakdown_mod.breakdown(masks, maps, scores, types)
    spot, band = _row(lines, "spot"), _row(lines, "band")
    assert spot[2:4] == ["1.000", "0%"] and band[2:4] == ["0.000", "100%"]
    assert 40 <= int(_row(lines, "good")[4].rstrip("%")) <= 60  # like the defect-free images
    assert band[4] == "100%"  # the band images are raised above every defect-free pixel
    without_band = _row(lines, "without band")
    assert without_band[3:5] == ["1.000", "1.000"]
    assert float(_row(lines, "all")[3]) < 0.9  # the bands pull the pooled figure down
    bound = lines[-1]
    assert bound.startswith("Upper bound, band's maps") and "pixel AUROC 1.000, PRO 1.000" in bound
