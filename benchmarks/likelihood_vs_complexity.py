"""Why a likelihood model fails on a held-out digit: log-likelihood against image complexity.

Reads a `flowkit bench` run (its ``results.jsonl`` and saved test scores) and, for one held-out
class, relates each test image's log-likelihood under the model to its complexity (bits per
pixel of the image as a lossless PNG, flowkit's ``image_complexity``; Serrà et al., ICLR 2020)
and to its ink (share of non-zero pixels). Prints the figures and writes a two-panel PNG
beside the run's report, titled with the data it shows.

    python benchmarks/likelihood_vs_complexity.py benchmarks/results/mnist-dev-paper \\
        --dataset mnist --data-root ../shared/data/mnist-dev --target 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

import flowkit
from flowkit.data import leave_one_class_out
from flowkit.scorers import image_complexity


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run", type=Path, help="a flowkit bench output directory")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--target", type=int, default=1, help="the held-out class to explain")
    ap.add_argument("--scorer", default="nll")
    args = ap.parse_args()
    recs = [json.loads(line) for line in (args.run / "results.jsonl").read_text().splitlines()]
    rec = next(
        r
        for r in recs
        if r.get("status") == "ok"
        and r["config"]["target"] == args.target
        and r["config"]["scorer"] == args.scorer
    )
    cfg = rec["config"]
    with np.load(args.run / "scores" / f"{rec['cell_id']}.npz") as npz:
        log_prob, y = npz["log_prob"], npz["is_anomaly"].astype(bool)
    data = flowkit.load_dataset(
        args.dataset, root=args.data_root, image_size=cfg["image_size"], download=False
    )
    split = leave_one_class_out(data, args.target, seed=cfg["seed"])
    if not np.array_equal(split.is_anomaly.numpy().astype(bool), y):
        raise SystemExit("the saved scores are not in this split's order: wrong data or seed")
    images = split.test.images
    bpp = image_complexity(images).numpy()
    ink = (images > 0).float().mean(dim=(1, 2, 3)).numpy()
    what = f"{args.dataset} ({args.data_root or 'embedded'}), class {args.target} held out"
    print(f"Data: {what}; model: {rec['combination']}, seed {cfg['seed']}")
    print(f"AUC of the model's score: {rec['metrics']['auc']:.3f}")
    for name, v in (("log-likelihood", log_prob), ("PNG bits/pixel", bpp), ("ink share", ink)):
        print(f"  mean {name:15s} normal {v[~y].mean():9.3f}   held out {v[y].mean():9.3f}")
    rho = spearmanr(log_prob, bpp).statistic
    print(f"Spearman rho(log-likelihood, PNG bits/pixel) over the test images: {rho:+.3f}")
    print(
        "AUC of complexity alone (higher bits/pixel = more anomalous): "
        f"{roc_auc_score(y, bpp):.3f}; of likelihood alone (lower = more anomalous): "
        f"{roc_auc_score(y, -log_prob):.3f}"
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.scatter(bpp[~y], log_prob[~y], s=4, alpha=0.4, label="normal (other digits)")
    a.scatter(bpp[y], log_prob[y], s=4, alpha=0.4, label=f"held out ({args.target})")
    a.set_xlabel("PNG bits per pixel (complexity)")
    a.set_ylabel("log-likelihood")
    a.legend(fontsize=7)
    lo, hi = np.percentile(log_prob, [1, 99.5])
    bins = np.linspace(lo, hi, 40)
    b.hist(np.clip(log_prob[~y], lo, hi), bins, alpha=0.6, density=True, label="normal")
    b.hist(np.clip(log_prob[y], lo, hi), bins, alpha=0.6, density=True, label="held out")
    b.set_xlabel("log-likelihood")
    b.legend(fontsize=7)
    fig.suptitle(f"Data: {what}. {rec['combination']}, ρ = {rho:+.2f}", fontsize=9)
    out = args.run / f"likelihood-vs-complexity-{args.target}.png"
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
