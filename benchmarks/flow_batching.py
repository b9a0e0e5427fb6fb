"""Could the two part-flows of a two-part latent train as one batched model? (issue 28)

Times one training step (forward, backward, fused Adam) of the recommended pipeline's part
flow until 2026-12-07 (``realnvp:batch_norm=true`` on 32 dimensions: 8 couplings, 64 wide,
BatchNorm between; the measurement this script records was of that flow) for P = 1 and 2
parts, three ways:

- ``nflows``: flowkit's flows, one step per part (what training does today);
- ``vmap``: the same nflows modules vectorised over the parts with ``torch.func.vmap``;
- ``bmm``: a prototype written for this measurement (the same architecture with every
  linear layer a batched matmul over the parts; not flowkit's flow, not exact in its numbers).

Prints milliseconds per step; asserts nothing. Results: benchmarks/EXPERIMENTS.md.

    python benchmarks/flow_batching.py --threads 1 --batch 256 --batch 1024 --batch 4096
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import flowkit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf import cpu_features, cpu_name  # noqa: E402

DIM, HIDDEN, LAYERS = 32, 64, 8


class _GroupedLinear(nn.Module):
    def __init__(self, parts: int, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(parts, n_in, n_out) / n_in**0.5)
        self.bias = nn.Parameter(torch.zeros(parts, 1, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class _GroupedResidualNet(nn.Module):
    """nflows' ResidualNet with one block, batched over the parts."""

    def __init__(self, parts: int, n_in: int, n_out: int) -> None:
        super().__init__()
        self.first = _GroupedLinear(parts, n_in, HIDDEN)
        self.block = nn.ModuleList(_GroupedLinear(parts, HIDDEN, HIDDEN) for _ in range(2))
        self.last = _GroupedLinear(parts, HIDDEN, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.first(x)
        u = self.block[1](F.relu(self.block[0](F.relu(t))))
        return self.last(t + u)


class BatchedRealNVP(nn.Module):
    """Prototype: ``parts`` Real NVPs (tanh log-scale couplings, BatchNorm after each) in one
    set of batched kernels; input ``(P, B, D)``, output the log-density ``(P, B)``."""

    def __init__(self, parts: int) -> None:
        super().__init__()
        half = DIM // 2
        self.nets = nn.ModuleList(_GroupedResidualNet(parts, half, DIM) for _ in range(LAYERS))
        self.bn_weight = nn.Parameter(torch.zeros(LAYERS, parts, 1, DIM))
        self.bn_bias = nn.Parameter(torch.zeros(LAYERS, parts, 1, DIM))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        half = DIM // 2
        halves = [z[..., 0::2], z[..., 1::2]]
        total = z.new_zeros(z.shape[:2])
        for i, net in enumerate(self.nets):
            k = i % 2
            params = net(halves[k])
            log_scale = 2 * torch.tanh(params[..., half:] / 2)
            halves[1 - k] = halves[1 - k] * torch.exp(log_scale) + params[..., :half]
            total = total + log_scale.sum(-1)
            x = torch.stack(halves, -1).flatten(-2)
            centred = x - x.mean(1, keepdim=True)
            var = (centred * centred).sum(1, keepdim=True) / (x.shape[1] - 1)
            weight = F.softplus(self.bn_weight[i]) + 1e-3
            x = weight * centred * torch.rsqrt(var + 1e-5) + self.bn_bias[i]
            total = total + (torch.log(weight) - 0.5 * torch.log(var + 1e-5)).sum(-1)
            halves = [x[..., 0::2], x[..., 1::2]]
        x = torch.stack(halves, -1).flatten(-2)
        return total - 0.5 * (x * x).sum(-1) - 0.5 * DIM * math.log(2 * math.pi)


def _ms_per_step(step, steps: int) -> float:
    for _ in range(max(3, steps // 10)):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps * 1e3


def measure(parts: int, batch: int, steps: int) -> dict[str, float]:
    torch.manual_seed(0)
    z = torch.randn(parts, batch, DIM)
    flows = [flowkit.create_flow("realnvp", features=DIM, batch_norm=True) for _ in range(parts)]
    opts = [torch.optim.Adam(f.parameters(), 1e-3, fused=True) for f in flows]

    def nflows_step() -> None:
        for flow, opt, block in zip(flows, opts, z, strict=True):
            loss = -flow.log_prob(block).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    base = copy.deepcopy(flows[0]).train()
    names = [n for n, _ in base.named_parameters()]
    buffer_names = [n for n, _ in base.named_buffers()]

    def one(params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(base, (params, buffers), (x,))

    # the modules' tensors are updated in place, so their dicts are built once, outside the
    # timed step; the stacking (new values every step) stays inside it
    flow_params = [dict(f.named_parameters()) for f in flows]
    flow_buffers = [dict(f.named_buffers()) for f in flows]

    def vmap_step() -> None:
        params = {n: torch.stack([p[n] for p in flow_params]) for n in names}
        buffers = {n: torch.stack([b[n] for b in flow_buffers]) for n in buffer_names}
        loss = -torch.func.vmap(one)(params, buffers, z).mean(1).sum()
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in opts:
            opt.step()

    batched = BatchedRealNVP(parts)
    batched_opt = torch.optim.Adam(batched.parameters(), 1e-3, fused=True)

    def bmm_step() -> None:
        loss = -batched.log_prob(z).mean(1).sum()
        batched_opt.zero_grad(set_to_none=True)
        loss.backward()
        batched_opt.step()

    return {
        "nflows": _ms_per_step(nflows_step, steps),
        "vmap": _ms_per_step(vmap_step, steps),
        "bmm": _ms_per_step(bmm_step, steps),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, action="append")
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"Machine: {cpu_name()}; {cpu_features()}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s); ms per training step"
    )
    print("| batch | parts | nflows, one step per part | vmap over parts | bmm prototype |")
    print("|---|---|---|---|---|")
    for batch in args.batch or [1024]:
        for parts in (1, 2):
            r = measure(parts, batch, args.steps)
            print(f"| {batch} | {parts} | {r['nflows']:.1f} | {r['vmap']:.1f} | {r['bmm']:.1f} |")


if __name__ == "__main__":
    main()
