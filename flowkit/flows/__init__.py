"""Flows: densities over latent vectors."""

from flowkit.flows.base import Flow, NflowsFlow
from flowkit.flows.gaussian import GaussianFlow, gaussian
from flowkit.flows.realnvp import realnvp

__all__ = ["Flow", "NflowsFlow", "GaussianFlow", "gaussian", "realnvp"]
