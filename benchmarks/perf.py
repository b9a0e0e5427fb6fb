"""Speed and memory of the reference pair (dcgan_ae + realnvp) on 32×32 images.

Prints: encoder training images/s, flow training latents/s, end-to-end scoring images/s,
peak memory, and (with --suite) the wall time of a whole bench suite.

    python benchmarks/perf.py                    # on the embedded digits, ~1 minute on 2 cores
    python benchmarks/perf.py --suite quick      # also times `flowkit bench --suite quick`
    python benchmarks/perf.py --device cuda --threads 8
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
import warnings

import torch

import flowkit
from flowkit.data import leave_one_class_out
from flowkit.training import embed, fit_encoder, resolve_device


def peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--encoder", default="dcgan_ae")
    ap.add_argument("--flow", default="realnvp")
    ap.add_argument("--epochs-encoder", type=int, default=3)
    ap.add_argument("--epochs-flow", type=int, default=20)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--suite", default=None, help="also time this bench suite end to end")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    dev = resolve_device(args.device)
    data = flowkit.load_dataset("digits")
    split = leave_one_class_out(data, 9, seed=0)
    det = flowkit.Detector(encoder=args.encoder, flow=args.flow, device=str(dev))
    train, val = det.split_validation(split.train.images)
    encoder = det.build_encoder(tuple(train.shape[1:]))
    print(f"device {dev}, torch threads {torch.get_num_threads()}, torch {torch.__version__}")
    print(f"data: digits 32x32, {len(train)} train / {len(val)} val / {len(split.test)} test")

    hist = fit_encoder(encoder, train, val, epochs=args.epochs_encoder, patience=10**6, device=dev)
    print(f"encoder training ({args.encoder}): {hist.samples_per_second:8.1f} images/s")

    z_train, z_val = embed(encoder, train, device=dev), embed(encoder, val, device=dev)
    det.set_encoder(encoder, tuple(train.shape[1:]))
    det.epochs_flow, det.patience = args.epochs_flow, 10**6
    det.fit_from_latents(z_train, z_val)
    fh = det.history_["flow"]
    print(
        f"flow training ({args.flow}, {z_train.shape[1]}-d): "
        f"{fh['samples_per_second']:8.1f} latents/s"
    )

    test = split.test.images
    det.anomaly_score(test[:64])  # warm-up
    reps = 5
    start = time.perf_counter()
    for _ in range(reps):
        det.anomaly_score(test)
    seconds = (time.perf_counter() - start) / reps
    print(f"end-to-end scoring (uint8 images → score): {len(test) / seconds:8.1f} images/s")
    if dev.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(dev) / 2**20:8.1f} MiB")
    print(f"peak process memory (RSS): {peak_rss_mib():8.1f} MiB")

    if args.suite:
        from flowkit.bench.runner import run_suite
        from flowkit.bench.suite import load_suite

        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            store = run_suite(load_suite(args.suite), out, device=str(dev))
            took = time.perf_counter() - start
            n = len(store.records())
        print(f"suite {args.suite}: {n} cells in {took:.0f} s ({took / 60:.1f} min)")
        print(f"peak process memory (RSS) after the suite: {peak_rss_mib():8.1f} MiB")


if __name__ == "__main__":
    main()
