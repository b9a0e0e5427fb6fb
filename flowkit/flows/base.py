"""The flow interface (a density over latent vectors) and the nflows adapter."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["Flow", "NflowsFlow"]


class Flow(nn.Module):
    """Base class of flowkit flows: a normalizing flow ``z ↔ u`` with ``u`` standard normal.

    Subclasses implement :meth:`transform_to_noise` and :meth:`inverse`; :meth:`log_prob` and
    :meth:`sample` follow. Backends with their own ``log_prob`` override it.
    """

    features: int

    def transform_to_noise(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(u, log|det ∂u/∂z|)`` for latents ``z`` of shape ``(B, features)``."""
        raise NotImplementedError

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        """Latents ``z`` for base samples ``u`` (the inverse of :meth:`transform_to_noise`)."""
        raise NotImplementedError

    def base_log_prob(self, u: torch.Tensor) -> torch.Tensor:
        return -0.5 * (u.pow(2).sum(1) + u.shape[1] * math.log(2 * math.pi))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Log-density ``(B,)`` of latents ``z``."""
        u, logabsdet = self.transform_to_noise(z)
        return self.base_log_prob(u) + logabsdet

    def sample(self, n: int) -> torch.Tensor:
        """``n`` samples ``(n, features)``."""
        ref = next(self.parameters(), torch.empty(0))
        return self.inverse(torch.randn(n, self.features, device=ref.device, dtype=ref.dtype))

    def initialize(self, z: torch.Tensor) -> None:
        """Data-dependent initialisation from training latents (default: nothing)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.log_prob(z)


class NflowsFlow(Flow):
    """Adapter for any ``nflows.flows.Flow`` (transform + standard-normal base)."""

    def __init__(self, flow: nn.Module, features: int) -> None:
        super().__init__()
        self.features = int(features)
        self.flow = flow

    def transform_to_noise(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.flow._transform(z)

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        return self.flow._transform.inverse(u)[0]

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return self.flow.log_prob(z)
