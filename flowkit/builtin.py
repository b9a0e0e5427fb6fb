"""flowkit's own components, registered through the public hooks like any plugin.

One explicit table: kind → name → ``"module:factory"``. Modules are imported when their kind's
hook runs, so listing flows does not import the dataset code.
"""

from __future__ import annotations

import importlib

from flowkit.hookspecs import hookimpl
from flowkit.registry import Registry

__all__ = ["BUILTINS"]

BUILTINS: dict[str, dict[str, str]] = {
    "encoders": {
        "dcgan_ae": "flowkit.encoders.dcgan:dcgan_ae",
        "simclr": "flowkit.encoders.selfsup:simclr",
        "rotnet": "flowkit.encoders.selfsup:rotnet",
        "csi": "flowkit.encoders.selfsup:csi",
    },
    "flows": {
        "realnvp": "flowkit.flows.realnvp:realnvp",
        "gaussian": "flowkit.flows.gaussian:gaussian",
        "maf": "flowkit.flows.autoregressive:maf",
        "nsf": "flowkit.flows.autoregressive:nsf",
        "patchflow": "flowkit.flows.spatial:patchflow",
        "patchknn": "flowkit.flows.spatial:patchknn",
    },
    "datasets": {
        "digits": "flowkit.data.sources:digits",
        "mnist": "flowkit.data.sources:mnist",
        "cifar10": "flowkit.data.sources:cifar10",
        "svhn": "flowkit.data.sources:svhn",
        "fake": "flowkit.data.sources:fake",
        "folder": "flowkit.data.files:folder",
        "mvtec": "flowkit.data.files:mvtec",
        "mtd": "flowkit.data.files:mtd",
        "digits_inverted": "flowkit.data.ood:digits_inverted",
        "digits_flipped": "flowkit.data.ood:digits_flipped",
        "digits_blurred": "flowkit.data.ood:digits_blurred",
        "digits_dimmed": "flowkit.data.ood:digits_dimmed",
        "digits_superposed": "flowkit.data.ood:digits_superposed",
        "uniform_noise": "flowkit.data.ood:uniform_noise",
        "constant": "flowkit.data.ood:constant",
        "sample_patches": "flowkit.data.ood:sample_patches",
    },
    "scorers": {
        "nll": "flowkit.scorers:nll",
        "bpd": "flowkit.scorers:bpd",
        "typicality": "flowkit.scorers:typicality",
        "recon": "flowkit.scorers:recon",
        "knn": "flowkit.scorers:knn",
        "complexity": "flowkit.scorers:complexity",
        "rotation": "flowkit.scorers:rotation",
        "combo": "flowkit.scorers:combo",
        "map_max": "flowkit.scorers:map_max",
        "map_topk": "flowkit.scorers:map_topk",
    },
}


def _register(registry: Registry, kind: str) -> None:
    for name, target in BUILTINS[kind].items():
        module, _, attr = target.partition(":")
        registry.register(name)(getattr(importlib.import_module(module), attr))


@hookimpl
def flowkit_register_encoders(registry: Registry) -> None:
    _register(registry, "encoders")


@hookimpl
def flowkit_register_flows(registry: Registry) -> None:
    _register(registry, "flows")


@hookimpl
def flowkit_register_datasets(registry: Registry) -> None:
    _register(registry, "datasets")


@hookimpl
def flowkit_register_scorers(registry: Registry) -> None:
    _register(registry, "scorers")
