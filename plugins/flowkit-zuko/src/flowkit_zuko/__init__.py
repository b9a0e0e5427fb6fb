"""zuko flows behind flowkit's Flow interface, registered as ``zuko/<name>``.

Every zuko flow class is available by its lower-case name (``zuko/nsf``, ``zuko/maf``,
``zuko/realnvp``, ``zuko/naf``, ...); options go to the zuko constructor
(``zuko/nsf:transforms=4,bins=16``). ``hidden`` sets ``hidden_features`` as width × depth.
"""

from __future__ import annotations

from typing import Any

import torch
import zuko

from flowkit import ConfigError, Flow, hookimpl

__version__ = "0.1.0"
__all__ = ["ZukoFlow", "zuko_flow", "available"]

# Continuous-time and Gaussian-mixture models are not bijections with a cheap inverse here.
_EXCLUDED = {
    "Flow",
    "LazyDistribution",
    "LazyTransform",
    "LazyInverse",
    "CNF",
    "GMM",
    "UnconditionalDistribution",
    "UnconditionalTransform",
    "ElementWiseTransform",
    "FFJTransform",
    "GeneralCouplingTransform",
    "MaskedAutoregressiveTransform",
}


def available() -> dict[str, type]:
    """zuko flow classes by lower-case name."""
    return {
        name.lower(): cls
        for name, cls in vars(zuko.flows).items()
        if isinstance(cls, type) and issubclass(cls, zuko.flows.Flow) and name not in _EXCLUDED
    }


class ZukoFlow(Flow):
    """Adapter: a zuko lazy flow (unconditional) as a flowkit Flow."""

    def __init__(self, flow: zuko.flows.Flow, features: int) -> None:
        super().__init__()
        self.features = int(features)
        self.flow = flow

    def transform_to_noise(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.flow()
        u, ladj = dist.transform.call_and_ladj(z)
        # zuko's base may be a scaled normal: fold its standardization into the transform.
        base = dist.base
        loc, scale = _base_params(base, u)
        return (u - loc) / scale, ladj - torch.log(scale).sum(-1)

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        dist = self.flow()
        loc, scale = _base_params(dist.base, u)
        return dist.transform.inv(u * scale + loc)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return self.flow().log_prob(z)


def _base_params(base: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    base = getattr(base, "base_dist", base)
    loc = getattr(base, "loc", torch.zeros_like(like[0]))
    scale = getattr(base, "scale", torch.ones_like(like[0]))
    return loc.to(like), scale.to(like)


def zuko_flow(
    name: str, features: int, hidden: int = 128, depth: int = 2, **options: Any
) -> ZukoFlow:
    """A zuko flow: ``zuko/nsf``, ``zuko/maf``, ``zuko/realnvp``, ... (options go to zuko)."""
    flows = available()
    if name not in flows:
        import difflib

        close = difflib.get_close_matches(name, list(flows), n=3)
        hint = f"; did you mean {', '.join('zuko/' + c for c in close)}?" if close else ""
        raise ConfigError(
            f"unknown zuko flow {name!r}{hint} Available: "
            f"{', '.join('zuko/' + n for n in sorted(flows))}"
        )
    try:
        flow = flows[name](features, context=0, hidden_features=[hidden] * depth, **options)
    except TypeError as exc:
        raise ConfigError(f"zuko/{name}: {exc}") from None
    return ZukoFlow(flow, features)


@hookimpl
def flowkit_register_flows(registry: Any) -> None:
    registry.register_namespace("zuko", zuko_flow, lister=lambda: sorted(available()))
