"""The Detector: the scikit-learn facade over three stages (encoder, density, calibration).

Example:
    >>> import flowkit
    >>> data = flowkit.load_dataset("digits")
    >>> normal = data.subset((data.labels != 9).nonzero().flatten())
    >>> det = flowkit.Detector(encoder="dcgan_ae:latent_dim=32", epochs_encoder=2, epochs_flow=5)
    >>> det = det.fit(normal)                               # doctest: +SKIP
    >>> det.predict(data.images[:5])                        # 1 normal, -1 anomaly  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import operator
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowkit import artifact
from flowkit.config import (
    DEFAULTS,
    PAPER_PARAMS,
    DetectorConfig,
    check_names,
    option_fields,
    preset,
    stage_of,
)
from flowkit.data.base import as_uint8_images
from flowkit.errors import ConfigError, ModelFileError, NotFittedError
from flowkit.heatmaps import maps_at, masks_of
from flowkit.images import check_input_shape, check_unambiguous
from flowkit.pipeline import StagePipeline, check_downstream
from flowkit.scorers import ScoreContext, check_scorer_parts
from flowkit.stages import (
    CalibrationStage,
    DensityStage,
    EncoderStage,
    check_options,
    check_payload,
    model_payload,
    stages_from_payload,
)
from flowkit.training import resolve_device

__all__ = ["Detector", "PAPER_PARAMS"]


def _read(path: str, doc: str) -> property:
    """A read-only property for ``path`` (``"stage.attribute"``) of the fitted stages."""
    return property(operator.attrgetter(path), doc=doc)


class Detector:
    """Two-stage anomaly detector with scikit-learn conventions.

    The parameters are the fields of :class:`flowkit.config.DetectorConfig` (each documented
    there, with its default: flowkit's recommended pipeline, described in
    ``benchmarks/README.md``): ``encoder``, ``flow``, ``scorer`` and ``preprocess`` as spec
    strings, the training schedule of each stage, ``confidence`` / ``contamination`` for the
    threshold, ``device``, ``precision``, ``seed``, ``value_range`` and ``verbose``.
    :meth:`paper` gives the seed paper's pair (DCGAN autoencoder + Real-NVP, log-likelihood).

    ``fit`` runs three stages (:mod:`flowkit.stages`), each fitted on normal data only: the
    encoder on its own loss; the density (latent preprocessing and a flow per latent part) on
    the latents of the training images, and of ``flow_augment`` augmented copies of each; the
    calibration (the scorer and the threshold) on a validation split of the training images.

    The input contract: images are ``(N, C, H, W)`` (or ``(N, H, W)``), uint8 in ``[0, 255]``
    or float in ``value_range``; each image's score depends on that image alone.

    Scores follow scikit-learn's outlier detectors: ``score_samples`` is higher for more
    normal images (``-anomaly_score``, whatever the scorer), ``offset_ = -threshold_`` and
    ``decision_function = score_samples - offset_`` (negative for anomalies). The raw
    log-likelihood (the density's, preprocessing Jacobian included) is :meth:`log_likelihood`.

    Fitted attributes end in ``_``: the stages ``encoder_stage_``, ``density_stage_``,
    ``calibration_stage_``, and what they hold (``encoder_``, ``density_``, ``threshold_``...).
    """

    def __init__(self, **params: Any) -> None:
        check_names(params)
        for f in option_fields():
            setattr(self, f.name, params.get(f.name, f.default))

    # keyword-only, one per declared option: what get_params, clone and help() read
    __init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default)
            for f in option_fields()
        ]
    )

    @classmethod
    def preset(cls, name: str, **params: Any) -> Detector:
        """A preset (:data:`flowkit.config.PRESETS`: recommended, paper, pretrained, defects)
        with any parameter overridden: ``Detector.preset("defects", seed=1)``."""
        return cls(**{**preset(name), **params})

    paper = classmethod(lambda cls, **params: cls.preset("paper", **params))  # the seed's pair

    @classmethod
    def from_stages(
        cls,
        encoding: EncoderStage,
        density: DensityStage,
        calibration: CalibrationStage,
        /,
        **params: Any,
    ) -> Detector:
        """A fitted Detector of fitted stages of one fit (each records the identity of the
        one it was fitted on: stages of different fits are refused). Its parameters are the
        stages' own; ``params`` may set runtime options (``device``...) and repeat a fitted
        value, never contradict one (:meth:`with_scorer` fits another calibration)."""
        _check_composition(encoding, density, calibration)
        fitted = _fitted_params(encoding, density, calibration)
        _check_agrees(params, fitted)
        det = cls(**{**fitted, **params})
        det._compose(encoding, density, calibration)
        return det

    # -- scikit-learn plumbing --------------------------------------------------------------

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in option_fields()}

    def set_params(self, **params: Any) -> Detector:
        """Set parameters, each checked now. As in scikit-learn, one changed after :meth:`fit`
        describes the next fit: scoring, the threshold and :meth:`save` keep what was fitted."""
        check_names(params)
        DetectorConfig(**{**self.get_params(), **params}).validate()
        for key, value in params.items():
            setattr(self, key, value)
        return self

    @property
    def config(self) -> DetectorConfig:
        """The parameters as a :class:`~flowkit.config.DetectorConfig`."""
        return DetectorConfig(**self.get_params())

    def __repr__(self) -> str:
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if v != DEFAULTS.params()[k]]
        return f"Detector({', '.join(changed)})"

    def check_config(self, input_shape: tuple[int, int, int] | None = None) -> Detector:
        """Validate the parameters and, given the image shape ``(C, H, W)``, build every
        component once, untrained: what only the factories know (``layers=-2``, a PCA larger
        than the latent) fails here, in one line, before any training. :meth:`fit` calls it."""
        config = self.config
        check_options(config)
        if input_shape is not None:
            with warnings.catch_warnings():  # the real build warns; a probe need not
                warnings.simplefilter("ignore", UserWarning)
                check_downstream(config, EncoderStage(config).build(input_shape))
        return self

    def check_fitted(self) -> Detector:
        """Raise :class:`NotFittedError` unless fitted (or loaded)."""
        if "calibration_stage_" not in vars(self):
            raise NotFittedError(
                "this Detector is not fitted yet: call fit() or Detector.load() first"
            )
        return self

    # -- fitting ----------------------------------------------------------------------------

    def fit(self, X: Any, y: Any = None) -> Detector:
        """Fit on normal images: uint8 ``(N, C, H, W)`` tensor/array or an :class:`ImageSet`.

        ``y`` is ignored (present for scikit-learn compatibility): training data is normal.
        """
        config = self.config
        check_options(config)
        images = as_uint8_images(X, "training images", config.value_range)
        self._compose(*StagePipeline(config, images, device=self.device).fit())
        return self

    def with_scorer(self, X: Any, scorer: str, **params: Any) -> Detector:
        """A new Detector sharing this one's fitted encoder and density, with ``scorer`` (and
        any calibration ``params``: ``confidence``, ``contamination``, ``scorer_options``)
        fitted on normal images ``X``, split as :meth:`fit` splits them (give the images
        this Detector was fitted on). Compare scorers without training anything twice."""
        self.check_fitted()
        _check_calibration_only(params)
        config = self.fitted_config_.replace(scorer=scorer, **params)
        check_options(config)
        check_unambiguous(X, self.input_shape_)
        images = as_uint8_images(X, "training images", config.value_range)
        check_input_shape(tuple(images.shape[1:]), self.input_shape_)
        path = StagePipeline(
            config,
            images,
            device=self.device,
            encoding=self.encoder_stage_,
            density=self.density_stage_,
        )
        calibration = path.calibrate()
        return Detector.from_stages(
            self.encoder_stage_, self.density_stage_, calibration, **_runtime(config.params())
        )

    def _compose(
        self, encoder: EncoderStage, density: DensityStage, calibration: CalibrationStage
    ) -> None:
        self.encoder_stage_ = encoder
        self.density_stage_ = density
        self.calibration_stage_ = calibration

    # -- fitted attributes (read from the stages) -------------------------------------------

    @property
    def fitted_config_(self) -> DetectorConfig:
        """What the stages were fitted with (runtime options: this Detector's): what
        :meth:`save` writes, whatever :meth:`set_params` changed since."""
        self.check_fitted()
        fitted = _fitted_params(self.encoder_stage_, self.density_stage_, self.calibration_stage_)
        return DetectorConfig(**{**fitted, **_runtime(self.get_params())})

    # what the stages hold, read through them (scikit-learn's fitted attributes)
    encoder_ = _read("encoder_stage_.encoder_", "The fitted encoder.")
    input_shape_ = _read("encoder_stage_.input_shape_", "The image shape (C, H, W) it takes.")
    density_ = _read("density_stage_.density_", "The fitted density (preprocess + flow).")
    preprocess_ = pipeline_ = _read("density_stage_.density_.preprocess", "The preprocessing.")
    flow_ = _read("density_stage_.density_.flow", "The fitted flow.")
    scorer_ = _read("calibration_stage_.scorer_", "The fitted scorer.")
    threshold_ = _read("calibration_stage_.threshold_", "The image threshold (anomaly score).")
    pixel_threshold_ = property(
        lambda self: _maps_of(self.calibration_stage_.pixel_threshold_),
        doc="The pixel threshold of the anomaly maps (models with a spatial flow).",
    )

    @property
    def offset_(self) -> float:
        return -self.threshold_

    @property
    def history_(self) -> dict[str, Any]:
        return {"encoder": self.encoder_stage_.history_, "flow": self.density_stage_.history_}

    @property
    def encoder_spec_(self) -> tuple[str, dict[str, Any]]:
        return self.encoder_stage_.spec.factory_args()  # what was fitted

    @property
    def flow_spec_(self) -> tuple[str, dict[str, Any]]:
        return self.density_stage_.spec.factory_args()

    @property
    def scorer_spec_(self) -> tuple[str, dict[str, Any]]:
        return self.calibration_stage_.spec.factory_args()

    # -- scoring ----------------------------------------------------------------------------

    def embed(self, X: Any) -> torch.Tensor:
        """Raw encoder latents ``(N, embed_dim)`` of images (float32, CPU)."""
        if "encoder_stage_" not in vars(self):
            raise NotFittedError("this Detector has no encoder yet: call fit() first")
        images = as_uint8_images(X, value_range=self.value_range)
        return self.encoder_stage_.embed(images, device=self.device)

    def context(self, X: Any) -> ScoreContext:
        """What the scorer sees of images ``X``: log-likelihoods, preprocessed latents, the
        images and the encoder (:class:`~flowkit.scorers.ScoreContext`)."""
        self.check_fitted()
        check_unambiguous(X, self.input_shape_)
        images = as_uint8_images(X, value_range=self.value_range)
        check_input_shape(tuple(images.shape[1:]), self.input_shape_)
        z = self.encoder_stage_.embed(images, device=self.device)
        return self.density_stage_.context(z, images, self.encoder_, resolve_device(self.device))

    def score(self, X: Any, maps: bool = False) -> dict[str, np.ndarray]:
        """``log_prob`` (the density's log-likelihood) and ``anomaly_score`` in one pass;
        with ``maps``, also ``anomaly_map`` (:meth:`anomaly_map`)."""
        ctx = self.context(X)
        out = {
            "log_prob": ctx.log_prob.numpy(),
            "anomaly_score": self.calibration_stage_.score(ctx).numpy(),
        }
        if maps:
            out["anomaly_map"] = _maps_of(ctx).numpy()
        return out

    def anomaly_map(self, X: Any, sizes: list[tuple[int, int]] | None = None) -> Any:
        """Anomaly maps ``(N, S, S)`` at the model's input size ``S`` (higher = more
        anomalous; models with a spatial flow), or with ``sizes`` (each image's own
        ``(height, width)``) a list of maps at those sizes (bilinear, as images are squashed
        to ``S × S``)."""
        return maps_at(self.score(X, maps=True)["anomaly_map"], sizes)

    def predict_mask(self, X: Any, sizes: list[tuple[int, int]] | None = None) -> Any:
        """Defect masks: True where :meth:`anomaly_map` exceeds ``pixel_threshold_`` (the
        ``confidence`` quantile of normal validation images' highest pixel)."""
        return masks_of(self.anomaly_map(X, sizes), self.pixel_threshold_)

    def log_likelihood(self, X: Any) -> np.ndarray:
        """Log-likelihood of each image's latent under the density (flow and preprocessing
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

    # -- persistence ------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write one file: parameters, each stage's state, threshold, versions. The write is
        atomic (a crash never leaves a half-written model behind)."""
        self.check_fitted()
        params = {k: v for k, v in self.fitted_config_.params().items() if k != "verbose"}
        stages = (self.encoder_stage_, self.density_stage_, self.calibration_stage_)
        return artifact.write(path, model_payload(params, *stages))

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> Detector:
        """Read a file written by :meth:`save` (``torch.load(weights_only=True)``).

        Raises :class:`ModelFileError` for a file that is not a flowkit model, is truncated,
        tampered with, from an incompatible format version, or needs a missing plugin.
        """
        payload = artifact.read(path)
        check_payload(payload, path)
        try:
            det = cls(**{**payload["params"], "device": device})
            det._compose(*stages_from_payload(det.config, payload, path))
        except ModelFileError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ModelFileError(
                f"{path}: the model file does not match this version of "
                f"flowkit or its plugins ({type(exc).__name__}: {exc})"
            ) from None
        return det


def _maps_of(value: Any) -> Any:
    """``value`` (a context's maps, a pixel threshold), or one line saying why it is missing."""
    value = value.maps if isinstance(value, ScoreContext) else value
    if value is None:
        raise ConfigError(
            "this model gives no anomaly maps: fit it with a spatial flow (patchflow, "
            "patchknn) on a backbone's feature maps (timm/...:layers=..., the defects preset)"
        )
    return value


def _runtime(params: dict[str, Any]) -> dict[str, Any]:
    """The runtime options of ``params`` (device, value range, verbosity): no stage's."""
    return {k: v for k, v in params.items() if stage_of(k) == "runtime"}


def _fitted_params(
    encoding: EncoderStage, density: DensityStage, calibration: CalibrationStage
) -> dict[str, Any]:
    """Each option from the stage it changes (runtime ones from the calibration's config)."""
    by_stage = {
        "encoder": encoding.config,
        "density": density.config,
        "calibration": calibration.config,
        "runtime": calibration.config,
    }
    return {k: by_stage[stage_of(k)].params()[k] for k in DetectorConfig.__dataclass_fields__}


def _check_composition(
    encoding: EncoderStage, density: DensityStage, calibration: CalibrationStage
) -> None:
    """Stages given in order, each fitted, of one fit, with latents that fit together."""
    for stage, kind, place in (
        (encoding, EncoderStage, "first"),
        (density, DensityStage, "second"),
        (calibration, CalibrationStage, "third"),
    ):
        if not isinstance(stage, kind):
            raise ConfigError(
                "from_stages takes (EncoderStage, DensityStage, CalibrationStage), in that "
                f"order: the {place} is a {type(stage).__name__}"
            )
        if not stage.fitted:
            raise NotFittedError(f"from_stages: the {kind.__name__} is not fitted yet")
    embed_dim = int(encoding.encoder_.embed_dim)
    pre = density.density_.preprocess
    if pre.in_dim != embed_dim or tuple(pre.part_sizes) != tuple(encoding.part_sizes):
        raise ConfigError(
            f"from_stages: the density takes latents of {pre.in_dim} dimensions in parts "
            f"{tuple(pre.part_sizes)}, the encoder gives {embed_dim} in parts "
            f"{tuple(encoding.part_sizes)}: they are not of one fit"
        )
    for stage, on, what in (
        (density, encoding, "the density was fitted on another encoder's latents"),
        (calibration, density, "the calibration was fitted on another density's scores"),
    ):
        if stage.fitted_on is not None and stage.fitted_on != on.identity:
            raise ConfigError(
                f"from_stages: {what} (another fit: another seed, data or options); stages "
                "of different fits cannot be mixed: refit the later stages on this one "
                "(Detector.with_scorer for a calibration)"
            )
    check_scorer_parts(calibration.scorer_, len(density.density_.part_sizes))


def _check_agrees(params: dict[str, Any], fitted: dict[str, Any]) -> None:
    """``params`` given to :meth:`Detector.from_stages` may set runtime options and repeat
    fitted values, never contradict them."""
    check_names(params)
    for key, value in params.items():
        if stage_of(key) != "runtime" and value != fitted[key]:
            raise ConfigError(
                f"from_stages: {key}={value!r} contradicts the fitted {stage_of(key)} stage "
                f"({key}={fitted[key]!r}); fit a stage with it (Detector.with_scorer for the "
                "calibration's options, Detector.fit for the others) or leave it out"
            )


def _check_calibration_only(params: dict[str, Any]) -> None:
    check_names(params)
    refits = sorted(k for k in params if stage_of(k) not in ("calibration", "runtime"))
    if refits:
        raise ConfigError(
            f"with_scorer refits the calibration only; {', '.join(refits)} change(s) an "
            "earlier stage: fit a new Detector for that"
        )
