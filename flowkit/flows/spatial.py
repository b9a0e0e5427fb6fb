"""Densities over feature maps: a log-likelihood per position, the anomaly map.

An encoder that declares ``feature_maps`` (a frozen backbone's maps at a few strides, e.g.
``timm/tf_efficientnet_lite0:checkpoint=efficientnet-lite0,layers=2+3``) gives each image's
maps side by side, flattened, as its latent. A spatial flow is built for those shapes
(``maps``: ``[(C, h, w), ...]``) and scores each position's ``C``-vector:

- ``patchflow``: CFLOW-AD's idea (Gudovskiy et al., WACV 2022) on flowkit's Real-NVP
  couplings: one conditional flow per scale over the patch vectors, conditioned on a 2-D
  sinusoidal encoding of the position; the patch vectors are standardized per channel first.
- ``patchknn``: the non-parametric baseline, PatchCore's memory bank without its coreset
  (Roth et al., CVPR 2022): the distance of each patch vector to its nearest training patch
  of the same scale, as the log of a Gaussian kernel.

Both give ``log_prob_maps(z)`` (one ``(B, h, w)`` map per scale) and ``anomaly_maps(z)`` (the
negative log-likelihood per position and channel, what the maps of different scales are
averaged on); ``log_prob(z)`` is the sum over every position of every scale (positions taken
as independent), so that they train and validate as any flow does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from nflows.nn.nets import ResidualNet
from nflows.transforms.base import CompositeTransform
from torch import nn

from flowkit.errors import ConfigError
from flowkit.flows.base import Flow
from flowkit.flows.coupling import AffineCoupling, activation_fn
from flowkit.registry import check_positive

__all__ = [
    "MapShapes",
    "SpatialFlow",
    "PatchFlow",
    "PatchKNN",
    "check_maps",
    "patchflow",
    "patchknn",
    "positional_encoding",
]

MapShapes = tuple[tuple[int, int, int], ...]
#: Query positions and memory-bank rows compared at a time (bounds patchknn's memory).
KNN_CHUNK = 1024
BANK_CHUNK = 4096
#: patchknn's distances between patch vectors.
METRICS = ("euclidean", "cosine", "euclidean+cosine")
#: Random pairs of training patches that set euclidean+cosine's two scales.
PAIRS = 20000


def check_maps(maps: Any, name: str) -> MapShapes:
    """``maps`` as a tuple of ``(C, h, w)``, or a :class:`ConfigError` saying that ``name``
    needs an encoder that gives feature maps."""
    if not maps:
        raise ConfigError(
            f"the flow {name!r} scores feature maps: it needs an encoder that gives them (a "
            "frozen backbone with layers=..., e.g. timm/tf_efficientnet_lite0:checkpoint="
            "efficientnet-lite0,layers=2+3)"
        )
    try:
        shapes = tuple(tuple(int(s) for s in shape) for shape in maps)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: maps must be (C, h, w) shapes, got {maps!r}") from None
    if not all(len(s) == 3 and min(s) >= 1 for s in shapes):
        raise ConfigError(f"{name}: maps must be (C, h, w) shapes, got {maps!r}")
    return shapes


def positional_encoding(h: int, w: int, dims: int) -> torch.Tensor:
    """A 2-D sinusoidal encoding ``(h * w, dims)`` of each position (row-major): sines and
    cosines of the row and column, each in ``[0, 1]``, at ``dims / 4`` octaves."""
    if dims % 4:
        raise ConfigError(f"the positional encoding's size must be a multiple of 4, got {dims}")
    ys, xs = torch.meshgrid(torch.linspace(0.0, 1.0, h), torch.linspace(0.0, 1.0, w), indexing="ij")
    freq = math.pi * 2.0 ** torch.arange(dims // 4, dtype=torch.float32)
    parts = [fn(axis[..., None] * freq) for axis in (ys, xs) for fn in (torch.sin, torch.cos)]
    return torch.cat(parts, -1).reshape(h * w, dims)


class SpatialFlow(Flow):
    """Base of the densities over feature maps: :meth:`log_prob_maps` is required."""

    def __init__(self, maps: Sequence[Sequence[int]], name: str) -> None:
        super().__init__()
        self.maps = check_maps(maps, name)
        self.features = sum(c * h * w for c, h, w in self.maps)

    def split(self, z: torch.Tensor) -> list[torch.Tensor]:
        """The maps ``(B, C, h, w)`` of flattened latents ``(B, D)``."""
        sizes = [c * h * w for c, h, w in self.maps]
        return [
            part.reshape(-1, *shape)
            for part, shape in zip(torch.split(z, sizes, dim=1), self.maps, strict=True)
        ]

    def log_prob_maps(self, z: torch.Tensor) -> list[torch.Tensor]:
        """The log-likelihood of each position's vector, one ``(B, h, w)`` map per scale."""
        raise NotImplementedError

    def anomaly_maps(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Negative log-likelihood per position and channel, one map per scale."""
        return [-lp / c for lp, (c, _, _) in zip(self.log_prob_maps(z), self.maps, strict=True)]

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return sum(m.flatten(1).sum(1) for m in self.log_prob_maps(z))  # type: ignore[return-value]


def _rows(f: torch.Tensor) -> torch.Tensor:
    """Maps ``(B, C, h, w)`` as position vectors ``(B * h * w, C)``."""
    return f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])


class _ConditionalCouplings(nn.Module):
    """Affine couplings over ``[x, position]``: the position's encoding only conditions
    (it is never transformed), so the flow is a density of ``x`` given the position."""

    def __init__(
        self, channels: int, pos: int, layers: int, hidden: int, blocks: int, act: Any
    ) -> None:
        super().__init__()
        self.channels = channels

        def conditioner(n_in: int, n_out: int) -> ResidualNet:
            return ResidualNet(
                n_in, n_out, hidden_features=hidden, num_blocks=blocks, activation=act
            )

        transforms = []
        for k in range(layers):
            mask = -torch.ones(channels + pos)
            mask[k % 2 : channels : 2] = 1  # alternate halves of the channels; positions pass
            transforms.append(AffineCoupling(mask, conditioner))
        self.transform = CompositeTransform(transforms)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        out, logdet = self.transform(torch.cat([x, pos], 1))
        u = out[:, : self.channels]
        return logdet - 0.5 * (u * u).sum(1) - 0.5 * self.channels * math.log(2 * math.pi)


class PatchFlow(SpatialFlow):
    """One conditional Real-NVP per scale over standardized patch vectors (CFLOW-AD's
    design; the standardization's Jacobian is in the log-likelihood)."""

    def __init__(
        self,
        maps: Sequence[Sequence[int]],
        layers: int = 8,
        hidden: int = 128,
        blocks: int = 1,
        pos: int = 32,
        activation: str = "relu",
    ) -> None:
        super().__init__(maps, "patchflow")
        check_positive("patchflow", layers=layers, hidden=hidden, blocks=blocks)
        if pos < 0 or pos % 4:
            raise ConfigError(f"patchflow: pos must be 0 or a multiple of 4, got {pos}")
        if min(c for c, _, _ in self.maps) < 2:
            raise ConfigError("patchflow: every map needs at least 2 channels")
        act = activation_fn(activation)
        self.flows = nn.ModuleList(
            _ConditionalCouplings(c, pos, layers, hidden, blocks, act) for c, _, _ in self.maps
        )
        for k, (c, h, w) in enumerate(self.maps):
            self.register_buffer(
                f"pos_{k}", positional_encoding(h, w, pos) if pos else torch.zeros(h * w, 0)
            )
            self.register_buffer(f"mean_{k}", torch.zeros(c))
            self.register_buffer(f"std_{k}", torch.ones(c))

    @torch.no_grad()
    def initialize(self, z: torch.Tensor) -> None:
        """Per scale, each channel's mean and standard deviation over every training position."""
        for k, f in enumerate(self.split(z)):
            rows = _rows(f.float())
            getattr(self, f"mean_{k}").copy_(rows.mean(0))
            getattr(self, f"std_{k}").copy_(rows.std(0).clamp_min(1e-6))

    def log_prob_maps(self, z: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for k, (f, flow) in enumerate(zip(self.split(z), self.flows, strict=True)):
            b, _, h, w = f.shape
            mean, std = getattr(self, f"mean_{k}"), getattr(self, f"std_{k}")
            x = (_rows(f) - mean) / std
            pos = getattr(self, f"pos_{k}").repeat(b, 1)
            lp = flow(x, pos) - torch.log(std).sum()
            out.append(lp.reshape(b, h, w))
        return out


class PatchKNN(SpatialFlow):
    """The distance of each patch vector to its nearest training patch of the same scale
    (all of them, or ``bank`` drawn at random with ``seed``), as ``log p = -d² / 2`` up to
    the Gaussian kernel's constant. Nothing to train: :meth:`initialize` keeps the bank.

    ``metric``: ``euclidean``; ``cosine`` scales the patch vectors to unit length first
    (``d² = 2 - 2 cos``: their direction is compared, not their magnitude);
    ``euclidean+cosine`` averages the two, each divided by its mean between two training
    patches drawn at random (so neither dominates), times ``C`` (a per-channel scale like
    the others')."""

    def __init__(
        self,
        maps: Sequence[Sequence[int]],
        bank: int = 0,
        seed: int = 0,
        metric: str = "euclidean",
    ) -> None:
        super().__init__(maps, "patchknn")
        if bank < 0:
            raise ConfigError(f"patchknn: bank must be 0 (every patch) or positive, got {bank}")
        if metric not in METRICS:
            raise ConfigError(f"patchknn: metric must be one of {METRICS}, got {metric!r}")
        self.bank, self.seed, self.metric = int(bank), int(seed), metric
        self.fused = metric == "euclidean+cosine"
        for k, (c, _, _) in enumerate(self.maps):
            self.register_buffer(f"bank_{k}", torch.zeros(0, c))
        if self.fused:  # the two distances' typical sizes, per scale
            self.register_buffer("scales", torch.ones(len(self.maps), 2))

    @torch.no_grad()
    def initialize(self, z: torch.Tensor) -> None:
        gen = torch.Generator().manual_seed(self.seed)
        for k, f in enumerate(self.split(z)):
            rows = _rows(f.detach())
            if self.metric == "cosine":
                rows = nn.functional.normalize(rows, dim=1)
            if self.bank and len(rows) > self.bank:
                rows = rows[torch.randperm(len(rows), generator=gen)[: self.bank].to(rows.device)]
            setattr(self, f"bank_{k}", rows.contiguous())
            if self.fused:
                i, j = torch.randint(len(rows), (2, PAIRS), generator=gen).to(rows.device)
                a, b = rows[i], rows[j]  # only the drawn pairs are scaled to unit length
                unit_a, unit_b = (nn.functional.normalize(x, dim=1) for x in (a, b))
                scale = torch.stack(
                    [((a - b) ** 2).sum(1).mean(), ((unit_a - unit_b) ** 2).sum(1).mean()]
                )
                self.scales[k] = scale.clamp_min(1e-12)

    def _load_from_state_dict(self, state: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        for k in range(len(self.maps)):  # the bank's size is the saved one's
            key = f"{prefix}bank_{k}"
            if key in state:
                setattr(self, f"bank_{k}", torch.empty_like(state[key]))
        super()._load_from_state_dict(state, prefix, *args, **kwargs)

    def log_prob_maps(self, z: torch.Tensor) -> list[torch.Tensor]:
        out = []
        nearest_fn = _nearest if torch.compiler.is_exporting() else _nearest_blocked
        for k, f in enumerate(self.split(z)):  # (the export: one product, a dynamic batch)
            b, c, h, w = f.shape
            bank = getattr(self, f"bank_{k}")
            if not len(bank):
                raise ConfigError("patchknn has no memory bank: fit it on training latents first")
            rows = _rows(f)
            if self.metric == "euclidean":
                nearest = nearest_fn(rows, bank)
            elif self.metric == "cosine":
                nearest = nearest_fn(nn.functional.normalize(rows, dim=1), bank)
            else:  # both distances from one product per block
                euclid, cosine = nearest_fn(rows, bank, with_cosine=True)
                scale = self.scales[k]
                nearest = 0.5 * c * (euclid / scale[0] + cosine / scale[1])
            lp = -0.5 * nearest - 0.5 * c * math.log(2 * math.pi)
            out.append(lp.reshape(b, h, w))
        return out


def _unit_terms(sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From rows' squared lengths: the inverse of each length as ``F.normalize`` divides by
    it (at least 1e-12), and the squared length of the row so scaled (1, or 0 for a zero
    row)."""
    inv = sq.sqrt().clamp_min(1e-12).reciprocal()
    return inv, sq * inv * inv


def _nearest(q: torch.Tensor, bank: torch.Tensor, with_cosine: bool = False) -> Any:
    """The squared distance of each row of ``q`` to its nearest row of ``bank``; with
    ``with_cosine``, also that of the unit-length rows (``F.normalize``), from the same
    product ``q @ bank.T``."""
    sq_q, sq_b, p = (q * q).sum(1), (bank * bank).sum(1), q @ bank.T
    euclid = ((sq_b - 2 * p).amin(1) + sq_q).clamp_min(0.0)
    if not with_cosine:
        return euclid
    (inv_q, unit_q), (inv_b, unit_b) = _unit_terms(sq_q), _unit_terms(sq_b)
    cosine = (unit_b - 2 * p * inv_b * inv_q[:, None]).amin(1) + unit_q
    return euclid, cosine.clamp_min(0.0)


def _nearest_blocked(q: torch.Tensor, bank: torch.Tensor, with_cosine: bool = False) -> Any:
    """:func:`_nearest` in blocks of :data:`KNN_CHUNK` queries × :data:`BANK_CHUNK` bank rows:
    the same numbers, in bounded memory, about three times faster on a CPU than whole rows
    of distances (each block stays in cache; ``benchmarks/EXPERIMENTS.md``)."""
    sq_q, sq_b = (q * q).sum(1), (bank * bank).sum(1)
    (inv_q, unit_q), (inv_b, unit_b) = _unit_terms(sq_q), _unit_terms(sq_b)
    best = torch.full((1 + with_cosine, len(q)), float("inf"), dtype=q.dtype, device=q.device)
    for j in range(0, len(bank), BANK_CHUNK):
        block, sq, inv, unit = (t[j : j + BANK_CHUNK] for t in (bank, sq_b, inv_b, unit_b))
        for i in range(0, len(q), KNN_CHUNK):
            rows = slice(i, i + KNN_CHUNK)
            if with_cosine:  # the product serves both distances
                p = q[rows] @ block.T
                d = torch.add(sq, p, alpha=-2)
            else:
                d = torch.addmm(sq, q[rows], block.T, alpha=-2)
            torch.minimum(best[0, rows], d.amin(1), out=best[0, rows])
            if with_cosine:
                c = torch.add(unit, p.mul_(inv).mul_(inv_q[rows, None]), alpha=-2)
                torch.minimum(best[1, rows], c.amin(1), out=best[1, rows])
    euclid = (best[0] + sq_q).clamp_min(0.0)
    return (euclid, (best[1] + unit_q).clamp_min(0.0)) if with_cosine else euclid


def patchflow(
    features: int,
    maps: Sequence[Sequence[int]] = (),
    layers: int = 8,
    hidden: int = 128,
    blocks: int = 1,
    pos: int = 32,
    activation: str = "relu",
) -> PatchFlow:
    """CFLOW-style conditional flows over feature-map positions (one per scale).

    Args:
        features: the flattened maps' size (set from the encoder).
        maps: the ``(C, h, w)`` of each map (set from the encoder).
        layers: coupling layers per scale.
        hidden: width of each coupling's residual network.
        blocks: residual blocks per coupling network.
        pos: size of the positional encoding conditioning the flows (0: none).
        activation: relu, elu, gelu or tanh, inside the coupling networks.
    """
    flow = PatchFlow(maps, layers, hidden, blocks, pos, activation)
    _check_features(flow, features)
    return flow


def patchknn(
    features: int,
    maps: Sequence[Sequence[int]] = (),
    bank: int = 0,
    seed: int = 0,
    metric: str = "euclidean",
) -> PatchKNN:
    """Nearest-training-patch distance per position (PatchCore's memory bank, no coreset).

    Args:
        features: the flattened maps' size (set from the encoder).
        maps: the ``(C, h, w)`` of each map (set from the encoder).
        bank: keep this many training patches per scale, drawn at random (0: all).
        seed: the draw's seed.
        metric: euclidean; cosine (unit-length patch vectors: direction, not magnitude); or
            euclidean+cosine (both, each over its typical size between training patches).
    """
    flow = PatchKNN(maps, bank, seed, metric)
    _check_features(flow, features)
    return flow


def _check_features(flow: SpatialFlow, features: int) -> None:
    if int(features) != flow.features:
        raise ConfigError(
            f"the maps {flow.maps} hold {flow.features} values per image, but the latent has "
            f"{features}"
        )
