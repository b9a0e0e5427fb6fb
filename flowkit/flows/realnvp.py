"""Real NVP (Dinh et al., ICLR 2017) from nflows: the reference flow of flowkit."""

from __future__ import annotations

import torch.nn.functional as F
from nflows.flows.realnvp import SimpleRealNVP

from flowkit.errors import ConfigError
from flowkit.flows.base import NflowsFlow

__all__ = ["realnvp"]

_ACTIVATIONS = {
    "relu": F.relu, "elu": F.elu, "gelu": F.gelu, "tanh": F.tanh,
}


def realnvp(features: int, layers: int = 8, hidden: int = 256, blocks: int = 2,
            batch_norm: bool = False, dropout: float = 0.0, activation: str = "relu") -> NflowsFlow:
    """Real NVP: affine couplings with alternating masks, residual conditioners (nflows).

    Args:
        features: latent dimension (set from the encoder).
        layers: number of coupling layers.
        hidden: width of each coupling's residual network.
        blocks: residual blocks per coupling network.
        batch_norm: nflows BatchNorm transform between coupling layers.
        dropout: dropout inside the coupling networks.
        activation: relu, elu, gelu or tanh.
    """
    if features < 2:
        raise ConfigError(f"realnvp needs at least 2 features, got {features}")
    if activation not in _ACTIVATIONS:
        raise ConfigError(f"realnvp activation must be one of {sorted(_ACTIVATIONS)}")
    flow = SimpleRealNVP(
        features=features,
        hidden_features=hidden,
        num_layers=layers,
        num_blocks_per_layer=blocks,
        activation=_ACTIVATIONS[activation],
        dropout_probability=dropout,
        batch_norm_between_layers=batch_norm,
    )
    return NflowsFlow(flow, features)
