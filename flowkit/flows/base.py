"""The flow contract (a density over latent vectors) and flows built as transform + base.

The minimum a flow needs is to be a ``torch.nn.Module`` with ``log_prob(z) -> (B,)``: that is
all flowkit calls to train and score it. Optional methods unlock more:

- ``sample(n) -> (n, D)``: sampling (and the contract check of it);
- ``transform_to_noise(z) -> u`` and ``inverse(u) -> z``: the invertibility check; with
  ``base_log_prob(u)`` as well, :func:`flowkit.testing.check_flow` verifies ``log_prob``
  against the change-of-variables formula with an autograd Jacobian;
- ``initialize(z)``: a data-dependent initialisation, called once before training.

``transform_to_noise`` means what it means in nflows: it returns the noise only.

:class:`TransformFlow` builds a flow the way nflows and zuko do, from a *transform* (called as
``transform(z) -> (u, logabsdet)``, with ``transform.inverse(u) -> (z, logabsdet)``: nflows'
public ``Transform`` protocol) and a *base distribution* (``log_prob(u)``, ``sample(n)``).
"""

from __future__ import annotations

import abc
from typing import Any

import torch
from torch import nn

from flowkit.errors import ConfigError

__all__ = [
    "Flow",
    "TransformFlow",
    "check_flow_object",
    "check_log_prob",
    "export_form",
    "initialize_flow",
]


class Flow(nn.Module, abc.ABC):
    """Base class of flowkit flows: only :meth:`log_prob` is required (an ``abc`` abstract
    method, so a subclass without it cannot be instantiated)."""

    @abc.abstractmethod
    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Log-density ``(B,)`` of latents ``z`` of shape ``(B, D)``."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.log_prob(z)


class TransformFlow(Flow):
    """A normalizing flow as transform + base distribution (the nflows and zuko design).

    Args:
        transform: ``transform(z) -> (u, logabsdet)`` and ``transform.inverse(u) ->
            (z, logabsdet)``, e.g. an ``nflows.transforms.CompositeTransform``.
        base: a distribution over ``u`` with ``log_prob(u)`` and ``sample(n)``, e.g.
            ``nflows.distributions.StandardNormal([features])``.
        features: the latent dimension ``D``.
    """

    def __init__(self, transform: nn.Module, base: nn.Module, features: int) -> None:
        super().__init__()
        self.features = int(features)
        self.transform = transform
        self.base = base

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        u, logabsdet = self.transform(z)
        return self.base_log_prob(u) + logabsdet

    def base_log_prob(self, u: torch.Tensor) -> torch.Tensor:
        return self.base.log_prob(u)

    def transform_to_noise(self, z: torch.Tensor) -> torch.Tensor:
        """The noise ``u`` for latents ``z`` (as nflows' method of the same name)."""
        return self.transform(z)[0]

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        """Latents ``z`` for noise ``u``."""
        return self.transform.inverse(u)[0]

    def sample(self, n: int) -> torch.Tensor:
        """``n`` samples ``(n, features)``, in the flow's dtype and device."""
        ref = next(self.parameters(), None)
        u = self.base.sample(n)
        return self.inverse(u if ref is None else u.to(ref))


def check_flow_object(flow: Any, what: str) -> Any:
    """The minimum every flow meets, checked where it is created (one line naming ``what``,
    e.g. ``"flow 'probe' (plugin 'mine')"``, and what is missing)."""
    if not isinstance(flow, nn.Module):
        raise ConfigError(f"{what} returned {type(flow).__name__}, not a torch.nn.Module")
    if not callable(getattr(flow, "log_prob", None)):
        raise ConfigError(f"{what} has no log_prob(z) method, the one method a flow needs")
    return flow


def check_log_prob(flow: nn.Module, z: torch.Tensor) -> None:
    """``log_prob`` must return one value per latent: refuse anything else in one line."""
    out = flow.log_prob(z)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(z),):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(
            f"flow {type(flow).__name__}: log_prob(z) must return shape ({len(z)},) for "
            f"{len(z)} latents, got {got}"
        )


def export_form(flow: nn.Module) -> nn.Module:
    """The flow's optional exportable equivalent (``for_export()``, e.g. the Gaussian's
    precomputed L⁻¹), or the flow itself."""
    return flow.for_export() if callable(getattr(flow, "for_export", None)) else flow


def initialize_flow(flow: nn.Module, z: torch.Tensor) -> None:
    """Call the flow's optional data-dependent ``initialize(z)``, if it has one."""
    init = getattr(flow, "initialize", None)
    if callable(init):
        init(z)
