"""Convolutional building blocks shared by the DCGAN-style encoders and decoders."""

from __future__ import annotations

import math

from torch import nn

__all__ = ["dcgan_trunk", "dcgan_decoder", "check_image_size"]


def check_image_size(image_size: int) -> int:
    """Depth of the pyramid for a power-of-two ``image_size`` of at least 16."""
    depth = math.log2(image_size) if image_size > 0 else -1
    if image_size < 16 or depth != int(depth):
        from flowkit.errors import ConfigError

        raise ConfigError(f"DCGAN blocks need a power-of-two image_size >= 16, got {image_size}")
    return int(depth) - 2  # stride-2 stages down to 4x4


def dcgan_trunk(in_channels: int, image_size: int, width: int, out_features: int) -> nn.Sequential:
    """The DCGAN discriminator as an encoder: stride-2 convs to 4×4, then a 4×4 conv to 1×1.

    BatchNorm + LeakyReLU(0.2) after every conv but the first (as in DCGAN); the output is
    ``(B, out_features)``.
    """
    stages = check_image_size(image_size)
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, width, 4, 2, 1, bias=False),
        nn.LeakyReLU(0.2, inplace=True),
    ]
    channels = width
    for _ in range(stages - 1):
        layers += [
            nn.Conv2d(channels, channels * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(channels * 2),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        channels *= 2
    layers += [nn.Conv2d(channels, out_features, 4, 1, 0, bias=False), nn.Flatten()]
    return nn.Sequential(*layers)


def dcgan_decoder(
    in_features: int, out_channels: int, image_size: int, width: int
) -> nn.Sequential:
    """The DCGAN generator: a latent vector ``(B, in_features)`` → image in ``[-1, 1]``."""
    stages = check_image_size(image_size)
    channels = width * 2 ** (stages - 1)
    layers: list[nn.Module] = [
        nn.Unflatten(1, (in_features, 1, 1)),
        nn.ConvTranspose2d(in_features, channels, 4, 1, 0, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
    ]
    for _ in range(stages - 1):
        layers += [
            nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(channels // 2),
            nn.ReLU(inplace=True),
        ]
        channels //= 2
    layers += [nn.ConvTranspose2d(channels, out_channels, 4, 2, 1, bias=False), nn.Tanh()]
    return nn.Sequential(*layers)
