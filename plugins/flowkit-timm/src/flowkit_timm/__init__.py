"""timm backbones as flowkit encoders: ``timm/<model_name>`` for any timm model.

The encoder is ``timm.create_model(name, num_classes=0)`` (pooled features). Images are
resized to the backbone's input size, scaled with its own mean/std, and 1-channel images are
repeated to 3 channels. Options:

- ``pretrained`` (true, as in timm): download weights; ``checkpoint=PATH`` loads a weights
  file from disk instead (no network needed).
- ``freeze`` (true): a fixed feature extractor, no stage-1 training.
- ``train="ae"``: train the backbone as the encoder of an autoencoder with a DCGAN-style
  decoder and L1 reconstruction (for machines without pretrained weights).
- ``input_size``: the size images are resized to (default: the pretrained input size when
  pretrained, else the image size).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import timm
import torch
import torch.nn.functional as F

from flowkit import ConfigError, Encoder, hookimpl
from flowkit.encoders.blocks import dcgan_decoder

__version__ = "0.1.0"
__all__ = ["TimmEncoder", "timm_encoder"]


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
    ) -> None:
        super().__init__()
        self.backbone = model
        self.input_shape = (int(in_channels), int(image_size), int(image_size))
        self.embed_dim = int(model.num_features)
        self.input_size = int(input_size)
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), dtype=torch.float32)
        std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), dtype=torch.float32)
        self.register_buffer("mean", mean.view(1, -1, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1))
        self.train_mode = train
        self.trainable = train == "ae"
        if self.trainable:
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
        return self.backbone(self._prepare(x))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        if not self.trainable:
            raise NotImplementedError("this timm encoder is frozen; use train=ae to train it")
        return F.l1_loss(self.decoder(self.encode(x)), x)

    def reconstruction_error(self, x: torch.Tensor) -> torch.Tensor:  # train=ae only
        return (self.decoder(self.encode(x)) - x).abs().flatten(1).mean(1)


def timm_encoder(
    model_name: str,
    in_channels: int = 3,
    image_size: int = 32,
    pretrained: bool = True,
    checkpoint: str | None = None,
    freeze: bool = True,
    train: str | None = None,
    input_size: int | None = None,
) -> TimmEncoder:
    """Any timm model's pooled features (pretrained by default; checkpoint=PATH offline)."""
    if not timm.is_model(model_name):
        import difflib

        close = difflib.get_close_matches(model_name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join('timm/' + c for c in close)}?" if close else ""
        raise ConfigError(f"unknown timm model {model_name!r}{hint}")
    if train not in (None, "ae"):
        raise ConfigError(f"timm/{model_name}: train must be 'ae' or unset, got {train!r}")
    if in_channels not in (1, 3):
        raise ConfigError(f"timm/{model_name}: images must have 1 or 3 channels")
    kwargs: dict[str, Any] = {"num_classes": 0}
    if checkpoint:
        path = os.path.expanduser(str(checkpoint))
        if not os.path.isfile(path):
            raise ConfigError(f"timm/{model_name}: checkpoint file not found: {path}")
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": path})
    else:
        kwargs["pretrained"] = bool(pretrained)
    try:
        model = timm.create_model(model_name, **kwargs)
    except Exception as exc:  # the hub: no network, proxy, missing file — one clear message
        if not kwargs["pretrained"]:
            raise ConfigError(f"timm/{model_name}: {type(exc).__name__}: {exc}") from None
        what = f"the checkpoint {checkpoint}" if checkpoint else "pretrained weights"
        raise ConfigError(
            f"timm/{model_name}: {what} could not be loaded ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160]}). Without network access use "
            f"'timm/{model_name}:pretrained=false' (random init; add train=ae to train it) or "
            f"'timm/{model_name}:checkpoint=PATH' with a weights file on disk."
        ) from None
    if not kwargs["pretrained"] and train is None and freeze:
        warnings.warn(
            f"timm/{model_name}: a frozen, randomly initialised backbone gives weak features; "
            "add train=ae to train it on your images, or use pretrained weights",
            UserWarning,
            stacklevel=2,
        )
    if input_size is None:
        cfg_size = (getattr(model, "pretrained_cfg", {}) or {}).get("input_size", (3, 224, 224))
        input_size = int(cfg_size[-1]) if kwargs["pretrained"] else max(int(image_size), 32)
    return TimmEncoder(model, in_channels, image_size, input_size, train, freeze and train != "ae")


@hookimpl
def flowkit_register_encoders(registry: Any) -> None:
    registry.register_namespace("timm", timm_encoder, lister=timm.list_models)
