"""flowkit beside anomalib's GANomaly on the same MNIST-format data, classes and splits.

For each held-out digit (GANomaly protocol: that digit is the anomaly, the other nine are
normal), one run trains and scores, on the same leave-one-out split (``seed 0``):

- anomalib's ``Ganomaly`` (its defaults: 64 features, latent 100, Adam 2e-4; ``--epochs``
  epochs at 32×32), trained by anomalib's ``Engine`` from PNG files in its ``Folder`` layout;
- flowkit's paper pair (``dcgan_ae:latent_dim=100`` + ``realnvp``, the ``paper-mnist`` suite's
  settings) and its recommended pipeline (read from the ``recommended`` suite, whatever it
  holds: ``simclr``, ``pca:32``, ``realnvp`` and the fusion of its NLL with a cosine kNN);

``--flowkit-epochs N`` trains flowkit's encoders for N epochs instead of their suites' own
(``--flowkit-epochs 6`` with the default ``--epochs 6``: every network gets the same number of
passes over the data); ``--flowkit-precision auto`` trains them with bf16 autocast where the
CPU has fast bf16 (the paper pair's suite trains in fp32). It prints, per digit and method,
the training time (for flowkit, also its encoder and flow stages; the rest is embedding and
the threshold), scoring throughput (images/s, the test PNG files read, decoded and scored)
and ROC AUC (scikit-learn, on raw scores). anomalib is an optional dependency: without it
the script says how to install it and exits.

    python benchmarks/compare_anomalib.py --data-root ../shared/data/mnist-dev --classes 1,7
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

import flowkit
from flowkit.bench.suite import load_suite
from flowkit.data import leave_one_class_out, load_images


def _write_pngs(images: torch.Tensor, folder: Path) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        path = folder / f"{i:05d}.png"
        Image.fromarray(img[0].numpy()).save(path)
        paths.append(path)
    return paths


def _ganomaly(split, root: Path, epochs: int, test_files: list[Path]) -> dict[str, Any]:
    from anomalib.data import Folder
    from anomalib.engine import Engine
    from anomalib.models import Ganomaly

    _write_pngs(split.train.images, root / "train" / "good")
    datamodule = Folder(
        name="mnist",
        root=root,
        normal_dir="train/good",
        normal_test_dir="test/good",
        abnormal_dir="test/bad",
        train_batch_size=32,
        eval_batch_size=256,
        num_workers=0,
        val_split_mode="from_train",  # like flowkit: 10% of the normal training images
        val_split_ratio=0.1,
        seed=0,
    )
    model = Ganomaly(pre_processor=Ganomaly.configure_pre_processor(image_size=(32, 32)))
    engine = Engine(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        default_root_dir=root / "anomalib",
    )
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    fit_s = time.perf_counter() - start

    # Raw GANomaly scores (mean squared latent distance), from the same PNG files: anomalib's
    # own predictions min-max normalise batch by batch with running extremes.
    model.eval()

    def score() -> np.ndarray:
        images, _ = load_images(test_files, 32, channels=3)
        x = model.pre_processor.transform(images.float() / 255.0)
        with torch.inference_mode():
            return torch.cat([model.model(b).pred_score for b in x.split(256)]).numpy()

    return _result(fit_s, score, len(test_files))


def _result(fit_s: float, score: Callable[[], np.ndarray], n: int) -> dict[str, Any]:
    """Training seconds, and the scores of ``n`` test files with their throughput."""
    start = time.perf_counter()
    scores = score()
    return {"fit_s": fit_s, "images_per_s": n / (time.perf_counter() - start), "scores": scores}


def _flowkit(
    split,
    digit: int,
    suite_name: str,
    epochs: int | None,
    precision: str | None,
    test_files: list[Path],
) -> dict[str, Any]:
    suite = load_suite(suite_name)
    # the suite's first encoder x flow with its last scorer (recommended: the fusion), seed 0
    cell = next(
        c
        for c in suite.cells(targets=[digit])
        if c.seed == suite.seeds[0] and c.scorer == suite.scorers[-1]
    )
    params = cell.detector_params(device="cpu")
    if epochs is not None:
        params["epochs_encoder"] = epochs
    if precision is not None:
        params["precision"] = precision
    det = flowkit.Detector(**params)
    start = time.perf_counter()
    det.fit(split.train)
    fit_s = time.perf_counter() - start

    def score() -> np.ndarray:
        images, _ = load_images(test_files, 32, channels=1)
        return det.anomaly_score(images)

    stages = {s: det.history_[s]["seconds"] for s in ("encoder", "flow")}
    return {**_result(fit_s, score, len(test_files)), "stages": stages}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-root", required=True, help="MNIST in torchvision's raw layout")
    ap.add_argument("--classes", default="1,7", help="held-out digits, comma-separated")
    ap.add_argument("--epochs", type=int, default=6, help="GANomaly epochs")
    ap.add_argument(
        "--flowkit-epochs",
        type=int,
        default=None,
        help="flowkit encoder epochs (default: each suite's own)",
    )
    ap.add_argument(
        "--flowkit-precision",
        choices=("fp32", "bf16", "auto"),
        default=None,
        help="flowkit's training precision (default: each suite's own; the paper pair's is "
        "fp32, the recommended pipeline's auto = bf16 autocast where the CPU has fast bf16)",
    )
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--methods",
        default="ganomaly,paper,recommended",
        help="which of ganomaly, paper, recommended to run (comma-separated)",
    )
    args = ap.parse_args()
    try:
        import anomalib  # noqa: F401
    except ImportError:
        print("anomalib is not installed: pip install anomalib  (then run this again)")
        return
    warnings.simplefilter("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    data = flowkit.load_dataset("mnist", root=args.data_root, download=False)
    print(
        f"Data: real MNIST ({args.data_root}, {len(data)} digits), leave-one-digit-out, seed 0; "
        f"{torch.get_num_threads()} torch threads, CPU."
    )
    rows = []
    for digit in (int(c) for c in args.classes.split(",")):
        split = leave_one_class_out(data, digit, seed=0)
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            y = split.is_anomaly.numpy().astype(bool)
            good = _write_pngs(split.test.images[~y], root / "test" / "good")
            bad = _write_pngs(split.test.images[y], root / "test" / "bad")
            files, labels = good + bad, np.r_[np.zeros(len(good)), np.ones(len(bad))]
            own = "" if args.flowkit_epochs is None else f", {args.flowkit_epochs} epochs"
            if args.flowkit_precision is not None:
                own += f", precision {args.flowkit_precision}"
            runs = {
                "ganomaly": (
                    f"anomalib GANomaly ({args.epochs} epochs)",
                    _ganomaly,
                    (root, args.epochs),
                ),
                "paper": (
                    f"flowkit paper pair (paper-mnist{own})",
                    _flowkit,
                    (digit, "paper-mnist", args.flowkit_epochs, args.flowkit_precision),
                ),
                "recommended": (
                    f"flowkit recommended{own}",
                    _flowkit,
                    (digit, "recommended", args.flowkit_epochs, args.flowkit_precision),
                ),
            }
            for name, fn, extra in (runs[m.strip()] for m in args.methods.split(",")):
                r = fn(split, *extra, files)
                auc = roc_auc_score(labels, r["scores"])
                st = r.get("stages")
                split_s = f"{st['encoder']:.0f} / {st['flow']:.0f}" if st else "—"
                rows.append((digit, name, r["fit_s"], split_s, r["images_per_s"], auc))
                print(
                    f"digit {digit}  {name:38s} train {r['fit_s']:7.1f} s "
                    f"(encoder / flow {split_s} s)  "
                    f"score {r['images_per_s']:7,.0f} images/s  AUC {auc:.3f}",
                    flush=True,
                )
    print(
        "\n| held-out digit | method | train s/class | of which encoder / flow s "
        "| scoring images/s | ROC AUC |"
    )
    print("|---|---|---|---|---|---|")
    for digit, name, fit_s, split_s, ips, auc in rows:
        print(f"| {digit} | {name} | {fit_s:.0f} | {split_s} | {ips:,.0f} | {auc:.3f} |")


if __name__ == "__main__":
    main()
