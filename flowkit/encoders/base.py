"""The encoder contract: image batch → latent vectors.

The minimum is a ``torch.nn.Module`` with ``encode(x) -> (B, embed_dim)`` and an integer
``embed_dim``. Optional: ``loss(x) -> scalar`` (its stage-1 objective; an encoder with one is
trained, unless it sets ``trainable = False``) and ``input_shape`` ``(C, H, W)`` (checked
against the data).

The optional *capabilities* (:data:`CAPABILITIES`) are declared on :class:`Encoder` with
their defaults; an encoder that has one overrides it, and the core asks for it only through
the functions below, never by probing attributes:

- ``latent_parts``: a tuple of part sizes adding up to ``embed_dim`` for a latent made of
  several parts side by side (:func:`latent_parts`); each part then gets the preprocessing and
  a flow of its own, and the density is their product (``simclr:features=trunk+head``).
- ``augment(x) -> x'``: random views of a batch of float images in ``[-1, 1]``, same shape
  (:func:`views`); the Detector's ``flow_augment`` embeds such copies. Without it, flowkit's
  default random affine warp is used.
- ``reconstruction_error(x) -> (B,)``: per-image reconstruction error (the ``recon`` scorer).
- ``rotation_loss(x) -> (B,)``: per-image rotation-prediction loss (the ``rotation`` scorer).

:func:`flowkit.testing.check_encoder` checks every capability an encoder declares.
"""

from __future__ import annotations

import abc
from typing import Any

import torch
from torch import nn

from flowkit.errors import ConfigError

__all__ = [
    "Encoder",
    "CAPABILITIES",
    "check_encoder_object",
    "is_trainable",
    "latent_parts",
    "views",
    "has_capability",
    "capability",
]

#: The optional capabilities an encoder may declare, and what each gives.
CAPABILITIES: dict[str, str] = {
    "latent_parts": "sizes of the latent's parts side by side (one flow per part)",
    "augment": "random views of a batch, for flow_augment (default: a random affine warp)",
    "reconstruction_error": "per-image reconstruction error (the recon scorer)",
    "rotation_loss": "per-image rotation-prediction loss (the rotation scorer)",
}


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
    #: Optional capability: the sizes of the latent's parts (``None``: one part).
    latent_parts: tuple[int, ...] | None = None
    #: Optional capabilities (methods a subclass defines): ``augment(x)``,
    #: ``reconstruction_error(x)``, ``rotation_loss(x)``; ``None`` means "not had".
    augment: Any = None
    reconstruction_error: Any = None
    rotation_loss: Any = None

    @abc.abstractmethod
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent vectors ``(B, embed_dim)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)


def is_trainable(encoder: Any) -> bool:
    """Whether stage 1 trains ``encoder``: it has ``loss`` and does not say
    ``trainable = False``."""
    return callable(getattr(encoder, "loss", None)) and bool(getattr(encoder, "trainable", True))


def has_capability(encoder: Any, name: str) -> bool:
    """Whether ``encoder`` declares the optional capability ``name`` (:data:`CAPABILITIES`)."""
    if name not in CAPABILITIES:
        raise ValueError(f"unknown encoder capability {name!r}; known: {', '.join(CAPABILITIES)}")
    if name == "latent_parts":
        return latent_parts(encoder) != (int(encoder.embed_dim),)
    return callable(capability(encoder, name))


def capability(encoder: Any, name: str) -> Any:
    """The object behind a method capability (``augment``, ...), or ``None``. A submodule of
    that name counts too (``self.augment = nn.Sequential(...)``), although the base class's
    ``None`` would hide it from plain attribute lookup."""
    own = getattr(encoder, name, None)
    if own is None and isinstance(encoder, nn.Module):
        own = dict(encoder.named_children()).get(name)
    return own


def latent_parts(encoder: Any) -> tuple[int, ...]:
    """The sizes of ``encoder``'s latent parts (``(embed_dim,)`` for a latent of one part).
    ``embed_blocks``, the capability's earlier name, is still read."""
    parts = getattr(encoder, "latent_parts", None) or getattr(encoder, "embed_blocks", None)
    return tuple(int(p) for p in parts) if parts else (int(encoder.embed_dim),)


def views(encoder: Any) -> Any:
    """``encoder``'s own random views (``augment``), or flowkit's default random affine."""
    own = capability(encoder, "augment")
    if callable(own):
        return own
    from flowkit.encoders.augment import Augment

    return Augment()


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
    parts = latent_parts(encoder)
    if sum(parts) != dim or min(parts) < 1:
        raise ConfigError(
            f"{what} declares latent_parts {parts}, which must be positive and add up to "
            f"embed_dim {dim}"
        )
    return encoder
