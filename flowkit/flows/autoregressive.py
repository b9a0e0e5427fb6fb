"""More nflows flows: masked autoregressive (MAF) and rational-quadratic spline couplings (NSF),
each built as transform + base distribution from nflows' public transforms."""

from __future__ import annotations

from nflows.distributions.normal import StandardNormal
from nflows.transforms.autoregressive import MaskedAffineAutoregressiveTransform
from nflows.transforms.base import CompositeTransform, Transform
from nflows.transforms.coupling import PiecewiseRationalQuadraticCouplingTransform
from nflows.transforms.normalization import BatchNorm
from nflows.transforms.permutations import ReversePermutation

from flowkit.errors import ConfigError
from flowkit.flows.base import TransformFlow
from flowkit.flows.coupling import activation_fn, check_dropout, coupling_flow
from flowkit.registry import check_positive

__all__ = ["maf", "nsf"]


def maf(
    features: int,
    layers: int = 5,
    hidden: int = 256,
    blocks: int = 2,
    batch_norm: bool = False,
    dropout: float = 0.0,
    activation: str = "relu",
    random_masks: bool = False,
) -> TransformFlow:
    """Masked autoregressive flow (Papamakarios et al., NeurIPS 2017), from nflows.

    Args:
        features: latent dimension (set from the encoder).
        layers: autoregressive layers, with a reversal of the features before each.
        hidden: width of each MADE network; blocks: its residual blocks.
        batch_norm: BatchNorm between layers; dropout, activation: inside the MADE networks.
        random_masks: random MADE degrees instead of sequential ones.
    """
    check_positive("maf", features=features, layers=layers, hidden=hidden, blocks=blocks)
    check_dropout(dropout)
    act = activation_fn(activation)
    transforms: list[Transform] = []
    for _ in range(layers):  # the layout of nflows' MaskedAutoregressiveFlow
        transforms.append(ReversePermutation(features))
        transforms.append(
            MaskedAffineAutoregressiveTransform(
                features=features,
                hidden_features=hidden,
                num_blocks=blocks,
                use_residual_blocks=True,
                random_mask=random_masks,
                activation=act,
                dropout_probability=dropout,
            )
        )
        if batch_norm:
            transforms.append(BatchNorm(features))
    return TransformFlow(CompositeTransform(transforms), StandardNormal([features]), features)


def nsf(
    features: int,
    layers: int = 6,
    hidden: int = 128,
    blocks: int = 2,
    bins: int = 8,
    tail_bound: float = 5.0,
    batch_norm: bool = False,
    dropout: float = 0.0,
    activation: str = "relu",
) -> TransformFlow:
    """Neural spline flow: rational-quadratic spline couplings (Durkan et al., NeurIPS 2019).

    Args:
        features: latent dimension (set from the encoder).
        layers: coupling layers with alternating masks.
        hidden, blocks: residual conditioner width and depth.
        bins: spline bins; tail_bound: splines act on [-B, B], identity (linear tails) outside,
            so standardized latents mostly fall inside with the default 5.
        batch_norm, dropout, activation: as for realnvp.
    """
    if bins < 2 or tail_bound <= 0:
        raise ConfigError("nsf needs bins >= 2 and tail_bound > 0")
    flow = coupling_flow(
        features,
        layers,
        hidden,
        blocks,
        activation,
        dropout,
        batch_norm,
        lambda mask, net: PiecewiseRationalQuadraticCouplingTransform(
            mask, net, num_bins=bins, tails="linear", tail_bound=tail_bound
        ),
    )
    # read by flowkit.export before it tries (and fails after seconds of tracing)
    flow.not_exportable = (
        "nflows' spline transforms pick each latent's bin and tail by boolean masking, a "
        "data-dependent shape that torch.export cannot trace"
    )
    return flow
