"""Real NVP (Dinh et al., ICLR 2017) from nflows: the reference flow of flowkit.

nflows 0.14's ``AffineCouplingTransform`` bounds every scale to ``(0.001, 1.001]`` (its
issue #49), so the data → noise direction can only contract. Standardized latents usually
have low-variance directions that must be *expanded* to become standard normal, so flowkit's
coupling takes the scale activation as an option, as nflows' unreleased fix (PR #52) does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from nflows.distributions.normal import StandardNormal
from nflows.flows.base import Flow as NflowsBase
from nflows.nn.nets import ResidualNet
from nflows.transforms.base import CompositeTransform
from nflows.transforms.coupling import AffineCouplingTransform
from nflows.transforms.normalization import BatchNorm

from flowkit.errors import ConfigError
from flowkit.flows.base import NflowsFlow
from flowkit.registry import check_positive

__all__ = [
    "realnvp",
    "coupling_flow",
    "activation_fn",
    "ScaledAffineCoupling",
    "SCALE_ACTIVATIONS",
    "ACTIVATIONS",
]

ACTIVATIONS = {"relu": F.relu, "elu": F.elu, "gelu": F.gelu, "tanh": torch.tanh}


def _tanh_scale(x: torch.Tensor) -> torch.Tensor:
    # log-scale bounded by tanh, as in the Real NVP paper: scales in (e^-2, e^2), 1 at zero.
    return torch.exp(2.0 * torch.tanh(x / 2.0))


def _softplus_scale(x: torch.Tensor) -> torch.Tensor:
    # nflows' GENERAL_SCALE_ACTIVATION from its fix for issue #49: scales in (0.001, 3].
    return (F.softplus(x) + 1e-3).clamp(0, 3)


def _sigmoid_scale(x: torch.Tensor) -> torch.Tensor:
    # nflows 0.14's default (contract only), kept for comparison with older results.
    return torch.sigmoid(x + 2) + 1e-3


# Module-level functions, not lambdas: a fitted Detector must pickle (joblib, multiprocessing).
SCALE_ACTIVATIONS = {"tanh": _tanh_scale, "softplus": _softplus_scale, "sigmoid": _sigmoid_scale}


class ScaledAffineCoupling(AffineCouplingTransform):
    """nflows' affine coupling with a configurable scale activation."""

    def __init__(self, mask: torch.Tensor, transform_net_create_fn, scale: str = "tanh") -> None:
        super().__init__(mask, transform_net_create_fn)
        self._scale_fn = SCALE_ACTIVATIONS[scale]

    def _scale_and_shift(self, transform_params: torch.Tensor):
        unconstrained = transform_params[:, self.num_transform_features :, ...]
        shift = transform_params[:, : self.num_transform_features, ...]
        return self._scale_fn(unconstrained), shift


def realnvp(
    features: int,
    layers: int = 8,
    hidden: int = 256,
    blocks: int = 2,
    batch_norm: bool = False,
    dropout: float = 0.0,
    activation: str = "relu",
    scale: str = "tanh",
) -> NflowsFlow:
    """Real NVP: affine couplings with alternating masks and residual conditioners (nflows).

    Args:
        features: latent dimension (set from the encoder).
        layers: number of coupling layers.
        hidden: width of each coupling's residual network.
        blocks: residual blocks per coupling network.
        batch_norm: nflows BatchNorm transform between coupling layers.
        dropout: dropout inside the coupling networks.
        activation: relu, elu, gelu or tanh, inside the coupling networks.
        scale: the coupling's scale activation: tanh (Real NVP's bounded log-scale),
            softplus, or sigmoid (nflows 0.14's contract-only default).
    """
    if scale not in SCALE_ACTIVATIONS:
        raise ConfigError(f"realnvp scale must be one of {sorted(SCALE_ACTIVATIONS)}")

    return NflowsFlow(
        coupling_flow(
            features,
            layers,
            hidden,
            blocks,
            activation,
            dropout,
            batch_norm,
            lambda mask, net: ScaledAffineCoupling(mask, net, scale),
        ),
        features,
    )


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The conditioner activation called ``name``, or a ConfigError listing the choices."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


def check_dropout(dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")


def coupling_flow(
    features: int,
    layers: int,
    hidden: int,
    blocks: int,
    activation: str,
    dropout: float,
    batch_norm: bool,
    make_coupling: Callable[..., Any],
) -> NflowsBase:
    """Couplings with alternating masks and residual conditioners over a standard normal."""
    if features < 2:
        raise ConfigError(f"coupling flows need at least 2 features, got {features}")
    check_positive("coupling flow", layers=layers, hidden=hidden, blocks=blocks)
    check_dropout(dropout)
    act = activation_fn(activation)

    def conditioner(in_features: int, out_features: int) -> ResidualNet:
        return ResidualNet(
            in_features,
            out_features,
            hidden_features=hidden,
            num_blocks=blocks,
            activation=act,
            dropout_probability=dropout,
        )

    mask = torch.ones(features)
    mask[::2] = -1
    transforms = []
    for _ in range(layers):
        transforms.append(make_coupling(mask.clone(), conditioner))
        mask *= -1
        if batch_norm:
            transforms.append(BatchNorm(features))
    return NflowsBase(CompositeTransform(transforms), StandardNormal([features]))
