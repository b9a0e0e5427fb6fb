"""Where a contrastive encoder's training step spends its time, where bf16 is missing (issue 28).

Times one SimCLR training step of flowkit's ``simclr`` encoder (two views of a batch, the
DCGAN trunk and projection head forward, NT-Xent, backward, Adam) split into its parts:

- ``views``: making the two augmented views (the encoder's own ``augment``: random affine
  warps for 1-channel images, SimCLR's crops / flips / colour jitter / grayscale for 3-channel
  ones, as ``views="auto"`` chooses);
- ``forward + backward + Adam``: the rest of the step;

for the default encoder and for the cost levers of item 4: image resolution (16 instead of
32: one down-sampling block fewer, a quarter of the pixels), width (32 instead of 64),
channels-last, and the reduced precisions torch can autocast to on a CPU (bf16, fp16).
The timing does not depend on the pixel values, so the batch is random; the model is built
as ``fit_encoder`` trains it, except that Adam here is torch's unfused one (fit_encoder uses
the fused kernel; the optimiser is a small part of a step). Prints a markdown table (median
of ``--steps`` steps after two warm-up steps, milliseconds); asserts nothing. Results:
benchmarks/EXPERIMENTS.md.

    python benchmarks/encoder_cost.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

import flowkit
from flowkit.encoders.selfsup import nt_xent

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf import cpu_features, cpu_name  # noqa: E402

VARIANTS = [
    # (label, channels, image_size, width, precision, channels_last)
    ("default, 1 channel (digits)", 1, 32, 64, "fp32", False),
    ("default, 3 channels (photographs)", 3, 32, 64, "fp32", False),
    ("1 channel, channels-last", 1, 32, 64, "fp32", True),
    ("1 channel, resolution 16", 1, 16, 64, "fp32", False),
    ("3 channels, resolution 16", 3, 16, 64, "fp32", False),
    ("1 channel, width 32", 1, 32, 32, "fp32", False),
    ("1 channel, bf16 autocast", 1, 32, 64, "bf16", False),
    ("1 channel, fp16 autocast", 1, 32, 64, "fp16", False),
]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def time_step(
    channels: int,
    size: int,
    width: int,
    precision: str,
    channels_last: bool,
    batch: int,
    steps: int,
) -> tuple[float, float]:
    """Median milliseconds of (views, the rest of the step) over ``steps`` steps."""
    torch.manual_seed(0)
    enc = flowkit.create_encoder(
        "simclr", in_channels=channels, image_size=size, width=width, temperature=0.5
    )
    if channels_last:
        enc.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(enc.parameters(), lr=1e-3, betas=(0.5, 0.999))
    x = torch.rand(batch, channels, size, size) * 2 - 1
    cast = (
        nullcontext
        if precision == "fp32"
        else (lambda: torch.autocast("cpu", dtype=DTYPES[precision]))
    )
    t_views, t_rest = [], []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        views = torch.cat([enc.augment(x), enc.augment(x)])
        if channels_last:
            views = views.contiguous(memory_format=torch.channels_last)
        t1 = time.perf_counter()
        with cast():
            proj = enc.head(enc.trunk(views))
            loss = nt_xent(proj[:batch].float(), proj[batch:].float(), enc.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        if i >= 2:
            t_views.append(t1 - t0)
            t_rest.append(t2 - t1)
    return 1e3 * statistics.median(t_views), 1e3 * statistics.median(t_rest)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a worker has 1)")
    ap.add_argument("--batch", type=int, default=64, help="images per step (fit_encoder's)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument(
        "--only",
        default="",
        help="comma-separated variant numbers (1-based); 'vs default' is then against the first "
        "one printed",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"Machine: {cpu_name()}; {cpu_features()}; {args.threads} thread(s), "
        f"batch {args.batch}, median of {args.steps} steps\n"
    )
    chosen = {int(i) for i in args.only.split(",") if i}
    base = None
    print(
        "| variant | views ms | forward + backward + Adam ms | step ms | views share | vs default |"
    )
    print("|---|---|---|---|---|---|")
    for n, (label, c, size, width, prec, cl) in enumerate(VARIANTS, 1):
        if chosen and n not in chosen:
            continue
        v, r = time_step(c, size, width, prec, cl, args.batch, args.steps)
        step = v + r
        base = base or step
        print(
            f"| {label} | {v:.1f} | {r:.1f} | {step:.1f} | {v / step:.0%} | {base / step:.2f}× |",
            flush=True,
        )


if __name__ == "__main__":
    main()
