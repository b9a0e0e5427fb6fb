"""A full-covariance Gaussian: the flow with zero coupling layers, the honest baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flowkit.flows.base import Flow

__all__ = ["GaussianFlow", "gaussian"]


class GaussianFlow(Flow):
    """``z = μ + L u`` with ``L`` lower-triangular, positive diagonal.

    :meth:`initialize` sets the maximum-likelihood estimate in closed form (with a small
    ridge ``shrinkage``), so training by gradient descent only fine-tunes it.
    """

    def __init__(self, features: int, shrinkage: float = 1e-3) -> None:
        super().__init__()
        self.features = int(features)
        self.shrinkage = float(shrinkage)
        self.loc = nn.Parameter(torch.zeros(features))
        self.tril = nn.Parameter(torch.zeros(features, features))
        # softplus(0.5413) == 1: start as the standard normal.
        self.raw_diag = nn.Parameter(torch.full((features,), 0.5413))

    def scale_tril(self) -> torch.Tensor:
        return torch.tril(self.tril, -1) + torch.diag(F.softplus(self.raw_diag) + 1e-5)

    def transform_to_noise(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        L = self.scale_tril()
        u = torch.linalg.solve_triangular(L, (z - self.loc).T, upper=False).T
        logabsdet = -torch.log(torch.diagonal(L)).sum().expand(z.shape[0])
        return u, logabsdet

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        return self.loc + u @ self.scale_tril().T

    @torch.no_grad()
    def initialize(self, z: torch.Tensor) -> None:
        z = z.double()
        cov = torch.cov(z.T).reshape(self.features, self.features)
        cov += (
            self.shrinkage
            * torch.eye(self.features, dtype=z.dtype, device=z.device)
            * cov.diagonal().mean()
        )
        L = torch.linalg.cholesky(cov)
        diag = torch.diagonal(L).clamp_min(2e-5) - 1e-5
        self.loc.copy_(z.mean(0).float())
        self.tril.copy_(torch.tril(L, -1).float())
        # inverse softplus
        self.raw_diag.copy_((diag + torch.log(-torch.expm1(-diag))).float())


def gaussian(features: int, shrinkage: float = 1e-3) -> GaussianFlow:
    """Full-covariance Gaussian fitted in closed form (zero coupling layers)."""
    return GaussianFlow(features, shrinkage)
