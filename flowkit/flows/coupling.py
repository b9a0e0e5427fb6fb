"""Pieces shared by the coupling flows (realnvp, nsf): conditioner networks, the mask
schedule, option checks, and an affine coupling with a configurable scale.

nflows 0.14's ``AffineCouplingTransform`` bounds every scale to ``(0.001, 1.001]`` (its
issue #49), so the data → noise direction can only contract. Standardized latents usually
have low-variance directions that must be *expanded* to become standard normal, so flowkit's
:class:`AffineCoupling` takes the scale activation as an option, as nflows' unreleased fix
(PR #52) does. It is built on nflows' public ``Transform`` interface (``forward`` and
``inverse`` returning ``(outputs, logabsdet)``), not on nflows' private hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from nflows.distributions.normal import StandardNormal
from nflows.nn.nets import ResidualNet
from nflows.transforms.base import CompositeTransform, Transform
from nflows.transforms.normalization import BatchNorm

from flowkit.errors import ConfigError
from flowkit.flows.base import TransformFlow
from flowkit.registry import check_positive

__all__ = [
    "ACTIVATIONS",
    "SCALE_ACTIVATIONS",
    "AffineCoupling",
    "AlternatingCouplings",
    "activation_fn",
    "check_dropout",
    "coupling_flow",
]

ACTIVATIONS = {"relu": F.relu, "elu": F.elu, "gelu": F.gelu, "tanh": torch.tanh}


def _tanh_scale(x: torch.Tensor) -> torch.Tensor:
    # log-scale bounded by tanh, as in the Real NVP paper: scales in (e^-2, e^2), 1 at zero.
    return torch.exp(_tanh_log_scale(x))


def _tanh_log_scale(x: torch.Tensor) -> torch.Tensor:
    return 2.0 * torch.tanh(x / 2.0)


def _softplus_scale(x: torch.Tensor) -> torch.Tensor:
    # nflows' GENERAL_SCALE_ACTIVATION from its fix for issue #49: scales in (0.001, 3].
    return (F.softplus(x) + 1e-3).clamp(0, 3)


def _sigmoid_scale(x: torch.Tensor) -> torch.Tensor:
    # nflows 0.14's default (contract only), kept for comparison with older results.
    return torch.sigmoid(x + 2) + 1e-3


# Module-level functions, not lambdas: a fitted Detector must pickle (joblib, multiprocessing).
SCALE_ACTIVATIONS = {"tanh": _tanh_scale, "softplus": _softplus_scale, "sigmoid": _sigmoid_scale}
# Where the log-scale has a closed form, the coupling uses it (one exp instead of exp + log).
_LOG_SCALES = {"tanh": _tanh_log_scale}


class AffineCoupling(Transform):
    """Affine coupling ``y_T = x_T · s(x_I) + t(x_I)`` on the features where ``mask > 0``;
    the others pass through and condition the network (nflows' mask convention)."""

    def __init__(
        self,
        mask: torch.Tensor,
        transform_net_create_fn: Callable[[int, int], torch.nn.Module],
        scale: str = "tanh",
    ) -> None:
        super().__init__()
        if scale not in SCALE_ACTIVATIONS:
            raise ConfigError(f"scale must be one of {sorted(SCALE_ACTIVATIONS)}, got {scale!r}")
        index = torch.arange(len(mask))
        self.register_buffer("identity_features", index[mask <= 0])
        self.register_buffer("transform_features", index[mask > 0])
        self.scale = scale
        n_id, n_tr = len(self.identity_features), len(self.transform_features)
        self.transform_net = transform_net_create_fn(n_id, 2 * n_tr)
        # Alternating masks (the usual case) split and merge with strided views, about six
        # times cheaper than gathering and scattering with index tensors; same numbers.
        even, odd = index[0::2], index[1::2]
        self._identity_offset: int | None = None
        for offset, (ident, trans) in enumerate(((even, odd), (odd, even))):
            if torch.equal(self.identity_features, ident) and torch.equal(
                self.transform_features, trans
            ):
                self._identity_offset = offset

    def _log_scale_shift(self, identity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = self.transform_net(identity)
        n = len(self.transform_features)
        raw, shift = params[:, n:], params[:, :n]
        log_scale = _LOG_SCALES.get(self.scale)
        if log_scale is not None:
            return log_scale(raw), shift
        return torch.log(SCALE_ACTIVATIONS[self.scale](raw)), shift

    def couple(
        self, identity: torch.Tensor, other: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The transformed half and the log-determinant, given the two halves."""
        log_scale, shift = self._log_scale_shift(identity)
        return other * torch.exp(log_scale) + shift, log_scale.sum(1)

    def uncouple(
        self, identity: torch.Tensor, other: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The inverse of :meth:`couple`."""
        log_scale, shift = self._log_scale_shift(identity)
        return (other - shift) * torch.exp(-log_scale), -log_scale.sum(1)

    @property
    def identity_offset(self) -> int | None:
        """0 or 1 where the mask alternates (identity = even or odd features), else None."""
        return self._identity_offset

    def _split(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = self._identity_offset
        if k is None:
            return inputs[:, self.identity_features], inputs[:, self.transform_features]
        return inputs[:, k::2], inputs[:, 1 - k :: 2]

    def _merge(self, identity: torch.Tensor, transformed: torch.Tensor) -> torch.Tensor:
        if self._identity_offset is not None:
            evens, odds = (
                (identity, transformed) if self._identity_offset == 0 else (transformed, identity)
            )
            return _interleave(evens, odds)
        out = torch.empty(
            identity.shape[0],
            identity.shape[1] + transformed.shape[1],
            dtype=identity.dtype,
            device=identity.device,
        )
        out[:, self.identity_features] = identity
        out[:, self.transform_features] = transformed
        return out

    def forward(self, inputs: torch.Tensor, context: Any = None):
        identity, other = self._split(inputs)
        outputs, logabsdet = self.couple(identity, other)
        return self._merge(identity, outputs), logabsdet

    def inverse(self, inputs: torch.Tensor, context: Any = None):
        identity, other = self._split(inputs)
        outputs, logabsdet = self.uncouple(identity, other)
        return self._merge(identity, outputs), logabsdet


class AlternatingCouplings(CompositeTransform):
    """nflows' ``CompositeTransform`` over couplings with alternating masks, which splits the
    input into its even and odd features once and merges them once, instead of in every
    layer (the same function and parameters; a stack with anything else in it, such as
    BatchNorm, runs layer by layer as usual)."""

    def _halves_path(self) -> bool:
        return all(
            isinstance(t, AffineCoupling) and t.identity_offset is not None
            for t in self._transforms
        )

    def _run(self, inputs: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        halves = [inputs[:, 0::2], inputs[:, 1::2]]
        total = inputs.new_zeros(inputs.shape[0])
        layers = list(self._transforms)
        for t in reversed(layers) if inverse else layers:
            k = t.identity_offset
            step = t.uncouple if inverse else t.couple
            halves[1 - k], logabsdet = step(halves[k], halves[1 - k])
            total = total + logabsdet
        return _interleave(halves[0], halves[1]), total

    def forward(self, inputs: torch.Tensor, context: Any = None):
        if context is None and self._halves_path():
            return self._run(inputs, inverse=False)
        return super().forward(inputs, context)

    def inverse(self, inputs: torch.Tensor, context: Any = None):
        if context is None and self._halves_path():
            return self._run(inputs, inverse=True)
        return super().inverse(inputs, context)


def _interleave(evens: torch.Tensor, odds: torch.Tensor) -> torch.Tensor:
    """Columns ``evens[0], odds[0], evens[1], ...`` (``evens`` may have one more)."""
    if evens.shape[1] == odds.shape[1]:
        return torch.stack((evens, odds), 2).flatten(1)
    head = torch.stack((evens[:, :-1], odds), 2).flatten(1)
    return torch.cat((head, evens[:, -1:]), 1)


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
    make_coupling: Callable[..., Transform],
) -> TransformFlow:
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
    transforms: list[Transform] = []
    for _ in range(layers):
        transforms.append(make_coupling(mask.clone(), conditioner))
        mask *= -1
        if batch_norm:
            transforms.append(BatchNorm(features))
    return TransformFlow(AlternatingCouplings(transforms), StandardNormal([features]), features)
