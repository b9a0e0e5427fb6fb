"""flowkit's own components, registered through the public hooks like any plugin."""

from __future__ import annotations

from flowkit.hookspecs import hookimpl
from flowkit.registry import Registry


@hookimpl
def flowkit_register_encoders(registry: Registry) -> None:
    from flowkit.encoders.dcgan import dcgan_ae
    from flowkit.encoders.selfsup import rotnet, simclr

    registry.register("dcgan_ae")(dcgan_ae)
    registry.register("simclr")(simclr)
    registry.register("rotnet")(rotnet)


@hookimpl
def flowkit_register_flows(registry: Registry) -> None:
    from flowkit.flows.autoregressive import maf, nsf
    from flowkit.flows.gaussian import gaussian
    from flowkit.flows.realnvp import realnvp

    registry.register("realnvp")(realnvp)
    registry.register("gaussian")(gaussian)
    registry.register("maf")(maf)
    registry.register("nsf")(nsf)


@hookimpl
def flowkit_register_datasets(registry: Registry) -> None:
    from flowkit.data import sources
    from flowkit.data.files import folder, mvtec

    for name in ("digits", "mnist", "cifar10", "svhn", "fake"):
        registry.register(name)(getattr(sources, name))
    registry.register("folder")(folder)
    registry.register("mvtec")(mvtec)
    from flowkit.data import ood

    for name in ood.__all__:
        registry.register(name)(getattr(ood, name))


@hookimpl
def flowkit_register_scorers(registry: Registry) -> None:
    from flowkit import scorers

    for name in ("nll", "bpd", "typicality", "recon", "knn", "complexity", "rotation", "combo"):
        registry.register(name)(getattr(scorers, name))
