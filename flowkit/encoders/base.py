"""The encoder interface: image batch → latent vectors."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Encoder"]


class Encoder(nn.Module):
    """Base class of flowkit encoders.

    Inputs are float images of shape ``(B, *input_shape)`` scaled to ``[-1, 1]`` (flowkit
    converts uint8 images in batches). Subclasses set :attr:`embed_dim`, :attr:`input_shape`
    and :attr:`trainable`, and implement :meth:`encode` and, if trainable, :meth:`loss`.

    Example:
        >>> import torch, flowkit
        >>> enc = flowkit.create_encoder("dcgan_ae", in_channels=1, image_size=32)
        >>> enc.eval().encode(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 100])
    """

    embed_dim: int
    input_shape: tuple[int, int, int]
    trainable: bool = True

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent vectors ``(B, embed_dim)``."""
        raise NotImplementedError

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """The stage-1 training objective on a batch (a scalar); only for trainable encoders."""
        raise NotImplementedError(f"{type(self).__name__} is not trainable")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)
