"""DCGAN autoencoder trained with L1 reconstruction: the reference encoder of flowkit."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flowkit.encoders.base import Encoder
from flowkit.encoders.blocks import dcgan_decoder, dcgan_trunk
from flowkit.registry import check_positive

__all__ = ["DCGANAutoencoder", "dcgan_ae"]


class DCGANAutoencoder(Encoder):
    """Encoder after the DCGAN discriminator, decoder after the DCGAN generator.

    Args:
        in_channels: 1 (grayscale) or 3 (RGB).
        image_size: 32 or 64 (any power of two ≥ 16).
        latent_dim: size of the latent vector given to the flow.
        width: channels of the first conv; doubled at every stage.
    """

    trainable = True

    def __init__(
        self, in_channels: int = 1, image_size: int = 32, latent_dim: int = 100, width: int = 64
    ) -> None:
        super().__init__()
        self.embed_dim = int(latent_dim)
        self.input_shape = (int(in_channels), int(image_size), int(image_size))
        self.encoder = dcgan_trunk(in_channels, image_size, width, latent_dim)
        self.decoder = dcgan_decoder(latent_dim, in_channels, image_size, width)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def reconstruction_error(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image mean absolute reconstruction error ``(B,)``."""
        return (self.reconstruct(x) - x).abs().flatten(1).mean(1)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(self.reconstruct(x), x)


def dcgan_ae(
    in_channels: int = 1, image_size: int = 32, latent_dim: int = 100, width: int = 64
) -> DCGANAutoencoder:
    """DCGAN convolutional autoencoder, L1 reconstruction (the paper's encoder)."""
    check_positive("dcgan_ae", in_channels=in_channels, latent_dim=latent_dim, width=width)
    return DCGANAutoencoder(in_channels, image_size, latent_dim, width)
