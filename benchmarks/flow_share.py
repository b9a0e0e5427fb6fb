"""The flow stage's share of the machine's fp32 peak, measured as the bench runs it (issue 28).

``perf.py`` times flow training on all the torch threads of one process. The bench does not
train flows that way: its default executor runs one single-thread worker per core, side by
side, and a small flow's many small operations scale poorly over threads. This script times
one training step (forward, backward, gradient clipping, fused Adam: what ``fit_flow`` does)
of each flow given, on 32-dimensional latents (a part of the recommended latent) at the batch
size the flows train with, two ways:

- one worker: one process, one thread, against one core's measured peak;
- the bench's workers: one single-thread process per core, all stepping at once, their summed
  FLOP rate against the whole machine's measured peak (this is the machine's share).

FLOPs are counted with ``torch.utils.flop_counter``; the peak is ``perf.matmul_peak`` (the
better of BLAS and oneDNN). Prints a table and the machine; asserts nothing. Results:
benchmarks/EXPERIMENTS.md.

    python benchmarks/flow_share.py
    python benchmarks/flow_share.py --flow realnvp:batch_norm=true,hidden=256,layers=2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
import warnings
from pathlib import Path

import torch

import flowkit
from flowkit.executors import cores as flowkit_cores

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf import cpu_features, cpu_name, flops_of, matmul_peak  # noqa: E402

DIM = 32
FLOWS = [
    "realnvp:batch_norm=true",  # the default part flow until 2026-12-07 (8 couplings, 64 wide)
    "realnvp:batch_norm=true,hidden=128,layers=4",  # fewer, wider steps (the default)
    "realnvp:batch_norm=true,hidden=256,layers=2",
]


def _step_fn(spec: str, batch: int):
    """One training step of ``spec`` as ``fit_flow`` takes it, and its FLOPs."""
    torch.manual_seed(0)
    flow = flowkit.create_flow(spec, features=DIM).train()
    params = [p for p in flow.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2, weight_decay=1e-3, fused=True)
    z = torch.randn(batch, DIM, generator=torch.Generator().manual_seed(0))
    flops = flops_of(lambda: (-flow.log_prob(z).mean()).backward())

    def step() -> None:
        loss = -flow.log_prob(z).mean() / DIM
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0, foreach=True)
        opt.step()

    return step, flops


def _time(step, flops: float, seconds: float) -> tuple[float, float]:
    """(ms per step, GFLOP/s) of ``step`` run for ``seconds`` after a warm-up."""
    for _ in range(5):
        step()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        n += 1
    took = (time.perf_counter() - start) / n
    return took * 1e3, flops / took / 1e9


def _worker(spec: str, batch: int, seconds: float, barrier, out) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    step, flops = _step_fn(spec, batch)
    step()
    barrier.wait()  # every worker steps at the same time, as the bench's do
    out.put(_time(step, flops, seconds))


def side_by_side(spec: str, batch: int, seconds: float, workers: int) -> float:
    """Summed GFLOP/s of ``workers`` single-thread processes training at once."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(workers), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(spec, batch, seconds, barrier, out))
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    rates = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(r[1] for r in rates)


def peak(dev: torch.device, repeats: int = 3) -> float:
    """The best fp32 GFLOP/s of ``repeats`` peak measurements (a shared host's clock and
    neighbours move one by up to a fifth)."""
    return max(max(matmul_peak(dev, torch.float32)) for _ in range(repeats))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flow", action="append", help="flow spec (repeatable)")
    ap.add_argument("--batch", type=int, default=1024, help="the auto size at ≥ 4,096 latents")
    ap.add_argument("--seconds", type=float, default=4.0, help="timed seconds per measurement")
    ap.add_argument("--workers", type=int, default=flowkit_cores())
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    dev = torch.device("cpu")
    torch.set_num_threads(1)
    core = peak(dev)
    torch.set_num_threads(args.workers)
    machine = peak(dev)
    print(
        f"Machine: {cpu_name()}; {cpu_features()}; torch {torch.__version__}. Measured fp32 "
        f"peak: one core {core:,.0f} GFLOP/s, {args.workers} cores {machine:,.0f} GFLOP/s. "
        f"Flows on {DIM} dimensions, batch {args.batch}."
    )
    print(
        "| flow | MFLOP per latent | one worker: ms per step | GFLOP/s | of one core's peak "
        f"| {args.workers} workers side by side: GFLOP/s | of the machine's peak |"
    )
    print("|---|---|---|---|---|---|---|")
    for spec in args.flow or FLOWS:
        torch.set_num_threads(1)
        step, flops = _step_fn(spec, args.batch)
        ms, one = _time(step, flops, args.seconds)
        many = side_by_side(spec, args.batch, args.seconds, args.workers)
        print(
            f"| `{spec}` | {flops / args.batch / 1e6:.2f} | {ms:.1f} | {one:.1f} | "
            f"{100 * one / core:.0f}% | {many:.1f} | {100 * many / machine:.0f}% |"
        )


if __name__ == "__main__":
    main()
