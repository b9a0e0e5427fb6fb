"""A full-covariance Gaussian: the flow with zero coupling layers, the honest baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from nflows.distributions.normal import StandardNormal
from nflows.transforms.base import Transform
from torch import nn

from flowkit.flows.base import TransformFlow

__all__ = ["CholeskyAffine", "GaussianFlow", "gaussian"]


class CholeskyAffine(Transform):
    """``u = L⁻¹ (z − μ)`` with ``L`` lower-triangular with a positive diagonal (an nflows
    ``Transform``: ``forward`` and ``inverse`` return ``(outputs, logabsdet)``)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(features))
        self.tril = nn.Parameter(torch.zeros(features, features))
        # softplus(0.5413) == 1: start as the identity.
        self.raw_diag = nn.Parameter(torch.full((features,), 0.5413))

    def scale_tril(self) -> torch.Tensor:
        return torch.tril(self.tril, -1) + torch.diag(F.softplus(self.raw_diag) + 1e-5)

    def _logdet(self, L: torch.Tensor, n: int) -> torch.Tensor:
        return torch.log(torch.diagonal(L)).sum().expand(n)

    def forward(self, inputs: torch.Tensor, context=None):
        L = self.scale_tril()
        u = torch.linalg.solve_triangular(L, (inputs - self.loc).T, upper=False).T
        return u, -self._logdet(L, inputs.shape[0])

    def inverse(self, inputs: torch.Tensor, context=None):
        L = self.scale_tril()
        return self.loc + inputs @ L.T, self._logdet(L, inputs.shape[0])

    @torch.no_grad()
    def for_export(self) -> nn.Module:
        """The same forward map with ``L⁻¹`` computed now: ONNX has no triangular solve."""
        return _FixedAffine(self)


class _FixedAffine(Transform):
    """:class:`CholeskyAffine` frozen as ``u = (z − μ) L⁻ᵀ`` with precomputed constants."""

    def __init__(self, affine: CholeskyAffine) -> None:
        super().__init__()
        L = affine.scale_tril().double()
        eye = torch.eye(len(L), dtype=L.dtype, device=L.device)
        self.register_buffer("loc", affine.loc.detach().clone())
        self.register_buffer("inv_t", torch.linalg.solve_triangular(L, eye, upper=False).T.float())
        self.register_buffer("logdet", torch.log(torch.diagonal(L)).sum().float())

    def forward(self, inputs: torch.Tensor, context=None):
        return (inputs - self.loc) @ self.inv_t, -self.logdet.expand(inputs.shape[0])


class GaussianFlow(TransformFlow):
    """``z = μ + L u``, ``u`` standard normal.

    :meth:`initialize` sets the maximum-likelihood estimate in closed form (with a small
    ridge ``shrinkage``), so training by gradient descent only fine-tunes it.
    """

    def __init__(self, features: int, shrinkage: float = 1e-3) -> None:
        super().__init__(CholeskyAffine(features), StandardNormal([features]), features)
        self.shrinkage = float(shrinkage)

    def for_export(self) -> TransformFlow:
        """An ONNX-exportable copy (see :meth:`CholeskyAffine.for_export`)."""
        return TransformFlow(self.transform.for_export(), self.base, self.features)

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
        t = self.transform
        t.loc.copy_(z.mean(0).to(t.loc.dtype))
        t.tril.copy_(torch.tril(L, -1).to(t.tril.dtype))
        # inverse softplus
        t.raw_diag.copy_((diag + torch.log(-torch.expm1(-diag))).to(t.raw_diag.dtype))


def gaussian(features: int, shrinkage: float = 1e-3) -> GaussianFlow:
    """Full-covariance Gaussian fitted in closed form (zero coupling layers)."""
    if shrinkage < 0:
        from flowkit.errors import ConfigError

        raise ConfigError(f"gaussian: shrinkage must be >= 0, got {shrinkage}")
    return GaussianFlow(features, shrinkage)
