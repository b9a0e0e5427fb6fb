"""The one fit path: encoder → density → calibration, on normal images.

:class:`StagePipeline` runs the three stages of :mod:`flowkit.stages` in order, and every
fitting entry point goes through it: :meth:`flowkit.Detector.fit`,
:meth:`flowkit.Detector.with_scorer` and the bench's unit of work
(:func:`flowkit.bench.runner.run_unit`). Like scikit-learn's ``Pipeline._fit``, the sequence
is written once; a cache is a hook on it (:class:`StageCache`: the bench keeps trained
encoders with their latents, and fitted densities), not a second copy of it.

Each step is memoized, so the bench fits one encoder, then every flow on its latents, then
every scorer on each density, without repeating a step:

    >>> from flowkit.config import DetectorConfig
    >>> cfg = DetectorConfig(encoder="dcgan_ae:latent_dim=8", epochs_encoder=1)
    >>> path = StagePipeline(cfg, images, device="cpu")                 # doctest: +SKIP
    >>> encoding, density, calibration = path.fit()                      # doctest: +SKIP
    >>> other = path.calibrate(cfg.replace(scorer="knn"), density)       # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from flowkit.config import DetectorConfig
from flowkit.encoders.base import input_shape_of, is_trainable, latent_parts, views
from flowkit.errors import FlowkitError
from flowkit.scorers import ScoreContext
from flowkit.stages import (
    CalibrationStage,
    DensityStage,
    EncoderStage,
    map_layout,
    split_validation,
)

__all__ = [
    "StagePipeline",
    "LatentMemo",
    "StageCache",
    "Encoded",
    "check_downstream",
    "check_variation",
    "views_tag",
]


class StageCache(Protocol):
    """Where fitted stages are kept between runs (the bench's run cache): payloads by key.

    An encoder payload holds ``state`` (its weights), ``history``, the latents ``z_train``
    and ``z_val``, ``fit_seconds`` and ``views`` (:func:`views_tag`); a density payload is
    :meth:`DensityStage.state_dict` plus ``history``. A missing or unreadable entry is
    ``None``, and the stage is fitted again.
    """

    def load_encoder(self, key: str) -> dict[str, Any] | None: ...

    def save_encoder(self, key: str, payload: dict[str, Any]) -> None: ...

    def load_density(self, key: str) -> dict[str, Any] | None: ...

    def save_density(self, key: str, payload: dict[str, Any]) -> None: ...


@dataclass
class Encoded:
    """The fitted encoder stage and the latents of the normal training and validation
    images it was fitted on (the split :meth:`StagePipeline` made)."""

    stage: EncoderStage
    z_train: torch.Tensor
    z_val: torch.Tensor
    cached: bool = False
    fit_seconds: float = 0.0


def views_tag(encoder: Any) -> str:
    """What an encoder's random views are, in words: part of its cache entry, so that an
    entry trained on other views is retrained rather than reused. Memory addresses (a plain
    function's repr) are left out, so that the tag is the same in every process."""
    import re

    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(views(encoder)))


def _default_views_tag() -> str:
    from flowkit.encoders.augment import Augment

    return repr(Augment())  # the views of every cache entry written before the tag


#: Fewer distinct training images than this (but more than one) fit, with a warning.
FEW_DISTINCT = 10


def check_variation(images: torch.Tensor) -> None:
    """Refuse training images that are all one image (a constant set: 200 white images, one
    image repeated): a density of a single point has no finite likelihood (the flow drives it
    towards infinity, the threshold to a meaningless value, and the training image itself
    scores as an anomaly). Warn when there are only a few distinct images."""
    import hashlib
    import warnings

    from flowkit.errors import DataError

    n = len(images)
    flat = images.reshape(n, -1)
    if n and bool((flat == flat[0]).all()):
        raise DataError(
            f"the {n} training images are all the same image (1 distinct image): a density "
            "cannot be fitted to a single point; train on normal images that vary"
        )
    distinct = len(
        {hashlib.blake2b(row.numpy().tobytes(), digest_size=16).digest() for row in flat}
    )
    if distinct < FEW_DISTINCT:
        warnings.warn(
            f"only {distinct} distinct images among the {n} training images: the density "
            "will fit those few points, and its likelihoods and threshold mean little",
            UserWarning,
            stacklevel=3,
        )


def check_downstream(config: DetectorConfig, encoder: torch.nn.Module) -> None:
    """Build the density and scorer that go with ``encoder``, untrained: a bad flow or
    scorer option fails before the encoder trains."""
    shape = input_shape_of(encoder, (0, 0, 0))
    density = DensityStage(config).check(
        int(encoder.embed_dim), latent_parts(encoder), map_layout(encoder, shape)
    )
    CalibrationStage(config).check(len(density.part_sizes))


class LatentMemo:
    """The latents of images under *frozen* encoders, kept across fit paths.

    A frozen encoder (one that does not train: ``timm/...:checkpoint=...``) gives every image
    the same latent whichever class is held out, so the bench embeds each image once per
    process instead of once per held-out class (at 224×224 on a CPU, embedding is most of a
    pretrained cell's time). Rows are keyed by the encoder stage's identity (a digest of its
    weights and input shape) and class, and by the image's bytes; an encoder that trains is
    never memoized. Each row keeps the seconds its embedding took, so that what scoring
    costs is still reported as the cost of embedding (:meth:`embed` returns both). At most
    ``max_bytes`` of latents are kept; past that, rows are embedded and not kept.
    """

    def __init__(self, max_bytes: int = 2 << 30) -> None:
        self.max_bytes = int(max_bytes)
        self._rows: dict[bytes, tuple[torch.Tensor, float]] = {}
        self._bytes = 0
        self.hits = self.misses = 0

    def embed(
        self, stage: EncoderStage, images: torch.Tensor, device: str | torch.device
    ) -> tuple[torch.Tensor, float]:
        """``stage.embed(images)`` and the seconds it costs (remembered for kept rows)."""
        start = time.perf_counter()
        if is_trainable(stage.encoder_) or not len(images):
            z = stage.embed(images, device=device)
            return z, time.perf_counter() - start
        # the stage's identity is the digest of its weights and input shape
        fp = hashlib.blake2b(
            f"{type(stage.encoder_).__qualname__}:{stage.identity}".encode(), digest_size=32
        ).digest()
        keys = [
            hashlib.blake2b(row.numpy().tobytes(), digest_size=16, key=fp).digest()
            for row in images.reshape(len(images), -1)
        ]
        missing = [i for i, k in enumerate(keys) if k not in self._rows]
        new: dict[bytes, tuple[torch.Tensor, float]] = {}
        if missing:
            t = time.perf_counter()
            z = stage.embed(images[missing], device=device)
            each = (time.perf_counter() - t) / len(missing)
            new = {keys[i]: (row.clone(), each) for i, row in zip(missing, z, strict=True)}
            for key, (row, _) in new.items():
                if self._bytes + row.nbytes <= self.max_bytes:
                    self._rows[key] = new[key]
                    self._bytes += row.nbytes
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        rows = [new.get(k) or self._rows[k] for k in keys]
        return torch.stack([r for r, _ in rows]), sum(c for _, c in rows)


class StagePipeline:
    """Fit encoder → density → calibration on normal ``images`` (uint8 ``(N, C, H, W)``),
    split seeded into training and validation images as ``config`` says.

    Args:
        config: the encoder stage's configuration (and the default of the others).
        images: normal training images, uint8.
        device: where the stages train.
        cache: a :class:`StageCache` and the keys of the stages in it (``encoder_key`` here,
            a density's key given to :meth:`density`); ``None``: nothing is kept.
        encoding, density: stages fitted already (:meth:`flowkit.Detector.with_scorer`
            recalibrates a fitted Detector): they are used as they are.
        progress: a rich progress display the training loops report to.
        memo: a :class:`LatentMemo` the latents of a frozen encoder are kept in (the
            bench's, across held-out classes); ``None``: every image is embedded.
    """

    def __init__(
        self,
        config: DetectorConfig,
        images: torch.Tensor,
        *,
        device: str | torch.device,
        cache: StageCache | None = None,
        encoder_key: str | None = None,
        encoding: EncoderStage | None = None,
        density: DensityStage | None = None,
        progress: Any = None,
        memo: LatentMemo | None = None,
    ) -> None:
        self.config, self.device, self.progress, self.memo = config, device, progress, memo
        self.cache, self.encoder_key = cache, encoder_key
        self.images = images  # checked for variation before the encoder trains
        self.train_images, self.val_images = split_validation(
            images, config.val_fraction, config.seed
        )
        self._encoded: Encoded | None = None
        if encoding is not None:
            self._encoded = Encoded(encoding, *self._embed(encoding))
        self._densities: dict[Any, tuple[DensityStage, bool]] = {}
        self._given_density = density
        self._contexts: dict[int, tuple[ScoreContext, ScoreContext]] = {}

    # -- stage 1 ------------------------------------------------------------------------------

    def embed(self, images: torch.Tensor, stage: EncoderStage | None = None) -> torch.Tensor:
        """Latents of ``images`` under ``stage`` (default: the fitted encoder stage)."""
        return self.embed_timed(images, stage)[0]

    def embed_timed(
        self, images: torch.Tensor, stage: EncoderStage | None = None
    ) -> tuple[torch.Tensor, float]:
        """:meth:`embed` and the seconds embedding them costs (through the memo, if any)."""
        stage = stage or self.encoding
        if self.memo is not None:
            return self.memo.embed(stage, images, self.device)
        start = time.perf_counter()
        return stage.embed(images, device=self.device), time.perf_counter() - start

    def _embed(self, stage: EncoderStage) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed(self.train_images, stage), self.embed(self.val_images, stage)

    def encoded(self) -> Encoded:
        """The encoder stage, from the cache or trained now (and cached), with the latents of
        the training and validation images."""
        if self._encoded is None:
            self._encoded = self._from_cache() or self._fit_encoder()
        return self._encoded

    @property
    def encoding(self) -> EncoderStage:
        return self.encoded().stage

    def _from_cache(self) -> Encoded | None:
        if self.cache is None or self.encoder_key is None:
            return None
        cached = self.cache.load_encoder(self.encoder_key)
        if cached is None:
            return None
        stage = EncoderStage(self.config)
        try:
            stage.restore(self._shape(), cached["state"], cached["history"])
        except (FlowkitError, KeyError, RuntimeError):
            return None  # an unreadable entry: train again
        if cached.get("views", _default_views_tag()) != views_tag(stage.encoder_):
            return None  # trained on other views (before views="auto" knew colour images)
        return Encoded(
            stage, cached["z_train"], cached["z_val"], True, float(cached["fit_seconds"])
        )

    def _shape(self) -> tuple[int, int, int]:
        c, h, w = (int(s) for s in self.train_images.shape[1:])
        return c, h, w

    def _fit_encoder(self) -> Encoded:
        start = time.perf_counter()
        stage = EncoderStage(self.config)
        # the encoder that will train is the one checked: built once, before any training
        encoder = stage.build(self._shape())
        check_downstream(self.config, encoder)
        check_variation(self.images)
        stage.fit(
            self.train_images,
            self.val_images,
            device=self.device,
            encoder=encoder,
            progress=self.progress,
        )
        z_train, z_val = self._embed(stage)
        seconds = time.perf_counter() - start
        if self.cache is not None and self.encoder_key is not None:
            self.cache.save_encoder(
                self.encoder_key,
                {
                    "state": stage.state_dict()["state"],
                    "history": stage.history_,
                    "z_train": z_train,
                    "z_val": z_val,
                    "fit_seconds": seconds,
                    "views": views_tag(stage.encoder_),
                },
            )
        return Encoded(stage, z_train, z_val, False, seconds)

    # -- stage 2 ------------------------------------------------------------------------------

    def density(self, config: DetectorConfig | None = None, key: str | None = None) -> DensityStage:
        """The density stage for ``config`` (default: the pipeline's) on this encoder's
        latents: from the cache under ``key``, or fitted now (on the training latents and
        ``flow_augment`` augmented copies) and cached."""
        return self.density_and_source(config, key)[0]

    def density_and_source(
        self, config: DetectorConfig | None = None, key: str | None = None
    ) -> tuple[DensityStage, bool]:
        """:meth:`density`, and whether it came from the cache."""
        if self._given_density is not None:
            return self._given_density, True
        config = config or self.config
        memo = key if key is not None else config
        if memo not in self._densities:
            self._densities[memo] = self._load_density(config, key) or (
                self._fit_density(config, key),
                False,
            )
        return self._densities[memo]

    def _load_density(
        self, config: DetectorConfig, key: str | None
    ) -> tuple[DensityStage, bool] | None:
        # a density fitted on the latents of an encoder that was retrained just now (its
        # cache entry was gone or stale) is stale too
        if self.cache is None or key is None or not self.encoded().cached:
            return None
        cached = self.cache.load_density(key)
        if cached is None:
            return None
        try:
            stage = DensityStage.from_state_dict(
                config,
                cached["pipeline"],
                cached["flow"],
                cached["history"],
                "cache",
                cached.get("fitted_on"),
            )
        except (FlowkitError, KeyError, RuntimeError):
            return None  # an unreadable cache entry: fit it again
        return stage, True

    def _fit_density(self, config: DetectorConfig, key: str | None) -> DensityStage:
        enc = self.encoded()
        z_aug = enc.stage.embed_augmented(
            self.train_images, device=self.device, copies=config.flow_augment, seed=config.seed
        )
        z_flow = enc.z_train if z_aug is None else torch.cat([enc.z_train, z_aug])
        stage = DensityStage(config).fit(
            z_flow,
            enc.z_val,
            device=self.device,
            part_sizes=enc.stage.part_sizes,
            progress=self.progress,
            fitted_on=enc.stage.identity,
            maps=enc.stage.maps,
        )
        if self.cache is not None and key is not None:
            self.cache.save_density(
                key,
                {**stage.state_dict(), "history": stage.history_, "fitted_on": stage.fitted_on},
            )
        return stage

    # -- calibration --------------------------------------------------------------------------

    def contexts(self, density: DensityStage) -> tuple[ScoreContext, ScoreContext]:
        """What a scorer sees of the training and of the validation images under
        ``density`` (computed once per density)."""
        if id(density) not in self._contexts:
            enc = self.encoded()
            self._contexts[id(density)] = (
                density.context(enc.z_train, self.train_images, enc.stage.encoder_, self.device),
                density.context(enc.z_val, self.val_images, enc.stage.encoder_, self.device),
            )
        return self._contexts[id(density)]

    def calibrate(
        self, config: DetectorConfig | None = None, density: DensityStage | None = None
    ) -> CalibrationStage:
        """The calibration stage for ``config`` (its scorer and threshold), fitted on the
        normal training and validation images under ``density`` (default: :meth:`density`)."""
        config = config or self.config
        density = density if density is not None else self.density()
        return CalibrationStage(config).fit(*self.contexts(density), fitted_on=density.identity)

    def fit(self) -> tuple[EncoderStage, DensityStage, CalibrationStage]:
        """Every stage, in order: what :meth:`flowkit.Detector.fit` composes."""
        density = self.density()
        return self.encoding, density, self.calibrate(density=density)
