"""Where a map's pooled pixel AUROC and PRO are lost: by defect type, and inside each image.

Trains a preset (``defects`` by default) on a dataset with masks, maps every test image and
prints, from those maps:

- the pooled figures (image AUROC from the preset's own image scores, pixel AUROC, PRO),
  then the same with each defect type's images left out, one type at a time: a type whose
  absence lifts pixel AUROC and PRO most is the one that holds them down;
- per type, each defective image's **own** pixel AUROC (its defect pixels against its other
  pixels): the median, and the share of images whose map ranks the region outside the mask
  higher (below 0.5) — where a map cannot tell the defect from the rest of its image;
- per type, where each image's defect-free pixels lie: the median, over the type's images,
  of their median pixel's rank among the defect-free test images' pixels (50 % for an image
  like them). Pooled pixel AUROC ranks the pixels of every image against each other, so a
  raised image's clean pixels outrank the defects of another;
- an upper bound: the pooled figures when each image of the weakest type has its own map's
  highest value on its defect pixels and its lowest elsewhere (the map's levels kept, only
  its placement inside the image fixed).

    python benchmarks/defects_breakdown.py ../shared/data/mtd-dev                 # mtd, seed 0
    python benchmarks/defects_breakdown.py DIR --dataset mvtec:category=tiles

Measurements, not assertions; the figures and what they mean are in EXPERIMENTS.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

import flowkit
from flowkit.config import PRESET_IMAGE_SIZE
from flowkit.metrics import image_pixel_aucs, localization_metrics, pixel_auc, pro_score


def breakdown(
    masks: np.ndarray, maps: np.ndarray, scores: np.ndarray, types: np.ndarray
) -> list[str]:
    """The report's lines (markdown) for test ``masks`` / ``maps`` ``(N, H, W)``, each
    image's score and its defect type (``good`` for the defect-free ones)."""
    lines = []
    overall = localization_metrics(masks, maps, scores, types.tolist())
    lines += [
        "| test set | images | image AUROC | pixel AUROC | PRO |",
        "|---|---|---|---|---|",
        f"| all | {len(types)} | {overall['auc']:.3f} | {overall['pixel_auc']:.3f} "
        f"| {overall['pro']:.3f} |",
    ]
    kinds = sorted(set(types.tolist()) - {"good"})
    for kind in kinds:  # the pooled figures only: no per-type curves of the rest
        keep = types != kind
        image = roc_auc_score(types[keep] != "good", scores[keep])
        pixel, pro = pixel_auc(masks[keep], maps[keep]), pro_score(masks[keep], maps[keep])
        lines.append(
            f"| without {kind} | {int(keep.sum())} | {image:.3f} | {pixel:.3f} | {pro:.3f} |"
        )
    clean = np.array([np.median(maps[i][~masks[i]]) for i in range(len(types))])
    lines += [
        "",
        "| type | images | own pixel AUROC, median | own < 0.5 | clean pixels' rank |",
        "|---|---|---|---|---|",
    ]
    good = np.sort(maps[types == "good"].ravel())
    rank = np.searchsorted(good, clean) / len(good)  # each image's clean median, ranked
    lines.append(
        f"| good | {int((types == 'good').sum())} | | | {np.median(rank[types == 'good']):.0%} |"
    )
    own = image_pixel_aucs(masks, maps)  # NaN for an image without both kinds of pixel
    own_median = {k: v["own_pixel_auc"] for k, v in overall["per_type"].items()}
    for kind in kinds:
        mine = own[types == kind]
        median = "-" if own_median[kind] is None else f"{own_median[kind]:.3f}"
        lines.append(
            f"| {kind} | {int((types == kind).sum())} | {median} "
            f"| {(mine[~np.isnan(mine)] < 0.5).mean():.0%} | {np.median(rank[types == kind]):.0%} |"
        )
    known = {k: v for k, v in own_median.items() if v is not None}
    if not known:
        return lines
    weakest = min(known, key=known.__getitem__)
    placed = maps.copy()
    for i in np.flatnonzero(types == weakest):
        placed[i] = np.where(masks[i], maps[i].max(), maps[i].min())
    lines += [
        "",
        f"Upper bound, {weakest}'s maps placed on their masks (levels kept): pixel AUROC "
        f"{pixel_auc(masks, placed):.3f}, PRO {pro_score(masks, placed):.3f}.",
    ]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("data_root", type=Path, help="the dataset's folder")
    ap.add_argument("--dataset", default="mtd", help="a dataset with masks (default: mtd)")
    ap.add_argument("--preset", default="defects")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    size = PRESET_IMAGE_SIZE[args.preset]
    data = flowkit.load_dataset(args.dataset, root=args.data_root, image_size=size)
    if data.masks is None or data.defect_types is None:
        raise SystemExit(f"{args.dataset}: this dataset has no masks to break down")
    test = data.is_test.numpy()
    det = flowkit.Detector.preset(args.preset, seed=args.seed)
    start = time.perf_counter()
    det.fit(data.images[~data.is_test])
    fit_s = time.perf_counter() - start
    images = data.images[data.is_test]
    scored = [det.score(images[i : i + 32], maps=True) for i in range(0, len(images), 32)]
    maps = np.concatenate([s["anomaly_map"] for s in scored])
    scores = np.concatenate([s["anomaly_score"] for s in scored])
    masks = data.masks[data.is_test][:, 0].numpy().astype(bool)
    types = np.array([t for t, k in zip(data.defect_types, test, strict=True) if k])
    print(
        f"{args.preset} preset on {data.name}, {size} px, seed {args.seed}: "
        f"{int((~test).sum())} training images ({fit_s:.0f} s), {len(types)} test images; "
        f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}\n"
    )
    print("\n".join(breakdown(masks, maps, scores, types)))


if __name__ == "__main__":
    main()
