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
from flowkit.registry import optional_members

__all__ = [
    "Flow",
    "TransformFlow",
    "CAPABILITIES",
    "flow_capabilities",
    "check_flow_object",
    "check_log_prob",
    "export_form",
    "initialize_flow",
]

#: The optional capabilities a flow may declare (members of :class:`Flow`, ``None`` there),
#: and what each gives.
CAPABILITIES: dict[str, str] = {
    "sample": "sample(n) -> (n, D): sampling, and its contract check",
    "transform_to_noise": "transform_to_noise(z) -> u: the noise (with inverse: the "
    "invertibility check)",
    "inverse": "inverse(u) -> z: latents for noise",
    "base_log_prob": "base_log_prob(u): with transform_to_noise, log_prob is checked against "
    "the change of variables with an autograd Jacobian",
    "initialize": "initialize(z): a data-dependent initialisation, once before training",
    "for_export": "for_export() -> module: an equivalent module for ONNX export",
    "not_exportable": "a reason (text): flowkit export refuses the flow in one line",
    "features": "the latent size D the flow was built for",
}


class Flow(nn.Module, abc.ABC):
    """Base class of flowkit flows: only :meth:`log_prob` is required (an ``abc`` abstract
    method, so a subclass without it cannot be instantiated). The optional capabilities
    (:data:`CAPABILITIES`) are declared here with ``None``: a flow that has one defines it."""

    features: int | None = None
    not_exportable: str | None = None
    sample: Any = None
    transform_to_noise: Any = None
    inverse: Any = None
    base_log_prob: Any = None
    initialize: Any = None
    for_export: Any = None

    def capabilities(self) -> dict[str, Any]:
        """The optional capabilities this flow has, by name (:data:`CAPABILITIES`)."""
        return optional_members(self, CAPABILITIES)

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


def flow_capabilities(flow: Any) -> dict[str, Any]:
    """The optional capabilities ``flow`` has, by name (:data:`CAPABILITIES`): a
    :class:`Flow`'s own declaration (a product of flows has what all its parts have), or, for
    a plain ``nn.Module`` from a plugin, the members it defines."""
    if isinstance(flow, Flow):
        return flow.capabilities()
    return optional_members(flow, CAPABILITIES)


def check_flow_object(flow: Any, what: str) -> Any:
    """The minimum every flow meets, checked where it is created (one line naming ``what``,
    e.g. ``"flow 'probe' (plugin 'mine')"``, and what is missing)."""
    if not isinstance(flow, nn.Module):
        raise ConfigError(f"{what} returned {type(flow).__name__}, not a torch.nn.Module")
    if not callable(optional_members(flow, ("log_prob",)).get("log_prob")):
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
    own = flow_capabilities(flow).get("for_export")
    return own() if callable(own) else flow


def initialize_flow(flow: nn.Module, z: torch.Tensor) -> None:
    """Call the flow's optional data-dependent ``initialize(z)``, if it has one."""
    init = flow_capabilities(flow).get("initialize")
    if callable(init):
        init(z)
