"""The three stages a Detector composes, each with its own fit, state and save.

- :class:`EncoderStage`: builds the encoder for an image shape, trains it on its own loss
  (stage 1), embeds images (and augmented copies of them).
- :class:`DensityStage`: fits the latent preprocessing and one flow, or one flow per latent
  part (a product of flows), by maximum likelihood (stage 2). Its :class:`Density` owns
  ``log_prob`` *including* the preprocessing's Jacobian; scoring and ONNX export use it alike.
- :class:`CalibrationStage`: fits the scorer and the threshold on normal data only.

Each stage's ``state_dict()`` is the part of the model file it owns, and its
``from_state_dict`` rebuilds it; the bench caches the encoder's and the density's states and
fits every scorer once. Nothing outside a stage assigns its fitted attributes.

Example (what :meth:`flowkit.Detector.fit` does, stage by stage):
    >>> from flowkit.config import DetectorConfig
    >>> cfg = DetectorConfig(encoder="dcgan_ae:latent_dim=8", epochs_encoder=1)
    >>> train, val = split_validation(images, cfg.val_fraction, cfg.seed)  # doctest: +SKIP
    >>> enc = EncoderStage(cfg).fit(train, val, device="cpu")               # doctest: +SKIP
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from flowkit.artifact import state_digest
from flowkit.config import DetectorConfig
from flowkit.encoders.base import feature_maps, input_shape_of, latent_parts, views
from flowkit.errors import ConfigError, DataError, ModelFileError, NotExportableError
from flowkit.flows.base import check_log_prob, export_form, flow_capabilities
from flowkit.flows.product import ProductFlow
from flowkit.flows.spatial import SpatialFlow
from flowkit.maps import MapHead
from flowkit.preprocess import Preprocess, parse_preprocess
from flowkit.registry import Registry, accepted_options, encoders, flows, scorers
from flowkit.scorers import ScoreContext, Scorer, check_scorer_parts
from flowkit.spec import Spec
from flowkit.training import (
    History,
    embed,
    fit_encoder,
    fit_flow,
    resolve_device,
    resolve_precision,
)

__all__ = [
    "EncoderStage",
    "DensityStage",
    "CalibrationStage",
    "Density",
    "split_validation",
    "MapLayout",
    "map_layout",
    "check_options",
    "model_payload",
    "check_payload",
    "stages_from_payload",
]

#: Latents evaluated by the flow at a time when scoring (bounds memory).
SCORE_BATCH = 1024
#: Images a spatial flow evaluates at a time (each is thousands of positions).
MAP_BATCH = 16
#: Fewer normal validation images than this cannot place a quantile threshold: the training
#: images' scores are used instead, with a warning.
MIN_CALIBRATION = 10


def split_validation(
    images: torch.Tensor, val_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (train, validation) split of normal training images."""
    n = len(images)
    n_val = max(1, int(round(n * val_fraction)))
    if n - n_val < 2:
        raise DataError(f"need at least {n_val + 2} training images, got {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return images[order[n_val:]], images[order[:n_val]]


def check_options(config: DetectorConfig) -> None:
    """Every check that needs no data: the fields' own (:meth:`DetectorConfig.validate`),
    the device and precision, and each component's name and options against its registry,
    so that a misspelt option fails now, not after an hour of encoder training."""
    config.validate()
    resolve_precision(resolve_device(config.device), config.precision)
    parse_preprocess(config.preprocess)  # the syntax; the sizes are checked with the data
    given = {"encoder": ("in_channels", "image_size"), "flow": ("features",)}
    for registry, spec in (
        (encoders, EncoderStage.spec_of(config)),
        (flows, DensityStage.spec_of(config)),
        (scorers, CalibrationStage.spec_of(config)),
    ):
        name, options = spec.factory_args()
        registry.check_options(name, options, given.get(registry.kind, ()))


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def _rebuild(registry: Registry, name: str, options: dict, source: Any, **kwargs: Any) -> Any:
    """A component of a saved model, or :class:`ModelFileError` saying what is missing."""
    from flowkit.errors import UnknownComponentError

    try:
        entry = registry.get(name)
    except UnknownComponentError:
        from flowkit.plugins import disabled_plugins

        blocked = disabled_plugins()
        if "builtin" in blocked:
            raise ModelFileError(
                f"{source}: this model needs the {registry.kind} {name!r}, but flowkit's "
                "built-in components are disabled (FLOWKIT_DISABLE_PLUGINS includes "
                "builtin); remove builtin from it"
            ) from None
        others = ", ".join(sorted(blocked))
        enable = f" (or enable it: FLOWKIT_DISABLE_PLUGINS blocks {others})" if others else ""
        raise ModelFileError(
            f"{source}: this model needs the {registry.kind} {name!r}, which no installed "
            f"plugin provides; install the plugin it was trained with{enable}"
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
            f"{source}: cannot rebuild the {registry.kind} {name!r}: {exc}"
        ) from None


class _Stage:
    """What every stage shares: its configuration, the spec of the component it fits, its
    identity (a digest of its fitted state) and the identity of the stage it was fitted on
    (``fitted_on``: the encoder's for a density, the density's for a calibration; ``None``
    for an encoder, or a stage read from a model file saved before flowkit recorded it)."""

    component = ""  # the config field naming it: "encoder", "flow" or "scorer"
    fitted_attribute = ""  # set by fit (or from_state_dict)

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self.fitted_on: str | None = None

    def _state_for_identity(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def identity(self) -> str:
        """A digest of this stage's fitted state (what a later stage records as
        ``fitted_on``)."""
        if "_identity" not in vars(self):
            self._identity = state_digest(self._state_for_identity())
        return self._identity

    @classmethod
    def spec_of(cls, config: DetectorConfig) -> Spec:
        """The component's spec, its ``*_options`` merged over the spec's own."""
        params = config.params()
        return Spec.parse(params[cls.component], params[f"{cls.component}_options"])

    @property
    def spec(self) -> Spec:
        return self.spec_of(self.config)

    @property
    def fitted(self) -> bool:
        return self.fitted_attribute in vars(self)


# -- stage 1 ----------------------------------------------------------------------------------


class EncoderStage(_Stage):
    """Build, fit and run the encoder. Fitted: ``encoder_``, ``input_shape_``, ``history_``."""

    component = "encoder"
    fitted_attribute = "encoder_"

    def build(self, input_shape: tuple[int, int, int]) -> nn.Module:
        """The untrained encoder for images of ``input_shape`` ``(C, H, W)`` (seeded)."""
        c, h, w = (int(s) for s in input_shape)
        if h != w:
            raise DataError(f"images must be square, got {h}×{w}")
        name, options = self.spec.factory_args()
        torch.manual_seed(self.config.seed)
        encoder = encoders.create(name, in_channels=c, image_size=h, **options)
        expected = input_shape_of(encoder, (c, h, w))
        if expected != (c, h, w):
            raise DataError(f"encoder expects images {expected}, got {(c, h, w)}")
        return encoder

    def fit(
        self,
        train: torch.Tensor,
        val: torch.Tensor,
        *,
        device: str | torch.device,
        encoder: nn.Module | None = None,
        progress: Any = None,
    ) -> EncoderStage:
        """Stage 1 on uint8 images (``encoder``: one already built by :meth:`build`)."""
        cfg = self.config
        shape = tuple(int(s) for s in train.shape[1:])
        encoder = encoder if encoder is not None else self.build(shape)  # type: ignore[arg-type]
        history = fit_encoder(
            encoder,
            train,
            val,
            epochs=cfg.epochs_encoder,
            batch_size=cfg.batch_size,
            lr=cfg.lr_encoder,
            patience=cfg.patience_encoder,
            precision=cfg.precision,
            channels_last=resolve_precision(resolve_device(device), cfg.precision) == "bf16",
            device=device,
            seed=cfg.seed,
            progress=progress,
            verbose=cfg.verbose,
        )
        return self._set(encoder, shape, history.to_dict())

    def _state_for_identity(self) -> dict[str, Any]:
        return {"shape": list(self.input_shape_), **self.encoder_.state_dict()}

    def _set(self, encoder: nn.Module, shape: tuple, history: dict[str, Any]) -> EncoderStage:
        vars(self).pop("_identity", None)
        self.encoder_ = encoder.eval()
        self.input_shape_ = tuple(int(s) for s in shape)
        self.history_ = history
        return self

    def restore(
        self,
        input_shape: tuple[int, int, int],
        weights: dict[str, torch.Tensor],
        history: dict[str, Any] | None = None,
    ) -> EncoderStage:
        """A trained encoder from its weights (the bench's cache), built as :meth:`build`
        builds it."""
        encoder = self.build(input_shape)
        encoder.load_state_dict(weights)
        return self._set(encoder, input_shape, history or History("encoder").to_dict())

    @property
    def part_sizes(self) -> tuple[int, ...]:
        return latent_parts(self.encoder_)

    @property
    def maps(self) -> MapLayout | None:
        """The feature maps the latent flattens and the anomaly map's size, for an encoder
        that declares ``feature_maps``; ``None`` otherwise."""
        return map_layout(self.encoder_, self.input_shape_)

    def embed(
        self, images: torch.Tensor, *, device: str | torch.device, transform: Any = None
    ) -> torch.Tensor:
        """Latents ``(N, embed_dim)`` (float32, CPU) of uint8 images."""
        return embed(
            self.encoder_,
            images,
            batch_size=max(self.config.batch_size, 256),
            device=device,
            transform=transform,
        )

    def embed_augmented(
        self,
        images: torch.Tensor,
        *,
        device: str | torch.device,
        copies: int | None = None,
        seed: int | None = None,
    ) -> torch.Tensor | None:
        """Latents of ``copies`` (default: ``flow_augment``) augmented copies of every image,
        copy by copy ``(copies * N, embed_dim)``, made by the encoder's own views (seeded by
        ``seed``, default the config's), or ``None`` when ``copies`` is 0. The density stage's
        configuration says how many copies it trains on: the bench passes each flow's own."""
        copies = self.config.flow_augment if copies is None else copies
        if not copies:
            return None
        transform = views(self.encoder_)
        torch.manual_seed((self.config.seed if seed is None else seed) + 2)
        return torch.cat(
            [self.embed(images, device=device, transform=transform) for _ in range(copies)]
        )

    def state_dict(self) -> dict[str, Any]:
        name, options = self.spec.factory_args()
        return {
            "name": name,
            "options": options,
            "input_shape": list(self.input_shape_),
            "state": _cpu_state(self.encoder_),
        }

    @classmethod
    def from_state_dict(
        cls, config: DetectorConfig, state: dict[str, Any], history: dict, source: Any
    ) -> EncoderStage:
        stage = cls(config)
        shape = tuple(int(s) for s in state["input_shape"])
        c, h, _ = shape
        encoder = _rebuild(
            encoders, state["name"], state["options"], source, in_channels=c, image_size=h
        )
        encoder.load_state_dict(state["state"])
        return stage._set(encoder, shape, history)


# -- stage 2 ----------------------------------------------------------------------------------


class Density(nn.Module):
    """The density of raw encoder latents: preprocessing, then one flow (or a product of
    flows, one per latent part). ``log_prob`` includes the preprocessing's Jacobian, so that
    it is the density of what the encoder gives."""

    def __init__(
        self, preprocess: Preprocess, flow: nn.Module, map_size: int | None = None
    ) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.flow = flow
        if map_size and not isinstance(flow, SpatialFlow):
            raise ConfigError(
                f"{type(flow).__name__} takes feature maps but gives no map per position: a "
                "spatial flow subclasses flowkit.flows.spatial.SpatialFlow (log_prob_maps)"
            )
        self.head = MapHead(map_size) if map_size else None

    @property
    def spatial(self) -> bool:
        """Whether it gives anomaly maps (a spatial flow over feature maps)."""
        return self.head is not None

    def with_maps(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(preprocessed latents, log p(z) (B,), anomaly maps (B, S, S))`` of raw latents
        (a spatial density): :meth:`forward` and the maps in one pass."""
        if self.head is None:
            raise ConfigError("this model has no anomaly maps: its flow is not a spatial one")
        u = self.preprocess(z)
        per_scale = self.flow.log_prob_maps(u)
        lp = sum(m.flatten(1).sum(1) for m in per_scale)
        scores = [-m / c for m, (c, _, _) in zip(per_scale, self.flow.maps, strict=True)]
        return u, lp + self.preprocess.log_abs_det().to(u.device), self.head(scores)

    @torch.inference_mode()
    def evaluate_maps(
        self, z: torch.Tensor, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`evaluate` with the anomaly maps, in batches of :data:`MAP_BATCH` images:
        (latents, float64 log-likelihoods, float32 maps ``(N, S, S)``), on CPU."""
        self.to(device).eval()
        us, lps, maps = [], [], []
        for i in range(0, len(z), MAP_BATCH):
            u, lp, m = self.with_maps(z[i : i + MAP_BATCH].to(device))
            us.append(u.cpu())
            lps.append(lp.double().cpu())
            maps.append(m.float().cpu())
        if not us:
            size = self.head.size  # type: ignore[union-attr]
            return z.cpu(), torch.empty(0, dtype=torch.float64), torch.empty(0, size, size)
        return torch.cat(us), torch.cat(lps), torch.cat(maps)

    @property
    def part_sizes(self) -> tuple[int, ...]:
        """What each latent part becomes after preprocessing."""
        return self.preprocess.out_part_sizes

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(preprocessed latents, log p(z))`` for raw latents ``z``."""
        u = self.preprocess(z)
        log_det = self.preprocess.log_abs_det().to(u.device)
        return u, self.flow.log_prob(u) + log_det

    @torch.inference_mode()
    def evaluate(self, z: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` in batches on ``device``: (preprocessed latents on CPU, float64
        log-likelihoods on CPU)."""
        self.to(device).eval()
        u = self.preprocess(z.to(device))
        if len(u):
            lp = torch.cat(
                [self.flow.log_prob(u[i : i + SCORE_BATCH]) for i in range(0, len(u), SCORE_BATCH)]
            )
        else:
            lp = torch.empty(0, device=device)
        lp = (lp + self.preprocess.log_abs_det().to(device)).double().cpu()
        return u.cpu(), lp

    def for_export(self, label: str = "flow") -> nn.Module:
        """The same density in ONNX-exportable form (the Jacobian a constant buffer), or
        :class:`NotExportableError` naming (as ``label``) the flow that has none, and why."""
        why = flow_capabilities(self.flow).get("not_exportable")
        if why:
            raise NotExportableError(f"the {label} has no ONNX form: {why}")
        if self.spatial:
            return _ExportMapDensity(self)
        return _ExportDensity(self.preprocess, export_form(self.flow))


class _ExportDensity(nn.Module):
    def __init__(self, preprocess: Preprocess, flow: nn.Module) -> None:
        super().__init__()
        self.preprocess, self.flow = preprocess, flow
        self.register_buffer("log_det", preprocess.log_abs_det().float().reshape(()))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.preprocess(z)
        return u, self.flow.log_prob(u) + self.log_det


@dataclass(frozen=True)
class MapLayout:
    """What a spatial density needs of its encoder: the ``(C, h, w)`` of each feature map
    its latent flattens, and ``size``, the side of the square input (the anomaly map's)."""

    shapes: tuple[tuple[int, int, int], ...]
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"shapes": [list(s) for s in self.shapes], "size": self.size}

    @staticmethod
    def flow_options(maps: MapLayout | None) -> dict[str, Any]:
        """What a spatial flow's factory is given of ``maps`` (nothing for latent vectors)."""
        return {"maps": [list(s) for s in maps.shapes]} if maps is not None else {}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> MapLayout | None:
        if not d:
            return None
        return cls(tuple(tuple(int(v) for v in s) for s in d["shapes"]), int(d["size"]))


def map_layout(encoder: nn.Module, input_shape: tuple[int, ...]) -> MapLayout | None:
    """The :class:`MapLayout` of an encoder that declares ``feature_maps``, else ``None``."""
    shapes = feature_maps(encoder)
    return MapLayout(shapes, int(input_shape[-1])) if shapes else None


def _check_spatial(name: str, spatial: bool, maps: MapLayout | None, preprocess: str) -> None:
    """A spatial flow needs feature maps, feature maps need a spatial flow, and the flow
    standardizes the positions itself (no latent preprocessing)."""
    if maps is not None and not spatial:
        raise ConfigError(
            f"the encoder gives feature maps, which the flow {name!r} cannot score: use a "
            "spatial flow (patchflow, patchknn)"
        )
    if maps is not None and [n for n, _ in parse_preprocess(preprocess) if n != "auto"]:
        raise ConfigError(
            f"preprocess={preprocess}: a spatial flow standardizes each map's positions "
            "itself; use preprocess=none (or auto)"
        )


class _ExportMapDensity(nn.Module):
    """A spatial density for export: ``(latents, log p(z), anomaly maps)``."""

    def __init__(self, density: Density) -> None:
        super().__init__()
        self.density = density

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.density.with_maps(z)


def _flow_over(part_sizes: tuple[int, ...], make: Any) -> nn.Module:
    """``make(features)`` for a latent of one part; for several, one flow per part and the
    product of their densities (:class:`~flowkit.flows.product.ProductFlow`)."""
    if len(part_sizes) == 1:
        return make(part_sizes[0])
    return ProductFlow([make(d) for d in part_sizes], part_sizes)


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


def _legacy_flow_options(name: str, options: dict[str, Any], state: dict[str, Any]) -> dict:
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


_SIMPLE = (bool, int, float, str)


def _resolved_options(registry: Registry, name: str, options: dict[str, Any]) -> dict:
    """``options`` with the factory's other keyword defaults filled in (simple values only),
    so that a saved model rebuilds the same network after a default changes."""
    import inspect

    from flowkit.errors import UnknownComponentError

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


class DensityStage(_Stage):
    """Fit the preprocessing and the flow(s). Fitted: ``density_``, ``history_``."""

    component = "flow"
    fitted_attribute = "density_"

    def _preprocess(
        self, in_dim: int, part_sizes: tuple[int, ...] | None, maps: MapLayout | None
    ) -> Preprocess:
        _check_spatial(self.spec.name, self._spatial(), maps, self.config.preprocess)
        spec = "none" if maps is not None else self.config.preprocess
        return Preprocess(spec, in_dim=in_dim, part_sizes=part_sizes)

    def _spatial(self) -> bool:
        name, _ = self.spec.factory_args()
        accepted = accepted_options(flows.get(name).factory)
        return accepted is not None and "maps" in accepted

    def _make_flow(self, preprocess: Preprocess, maps: MapLayout | None) -> nn.Module:
        name, options = self.spec.factory_args()
        given = MapLayout.flow_options(maps)
        return _flow_over(
            preprocess.out_part_sizes, lambda d: flows.create(name, features=d, **given, **options)
        )

    def build(
        self,
        in_dim: int,
        part_sizes: tuple[int, ...] | None = None,
        maps: MapLayout | None = None,
    ) -> Density:
        """The untrained density for raw latents of ``in_dim`` dimensions in ``part_sizes``
        (feature maps laid out as ``maps``, for a spatial flow)."""
        preprocess = self._preprocess(in_dim, part_sizes, maps)
        return Density(preprocess, self._make_flow(preprocess, maps), maps and maps.size)

    def check(
        self, in_dim: int, part_sizes: tuple[int, ...], maps: MapLayout | None = None
    ) -> Density:
        """Build once, untrained, and evaluate on two latents (a flow's shape contract)."""
        density = self.build(in_dim, part_sizes, maps)
        if not density.spatial:  # a spatial flow's contract is checked on the training latents
            with torch.no_grad():
                check_log_prob(density.flow.eval(), torch.zeros(2, density.preprocess.out_dim))
        return density

    def fit(
        self,
        z_train: torch.Tensor,
        z_val: torch.Tensor,
        *,
        device: str | torch.device,
        part_sizes: tuple[int, ...] | None = None,
        progress: Any = None,
        fitted_on: str | None = None,
        maps: MapLayout | None = None,
    ) -> DensityStage:
        """Stage 2: the preprocessing on ``z_train``, then the flow(s) on its output, with
        early stopping on ``z_val``. ``z_train`` holds every latent the flow trains on
        (augmented copies included); ``fitted_on``, the identity of the encoder stage that
        gave them; ``maps``, their layout when they are feature maps."""
        cfg = self.config
        preprocess = self._preprocess(z_train.shape[1], part_sizes, maps)
        preprocess.fit(z_train)
        p_train, p_val = preprocess(z_train), preprocess(z_val)
        torch.manual_seed(cfg.seed + 1)
        flow = self._make_flow(preprocess, maps)
        fit = functools.partial(
            fit_flow,
            epochs=cfg.epochs_flow,
            batch_size=cfg.flow_batch_size,
            lr=cfg.lr_flow,
            # auto: the flow stays fp32 (a small flow is bound by per-step overhead, which
            # autocast adds to)
            precision="fp32" if cfg.precision == "auto" else cfg.precision,
            patience=cfg.patience,
            device=device,
            seed=cfg.seed,
            progress=progress,
            verbose=cfg.verbose,
        )
        if isinstance(flow, ProductFlow):
            # each part trains on its own with its own schedule and early stopping: one joint
            # run would stop and cut the learning rate where the sum of the parts' losses
            # says, which is rarely where each part's own would (benchmarks/EXPERIMENTS.md)
            history = _merge_histories(
                [
                    fit(part, train, val).to_dict()
                    for (part, train), (_, val) in zip(
                        flow.per_part(p_train), flow.per_part(p_val), strict=True
                    )
                ]
            )
            flow.eval()
        else:
            history = fit(flow, p_train, p_val).to_dict()
        density = Density(preprocess, flow, maps and maps.size)
        return self._set(density, history, fitted_on)

    def context(
        self,
        latents: torch.Tensor,
        images: torch.Tensor | None,
        encoder: nn.Module | None,
        device: str | torch.device,
    ) -> ScoreContext:
        """What a scorer sees of raw ``latents`` (and their images)."""
        dev = resolve_device(device)
        maps = None
        if self.density_.spatial:
            u, lp, maps = self.density_.evaluate_maps(latents, dev)
        else:
            u, lp = self.density_.evaluate(latents, dev)
        return ScoreContext(
            log_prob=lp,
            latents=u,
            images=images,
            encoder=encoder,
            device=dev,
            part_sizes=self.density_.part_sizes,
            maps=maps,
        )

    def state_dict(self) -> dict[str, Any]:
        pre, flow = self.density_.preprocess, self.density_.flow
        name, options = self.spec.factory_args()
        return {
            "pipeline": {
                "spec": self.config.preprocess if self.maps_ is None else "none",
                "in_dim": pre.in_dim,
                "blocks": list(pre.part_sizes),  # the file's name for the part sizes
                "state": _cpu_state(pre),
            },
            "flow": {
                "name": name,
                # every option, defaults included: a later default must not change this model
                "options": _resolved_options(flows, name, options),
                "features": pre.out_dim,
                "state": _cpu_state(flow),
                **({"maps": self.maps_.to_dict()} if self.maps_ is not None else {}),
            },
        }

    @classmethod
    def from_state_dict(
        cls,
        config: DetectorConfig,
        pipeline: dict[str, Any],
        flow: dict[str, Any],
        history: dict[str, Any],
        source: Any,
        fitted_on: str | None = None,
    ) -> DensityStage:
        stage = cls(config)
        pre = Preprocess(
            pipeline["spec"], in_dim=pipeline["in_dim"], part_sizes=pipeline.get("blocks")
        )
        pre.load_state_dict(pipeline["state"])
        options = _legacy_flow_options(flow["name"], flow["options"], flow["state"])
        maps = MapLayout.from_dict(flow.get("maps"))
        given = MapLayout.flow_options(maps)
        model = _flow_over(
            pre.out_part_sizes,
            lambda d: _rebuild(flows, flow["name"], options, source, features=d, **given),
        )
        model.load_state_dict(flow["state"])
        density = Density(pre, model.eval(), maps and maps.size)
        return stage._set(density, history, fitted_on)

    def _state_for_identity(self) -> dict[str, Any]:
        return dict(self.density_.state_dict())

    def _set(
        self, density: Density, history: dict[str, Any], fitted_on: str | None = None
    ) -> DensityStage:
        vars(self).pop("_identity", None)
        self.density_, self.history_, self.fitted_on = density, history, fitted_on
        return self

    @property
    def maps_(self) -> MapLayout | None:
        """The layout of the feature maps it was fitted on (``None``: latent vectors)."""
        density = self.density_
        if density.head is None:
            return None
        return MapLayout(density.flow.maps, density.head.size)


# -- calibration ------------------------------------------------------------------------------


def _pixel_calibration(
    maps: torch.Tensor | None, q: float
) -> tuple[float | None, tuple[float, float] | None]:
    """The pixel threshold and the heatmaps' display range from normal images' anomaly maps:
    the threshold is the ``q`` quantile of each image's highest pixel (so that a share ``q``
    of normal images gets an empty mask, as the image threshold passes that share of normal
    images); the range runs from the median pixel to that threshold."""
    if maps is None or not len(maps):
        return None, None
    flat = maps.reshape(len(maps), -1).double()
    threshold = float(torch.quantile(flat.amax(1), q))
    step = max(1, flat.numel() // 1_000_000)  # the median of at most a million pixels
    low = float(flat.reshape(-1)[::step].median())
    return threshold, (low, threshold)


class CalibrationStage(_Stage):
    """Fit the scorer and the threshold on normal data. Fitted: ``scorer_``, ``threshold_``;
    for a spatial density, also ``pixel_threshold_`` and ``map_range_``."""

    component = "scorer"
    fitted_attribute = "threshold_"
    pixel_threshold_: float | None = None
    map_range_: tuple[float, float] | None = None

    def build(self) -> Scorer:
        name, options = self.spec.factory_args()
        return scorers.create(name, **options)

    def check(self, parts: int) -> Scorer:
        """Build the scorer, untrained, and refuse a latent part it asks for that the
        encoder's latent does not have."""
        scorer = self.build()
        check_scorer_parts(scorer, parts)
        return scorer

    def fit(
        self, train: ScoreContext, val: ScoreContext, *, fitted_on: str | None = None
    ) -> CalibrationStage:
        """The scorer on normal training and validation contexts, then the threshold: the
        ``confidence`` quantile (or ``1 - contamination``) of the anomaly scores of normal
        validation images (of the training images when fewer than 10 are held out).
        ``fitted_on``: the identity of the density stage the contexts come from. A latent
        part the scorer asks for that the contexts' latents do not have is refused first."""
        scorer = self.check(len(train.part_sizes or (1,)))
        if scorer.needs_images and val.images is None:
            raise ConfigError(f"scorer {self.spec.name!r} needs the training images")
        scorer.fit(train, val)
        n_val = len(val.log_prob)
        if n_val < MIN_CALIBRATION:
            warnings.warn(
                f"only {n_val} normal validation image(s) (val_fraction="
                f"{self.config.val_fraction} of the training images): the threshold is taken "
                f"from the {len(train.log_prob)} training images' scores instead, which the "
                f"model has seen; give {MIN_CALIBRATION} or more validation images (more "
                "normal images, or a larger val_fraction) for a threshold you can trust",
                UserWarning,
                stacklevel=2,
            )
        ref = val if n_val >= MIN_CALIBRATION else train
        calib = scorer.score(ref)
        cfg = self.config
        q = 1.0 - cfg.contamination if cfg.contamination is not None else cfg.confidence
        pixel = _pixel_calibration(ref.maps, q)
        return self._set(scorer, float(torch.quantile(calib.double(), q)), fitted_on, pixel)

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        """Anomaly scores (float64), higher = more anomalous."""
        return self.scorer_.score(ctx).double()

    def state_dict(self) -> dict[str, Any]:
        name, options = self.spec.factory_args()
        return {"name": name, "options": options, "state": self.scorer_.state_dict()}

    @classmethod
    def from_state_dict(
        cls,
        config: DetectorConfig,
        state: dict[str, Any],
        threshold: float,
        source: Any,
        fitted_on: str | None = None,
        pixel: tuple[Any, Any] = (None, None),
    ) -> CalibrationStage:
        stage = cls(config)
        scorer = _rebuild(scorers, state["name"], state["options"], source)
        scorer.load_state_dict(state["state"])
        if pixel[0] is not None:
            pixel = (float(pixel[0]), (float(pixel[1][0]), float(pixel[1][1])))
        return stage._set(scorer, float(threshold), fitted_on, pixel)

    def _state_for_identity(self) -> dict[str, Any]:
        state = {"scorer": self.scorer_.state_dict(), "threshold": self.threshold_}
        if self.pixel_threshold_ is not None:
            state["pixel_threshold"] = self.pixel_threshold_
        return state

    def _set(
        self,
        scorer: Scorer,
        threshold: float,
        fitted_on: str | None = None,
        pixel: tuple[Any, Any] = (None, None),
    ) -> CalibrationStage:
        vars(self).pop("_identity", None)
        self.scorer_, self.threshold_, self.fitted_on = scorer, threshold, fitted_on
        self.pixel_threshold_, self.map_range_ = pixel
        return self


# -- the model file ---------------------------------------------------------------------------


def check_payload(payload: dict[str, Any], source: Any) -> None:
    """Refuse a payload whose fields have the wrong type or range: a threshold that is not a
    finite number (a NaN one would label every image normal), an input shape that is not
    three positive integers, component names that are not text, options that are not dicts."""
    import math

    def bad(what: str) -> ModelFileError:
        return ModelFileError(f"{source}: the model file is invalid: {what}")

    for key in ("params", "encoder", "pipeline", "flow", "scorer"):
        if not isinstance(payload.get(key), dict):
            raise bad(f"{key} must be a mapping")
    threshold = payload.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise bad(f"threshold must be a number, got {threshold!r}")
    if not math.isfinite(threshold):
        raise bad(f"threshold must be finite, got {threshold!r}")
    shape = payload["encoder"].get("input_shape")
    if not (
        isinstance(shape, (list, tuple))
        and len(shape) == 3
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
    ):
        raise bad(f"input_shape must be three positive integers (C, H, W), got {shape!r}")
    for key in ("encoder", "flow", "scorer"):
        part = payload[key]
        if not isinstance(part.get("name"), str) or not isinstance(part.get("options"), dict):
            raise bad(f"{key} must have a name (text) and options (a mapping)")
        if not isinstance(part.get("state"), dict):
            raise bad(f"{key} state must be a mapping")
    if not isinstance(payload.get("history", {}), dict):
        raise bad("history must be a mapping")
    pixel, span = payload.get("pixel_threshold"), payload.get("map_range")
    if pixel is not None and not (
        isinstance(pixel, float)
        and math.isfinite(pixel)
        and isinstance(span, (list, tuple))
        and len(span) == 2
        and all(isinstance(v, float) and math.isfinite(v) for v in span)
    ):
        raise bad("pixel_threshold and map_range must be finite numbers")
    lineage = payload.get("lineage", {})
    if not isinstance(lineage, dict) or not all(
        v is None or isinstance(v, str) for v in lineage.values()
    ):
        raise bad("lineage must map stages to identities (text)")


def model_payload(
    params: dict[str, Any],
    encoding: EncoderStage,
    density: DensityStage,
    calibration: CalibrationStage,
) -> dict[str, Any]:
    """What a model file holds: the parameters and each fitted stage's state (the layout of
    every model saved so far: ``encoder``, ``pipeline`` and ``flow``, ``scorer``)."""
    state = density.state_dict()
    return {
        "params": params,
        "encoder": encoding.state_dict(),
        "pipeline": state["pipeline"],
        "flow": state["flow"],
        "scorer": calibration.state_dict(),
        "threshold": calibration.threshold_,
        **(
            {"pixel_threshold": calibration.pixel_threshold_, "map_range": calibration.map_range_}
            if calibration.pixel_threshold_ is not None
            else {}
        ),
        "history": {"encoder": encoding.history_, "flow": density.history_},
        # which fit each stage belongs to: a density fitted on this encoder, a calibration
        # on this density (files saved before this key compose unchecked)
        "lineage": {"density": density.fitted_on, "calibration": calibration.fitted_on},
    }


def stages_from_payload(
    config: DetectorConfig, payload: dict[str, Any], source: Any
) -> tuple[EncoderStage, DensityStage, CalibrationStage]:
    """The three fitted stages of a model file's payload (:func:`model_payload`), every
    field checked by type and range first (:class:`ModelFileError` in one line)."""
    check_payload(payload, source)
    history = payload.get("history") or {}
    lineage = payload.get("lineage") or {}
    return (
        EncoderStage.from_state_dict(
            config, payload["encoder"], history.get("encoder", {}), source
        ),
        DensityStage.from_state_dict(
            config,
            payload["pipeline"],
            payload["flow"],
            history.get("flow", {}),
            source,
            lineage.get("density"),
        ),
        CalibrationStage.from_state_dict(
            config,
            payload["scorer"],
            payload["threshold"],
            source,
            lineage.get("calibration"),
            pixel=(payload.get("pixel_threshold"), payload.get("map_range")),
        ),
    )
