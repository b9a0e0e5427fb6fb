"""Independent flows over the parts of a latent made of several parts side by side.

An encoder whose latent is several parts side by side (``latent_parts``, e.g. ``simclr`` with
``features=trunk+head``) gets one flow per part, and the density of the whole latent is their
product, ``log p(z) = Σ_i log p_i(z_i)``: the parts' scales and shapes never have to share one
set of couplings. The Detector builds it from any registered flow; nothing registers it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from flowkit.errors import ConfigError
from flowkit.flows.base import Flow, export_form, flow_capabilities, initialize_flow

__all__ = ["ProductFlow"]


class ProductFlow(Flow):
    """``parts[i]`` is a flow over ``part_sizes[i]`` consecutive dimensions of ``z``.

    Example:
        >>> import torch, flowkit
        >>> from flowkit.flows.product import ProductFlow
        >>> parts = [flowkit.create_flow("gaussian", features=d) for d in (3, 2)]
        >>> ProductFlow(parts, (3, 2)).log_prob(torch.zeros(4, 5)).shape
        torch.Size([4])
    """

    def __init__(self, parts: Sequence[nn.Module], part_sizes: Sequence[int]) -> None:
        super().__init__()
        if len(parts) != len(part_sizes) or not parts:
            raise ConfigError(f"{len(parts)} flows for {len(part_sizes)} latent parts")
        self.parts = nn.ModuleList(parts)
        self.part_sizes = tuple(int(b) for b in part_sizes)
        self.features = sum(self.part_sizes)
        # flowkit.export reads this: a product has an ONNX form only if every part has one
        self.not_exportable = next(
            (c["not_exportable"] for c in self._part_capabilities() if "not_exportable" in c),
            None,
        )

    def _part_capabilities(self) -> list[dict[str, Any]]:
        return [flow_capabilities(p) for p in self.parts]

    def capabilities(self) -> dict[str, Any]:
        """What every part can do (sampling, inversion...), and the product's own
        (``initialize``, ``for_export``, ``features``, ``not_exportable``)."""
        parts = self._part_capabilities()
        own = super().capabilities()
        shared = ("sample", "transform_to_noise", "inverse", "base_log_prob")
        return {k: v for k, v in own.items() if k not in shared or all(k in c for c in parts)}

    def per_part(self, z: torch.Tensor) -> list[tuple[nn.Module, torch.Tensor]]:
        """Each part's flow with its part of ``z`` (split along the last dimension)."""
        return list(zip(self.parts, torch.split(z, list(self.part_sizes), dim=-1), strict=True))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        out = [p.log_prob(b) for p, b in self.per_part(z)]
        return torch.stack(out).sum(0)

    def initialize(self, z: torch.Tensor) -> None:
        for part, block in self.per_part(z):
            initialize_flow(part, block)

    def sample(self, n: int) -> torch.Tensor:
        return torch.cat([p.sample(n) for p in self.parts], -1)

    def for_export(self) -> ProductFlow:
        """A copy whose parts are their ONNX-exportable selves, where they have one."""
        return ProductFlow([export_form(p) for p in self.parts], self.part_sizes)

    def transform_to_noise(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([p.transform_to_noise(b) for p, b in self.per_part(z)], -1)

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        return torch.cat([p.inverse(b) for p, b in self.per_part(u)], -1)

    def base_log_prob(self, u: torch.Tensor) -> torch.Tensor:
        out = [p.base_log_prob(b) for p, b in self.per_part(u)]
        return torch.stack(out).sum(0)
