"""Latent preprocessing between encoder and flow, fitted on normal training latents only.

A preprocessing is written as steps joined by ``+``: ``standardize`` (per dimension),
``pca:K`` (whitened PCA to K dimensions), ``l2`` (unit norm, then centred), ``none``, and
``auto`` (the Detector's default): ``pca:32``, or whitening of every dimension (``pca:D``) for
latents of D ≤ 32 dimensions. Example: ``"l2+pca:32"``. The preprocessing is saved inside the
Detector artifact.

An encoder whose latent is several parts side by side (its ``latent_parts``, e.g.
``simclr``'s ``features=trunk+head``) gets the preprocessing applied to each part on its own,
the outputs concatenated: ``pca:32`` on a (128, 128) latent gives 64 dimensions, 32 whitened
per part, so neither part's scale drowns the other's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from flowkit.errors import ConfigError

__all__ = ["Preprocess", "LatentPipeline", "parse_preprocess", "parse_pipeline", "AUTO_PCA"]

_EPS = 1e-6
AUTO_PCA = 32  # ``auto``: whitened PCA to at most this many dimensions


class _Standardize(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.in_dim = self.out_dim = dim
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, z: torch.Tensor) -> None:
        self.mean.copy_(z.mean(0))
        # A dead latent dimension must not become a division by zero.
        self.std.copy_(z.std(0).clamp_min(_EPS * max(float(z.std(0).max()), 1.0)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean) / self.std

    def log_abs_det(self) -> torch.Tensor:
        return -torch.log(self.std).sum()


class _PCA(nn.Module):
    def __init__(self, dim: int, k: int) -> None:
        super().__init__()
        if not 1 <= k <= dim:
            raise ConfigError(f"pca:{k} needs 1 <= K <= {dim} (the latent size)")
        self.in_dim, self.out_dim = dim, k
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("components", torch.eye(dim)[:k].clone())
        self.register_buffer("scale", torch.ones(k))

    def fit(self, z: torch.Tensor) -> None:
        if len(z) < 2:
            raise ConfigError("pca needs at least 2 training latents")
        mean = z.mean(0)
        _, s, vh = torch.linalg.svd((z - mean).double(), full_matrices=False)
        k = min(self.out_dim, vh.shape[0])
        std = (s[:k] / (len(z) - 1) ** 0.5).float()
        self.mean.copy_(mean)
        self.components.zero_()
        self.components[:k] = vh[:k].float()
        self.scale.fill_(1.0)
        self.scale[:k] = std.clamp_min(_EPS * max(float(std.max()), 1.0))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return ((z - self.mean) @ self.components.T) / self.scale

    def log_abs_det(self) -> torch.Tensor:
        return -torch.log(self.scale).sum()


class _L2(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.in_dim = self.out_dim = dim
        self.register_buffer("center", torch.zeros(dim))

    def _norm(self, z: torch.Tensor) -> torch.Tensor:
        return z / z.norm(dim=1, keepdim=True).clamp_min(_EPS)

    def fit(self, z: torch.Tensor) -> None:
        self.center.copy_(self._norm(z).mean(0))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self._norm(z) - self.center

    def log_abs_det(self) -> torch.Tensor:
        return torch.zeros(())  # not a bijection: densities are over the sphere's chart


def parse_preprocess(spec: str) -> list[tuple[str, int | None]]:
    """``"l2+pca:32"`` → ``[("l2", None), ("pca", 32)]``; ``"auto"`` → ``[("auto", None)]``."""
    stages: list[tuple[str, int | None]] = []
    for part in filter(None, (p.strip() for p in (spec or "none").split("+"))):
        name, _, arg = part.partition(":")
        if name == "none":
            continue
        if name == "pca":
            try:
                stages.append(("pca", int(arg)))
            except ValueError:
                raise ConfigError(f"pca needs a dimension, e.g. pca:32 (got {part!r})") from None
        elif name in ("standardize", "l2", "auto") and not arg:
            stages.append((name, None))
        else:
            raise ConfigError(
                f"unknown latent preprocessing {part!r}; use standardize, pca:K, "
                "l2, auto or none, joined by '+'"
            )
    return stages


parse_pipeline = parse_preprocess  # its earlier name


class Preprocess(nn.Module):
    """Composable latent preprocessing (see module docs). ``out_dim`` is what the flow sees;
    ``out_part_sizes`` what each part of the latent becomes.

    Example:
        >>> import torch
        >>> pipe = Preprocess("l2+pca:2", in_dim=4)
        >>> pipe.fit(torch.randn(50, 4)); pipe(torch.randn(3, 4)).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        spec: str = "standardize",
        in_dim: int = 1,
        part_sizes: Sequence[int] | None = None,
        *,
        blocks: Sequence[int] | None = None,  # part_sizes' earlier name
    ) -> None:
        super().__init__()
        self.spec = spec
        self.in_dim = int(in_dim)
        sizes = part_sizes or blocks
        self.part_sizes = tuple(int(b) for b in sizes) if sizes else (self.in_dim,)
        if sum(self.part_sizes) != self.in_dim or min(self.part_sizes) < 1:
            raise ConfigError(
                f"latent parts {self.part_sizes} must be positive and add up to {self.in_dim}"
            )
        # several parts: one preprocessing per part, outputs side by side (the ModuleList's
        # name is in saved models' state keys)
        self.parts = nn.ModuleList(
            [Preprocess(spec, b) for b in self.part_sizes] if len(self.part_sizes) > 1 else []
        )
        stages: list[nn.Module] = []
        dim = self.in_dim
        for name, arg in parse_preprocess(spec) if not self.parts else []:
            if name == "auto":
                name, arg = "pca", min(AUTO_PCA, dim)
            stage = (
                _PCA(dim, arg)
                if name == "pca"
                # type: ignore[arg-type]
                else (_Standardize(dim) if name == "standardize" else _L2(dim))
            )
            stages.append(stage)
            dim = stage.out_dim
        self.stages = nn.ModuleList(stages)
        self.out_dim = sum(p.out_dim for p in self.parts) if self.parts else dim
        # what each part becomes: the flow gets one part per part (flowkit.flows.product)
        self.out_part_sizes = tuple(p.out_dim for p in self.parts) if self.parts else (dim,)

    def _split(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.split(z, list(self.part_sizes), dim=1)

    @torch.no_grad()
    def fit(self, z: torch.Tensor) -> Preprocess:
        if self.parts:
            for part, block in zip(self.parts, self._split(z), strict=True):
                part.fit(block)
            return self
        for stage in self.stages:
            stage.fit(z)
            z = stage(z)
        return self

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.in_dim:
            raise ConfigError(f"latents must have shape (N, {self.in_dim}), got {tuple(z.shape)}")
        if self.parts:
            return torch.cat([p(b) for p, b in zip(self.parts, self._split(z), strict=True)], 1)
        for stage in self.stages:
            z = stage(z)
        return z

    def log_abs_det(self) -> torch.Tensor:
        """Log-Jacobian of the (affine) stages, added to the flow's log-density."""
        total = torch.zeros(())
        for stage in [*self.parts, *self.stages]:
            total = total + stage.log_abs_det().cpu()
        return total


LatentPipeline = Preprocess  # its earlier name
