"""Scoring a large folder here, on worker processes and on Ray Data (issue 28, item 5).

Writes N PNG files (scikit-learn's embedded digits at 32×32, repeated; default 20,000),
trains a small model on the digits (or uses --model), then runs `flowkit score DIR --csv`
with each executor and prints images/s and whether every row (path, scores, label) is the
same as local scoring's, in the same order. Prints figures, asserts nothing.

    python benchmarks/score_scale.py --n 20000 --workers 2
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

import flowkit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf import cpu_features, cpu_name  # noqa: E402


def write_folder(root: Path, n: int) -> None:
    data = flowkit.load_dataset("digits")
    images = data.images[:, 0].numpy()
    for i in range(n):
        sub = root / f"{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i % len(images)]).save(sub / f"{i:06d}.png")


def score(model: Path, folder: Path, *args: str) -> tuple[float, list[str]]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "flowkit", "score", str(model), str(folder), "--csv", "-q", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return time.perf_counter() - start, proc.stdout.splitlines()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", type=Path, default=None, help="a model file (default: train one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = args.model
        if model is None:
            data = flowkit.load_dataset("digits")
            det = flowkit.Detector.paper(epochs_encoder=2, epochs_flow=20, device="cpu")
            model = det.fit(data).save(root / "m.flowkit")
        write_folder(root / "images", args.n)
        print(f"Machine: {cpu_name()} ({cpu_features()}); {torch.get_num_threads()} threads")
        print(f"{args.n} PNG files (embedded digits, 32×32), model {model.name}")
        seconds, local = score(model, root / "images")
        print(f"| local | {args.n / seconds:,.0f} images/s | {seconds:.1f} s | rows: reference |")
        for ex in ("process", "ray"):
            extra = ["--executor", ex, "--workers", str(args.workers)]
            seconds, rows = score(model, root / "images", *extra)
            same = (
                "identical"
                if rows == local
                else f"DIFFER ({sum(a != b for a, b in zip(rows, local, strict=False))})"
            )
            rate = f"{args.n / seconds:,.0f} images/s"
            print(f"| {ex} × {args.workers} | {rate} | {seconds:.1f} s | rows: {same} |")


if __name__ == "__main__":
    main()
