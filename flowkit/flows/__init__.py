"""Flows: densities over latent vectors."""

from flowkit.flows.base import Flow, TransformFlow
from flowkit.flows.gaussian import GaussianFlow, gaussian
from flowkit.flows.realnvp import realnvp

__all__ = ["Flow", "TransformFlow", "GaussianFlow", "gaussian", "realnvp"]
