"""The encoder contract: image batch → latent vectors.

The minimum is a ``torch.nn.Module`` with ``encode(x) -> (B, embed_dim)`` and an integer
``embed_dim``. Optional: ``loss(x) -> scalar`` (its stage-1 objective; an encoder with one is
trained, unless it sets ``trainable = False``), ``input_shape`` ``(C, H, W)`` (checked
against the data), per-image methods that scorers use (``reconstruction_error``,
``rotation_loss``), and ``embed_blocks``, a tuple of part sizes adding up to ``embed_dim``
for a latent made of several parts side by side: each part then gets the preprocessing and a
flow of its own, and the density is their product (``simclr:features=trunk+head``).
"""

from __future__ import annotations

import abc
from typing import Any

import torch
from torch import nn

from flowkit.errors import ConfigError

__all__ = ["Encoder", "check_encoder_object", "is_trainable"]


class Encoder(nn.Module, abc.ABC):
    """Base class of flowkit encoders (``encode`` is an ``abc`` abstract method).

    Inputs are float images of shape ``(B, *input_shape)`` scaled to ``[-1, 1]`` (flowkit
    converts uint8 images in batches). Subclasses set :attr:`embed_dim` and
    :attr:`input_shape`, implement :meth:`encode` and, to be trained, :meth:`loss`.

    Example:
        >>> import torch, flowkit
        >>> enc = flowkit.create_encoder("dcgan_ae", in_channels=1, image_size=32)
        >>> enc.eval().encode(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 100])
    """

    embed_dim: int
    input_shape: tuple[int, int, int]

    @abc.abstractmethod
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent vectors ``(B, embed_dim)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)


def is_trainable(encoder: Any) -> bool:
    """Whether stage 1 trains ``encoder``: it has ``loss`` and does not say
    ``trainable = False``."""
    return callable(getattr(encoder, "loss", None)) and bool(getattr(encoder, "trainable", True))


def check_encoder_object(encoder: Any, what: str) -> Any:
    """The minimum every encoder meets, checked where it is created (one line naming
    ``what`` and what is missing)."""
    if not isinstance(encoder, nn.Module):
        raise ConfigError(f"{what} returned {type(encoder).__name__}, not a torch.nn.Module")
    if not callable(getattr(encoder, "encode", None)):
        raise ConfigError(f"{what} has no encode(x) method")
    dim = getattr(encoder, "embed_dim", None)
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ConfigError(f"{what} needs an integer embed_dim >= 1, got {dim!r}")
    if getattr(encoder, "trainable", False) and not callable(getattr(encoder, "loss", None)):
        raise ConfigError(f"{what} says trainable = True but has no loss(x) method")
    return encoder
