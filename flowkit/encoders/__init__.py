"""Encoders: image → latent vector."""

from flowkit.encoders.base import Encoder
from flowkit.encoders.dcgan import DCGANAutoencoder, dcgan_ae

__all__ = ["Encoder", "DCGANAutoencoder", "dcgan_ae"]
