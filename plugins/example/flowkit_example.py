"""A minimal flowkit plugin: one component of each kind (the CONTRIBUTING.md examples)."""

import torch
from torch import nn

import flowkit
from flowkit import hookimpl

# -- encoder ---------------------------------------------------------------------------------


class MeanPool(flowkit.Encoder):
    """Average-pools the image to a 4x4 and a 2x2 grid: a fixed (untrained) encoder whose
    latent has two parts (each gets its own preprocessing and flow)."""

    def __init__(self, in_channels: int = 1, image_size: int = 32):
        super().__init__()
        self.input_shape = (in_channels, image_size, image_size)
        self.latent_parts = (in_channels * 16, in_channels * 4)  # optional capability
        self.embed_dim = sum(self.latent_parts)
        self.fine, self.coarse = nn.AdaptiveAvgPool2d(4), nn.AdaptiveAvgPool2d(2)

    def encode(self, x):
        return torch.cat([self.fine(x).flatten(1), self.coarse(x).flatten(1)], 1)

    def augment(self, x):  # optional capability: the views flow_augment embeds
        return (x + 0.05 * torch.randn_like(x)).clamp(-1, 1)


@hookimpl
def flowkit_register_encoders(registry):
    registry.register("mean_pool")(MeanPool)


# -- flow ------------------------------------------------------------------------------------


class DiagGaussian(nn.Module):
    """A Gaussian with a learned mean and per-dimension scale: log_prob is all a flow needs."""

    def __init__(self, features: int):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(features))
        self.log_scale = nn.Parameter(torch.zeros(features))

    def log_prob(self, z):
        return torch.distributions.Normal(self.loc, self.log_scale.exp()).log_prob(z).sum(1)

    def sample(self, n):  # optional: unlocks sampling and its contract check
        return self.loc + torch.randn(n, len(self.loc)) * self.log_scale.exp()


@hookimpl
def flowkit_register_flows(registry):
    registry.register("diag_gaussian")(DiagGaussian)


# -- scorer ----------------------------------------------------------------------------------


class LatentDistance(flowkit.Scorer):
    """Distance of the latent from the mean of the normal training latents."""

    def __init__(self):
        self.mean = torch.zeros(0)

    def fit(self, train, val):  # normal data only
        self.mean = train.latents.mean(0)
        return self

    def score(self, ctx):  # higher = more anomalous
        return (ctx.latents - self.mean).norm(dim=1).double()

    def state_dict(self):  # saved in the model file
        return {"mean": self.mean}


@hookimpl
def flowkit_register_scorers(registry):
    @registry.register("latent_distance")
    def latent_distance():
        """Distance of the latent from the mean normal training latent."""
        return LatentDistance()


# -- dataset ---------------------------------------------------------------------------------


@hookimpl
def flowkit_register_datasets(registry):
    @registry.register("stripes")
    def stripes(root=None, split="all", image_size: int = 32, download=False, n: int = 80):
        """Synthetic stripes: horizontal (class 0) or vertical (class 1), plus noise."""
        flowkit.data.check_split(split)  # "train", "test" or "all"
        g = torch.Generator().manual_seed(0)
        labels = torch.arange(n) % 2
        rows = (torch.arange(image_size) // 4 % 2).float() * 200
        horizontal = rows[:, None].expand(image_size, image_size)
        base = torch.where(labels[:, None, None] == 0, horizontal, horizontal.T)
        noise = torch.rand(n, image_size, image_size, generator=g) * 50
        images = (base + noise).clamp(0, 255).to(torch.uint8).unsqueeze(1)
        keep = {"train": slice(0, n * 4 // 5), "test": slice(n * 4 // 5, n), "all": slice(n)}
        return flowkit.data.ImageSet(
            images[keep[split]], labels[keep[split]], ["horizontal", "vertical"], "stripes"
        )
