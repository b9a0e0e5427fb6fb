"""Real NVP (Dinh et al., ICLR 2017) on nflows: the reference flow of flowkit.

Affine couplings (:class:`flowkit.flows.coupling.AffineCoupling`, with a scale that can
expand as well as contract) with alternating masks, nflows' residual conditioners and
optional nflows BatchNorm between them, over nflows' standard normal.
"""

from __future__ import annotations

from flowkit.flows.base import TransformFlow
from flowkit.flows.coupling import AffineCoupling, coupling_flow

__all__ = ["realnvp"]


def realnvp(
    features: int,
    layers: int = 8,
    hidden: int = 64,
    blocks: int = 1,
    batch_norm: bool = False,
    dropout: float = 0.0,
    activation: str = "relu",
    scale: str = "tanh",
) -> TransformFlow:
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
    return coupling_flow(
        features,
        layers,
        hidden,
        blocks,
        activation,
        dropout,
        batch_norm,
        lambda mask, net: AffineCoupling(mask, net, scale),
    )
