"""A minimal flowkit plugin: a fixed encoder and a diagonal Gaussian flow."""

import torch
from torch import nn

import flowkit
from flowkit import hookimpl


class MeanPool(flowkit.Encoder):
    """Average-pools the image to a 4x4 grid: a fixed (untrained) encoder."""

    trainable = False

    def __init__(self, in_channels: int = 1, image_size: int = 32):
        super().__init__()
        self.input_shape = (in_channels, image_size, image_size)
        self.embed_dim = in_channels * 16
        self.pool = nn.AdaptiveAvgPool2d(4)

    def encode(self, x):
        return self.pool(x).flatten(1)


class DiagGaussian(flowkit.Flow):
    """A Gaussian with a learned mean and per-dimension scale."""

    def __init__(self, features: int):
        super().__init__()
        self.features = features
        self.loc = nn.Parameter(torch.zeros(features))
        self.log_scale = nn.Parameter(torch.zeros(features))

    def transform_to_noise(self, z):
        u = (z - self.loc) * torch.exp(-self.log_scale)
        return u, -self.log_scale.sum().expand(len(z))

    def inverse(self, u):
        return self.loc + u * torch.exp(self.log_scale)


@hookimpl
def flowkit_register_encoders(registry):
    registry.register("mean_pool")(MeanPool)


@hookimpl
def flowkit_register_flows(registry):
    registry.register("diag_gaussian")(DiagGaussian)
