"""Self-supervised encoders trained on normal images alone: contrastive and rotation.

Both use the DCGAN-style trunk of :mod:`flowkit.encoders.blocks` (the same blocks as
``dcgan_ae``), and put their whole objective in ``loss(x)``, so the generic runner trains them
unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flowkit.encoders.augment import Augment, rotate90
from flowkit.encoders.base import Encoder
from flowkit.encoders.blocks import dcgan_trunk
from flowkit.errors import ConfigError
from flowkit.registry import check_positive

__all__ = ["SimCLREncoder", "RotNetEncoder", "simclr", "rotnet", "nt_xent"]


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """The NT-Xent loss of SimCLR over two batches of projections of the same images."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    n = a.shape[0]
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


class TrunkEncoder(Encoder):
    """A self-supervised encoder on the DCGAN trunk: ``encode`` is the trunk's features;
    subclasses add their training head and :meth:`loss`."""

    trainable = True

    def __init__(self, in_channels: int, image_size: int, latent_dim: int, width: int) -> None:
        super().__init__()
        self.embed_dim = int(latent_dim)
        self.input_shape = (int(in_channels), int(image_size), int(image_size))
        self.trunk = dcgan_trunk(in_channels, image_size, width, latent_dim)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)


class SimCLREncoder(TrunkEncoder):
    """SimCLR-style contrastive encoder (Chen et al., ICML 2020).

    Two augmented views of each image are pulled together and pushed from the other images
    by NT-Xent on a projection head that is used only in training; ``encode`` returns the
    trunk's features.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 32,
        latent_dim: int = 128,
        width: int = 64,
        projection_dim: int = 128,
        temperature: float = 0.2,
        augment: Augment | None = None,
    ) -> None:
        if temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {temperature}")
        super().__init__(in_channels, image_size, latent_dim, width)
        self.head = nn.Sequential(
            nn.Linear(latent_dim, latent_dim),
            nn.ReLU(inplace=True),
            nn.Linear(latent_dim, projection_dim),
        )
        self.temperature = float(temperature)
        self.augment = augment or Augment()

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        views = torch.cat([self.augment(x), self.augment(x)])
        proj = self.head(self.trunk(views))
        return nt_xent(proj[: len(x)], proj[len(x) :], self.temperature)


class RotNetEncoder(TrunkEncoder):
    """Predicts which of four rotations was applied (Gidaris et al., ICLR 2018; used for
    anomaly detection by Golan & El-Yaniv, NeurIPS 2018). ``encode`` gives the trunk's
    features of the upright image; :meth:`rotation_loss` the per-image loss."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 32,
        latent_dim: int = 128,
        width: int = 64,
        affine: bool = True,
    ) -> None:
        super().__init__(in_channels, image_size, latent_dim, width)
        self.classifier = nn.Sequential(nn.LeakyReLU(0.2), nn.Linear(latent_dim, 4))
        self.augment = Augment(affine=affine)

    def _logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rotated = torch.cat([rotate90(x, k) for k in range(4)])
        # (4, 1) → (4 * B,) without an int repeat count, so ONNX export keeps B dynamic
        labels = torch.arange(4, device=x.device)[:, None].expand(4, x.shape[0]).reshape(-1)
        return self.classifier(self.trunk(rotated)), labels

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        logits, labels = self._logits(self.augment(x) if self.training else x)
        return F.cross_entropy(logits, labels)

    def rotation_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image cross-entropy over the four rotations ``(B,)``: higher = more anomalous."""
        logits, labels = self._logits(x)
        # cross-entropy written out: ONNX export mis-shapes aten's reduction="none" form
        per = -torch.log_softmax(logits, dim=1).gather(1, labels[:, None])[:, 0]
        return per.view(4, -1).mean(0)


def simclr(
    in_channels: int = 1,
    image_size: int = 32,
    latent_dim: int = 128,
    width: int = 64,
    projection_dim: int = 128,
    temperature: float = 0.2,
    affine: bool = True,
    hflip: bool = False,
    jitter: float = 0.0,
    noise: float = 0.0,
) -> SimCLREncoder:
    """SimCLR contrastive encoder on the DCGAN trunk (random-affine views by default)."""
    check_positive(
        "simclr",
        in_channels=in_channels,
        latent_dim=latent_dim,
        width=width,
        projection_dim=projection_dim,
    )
    return SimCLREncoder(
        in_channels,
        image_size,
        latent_dim,
        width,
        projection_dim,
        temperature,
        Augment(affine=affine, hflip=hflip, jitter=jitter, noise=noise),
    )


def rotnet(
    in_channels: int = 1,
    image_size: int = 32,
    latent_dim: int = 128,
    width: int = 64,
    affine: bool = True,
) -> RotNetEncoder:
    """Rotation-prediction encoder on the DCGAN trunk (pairs with the rotation scorer)."""
    check_positive("rotnet", in_channels=in_channels, latent_dim=latent_dim, width=width)
    return RotNetEncoder(in_channels, image_size, latent_dim, width, affine)
