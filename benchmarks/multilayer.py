"""kNN and flows on several layers of a trained encoder (issue 27, item 3), offline.

Reads the encoders a ``flowkit bench`` run cached (it trains nothing of the encoder: run the
suite first, with the same ``--suite / --dataset / --data-root / --classes / --seeds``), and
scores each held-out class with features taken from several layers of the DCGAN trunk:

- ``trunk``: the trunk's raw output (the suite's ``knn:part=0`` scorer sees the same part
  after the ``pca:32`` whitening, so its AUCs differ from this row's: both are given);
- ``block-1`` / ``block-2``: the last and the second-to-last down-sampling blocks'
  activations, averaged over space;
- ``trunk+block-1`` / ``trunk+block-1+block-2``: the L2-normalised features of those layers
  side by side (each layer weighs the same in the cosine distance);

by flowkit's own scorers on each feature set: ``knn:k=2,metric=cosine`` (the distance to the
k-th nearest normal training latent) and ``nll+knn`` with the run's flows (each score
standardised on the normal validation images, summed), fitted as the bench fits them;
and, with ``--flows``, by a Real-NVP density whose first part is ``trunk+block-1`` instead of
the trunk alone (the suite's preprocessing, flow, epochs and augmented copies; the head part
as in the run). Prints a markdown table of ROC
AUCs per class; asserts nothing. Results: benchmarks/EXPERIMENTS.md.

    flowkit bench --suite recommended --dataset folder --data-root DIR --classes 0,2,3,8 \\
        --seeds 0 --out runs/photos4
    python benchmarks/multilayer.py --run runs/photos4 --dataset folder --data-root DIR \\
        --classes 0,2,3,8 --flows
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

import flowkit
from flowkit.bench.runner import StoreSink, load_bench_data, unit_pipeline, units_of
from flowkit.bench.store import RunStore
from flowkit.bench.suite import load_suite
from flowkit.encoders.base import views
from flowkit.scorers import ScoreContext
from flowkit.stages import DensityStage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf import cpu_features, cpu_name  # noqa: E402

SETS = ["trunk", "block-1", "block-2", "trunk+block-1", "trunk+block-1+block-2"]


@contextmanager
def block_outputs(trunk: nn.Sequential, store: dict[str, list[torch.Tensor]]):
    """Collect the space-averaged outputs of the trunk's down-sampling blocks (its
    LeakyReLUs after a BatchNorm), last block first, while the context is open."""
    acts = [m for i, m in enumerate(trunk) if isinstance(m, nn.LeakyReLU) and i > 1]
    hooks = []
    for depth, module in enumerate(reversed(acts), start=1):
        name = f"block-{depth}"
        store[name] = []
        hooks.append(
            module.register_forward_hook(
                lambda _m, _i, out, name=name: store[name].append(out.mean((2, 3)).cpu())
            )
        )
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def layer_features(stage, images: torch.Tensor, transform=None) -> dict[str, torch.Tensor]:
    """Every feature set of ``SETS`` (and ``head``) for ``images``."""
    encoder = stage.encoder_
    blocks: dict[str, list[torch.Tensor]] = {}
    with block_outputs(encoder.trunk, blocks):
        z = stage.embed(images, device="cpu", transform=transform)
    trunk_dim = stage.part_sizes[0]
    out = {"trunk": z[:, :trunk_dim], "head": z[:, trunk_dim:]}
    out.update({k: torch.cat(v) for k, v in blocks.items()})

    def unit(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x, dim=1)

    out["trunk+block-1"] = torch.cat([unit(out["trunk"]), unit(out["block-1"])], 1)
    out["trunk+block-1+block-2"] = torch.cat(
        [unit(out["trunk"]), unit(out["block-1"]), unit(out["block-2"])], 1
    )
    return out


def auc(spec: str, y: np.ndarray, contexts: dict[str, ScoreContext]) -> float:
    """ROC AUC on the test images of flowkit's scorer ``spec``, fitted as the suite fits it
    (reference latents from the training images, standardisation on the validation ones)."""
    scorer = flowkit.create_scorer(spec).fit(contexts["train"], contexts["val"])
    return float(roc_auc_score(y, scorer.score(contexts["test"]).numpy()))


def contexts(
    log_prob: dict[str, torch.Tensor], feats: dict[str, dict[str, torch.Tensor]], fs: str
) -> dict[str, ScoreContext]:
    """What a scorer sees of each split: the flow's log-likelihoods, feature set ``fs``."""
    return {s: ScoreContext(log_prob=log_prob[s], latents=feats[s][fs]) for s in log_prob}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="the bench run directory")
    parser.add_argument("--suite", default="recommended")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--classes", default=None, help="e.g. 0,2,3,8")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--flows", action="store_true", help="also fit the multi-layer flows")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    suite = load_suite(args.suite).with_overrides(
        dataset=args.dataset,
        classes=[int(c) for c in args.classes.split(",")] if args.classes else None,
        seeds=[int(s) for s in args.seeds.split(",")],
    )
    data = load_bench_data(suite, args.data_root, download=False)
    store = RunStore(args.run)
    sink = StoreSink(store, None)
    knn = f"knn:k={args.k},metric=cosine"  # on a context's whole latent: one feature set
    rows = []
    for unit in units_of(suite.cells(data.targets(suite))):
        cell = unit[0]
        if not store.encoder_path(cell.encoder_key).exists():
            raise SystemExit(
                f"{args.run} has no cached encoder for class {cell.target}: run the suite first"
            )
        split = data.split(cell)
        path = unit_pipeline(cell, split, sink, "cpu")
        enc = path.encoded()
        test_images = split.test.images
        z_test = enc.stage.embed(test_images, device="cpu")
        name = data.data.classes[int(cell.target)] if data.data.classes else cell.target
        y = split.test.labels.numpy() == int(cell.target)
        feats = {
            s: layer_features(enc.stage, im)
            for s, im in [
                ("train", path.train_images),
                ("val", path.val_images),
                ("test", test_images),
            ]
        }
        density = path.density(cell.detector_config("cpu"), cell.flow_key)
        cpu = torch.device("cpu")
        log_prob = {
            s: density.density_.evaluate(z, cpu)[1]
            for s, z in [("train", enc.z_train), ("val", enc.z_val), ("test", z_test)]
        }
        row = {"class": name, "nll": auc("nll", y, contexts(log_prob, feats, "trunk"))}
        for fs in SETS:
            row[f"knn {fs}"] = auc(knn, y, contexts(log_prob, feats, fs))
            row[f"nll+knn {fs}"] = auc(f"nll+{knn}", y, contexts(log_prob, feats, fs))
        if args.flows:
            start = time.perf_counter()
            config = cell.detector_config("cpu")
            # the augmented copies as EncoderStage.embed_augmented makes them (same seed)
            transform = views(enc.stage.encoder_)
            torch.manual_seed(config.seed + 2)
            copies = [
                layer_features(enc.stage, path.train_images, transform)
                for _ in range(config.flow_augment)
            ]

            def joint(f: dict[str, torch.Tensor]) -> torch.Tensor:
                return torch.cat([f["trunk+block-1"], f["head"]], 1)

            z_train = torch.cat([joint(feats["train"])] + [joint(c) for c in copies])
            parts = (feats["train"]["trunk+block-1"].shape[1], feats["train"]["head"].shape[1])
            ml = DensityStage(config).fit(
                z_train, joint(feats["val"]), device="cpu", part_sizes=parts
            )
            ml_log_prob = {s: ml.density_.evaluate(joint(feats[s]), cpu)[1] for s in feats}
            row["nll (trunk+block-1 flow)"] = auc("nll", y, contexts(ml_log_prob, feats, "trunk"))
            row["nll+knn (trunk+block-1 flow)"] = auc(
                f"nll+{knn}", y, contexts(ml_log_prob, feats, "trunk")
            )
            row["flow s"] = time.perf_counter() - start
        rows.append(row)
        print(
            " ".join(
                f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
            ),
            flush=True,
        )
    print(
        f"\n{cpu_name()} ({cpu_features()}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s); run {args.run}\n"
    )
    keys = [k for k in rows[0] if k != "class"]
    print("| scorer | " + " | ".join(str(r["class"]) for r in rows) + " | mean |")
    print("|---" * (len(rows) + 2) + "|")
    for k in keys:
        vals = [r[k] for r in rows]
        print(f"| {k} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {np.mean(vals):.3f} |")


if __name__ == "__main__":
    main()
