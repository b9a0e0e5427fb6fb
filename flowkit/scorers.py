"""Anomaly scorers: detector outputs → score per image, higher = more anomalous.

A scorer is fitted on *normal* data only (the training latents and the validation split of
the normal training images) and saved inside the Detector artifact.

- ``nll``: negative log-likelihood of the latent under the flow (the paper's score).
- ``bpd``: the NLL in bits per latent dimension (same ranking, comparable across sizes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from flowkit.detector import Detector

__all__ = ["ScoreContext", "Scorer", "NLLScorer", "BPDScorer"]


@dataclass
class ScoreContext:
    """What a scorer may use for a batch of images.

    Attributes:
        log_prob: log-likelihood per image ``(B,)`` (flow density + preprocessing Jacobian).
        latents: the preprocessed latents the flow sees ``(B, D)``.
        images: the uint8 images ``(B, C, H, W)``, when available.
        detector: the fitted detector (its encoder, flow and preprocessing).
    """

    log_prob: torch.Tensor
    latents: torch.Tensor
    images: torch.Tensor | None = None
    detector: Detector | None = None


class Scorer:
    """Base class: override :meth:`score`, and :meth:`fit` if the scorer has state.

    State that must be saved goes in :meth:`state_dict` as tensors, floats or ints.
    """

    name = "scorer"
    needs_images = False

    def fit(self, train: ScoreContext, val: ScoreContext) -> Scorer:
        return self

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.name} scorer has no state, got {sorted(state)}")


class NLLScorer(Scorer):
    """Negative log-likelihood under the flow (higher = less likely = more anomalous)."""

    name = "nll"

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        return -ctx.log_prob


class BPDScorer(Scorer):
    """Negative log-likelihood in bits per latent dimension."""

    name = "bpd"

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        return -ctx.log_prob / (ctx.latents.shape[1] * math.log(2.0))


def nll() -> NLLScorer:
    """Negative log-likelihood of the latent (the paper's score; the default)."""
    return NLLScorer()


def bpd() -> BPDScorer:
    """NLL in bits per latent dimension (same ranking as nll)."""
    return BPDScorer()
