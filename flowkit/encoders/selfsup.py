"""Self-supervised encoders trained on normal images alone: contrastive and rotation.

Both use the DCGAN-style trunk of :mod:`flowkit.encoders.blocks` (the same blocks as
``dcgan_ae``), and put their whole objective in ``loss(x)``, so the generic runner trains them
unchanged.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from flowkit.encoders.augment import Augment, natural_views, resolve_views, rotate90
from flowkit.encoders.base import Encoder
from flowkit.encoders.blocks import dcgan_trunk
from flowkit.errors import ConfigError
from flowkit.registry import check_positive

FEATURES = ("trunk", "head", "trunk+head")  # what a contrastive encoder's ``encode`` returns

__all__ = [
    "CSIEncoder",
    "SimCLREncoder",
    "RotNetEncoder",
    "contrastive_latent",
    "csi",
    "feature_parts",
    "multi_crop_nt_xent",
    "simclr",
    "rotnet",
    "nt_xent",
]


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """The NT-Xent loss of SimCLR over two batches of projections of the same images."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    n = a.shape[0]
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


LOCAL_MIN_AREA = 0.05  # the smallest local view of a multi-crop encoder, as in SwAV


def multi_crop_nt_xent(proj: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """NT-Xent over the projections of several views of the same images, ``proj[0]`` and
    ``proj[1]`` the two global views, the rest local ones (multi-crop; Caron et al., NeurIPS
    2020): the mean of :func:`nt_xent` over every pair of a global view with another view.
    With two views it is :func:`nt_xent`."""
    pairs = [(g, v) for g in range(2) for v in range(len(proj)) if v != g]
    return torch.stack([nt_xent(proj[g], proj[v], temperature) for g, v in pairs]).mean()


def feature_parts(features: str, trunk_dim: int, head_dim: int) -> tuple[int, ...]:
    """The latent parts of a contrastive encoder whose ``encode`` returns ``features``
    (:data:`FEATURES`), for a trunk of ``trunk_dim`` and a projection head of ``head_dim``."""
    if features not in FEATURES:
        raise ConfigError(f"features must be one of {', '.join(FEATURES)}, got {features!r}")
    return {"trunk": (trunk_dim,), "head": (head_dim,), "trunk+head": (trunk_dim, head_dim)}[
        features
    ]


def contrastive_latent(feats: torch.Tensor, head: nn.Module, features: str) -> torch.Tensor:
    """What a contrastive encoder's ``encode`` returns: the trunk's features ``feats``, the
    L2-normalised projection ``head(feats)`` (the sphere NT-Xent compares on), or both."""
    if features == "trunk":
        return feats
    proj = F.normalize(head(feats), dim=1)
    return proj if features == "head" else torch.cat([feats, proj], 1)


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
    by NT-Xent on a projection head; with ``local_crops`` > 0 each image also gets that many
    small views (random resized crops of 5 % to ``local_area`` of the image, at full
    resolution: the trunk takes one size), each pulled towards both global views
    (:func:`multi_crop_nt_xent`). ``features`` says what ``encode`` returns: ``"trunk"``
    (the trunk's features, the head used only in training), ``"head"`` (the head's output,
    L2-normalised: the sphere on which NT-Xent compares images) or ``"trunk+head"`` (both side
    by side; :attr:`latent_parts` names the two parts, so that the latent preprocessing and
    the flow's density treat each part on its own scale).
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
        features: str = "trunk",
        local_crops: int = 0,
        local_area: float = 0.2,
    ) -> None:
        if temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {temperature}")
        if int(local_crops) != local_crops or local_crops < 0:
            raise ConfigError(f"local_crops must be a whole number >= 0, got {local_crops}")
        if not LOCAL_MIN_AREA < local_area <= 1:
            raise ConfigError(
                f"local_area must be in ({LOCAL_MIN_AREA}, 1] (a fraction of the image's area),"
                f" got {local_area}"
            )
        super().__init__(in_channels, image_size, latent_dim, width)
        self.head = nn.Sequential(
            nn.Linear(latent_dim, latent_dim),
            nn.ReLU(inplace=True),
            nn.Linear(latent_dim, projection_dim),
        )
        self.temperature = float(temperature)
        self.augment = augment or Augment()
        self.local_crops = int(local_crops)
        # the local views: the global recipe with a small crop (no affine warp on top)
        self.local_augment = dataclasses.replace(
            self.augment, affine=False, crop=LOCAL_MIN_AREA, crop_max=float(local_area)
        )
        self._use_features(features)

    def _use_features(self, features: str) -> None:
        """Set what :meth:`encode` returns, and :attr:`embed_dim` / :attr:`latent_parts`."""
        self.latent_parts = feature_parts(
            features, self.head[0].in_features, self.head[-1].out_features
        )
        self.features = features
        self.embed_dim = sum(self.latent_parts)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return contrastive_latent(self.trunk(x), self.head, self.features)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        if self.local_crops == 0:
            views = torch.cat([self.augment(x), self.augment(x)])
            proj = self.head(self.trunk(views))
            return nt_xent(proj[: len(x)], proj[len(x) :], self.temperature)
        views = [self.augment(x), self.augment(x)]
        views += [self.local_augment(x) for _ in range(self.local_crops)]
        proj = self.head(self.trunk(torch.cat(views)))
        return multi_crop_nt_xent(list(proj.split(len(x))), self.temperature)


def _rotation_batch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The four 90° rotations of every image, stacked rotation by rotation ``(4B, ...)``, and
    their rotation labels ``(4B,)``."""
    rotated = torch.cat([rotate90(x, k) for k in range(4)])
    # (4, 1) → (4 * B,) without an int repeat count, so ONNX export keeps B dynamic
    labels = torch.arange(4, device=x.device)[:, None].expand(4, x.shape[0]).reshape(-1)
    return rotated, labels


def _rotation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-image cross-entropy over the four rotations ``(B,)`` from ``(4B, 4)`` logits."""
    # cross-entropy written out: ONNX export mis-shapes aten's reduction="none" form
    per = -torch.log_softmax(logits, dim=1).gather(1, labels[:, None])[:, 0]
    return per.view(4, -1).mean(0)


class CSIEncoder(SimCLREncoder):
    """Contrasting shifted instances (CSI; Tack et al., NeurIPS 2020).

    SimCLR in which each of the four 90° rotations of an image is an instance of its own: a
    *shifted* distribution, so an image's rotated copies are pushed away from it like any other
    image, while two augmented views of the same rotation are pulled together. A linear head
    on the trunk's features also predicts the rotation (CSI's shifting-transformation
    classifier), weighted by ``rotation_weight``. ``encode`` gives the upright image's
    features (``features`` as in :class:`SimCLREncoder`); :meth:`rotation_loss` the
    per-image rotation loss (the ``rotation`` scorer).
    An epoch costs four times a SimCLR epoch.
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
        rotation_weight: float = 1.0,
        features: str = "trunk",
    ) -> None:
        if rotation_weight < 0:
            raise ConfigError(f"rotation_weight must be >= 0, got {rotation_weight}")
        super().__init__(
            in_channels, image_size, latent_dim, width, projection_dim, temperature, augment
        )
        self._use_features(features)
        self.rotation_head = nn.Linear(latent_dim, 4)
        self.rotation_weight = float(rotation_weight)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        rotated, labels = _rotation_batch(x)
        n = len(rotated)
        feats = self.trunk(torch.cat([self.augment(rotated), self.augment(rotated)]))
        proj = self.head(feats)
        contrastive = nt_xent(proj[:n], proj[n:], self.temperature)
        if self.rotation_weight == 0:
            return contrastive
        shift = F.cross_entropy(self.rotation_head(feats), torch.cat([labels, labels]))
        return contrastive + self.rotation_weight * shift

    def rotation_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image cross-entropy of the rotation head over the four rotations ``(B,)``:
        higher = more anomalous."""
        rotated, labels = _rotation_batch(x)
        return _rotation_loss(self.rotation_head(self.trunk(rotated)), labels)


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
        rotated, labels = _rotation_batch(x)
        return self.classifier(self.trunk(rotated)), labels

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        logits, labels = self._logits(self.augment(x) if self.training else x)
        return F.cross_entropy(logits, labels)

    def rotation_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image cross-entropy over the four rotations ``(B,)``: higher = more anomalous."""
        return _rotation_loss(*self._logits(x))


def _views(
    views: str, in_channels: int, affine: bool, hflip: bool, jitter: float, noise: float
) -> Augment:
    """The views of a contrastive encoder (see :func:`simclr`)."""
    if resolve_views(views, in_channels) == "natural":
        return natural_views(noise=noise)
    return Augment(affine=affine, hflip=hflip, jitter=jitter, noise=noise)


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
    features: str = "trunk",
    views: str = "auto",
    local_crops: int = 0,
    local_area: float = 0.2,
) -> SimCLREncoder:
    """SimCLR contrastive encoder on the DCGAN trunk (views chosen by the channels).

    ``features``: trunk, head (L2-normalised projection) or trunk+head. ``views``:
    ``affine`` (random affine warps, with the ``affine`` / ``hflip`` / ``jitter`` switches),
    ``natural`` (SimCLR's crops, flips, colour jitter and grayscale) or ``auto`` (natural for
    3-channel images, affine otherwise); ``noise`` adds to either. ``local_crops``: multi-crop,
    that many more small views per image (crops of 5 % to ``local_area`` of it); an epoch
    costs ``1 + local_crops / 2`` times more."""
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
        _views(views, in_channels, affine, hflip, jitter, noise),
        features,
        local_crops,
        local_area,
    )


def csi(
    in_channels: int = 1,
    image_size: int = 32,
    latent_dim: int = 128,
    width: int = 64,
    projection_dim: int = 128,
    temperature: float = 0.2,
    rotation_weight: float = 1.0,
    affine: bool = True,
    hflip: bool = False,
    jitter: float = 0.0,
    noise: float = 0.0,
    features: str = "trunk",
    views: str = "auto",
) -> CSIEncoder:
    """CSI: SimCLR with 90° rotations as shifted instances and a rotation head (pairs with
    the rotation scorer); the same trunk and views as simclr."""
    check_positive(
        "csi",
        in_channels=in_channels,
        latent_dim=latent_dim,
        width=width,
        projection_dim=projection_dim,
    )
    return CSIEncoder(
        in_channels,
        image_size,
        latent_dim,
        width,
        projection_dim,
        temperature,
        _views(views, in_channels, affine, hflip, jitter, noise),
        rotation_weight,
        features,
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
