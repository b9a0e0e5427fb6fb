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
    """Adapter: a zuko lazy flow (unconditional) as a flowkit Flow.

    zuko builds a flow as transform + base distribution (``flow()`` returns both); the
    adapter uses its public API only and keeps zuko's own base, whatever it is.
    """

    def __init__(self, flow: zuko.flows.Flow, features: int) -> None:
        super().__init__()
        self.features = int(features)
        self.flow = flow

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return self.flow().log_prob(z)

    def transform_to_noise(self, z: torch.Tensor) -> torch.Tensor:
        return self.flow().transform(z)

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        return self.flow().transform.inv(u)

    def base_log_prob(self, u: torch.Tensor) -> torch.Tensor:
        return self.flow().base.log_prob(u)

    def sample(self, n: int) -> torch.Tensor:
        return self.flow().sample((n,))


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
