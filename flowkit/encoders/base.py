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
- ``feature_maps``: a tuple of ``(C, h, w)`` shapes when the latent is feature maps side by
  side, each flattened (channel, row, column), adding up to ``embed_dim``
  (:func:`feature_maps`); a spatial flow then scores each position, and the model gives
  anomaly maps.

:func:`flowkit.testing.check_encoder` checks every capability an encoder declares.
"""

from __future__ import annotations

import abc
from typing import Any

import torch
from torch import nn

from flowkit.errors import ConfigError
from flowkit.registry import optional_members

__all__ = [
    "Encoder",
    "CAPABILITIES",
    "check_encoder_object",
    "is_trainable",
    "latent_parts",
    "views",
    "has_capability",
    "capability",
    "input_shape_of",
    "feature_maps",
]

#: The optional capabilities an encoder may declare, and what each gives.
CAPABILITIES: dict[str, str] = {
    "latent_parts": "sizes of the latent's parts side by side (one flow per part)",
    "augment": "random views of a batch, for flow_augment (default: a random affine warp)",
    "reconstruction_error": "per-image reconstruction error (the recon scorer)",
    "rotation_loss": "per-image rotation-prediction loss (the rotation scorer)",
    "feature_maps": "(C, h, w) of each feature map the latent flattens (anomaly maps)",
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
    #: The image shape ``(C, H, W)`` it takes (``None``: any the factory was built for).
    input_shape: tuple[int, int, int] | None = None
    #: The stage-1 objective ``loss(x) -> scalar`` (a method; ``None``: not trained).
    loss: Any = None
    #: ``False`` keeps an encoder that has a ``loss`` from being trained; ``True`` insists it
    #: has one; ``None``: trained if it has a ``loss``.
    trainable: bool | None = None
    #: Optional capability: the sizes of the latent's parts (``None``: one part).
    latent_parts: tuple[int, ...] | None = None
    #: Optional capability: the ``(C, h, w)`` of each feature map the latent flattens.
    feature_maps: tuple[tuple[int, int, int], ...] | None = None
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
    own = optional_members(encoder, ("loss", "trainable"))
    return callable(own.get("loss")) and bool(own.get("trainable", True))


def has_capability(encoder: Any, name: str) -> bool:
    """Whether ``encoder`` declares the optional capability ``name`` (:data:`CAPABILITIES`)."""
    if name not in CAPABILITIES:
        raise ValueError(f"unknown encoder capability {name!r}; known: {', '.join(CAPABILITIES)}")
    if name == "latent_parts":
        return latent_parts(encoder) != (int(encoder.embed_dim),)
    if name == "feature_maps":
        return feature_maps(encoder) is not None
    return callable(capability(encoder, name))


def capability(encoder: Any, name: str) -> Any:
    """The object behind a method capability (``augment``, ...), or ``None``. A submodule of
    that name counts too (``self.augment = nn.Sequential(...)``), although the base class's
    ``None`` would hide it from plain attribute lookup."""
    own = optional_members(encoder, (name,)).get(name)
    if own is None and isinstance(encoder, nn.Module):
        own = dict(encoder.named_children()).get(name)
    return own


def latent_parts(encoder: Any) -> tuple[int, ...]:
    """The sizes of ``encoder``'s latent parts (``(embed_dim,)`` for a latent of one part).
    ``embed_blocks``, the capability's earlier name, is still read."""
    own = optional_members(encoder, ("latent_parts", "embed_blocks"))
    parts = own.get("latent_parts") or own.get("embed_blocks")
    return tuple(int(p) for p in parts) if parts else (int(encoder.embed_dim),)


def feature_maps(encoder: Any) -> tuple[tuple[int, int, int], ...] | None:
    """The ``(C, h, w)`` of each feature map ``encoder``'s latent flattens, or ``None`` for
    an encoder of latent vectors."""
    maps = optional_members(encoder, ("feature_maps",)).get("feature_maps")
    return tuple(tuple(int(s) for s in m) for m in maps) if maps else None  # type: ignore[misc]


def input_shape_of(encoder: Any, default: tuple[int, int, int]) -> tuple[int, ...]:
    """The image shape ``(C, H, W)`` ``encoder`` declares it takes, or ``default``."""
    return tuple(optional_members(encoder, ("input_shape",)).get("input_shape", default))


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
    own = optional_members(encoder, ("encode", "embed_dim", "trainable", "loss"))
    if not callable(own.get("encode")):
        raise ConfigError(f"{what} has no encode(x) method")
    dim = own.get("embed_dim")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ConfigError(f"{what} needs an integer embed_dim >= 1, got {dim!r}")
    if own.get("trainable", False) and not callable(own.get("loss")):
        raise ConfigError(f"{what} says trainable = True but has no loss(x) method")
    parts = latent_parts(encoder)
    if sum(parts) != dim or min(parts) < 1:
        raise ConfigError(
            f"{what} declares latent_parts {parts}, which must be positive and add up to "
            f"embed_dim {dim}"
        )
    maps = feature_maps(encoder)
    if maps is not None and (
        any(len(m) != 3 or min(m) < 1 for m in maps) or sum(c * h * w for c, h, w in maps) != dim
    ):
        raise ConfigError(
            f"{what} declares feature_maps {maps}, which must be (C, h, w) shapes whose sizes "
            f"add up to embed_dim {dim}"
        )
    return encoder
