"""The Detector: encoder + latent preprocessing + flow + scorer + threshold, sklearn-style.

Example:
    >>> import flowkit
    >>> data = flowkit.load_dataset("digits")
    >>> normal = data.subset((data.labels != 9).nonzero().flatten())
    >>> det = flowkit.Detector(encoder="dcgan_ae:latent_dim=32", epochs_encoder=2, epochs_flow=5)
    >>> det = det.fit(normal)                               # doctest: +SKIP
    >>> det.predict(data.images[:5])                        # 1 normal, -1 anomaly  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowkit import artifact
from flowkit.data.base import as_uint8_images, check_value_range
from flowkit.encoders.augment import Augment
from flowkit.errors import (
    ConfigError,
    DataError,
    ModelFileError,
    NotFittedError,
    UnknownComponentError,
)
from flowkit.flows.base import check_log_prob
from flowkit.flows.product import ProductFlow
from flowkit.images import check_input_shape
from flowkit.preprocess import LatentPipeline, parse_pipeline
from flowkit.registry import accepted_options, coerce_options, encoders, flows, parse_spec, scorers
from flowkit.scorers import ScoreContext, Scorer, check_scorer_parts
from flowkit.training import (
    History,
    embed,
    fit_encoder,
    fit_flow,
    resolve_device,
    resolve_precision,
)

__all__ = ["Detector", "PAPER_PARAMS"]


def _spec(
    value: str | tuple[str, dict[str, Any]], options: dict[str, Any] | None
) -> tuple[str, dict[str, Any]]:
    name, opts = parse_spec(value) if isinstance(value, str) else (value[0], dict(value[1]))
    return name, {**opts, **(options or {})}


#: The seed paper's pair as it published it: a DCGAN autoencoder (L1 reconstruction) and
#: Real-NVP on its standardised latents, scored by negative log-likelihood
#: (``Detector.paper()``). ``latent_dim=100`` is the paper's MNIST setting.
PAPER_PARAMS: dict[str, Any] = {
    "encoder": "dcgan_ae:latent_dim=100",
    "flow": "realnvp",
    "scorer": "nll",
    "preprocess": "standardize",
    "epochs_encoder": 15,
    "lr_encoder": 2e-4,
    "flow_augment": 0,
    "precision": "fp32",
}


class Detector:
    """Two-stage anomaly detector with scikit-learn conventions.

    The defaults are flowkit's recommended pipeline, chosen by measurement (see "Real MNIST"
    in ``benchmarks/README.md``): a SimCLR encoder (temperature 0.5, Adam at 1e-3, 20 epochs,
    bf16 training where the CPU or GPU has it) whose latent is its trunk's features beside
    its L2-normalised projection-head output → each part whitened by PCA to 32 dimensions →
    one Real-NVP per part with batch normalisation between its couplings (as in the Real
    NVP paper; the density is the product of the two), trained on the latents of the images
    and of two augmented copies of each; the anomaly score is the sum of the negative
    log-likelihood and the cosine distance to the 2nd-nearest normal training latent in the
    trunk's part (``knn:part=0``: the flows model both parts, the kNN the representation),
    each standardised on normal validation images.
    :meth:`paper` gives the seed paper's pair (DCGAN autoencoder + Real-NVP, log-likelihood).

    Args:
        encoder: encoder name with options, ``"dcgan_ae:latent_dim=32"``.
        flow: flow name with options, ``"realnvp:layers=8"``.
        scorer: scorer name with options (``"nll"``: negative log-likelihood; ``"a+b"``: the
            sum of scorers ``a`` and ``b``, each standardised on normal validation images).
        preprocess: latent preprocessing fitted on normal training latents (``"auto"``:
            whitened PCA to 32 dimensions, or to all of them for smaller latents;
            ``"standardize"``, ``"pca:16"``, ``"l2+pca:32"``, ``"none"``).
        confidence: the threshold is this quantile of the anomaly scores of normal
            validation images (0.95: 5% of normal images are flagged), as in the paper.
        contamination: expected fraction of anomalies; overrides ``confidence`` when set.
        epochs_encoder, epochs_flow: maximum epochs of each stage (early stopping on the
            validation split can end them sooner).
        patience: flow epochs without validation improvement before flow training stops.
        patience_encoder: the same for encoder training.
        batch_size: encoder minibatch size (at least 2: BatchNorm needs two images).
        flow_batch_size: flow minibatch size (at least 2), or ``"auto"``: the largest power
            of two within a quarter of the training latents, clamped to 128–1024.
        lr_encoder, lr_flow: Adam learning rates.
        flow_augment: the flow (and the preprocessing) also train on the latents of this many
            randomly augmented copies of every training image, made by the encoder's own
            views (``encoder.augment``, e.g. simclr's random affine warps; flowkit's default
            random affine for encoders without one). A few thousand latents are few for a
            density; the copies teach it the invariances the encoder was trained for.
            Validation, the threshold and a kNN scorer's reference set stay unaugmented.
            0 turns it off (default 2).
        val_fraction: share of the normal training images held out for validation
            (early stopping, threshold, scorer calibration). Never the test set.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda:0"``, ...
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"``: bf16 autocast for *training* both
            stages (and the channels-last layout for the encoder); ``"auto"`` trains the
            encoder in bf16 where the hardware has fast bf16 (CPUs with AMX or AVX-512 BF16,
            GPUs that support it) and the flow in fp32 (a 64-wide flow is bound by per-step
            overhead, which autocast adds to). Embedding and scoring always run in fp32, so
            scores stay exact.
        seed: makes fitting reproducible (same seed → same scores on CPU); a non-negative int.
        value_range: the range of *float* input images, mapped onto 0..255 (default
            ``(0, 1)``). uint8 (and other integer) images are always ``[0, 255]``. The range is
            declared, never guessed from a batch, and float pixels outside it are refused.
        verbose: show progress bars.

    The input contract: images are ``(N, C, H, W)`` (or ``(N, H, W)``), uint8 in ``[0, 255]``
    or float in ``value_range``; each image's score depends on that image alone.

    Scores follow scikit-learn's outlier detectors: ``score_samples`` is higher for more
    normal images (``-anomaly_score``, whatever the scorer), ``offset_ = -threshold_`` and
    ``decision_function = score_samples - offset_`` (negative for anomalies). The raw flow
    log-likelihood is :meth:`log_likelihood`.

    Fitted attributes end in ``_``: ``encoder_``, ``pipeline_``, ``flow_``, ``scorer_``,
    ``threshold_`` (on the anomaly score), ``offset_``, ``input_shape_``, ``history_``.
    """

    def __init__(
        self,
        *,
        encoder: str = "simclr:features=trunk+head,temperature=0.5",
        flow: str = "realnvp:batch_norm=true",
        scorer: str = "nll+knn:k=2,metric=cosine,part=0",
        preprocess: str = "auto",
        encoder_options: dict[str, Any] | None = None,
        flow_options: dict[str, Any] | None = None,
        scorer_options: dict[str, Any] | None = None,
        confidence: float = 0.95,
        contamination: float | None = None,
        epochs_encoder: int = 20,
        epochs_flow: int = 200,
        patience: int = 20,
        patience_encoder: int = 5,
        batch_size: int = 64,
        flow_batch_size: int | str = "auto",
        lr_encoder: float = 1e-3,
        lr_flow: float = 1e-2,
        flow_augment: int = 2,
        val_fraction: float = 0.1,
        device: str = "auto",
        precision: str = "auto",
        seed: int = 0,
        value_range: tuple[float, float] = (0.0, 1.0),
        verbose: bool = False,
    ) -> None:
        self.encoder = encoder
        self.flow = flow
        self.scorer = scorer
        self.preprocess = preprocess
        self.encoder_options = encoder_options
        self.flow_options = flow_options
        self.scorer_options = scorer_options
        self.confidence = confidence
        self.contamination = contamination
        self.epochs_encoder = epochs_encoder
        self.epochs_flow = epochs_flow
        self.patience = patience
        self.patience_encoder = patience_encoder
        self.batch_size = batch_size
        self.flow_batch_size = flow_batch_size
        self.lr_encoder = lr_encoder
        self.lr_flow = lr_flow
        self.flow_augment = flow_augment
        self.val_fraction = val_fraction
        self.device = device
        self.precision = precision
        self.seed = seed
        self.value_range = value_range
        self.verbose = verbose

    @classmethod
    def paper(cls, **params: Any) -> Detector:
        """The seed paper's pair (:data:`PAPER_PARAMS`), with any parameter overridden:
        ``Detector.paper(epochs_encoder=6, seed=1)``."""
        return cls(**{**PAPER_PARAMS, **params})

    # -- sklearn plumbing ------------------------------------------------------------------

    @classmethod
    def _param_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> Detector:
        for key, value in params.items():
            if key not in self._param_names():
                raise ConfigError(f"Detector has no parameter {key!r}")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        defaults = {
            p.name: p.default for p in inspect.signature(Detector.__init__).parameters.values()
        }
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if defaults.get(k) != v]
        return f"Detector({', '.join(changed)})"

    def _check_params(self) -> None:
        """Validate every parameter that can be checked without data (cheap; called first by
        every fitting method, so nothing trains on a configuration that cannot finish)."""
        _check_number("confidence", self.confidence, 0.0, 1.0)
        if self.contamination is not None:
            _check_number("contamination", self.contamination, 0.0, 0.5)
        _check_number("val_fraction", self.val_fraction, 0.0, 0.5)
        for name in ("epochs_encoder", "epochs_flow", "patience", "patience_encoder"):
            _check_int(name, getattr(self, name), 1)
        _check_int("batch_size", self.batch_size, 2, "(BatchNorm needs two samples per batch)")
        if self.flow_batch_size != "auto":
            _check_int("flow_batch_size", self.flow_batch_size, 2, "(or 'auto')")
        _check_int("flow_augment", self.flow_augment, 0, "(0 turns it off)")
        _check_int("seed", self.seed, 0, "(it makes fitting reproducible)", high=2**63 - 1)
        for name in ("lr_encoder", "lr_flow"):
            _check_number(name, getattr(self, name), 0.0, math.inf)
        check_value_range(self.value_range)
        resolve_precision(resolve_device(self.device), self.precision)
        if not isinstance(self.preprocess, str):
            raise ConfigError(f"preprocess must be a spec string, got {self.preprocess!r}")
        parse_pipeline(self.preprocess)  # the spec's syntax; its sizes are checked in check_config
        # Catch a misspelt component or option now, not after an hour of encoder training.
        fixed = {"encoder": {"in_channels", "image_size"}, "flow": {"features"}, "scorer": set()}
        for registry, (name, options), kind in (
            (encoders, self.encoder_spec_, "encoder"),
            (flows, self.flow_spec_, "flow"),
            (scorers, self.scorer_spec_, "scorer"),
        ):
            entry = registry.get(name)
            accepted = accepted_options(entry.factory, skip=1 if entry.namespace else 0)
            unknown = sorted(set(options) - set(accepted or options) - fixed[kind])
            if accepted is not None and unknown:
                raise ConfigError(
                    f"{kind} {name!r} has no option {', '.join(map(repr, unknown))}; "
                    f"accepted: {', '.join(accepted)}"
                )
            coerce_options(f"{kind} {name!r}", entry.factory, options)

    def check_config(self, input_shape: tuple[int, int, int] | None = None) -> Detector:
        """Validate the parameters and, given the image shape ``(C, H, W)``, build every
        component once, untrained.

        Option values and ranges that only the factories know (``layers=-2``, a PCA larger
        than the encoder's latent, an image size the encoder cannot take) fail here, in one
        line, before any training starts. :meth:`fit` calls it first.
        """
        self._check_params()
        if input_shape is not None:
            with warnings.catch_warnings():  # the real build warns; a probe need not
                warnings.simplefilter("ignore", UserWarning)
                self._check_components(self.build_encoder(input_shape))
        return self

    def _check_components(self, encoder: torch.nn.Module) -> None:
        """Build the flow and scorer that go with ``encoder``, untrained (see check_config)."""
        in_dim = int(encoder.embed_dim)
        blocks = getattr(encoder, "embed_blocks", None)
        pipe = LatentPipeline(self.preprocess, in_dim=in_dim, blocks=blocks)
        out_dim = pipe.out_dim
        flow = self._create_flow(pipe.out_blocks)
        with torch.no_grad():
            check_log_prob(flow.eval(), torch.zeros(2, out_dim))
        sname, soptions = self.scorer_spec_
        check_scorer_parts(scorers.create(sname, **soptions), len(pipe.out_blocks))

    def _create_flow(self, blocks: tuple[int, ...]) -> torch.nn.Module:
        """The untrained flow for preprocessed latents of ``blocks`` (one flow per block)."""
        name, options = self.flow_spec_
        return _flow_over(blocks, lambda d: flows.create(name, features=d, **options))

    @property
    def encoder_spec_(self) -> tuple[str, dict[str, Any]]:
        return _spec(self.encoder, self.encoder_options)

    @property
    def flow_spec_(self) -> tuple[str, dict[str, Any]]:
        return _spec(self.flow, self.flow_options)

    @property
    def scorer_spec_(self) -> tuple[str, dict[str, Any]]:
        name, options = _spec(self.scorer, self.scorer_options)
        if "+" in name:  # "nll+knn:k=3" is shorthand for combo:parts=nll+knn:k=3
            raw = self.scorer if isinstance(self.scorer, str) else name
            return "combo", {"parts": raw.strip().replace(",", ";")}
        return name, options

    def _fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise NotFittedError(
                "this Detector is not fitted yet: call fit() or Detector.load() first"
            )

    # -- fitting ---------------------------------------------------------------------------

    def split_validation(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Seeded (train, validation) split of normal training images."""
        n = len(images)
        n_val = max(1, int(round(n * self.val_fraction)))
        if n - n_val < 2:
            raise DataError(f"need at least {n_val + 2} training images, got {n}")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        return images[order[n_val:]], images[order[:n_val]]

    def build_encoder(self, input_shape: tuple[int, int, int]) -> torch.nn.Module:
        """Create the (untrained) encoder for images of ``input_shape`` (C, H, W)."""
        c, h, w = input_shape
        if h != w:
            raise DataError(f"images must be square, got {h}×{w}")
        name, options = self.encoder_spec_
        torch.manual_seed(self.seed)
        return encoders.create(name, in_channels=c, image_size=h, **options)

    def fit(self, X: Any, y: Any = None) -> Detector:
        """Fit on normal images: uint8 ``(N, C, H, W)`` tensor/array or an :class:`ImageSet`.

        ``y`` is ignored (present for scikit-learn compatibility): training data is normal.
        """
        self._check_params()
        images = as_uint8_images(X, "training images", self.value_range)
        train, val = self.split_validation(images)
        # the encoder that will train is the one checked: built once, before any training
        encoder = self.build_encoder(tuple(int(s) for s in images.shape[1:]))
        self._check_components(encoder)
        self.fit_encoder(train, val, encoder=encoder)
        z_train, z_val = self.embed(train), self.embed(val)
        return self.fit_from_latents(z_train, z_val, train, val)

    def fit_encoder(
        self,
        train: torch.Tensor,
        val: torch.Tensor,
        encoder: torch.nn.Module | None = None,
        progress: Any = None,
    ) -> Detector:
        """Stage 1 only (the bench calls it once per encoder and caches the result)."""
        self._check_params()
        self.input_shape_ = tuple(int(s) for s in train.shape[1:])
        self.encoder_ = encoder if encoder is not None else self.build_encoder(self.input_shape_)
        enc_shape = tuple(getattr(self.encoder_, "input_shape", self.input_shape_))
        if enc_shape != self.input_shape_:
            raise DataError(f"encoder expects images {enc_shape}, got {self.input_shape_}")
        self.history_ = {
            "encoder": fit_encoder(
                self.encoder_,
                train,
                val,
                epochs=self.epochs_encoder,
                batch_size=self.batch_size,
                lr=self.lr_encoder,
                patience=self.patience_encoder,
                precision=self.precision,
                channels_last=resolve_precision(resolve_device(self.device), self.precision)
                == "bf16",
                device=self.device,
                seed=self.seed,
                progress=progress,
                verbose=self.verbose,
            ).to_dict()
        }
        return self

    def set_encoder(
        self,
        encoder: torch.nn.Module,
        input_shape: tuple[int, int, int],
        history: dict[str, Any] | None = None,
    ) -> Detector:
        """Use an already trained encoder (e.g. from the bench's cache)."""
        self.encoder_ = encoder.eval()
        self.input_shape_ = tuple(int(s) for s in input_shape)
        self.history_ = {"encoder": history or History("encoder").to_dict()}
        return self

    def embed_augmented(self, train: torch.Tensor) -> torch.Tensor | None:
        """Latents of ``flow_augment`` augmented copies of every training image, copy by copy
        ``(flow_augment * N, embed_dim)``, or None when ``flow_augment`` is 0. Seeded by
        ``seed``: the same images give the same latents."""
        if not self.flow_augment:
            return None
        if not hasattr(self, "encoder_"):
            raise NotFittedError("this Detector has no encoder yet: call fit() first")
        views = getattr(self.encoder_, "augment", None)
        views = views if callable(views) else Augment()
        torch.manual_seed(self.seed + 2)
        return torch.cat([self._embed(train, views) for _ in range(self.flow_augment)])

    def fit_from_latents(
        self,
        z_train: torch.Tensor,
        z_val: torch.Tensor,
        train_images: torch.Tensor | None = None,
        val_images: torch.Tensor | None = None,
        progress: Any = None,
        z_augmented: torch.Tensor | None = None,
    ) -> Detector:
        """Stage 2 from encoder latents: preprocessing, flow, scorer and threshold.

        ``z_augmented`` (:meth:`embed_augmented`) join ``z_train`` for the preprocessing and
        the flow only; with ``flow_augment`` set and no ``z_augmented``, they are made here
        from ``train_images``."""
        self._check_params()
        if not hasattr(self, "encoder_"):
            raise ConfigError(
                "fit_from_latents needs a fitted encoder: call fit() or fit_encoder()"
            )
        if self.flow_augment and z_augmented is None:
            if train_images is None:
                raise ConfigError(
                    f"flow_augment={self.flow_augment} needs the augmented latents: pass "
                    "train_images, or z_augmented=detector.embed_augmented(train_images)"
                )
            z_augmented = self.embed_augmented(train_images)
        z_flow = z_train if z_augmented is None else torch.cat([z_train, z_augmented])
        blocks = getattr(self.encoder_, "embed_blocks", None)
        self.pipeline_ = LatentPipeline(
            self.preprocess, in_dim=z_train.shape[1], blocks=blocks
        ).fit(z_flow)
        p_train, p_val = self.pipeline_(z_flow), self.pipeline_(z_val)
        torch.manual_seed(self.seed + 1)
        self.flow_ = self._create_flow(self.pipeline_.out_blocks)
        fit = functools.partial(
            fit_flow,
            epochs=self.epochs_flow,
            batch_size=self.flow_batch_size,
            lr=self.lr_flow,
            # auto: the flow stays fp32 (its small matmuls ran 1.6x slower under bf16 autocast)
            precision="fp32" if self.precision == "auto" else self.precision,
            patience=self.patience,
            device=self.device,
            seed=self.seed,
            progress=progress,
            verbose=self.verbose,
        )
        if isinstance(self.flow_, ProductFlow):
            # each part trains on its own block with its own schedule and early stopping: one
            # joint run stops and cuts the learning rate where the sum of the parts' losses
            # says, which is rarely where each part's own would (benchmarks/README.md)
            self.history_["flow"] = _merge_histories(
                [
                    fit(part, train, val).to_dict()
                    for (part, train), (_, val) in zip(
                        self.flow_.pairs(p_train), self.flow_.pairs(p_val), strict=True
                    )
                ]
            )
            self.flow_.eval()
        else:
            self.history_["flow"] = fit(self.flow_, p_train, p_val).to_dict()
        return self.fit_scorer(z_train, z_val, train_images, val_images)

    def fit_scorer(
        self,
        z_train: torch.Tensor,
        z_val: torch.Tensor,
        train_images: torch.Tensor | None = None,
        val_images: torch.Tensor | None = None,
    ) -> Detector:
        """(Re)build the scorer from ``self.scorer`` and set the threshold, on normal data
        only; the encoder and flow stay as they are (the bench swaps scorers this way)."""
        sname, soptions = self.scorer_spec_
        self.scorer_: Scorer = scorers.create(sname, **soptions)
        if self.scorer_.needs_images and val_images is None:
            raise ConfigError(f"scorer {sname!r} needs the training images")
        train_ctx = self._context(z_train, train_images)
        val_ctx = self._context(z_val, val_images)
        self.scorer_.fit(train_ctx, val_ctx)
        # The threshold comes from normal images the flow did not train on.
        calib = self.scorer_.score(val_ctx) if len(z_val) >= 10 else self.scorer_.score(train_ctx)
        q = 1.0 - self.contamination if self.contamination is not None else self.confidence
        self.threshold_ = float(torch.quantile(calib.double(), q))
        self.offset_ = -self.threshold_
        return self

    # -- scoring ---------------------------------------------------------------------------

    def _check_images(self, X: Any) -> torch.Tensor:
        images = as_uint8_images(X, value_range=self.value_range)
        check_input_shape(tuple(images.shape[1:]), self.input_shape_)
        return images

    def embed(self, X: Any) -> torch.Tensor:
        """Raw encoder latents ``(N, embed_dim)`` of images (float32, CPU)."""
        if not hasattr(self, "encoder_"):
            raise NotFittedError("this Detector has no encoder yet: call fit() first")
        return self._embed(as_uint8_images(X, value_range=self.value_range))

    def _embed(self, images: torch.Tensor, transform: Any = None) -> torch.Tensor:
        return embed(
            self.encoder_,
            images,
            batch_size=max(self.batch_size, 256),
            device=self.device,
            transform=transform,
        )

    @torch.inference_mode()
    def _context(self, latents: torch.Tensor, images: torch.Tensor | None) -> ScoreContext:
        dev = resolve_device(self.device)
        self.flow_.to(dev).eval()
        self.pipeline_.to(dev)
        z = self.pipeline_(latents.to(dev))
        lp = (
            torch.cat([self.flow_.log_prob(z[i : i + 1024]) for i in range(0, len(z), 1024)])
            if len(z)
            else torch.empty(0, device=dev)
        )
        lp = (lp + self.pipeline_.log_abs_det().to(dev)).double().cpu()
        return ScoreContext(
            log_prob=lp,
            latents=z.cpu(),
            images=images,
            encoder=self.encoder_,
            device=dev,
            blocks=self.pipeline_.out_blocks,
        )

    def score_latents(
        self, latents: torch.Tensor, images: torch.Tensor | None = None
    ) -> dict[str, np.ndarray]:
        """``log_prob`` and ``anomaly_score`` for precomputed encoder latents."""
        self._fitted()
        ctx = self._context(latents, images)
        return {
            "log_prob": ctx.log_prob.numpy(),
            "anomaly_score": self.scorer_.score(ctx).double().numpy(),
        }

    def score(self, X: Any) -> dict[str, np.ndarray]:
        """``log_prob`` (the flow's log-likelihood) and ``anomaly_score`` in one pass."""
        self._fitted()
        images = self._check_images(X)
        return self.score_latents(self.embed(images), images)

    def log_likelihood(self, X: Any) -> np.ndarray:
        """Log-likelihood of each image's latent under the flow (with the preprocessing's
        Jacobian), whatever the scorer: higher = more normal."""
        return self.score(X)["log_prob"]

    def anomaly_score(self, X: Any) -> np.ndarray:
        """The scorer's output (higher = more anomalous; ``-log_likelihood`` for nll)."""
        return self.score(X)["anomaly_score"]

    def score_samples(self, X: Any) -> np.ndarray:
        """``-anomaly_score``: higher = more normal, for every scorer (scikit-learn's
        convention for outlier detectors)."""
        return -self.anomaly_score(X)

    def decision_function(self, X: Any) -> np.ndarray:
        """``score_samples - offset_``: negative for anomalies (scikit-learn's convention)."""
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> np.ndarray:
        """1 for normal, -1 for anomaly (anomaly score above the threshold)."""
        return np.where(self.decision_function(X) < 0, -1, 1)

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit on ``X`` and return its labels (1 normal, -1 anomaly), as in scikit-learn."""
        return self.fit(X).predict(X)

    # -- persistence -----------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write one file: config, weights, preprocessing, scorer state, threshold, versions.

        The write is atomic (a crash never leaves a half-written model behind).
        """
        self._fitted()
        payload = {
            "params": {k: v for k, v in self.get_params().items() if k not in ("verbose",)},
            "encoder": {
                "name": self.encoder_spec_[0],
                "options": self.encoder_spec_[1],
                "input_shape": list(self.input_shape_),
                "state": _cpu_state(self.encoder_),
            },
            "pipeline": {
                "spec": self.preprocess,
                "in_dim": self.pipeline_.in_dim,
                "blocks": list(self.pipeline_.blocks),
                "state": _cpu_state(self.pipeline_),
            },
            "flow": {
                "name": self.flow_spec_[0],
                # every option, defaults included: a later default must not change this model
                "options": _resolved_options(flows, *self.flow_spec_),
                "features": self.pipeline_.out_dim,
                "state": _cpu_state(self.flow_),
            },
            "scorer": {
                "name": self.scorer_spec_[0],
                "options": self.scorer_spec_[1],
                "state": self.scorer_.state_dict(),
            },
            "threshold": self.threshold_,
            "history": self.history_,
        }
        return artifact.write(path, payload)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> Detector:
        """Read a file written by :meth:`save` (``torch.load(weights_only=True)``).

        Raises :class:`ModelFileError` for a file that is not a flowkit model, is truncated,
        tampered with, from an incompatible format version, or needs a missing plugin.
        """
        payload = artifact.read(path)
        try:
            params = dict(payload["params"])
            params["device"] = device
            det = cls(**params)
            enc, pipe, flw, scr = (payload[k] for k in ("encoder", "pipeline", "flow", "scorer"))
            det.input_shape_ = tuple(enc["input_shape"])
            c, h, _ = det.input_shape_
            det.encoder_ = _build(
                encoders, enc["name"], enc["options"], path, in_channels=c, image_size=h
            )
            det.encoder_.load_state_dict(enc["state"])
            det.encoder_.eval()
            det.pipeline_ = LatentPipeline(
                pipe["spec"], in_dim=pipe["in_dim"], blocks=pipe.get("blocks")
            )
            det.pipeline_.load_state_dict(pipe["state"])
            flow_options = _legacy_flow_options(flw["name"], flw["options"], flw["state"])
            det.flow_ = _flow_over(
                det.pipeline_.out_blocks,
                lambda d: _build(flows, flw["name"], flow_options, path, features=d),
            )
            det.flow_.load_state_dict(flw["state"])
            det.flow_.eval()
            det.scorer_ = _build(scorers, scr["name"], scr["options"], path)
            det.scorer_.load_state_dict(scr["state"])
            det.threshold_ = float(payload["threshold"])
            det.offset_ = -det.threshold_
            det.history_ = payload.get("history", {})
        except ModelFileError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ModelFileError(
                f"{path}: the model file does not match this version of "
                f"flowkit or its plugins ({type(exc).__name__}: {exc})"
            ) from None
        return det


def _check_int(name: str, value: Any, low: int, why: str = "", high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"{name} must be {bound}{' ' + why if why else ''}, got {value}")


def _check_number(name: str, value: Any, low: float, high: float) -> None:
    """``low < value < high`` (``inf`` means unbounded)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and low < value < high):
        upper = f", {high:g})" if math.isfinite(high) else ", inf)"
        raise ConfigError(f"{name} must be in ({low:g}{upper}, got {value}")


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


_SIMPLE = (bool, int, float, str)


def _resolved_options(registry: Any, name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the factory's other keyword defaults filled in (simple values only),
    so that a saved model rebuilds the same network after a default changes."""
    try:
        entry = registry.get(name)
        params = list(inspect.signature(entry.factory).parameters.values())
    except (TypeError, ValueError, UnknownComponentError):
        return dict(options)
    if entry.namespace:  # the first parameter is the sub-name (timm/<model>), not an option
        params = params[1:]
    defaults = {
        p.name: p.default
        for p in params
        if p.name != "features"
        and isinstance(p.default, _SIMPLE)
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    return {**defaults, **options}


def _legacy_flow_options(
    name: str, options: dict[str, Any], state: dict[str, Any]
) -> dict[str, Any]:
    """Models saved before flowkit recorded every option (``realnvp`` then defaulted to
    ``hidden=256, blocks=2``): read the coupling width and depth off the saved weights."""
    if name != "realnvp" or ("hidden" in options and "blocks" in options):
        return options
    prefix = "transform._transforms.0.transform_net."
    first = state.get(prefix + "initial_layer.weight")
    if first is None:
        return options
    blocks = {k[len(prefix) :].split(".")[1] for k in state if k.startswith(prefix + "blocks.")}
    return {"hidden": int(first.shape[0]), "blocks": len(blocks), **options}


def _merge_histories(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One flow history from those of a product flow's parts (each part's in ``parts``)."""
    return {
        "best_epoch": max(h["best_epoch"] for h in parts),
        "epochs_run": max(h["epochs_run"] for h in parts),
        "max_epochs": max(h["max_epochs"] for h in parts),
        "stopped_early": all(h["stopped_early"] for h in parts),
        "restarts": sum(h["restarts"] for h in parts),
        "seconds": sum(h["seconds"] for h in parts),
        "parts": parts,
    }


def _flow_over(blocks: tuple[int, ...], make: Any) -> Any:
    """``make(features)`` for a latent of one block; for several, one flow per block and the
    product of their densities (:class:`~flowkit.flows.product.ProductFlow`)."""
    if len(blocks) == 1:
        return make(blocks[0])
    return ProductFlow([make(d) for d in blocks], blocks)


def _build(registry: Any, name: str, options: dict[str, Any], path: Any, **kwargs: Any) -> Any:
    try:
        entry = registry.get(name)
    except UnknownComponentError:
        raise ModelFileError(
            f"{path}: this model needs the {registry.kind} {name!r}, which no installed plugin "
            "provides; install the plugin it was trained with"
        ) from None
    accepted = accepted_options(entry.factory, skip=1 if entry.namespace else 0)
    if accepted is not None and "pretrained" in accepted:
        options = {**options, "pretrained": False}  # the saved weights replace any download
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return registry.create(name, **{**kwargs, **options})
    except ConfigError as exc:
        raise ModelFileError(
            f"{path}: cannot rebuild the {registry.kind} {name!r}: {exc}"
        ) from None
