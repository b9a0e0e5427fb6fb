"""Anomaly scorers: detector outputs → score per image, higher = more anomalous.

A scorer is fitted on *normal* data only (the training latents and the validation split of
the normal training images) and saved inside the Detector artifact.

- ``nll``: negative log-likelihood of the latent under the flow (the paper's score).
- ``bpd``: the NLL in bits per latent dimension (same ranking, comparable across sizes).
- ``typicality``: two-sided distance of the NLL from the normal NLL distribution, in standard
  deviations (Nalisnick et al., "Detecting out-of-distribution inputs to deep generative models
  using typicality", 2019).
- ``recon``: the autoencoder's per-image L1 reconstruction error (encoders that can decode).
- ``knn``: distance to the k-th nearest normal training latent (the non-parametric baseline).
- ``complexity``: NLL minus the part explained by the image's PNG-compressed length, fitted on
  normal validation data (after Serrà et al., "Input complexity and out-of-distribution
  detection with likelihood-based generative models", ICLR 2020).
- ``rotation``: the rotation-prediction loss of a ``rotnet`` encoder (Golan & El-Yaniv,
  "Deep anomaly detection using geometric transformations", NeurIPS 2018).
- ``combo``: sum of scores each standardized on normal validation data, e.g. ``nll+knn``.
- ``map_max``: the highest value of the anomaly map (spatial densities over feature maps).
- ``map_topk``: the mean of the anomaly map's highest ``fraction`` of pixels.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from flowkit.errors import ConfigError, NotExportableError
from flowkit.registry import optional_members

__all__ = [
    "CAPABILITIES",
    "ScoreContext",
    "Scorer",
    "check_scorer_object",
    "check_scorer_parts",
    "latent_part",
    "NLLScorer",
    "BPDScorer",
    "TypicalityScorer",
    "ReconScorer",
    "RotationScorer",
    "KNNScorer",
    "ComplexityScorer",
    "ComboScorer",
    "MapScorer",
    "image_complexity",
]


@dataclass
class ScoreContext:
    """What a scorer may use for a batch of images: the only way it sees the model.

    Attributes:
        log_prob: log-likelihood per image ``(B,)`` (flow density + preprocessing Jacobian).
        latents: the preprocessed latents the flow sees ``(B, D)``.
        images: the uint8 images ``(B, C, H, W)``, when available.
        encoder: the fitted encoder, for scorers that call its per-image methods.
        device: where the encoder runs.
        part_sizes: the sizes of the latents' parts, side by side along ``D``, when the
            encoder gives several (its ``latent_parts``, after preprocessing); ``None`` for
            one part.
        maps: the anomaly maps ``(B, S, S)`` at the model's input resolution (higher = more
            anomalous), for a spatial density over feature maps; ``None`` otherwise.
    """

    log_prob: torch.Tensor
    latents: torch.Tensor
    images: torch.Tensor | None = None
    encoder: nn.Module | None = None
    device: torch.device | str = "cpu"
    part_sizes: tuple[int, ...] | None = None
    maps: torch.Tensor | None = None

    @property
    def blocks(self) -> tuple[int, ...] | None:
        """:attr:`part_sizes`' earlier name."""
        return self.part_sizes


def latent_part(ctx: ScoreContext, part: int | None) -> torch.Tensor:
    """The latents of one part (``part``, counted from 0), or all of them for ``None``."""
    if part is None:
        return ctx.latents
    sizes = ctx.part_sizes or (int(ctx.latents.shape[1]),)
    check_part(part, len(sizes))
    return torch.split(ctx.latents, list(sizes), dim=1)[part]


def check_part(part: int | None, parts: int) -> None:
    """Refuse a part index that a latent of ``parts`` parts does not have."""
    if part is not None and not 0 <= part < parts:
        have = "one part (part=0)" if parts == 1 else f"{parts} parts (part=0 to {parts - 1})"
        raise ConfigError(
            f"the scorer asks for part={part} of the latent, which has {have}; the parts are "
            "the encoder's latent_parts (simclr/csi with features=trunk+head: 0 = trunk, "
            "1 = head)"
        )


def check_scorer_parts(scorer: Scorer, parts: int) -> None:
    """:func:`check_part` for a scorer and, in a combination, each of its scorers."""
    for inner in scorer.members():
        check_part(inner.part, parts)


#: What a scorer may declare beyond ``score(ctx)`` (members of :class:`Scorer`, with their
#: defaults there), and what each gives.
CAPABILITIES: dict[str, str] = {
    "fit": "fit(train, val): state fitted on normal training and validation contexts",
    "state_dict": "state_dict() / load_state_dict(state): state saved in the model file",
    "export_score": "export_score(ctx): the score in plain torch ops, for ONNX export",
    "needs_images": "True: the scorer reads ctx.images (the uint8 images)",
    "part": "the latent part (0, 1, ...) the scorer reads; None: the whole latent",
    "name": "the name messages use",
}


class Scorer(abc.ABC):
    """Base class: :meth:`score` is required (an ``abc`` abstract method); override
    :meth:`fit` if the scorer has state. The optional capabilities (:data:`CAPABILITIES`)
    are declared here with their defaults.

    State that must be saved goes in :meth:`state_dict` as tensors, floats or ints.
    """

    name = "scorer"
    needs_images = False
    part: int | None = None

    def members(self) -> list[Scorer]:
        """The scorers this one is made of: itself, or a combination's scorers."""
        return [self]

    @property
    def exportable(self) -> bool:
        """Whether :meth:`export_score` is defined (else export names the scorer and stops)."""
        return type(self).export_score is not Scorer.export_score

    def fit(self, train: ScoreContext, val: ScoreContext) -> Scorer:
        return self

    @abc.abstractmethod
    def score(self, ctx: ScoreContext) -> torch.Tensor:
        """Anomaly scores ``(B,)``, higher = more anomalous."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def export_score(self, ctx: ScoreContext) -> torch.Tensor:
        """:meth:`score` in plain torch ops on float32 tensors, for ONNX export
        (:func:`flowkit.export.export_onnx` traces it). ``ctx.images`` are the uint8 graph
        input. Scorers without an ONNX form raise :class:`NotExportableError` (the default)."""
        raise NotExportableError(
            f"the {self.name} scorer has no ONNX form (it defines no export_score(ctx)); "
            "export a model with another scorer (nll, knn, nll+knn, ...)"
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = set(self.state_dict())
        if set(state) != expected:
            raise ValueError(
                f"{self.name} scorer state has keys {sorted(state)}, expected {sorted(expected)}"
            )
        for key, value in state.items():
            setattr(self, key, value)


class NLLScorer(Scorer):
    """Negative log-likelihood under the flow (higher = less likely = more anomalous)."""

    name = "nll"

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        return -ctx.log_prob

    export_score = score


class BPDScorer(Scorer):
    """Negative log-likelihood in bits per latent dimension."""

    name = "bpd"

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        return -ctx.log_prob / (ctx.latents.shape[1] * math.log(2.0))

    export_score = score


class MapScorer(Scorer):
    """An image's score from its anomaly map: the mean of its highest ``fraction`` of
    pixels (one pixel: the map's maximum)."""

    def __init__(self, name: str, fraction: float) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ConfigError(f"{name}: fraction must be in [0, 1], got {fraction}")
        self.name, self.fraction = name, float(fraction)

    def fit(self, train: ScoreContext, val: ScoreContext) -> Scorer:
        _require_maps(train, self.name)
        return self

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        flat = _require_maps(ctx, self.name).flatten(1)
        k = max(1, int(round(self.fraction * flat.shape[1])))
        if k == 1:
            return flat.amax(1)
        return flat.topk(k, dim=1).values.mean(1)

    export_score = score


def _require_maps(ctx: ScoreContext, name: str) -> torch.Tensor:
    if ctx.maps is None:
        raise ConfigError(
            f"the {name} scorer reads anomaly maps: it needs a spatial flow (patchflow, "
            "patchknn) over an encoder's feature maps (timm/...:layers=...)"
        )
    return ctx.maps


def map_max() -> MapScorer:
    """The anomaly map's highest value (spatial densities)."""
    return MapScorer("map_max", 0.0)


def map_topk(fraction: float = 0.01) -> MapScorer:
    """The mean of the anomaly map's highest ``fraction`` of pixels (spatial densities)."""
    return MapScorer("map_topk", fraction)


def nll() -> NLLScorer:
    """Negative log-likelihood of the latent (the paper's score)."""
    return NLLScorer()


def bpd() -> BPDScorer:
    """NLL in bits per latent dimension (same ranking as nll)."""
    return BPDScorer()


class TypicalityScorer(Scorer):
    """|NLL − mean normal NLL| / std, on validation images the flow did not train on."""

    name = "typicality"

    def __init__(self) -> None:
        self.mean, self.std = 0.0, 1.0

    def fit(self, train: ScoreContext, val: ScoreContext) -> Scorer:
        nll = -(val.log_prob if len(val.log_prob) >= 10 else train.log_prob)
        self.mean = float(nll.mean())
        self.std = float(nll.std()) if len(nll) > 1 else 1.0
        self.std = self.std if self.std > 0 else 1.0
        return self

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        return (-ctx.log_prob - self.mean).abs() / self.std

    export_score = score

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std}


def _require_images(ctx: ScoreContext, name: str) -> torch.Tensor:
    if ctx.images is None:
        raise ConfigError(f"the {name} scorer needs the images, not only their latents")
    return ctx.images


class _EncoderMethodScorer(Scorer):
    """Scores images with a per-image method of the detector's encoder."""

    needs_images = True
    method = ""
    requirement = ""

    def fit(self, train: ScoreContext, val: ScoreContext) -> Scorer:
        from flowkit.encoders.base import has_capability

        encoder = train.encoder
        if encoder is None or not has_capability(encoder, self.method):
            raise ConfigError(
                f"the {self.name} scorer needs {self.requirement}; "
                f"{type(encoder).__name__} has no {self.method}()"
            )
        return self

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        return _per_image(ctx, self.name, self.method)

    def export_score(self, ctx: ScoreContext) -> torch.Tensor:
        from flowkit.data.base import to_float
        from flowkit.encoders.base import capability

        method = capability(ctx.encoder, self.method)
        return method(to_float(_require_images(ctx, self.name)))


class ReconScorer(_EncoderMethodScorer):
    """The encoder's per-image reconstruction error."""

    name = "recon"
    method = "reconstruction_error"
    requirement = "an encoder that can decode (e.g. dcgan_ae, timm/...:train=ae)"


class RotationScorer(_EncoderMethodScorer):
    """The rotation-prediction loss of a ``rotnet`` or ``csi`` encoder (Golan & El-Yaniv 2018;
    CSI's shifting-transformation classifier)."""

    name = "rotation"
    method = "rotation_loss"
    requirement = "a rotation-prediction encoder (rotnet, csi)"


@torch.inference_mode()
def _per_image(ctx: ScoreContext, name: str, method: str) -> torch.Tensor:
    """Run ``encoder.<method>`` over the context's images in batches, in eval mode."""
    from flowkit.data.base import to_float

    images = _require_images(ctx, name)
    if ctx.encoder is None:
        raise ConfigError(f"the {name} scorer needs the detector's encoder")
    from flowkit.encoders.base import capability

    dev = ctx.device
    fn = capability(ctx.encoder.to(dev).eval(), method)
    parts = [
        fn(to_float(images[i : i + 256].to(dev))).double().cpu() for i in range(0, len(images), 256)
    ]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.double)


class KNNScorer(Scorer):
    """Distance to the k-th nearest normal training latent (scikit-learn NearestNeighbors);
    with ``part``, on that part of a latent of several (:attr:`ScoreContext.part_sizes`) alone."""

    name = "knn"

    def __init__(
        self,
        k: int = 5,
        metric: str = "euclidean",
        max_reference: int = 20000,
        seed: int = 0,
        part: int | None = None,
    ) -> None:
        if k < 1:
            raise ConfigError(f"knn needs k >= 1, got {k}")
        if metric not in ("euclidean", "cosine"):
            raise ConfigError(f"knn metric must be euclidean or cosine, got {metric!r}")
        if part is not None and part < 0:
            raise ConfigError(f"knn part must be >= 0 (the first part is 0), got {part}")
        self.k, self.metric, self.max_reference, self.seed = k, metric, max_reference, seed
        self.part = part
        self.reference = torch.empty(0, 0)
        self._index: Any = None

    def fit(self, train: ScoreContext, val: ScoreContext) -> Scorer:
        ref = latent_part(train, self.part).float()
        if len(ref) > self.max_reference:  # bound the saved model's size
            keep = torch.randperm(len(ref), generator=torch.Generator().manual_seed(self.seed))
            ref = ref[keep[: self.max_reference]]
        if len(ref) < self.k:
            raise ConfigError(f"knn needs at least k={self.k} training latents")
        self.reference = ref.clone()
        self._index = None
        return self

    def _nn(self) -> Any:
        if self._index is None:
            from sklearn.neighbors import NearestNeighbors

            self._index = NearestNeighbors(n_neighbors=self.k, metric=self.metric).fit(
                self.reference.numpy()
            )
        return self._index

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        dist, _ = self._nn().kneighbors(latent_part(ctx, self.part).float().numpy())
        return torch.from_numpy(dist[:, -1]).double()

    def export_score(self, ctx: ScoreContext) -> torch.Tensor:
        """The same distance as a matrix product and a top-k over the stored reference."""
        z = latent_part(ctx, self.part)
        ref = self.reference.to(z)
        if self.metric == "cosine":
            ref = ref / ref.norm(dim=1, keepdim=True).clamp_min(1e-12)
            z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
            dist = 1.0 - z @ ref.T
        else:
            center = ref.mean(0)  # distances are shift-invariant; centring keeps float32 exact
            ref, z = ref - center, z - center
            sq = (z * z).sum(1, keepdim=True) - 2.0 * z @ ref.T + (ref * ref).sum(1)
            dist = sq.clamp_min(0.0).sqrt()
        return dist.topk(self.k, dim=1, largest=False).values[:, -1]

    def state_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "k": self.k}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._index = None


def image_complexity(images: torch.Tensor) -> torch.Tensor:
    """Bits per pixel of each uint8 image as a lossless PNG (the compressor Serrà et al. use
    first): its prediction filters make smooth images cheap, unlike plain zlib."""
    import io

    from PIL import Image

    arr = images.cpu().permute(0, 2, 3, 1).numpy()
    out = []
    for a in arr:
        buf = io.BytesIO()
        Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(buf, "PNG", compress_level=9)
        # drop the fixed PNG container overhead (signature, IHDR, IEND): 57 bytes
        out.append(8.0 * max(len(buf.getvalue()) - 57, 1) / a.size)
    return torch.tensor(out, dtype=torch.double)


class ComplexityScorer(Scorer):
    """NLL with the input-complexity trend removed: ``nll − (a·L(x) + b)``, where ``L`` is the
    compressed length in bits per pixel and ``a, b`` a least-squares fit on normal validation
    images (the latent NLL and pixel code lengths live on different scales)."""

    name = "complexity"
    needs_images = True

    def __init__(self) -> None:
        self.slope, self.intercept = 0.0, 0.0

    def fit(self, train: ScoreContext, val: ScoreContext) -> Scorer:
        ctx = val if len(val.log_prob) >= 10 else train
        c = image_complexity(_require_images(ctx, self.name))
        nll = -ctx.log_prob.double()
        if float(c.var()) > 0:
            self.slope = float(
                ((c - c.mean()) * (nll - nll.mean())).sum() / ((c - c.mean()) ** 2).sum()
            )
        self.intercept = float(nll.mean() - self.slope * c.mean())
        return self

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        c = image_complexity(_require_images(ctx, self.name))
        return -ctx.log_prob.double() - (self.slope * c + self.intercept)

    exportable = False  # declared: export_score says why

    def export_score(self, ctx: ScoreContext) -> torch.Tensor:
        raise NotExportableError(
            "the complexity scorer compresses each image as PNG, which an ONNX graph cannot "
            "express; export a model with nll, knn or nll+knn instead"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"slope": self.slope, "intercept": self.intercept}


class ComboScorer(Scorer):
    """Sum of scores, each standardized (mean 0, std 1) on normal validation images."""

    name = "combo"

    def __init__(self, parts: str = "nll+knn") -> None:
        from flowkit.registry import scorers
        from flowkit.spec import Spec

        spec = Spec.parse(str(parts))
        if not spec.is_combination:
            raise ConfigError(f"combo needs two or more scorers joined by '+', got {parts!r}")
        self.parts = "+".join(p.strip() for p in str(parts).split("+") if p.strip())
        self.scorers = []
        for leaf in spec.leaves():
            name, options = leaf.factory_args()
            self.scorers.append(scorers.create(name, **options))
        self.needs_images = any(s.needs_images for s in self.scorers)
        self.means = torch.zeros(len(self.scorers), dtype=torch.double)
        self.stds = torch.ones(len(self.scorers), dtype=torch.double)

    def members(self) -> list[Scorer]:
        return list(self.scorers)

    @property
    def exportable(self) -> bool:
        return all(s.exportable for s in self.scorers)

    def fit(self, train: ScoreContext, val: ScoreContext) -> Scorer:
        ctx = val if len(val.log_prob) >= 10 else train
        for i, scorer in enumerate(self.scorers):
            scorer.fit(train, val)
            s = scorer.score(ctx).double()
            self.means[i] = s.mean()
            self.stds[i] = s.std() if len(s) > 1 and float(s.std()) > 0 else 1.0
        return self

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        total = torch.zeros(len(ctx.log_prob), dtype=torch.double)
        for i, scorer in enumerate(self.scorers):
            total += (scorer.score(ctx).double() - self.means[i]) / self.stds[i]
        return total

    def export_score(self, ctx: ScoreContext) -> torch.Tensor:
        parts = torch.stack([scorer.export_score(ctx).float() for scorer in self.scorers])
        means, stds = self.means.to(parts), self.stds.to(parts)
        return ((parts - means[:, None]) / stds[:, None]).sum(0)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"means": self.means, "stds": self.stds}
        for i, scorer in enumerate(self.scorers):
            state.update({f"part{i}.{k}": v for k, v in scorer.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.means, self.stds = state["means"], state["stds"]
        for i, scorer in enumerate(self.scorers):
            prefix = f"part{i}."
            scorer.load_state_dict(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            )


def typicality() -> TypicalityScorer:
    """Two-sided distance of the NLL from normal NLLs (Nalisnick et al. 2019)."""
    return TypicalityScorer()


def recon() -> ReconScorer:
    """The autoencoder's reconstruction error (encoders that can decode)."""
    return ReconScorer()


def knn(
    k: int = 5,
    metric: str = "euclidean",
    max_reference: int = 20000,
    seed: int = 0,
    part: int | None = None,
) -> KNNScorer:
    """Distance to the k-th nearest normal training latent; ``part=N``: on the latent's part
    N alone (0 = the trunk's features of ``simclr:features=trunk+head``)."""
    return KNNScorer(k, metric, max_reference, seed, part)


def complexity() -> ComplexityScorer:
    """NLL corrected by the image's compressed length (after Serrà et al. 2020)."""
    return ComplexityScorer()


def combo(parts: str = "nll+knn") -> ComboScorer:
    """Sum of standardized scores named by their parts, e.g. combo:parts=nll+knn."""
    return ComboScorer(parts)


def rotation() -> RotationScorer:
    """Rotation-prediction loss of a rotnet encoder (Golan & El-Yaniv 2018)."""
    return RotationScorer()


_MEMBERS = ("score", "fit", "state_dict", "load_state_dict", "export_score", "needs_images")


class _ScorerAdapter(Scorer):
    """A plugin scorer that is not a :class:`Scorer`: what it declares (:data:`CAPABILITIES`)
    is read once, here, and the rest gets the base class's defaults."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.own = optional_members(inner, (*_MEMBERS, "name", "part"))
        self.name = self.own.get("name", type(inner).__name__)
        self.needs_images = bool(self.own.get("needs_images", False))
        self.part = self.own.get("part")

    def fit(self, train: ScoreContext, val: ScoreContext) -> Scorer:
        if callable(self.own.get("fit")):
            self.own["fit"](train, val)
        return self

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        return self.own["score"](ctx)

    @property
    def exportable(self) -> bool:
        return callable(self.own.get("export_score"))

    def export_score(self, ctx: ScoreContext) -> torch.Tensor:
        if self.exportable:
            return self.own["export_score"](ctx)
        return super().export_score(ctx)

    def state_dict(self) -> dict[str, Any]:
        own = self.own.get("state_dict")
        return own() if callable(own) else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        own = self.own.get("load_state_dict")
        if callable(own):
            own(state)
        elif state:
            raise ValueError(f"{self.name} scorer keeps no state, but the model file has some")


def check_scorer_object(scorer: Any, what: str) -> Scorer:
    """The minimum every scorer meets (``score(ctx)``), checked where it is created; a
    scorer that is not a :class:`Scorer` is adapted once (:class:`_ScorerAdapter`)."""
    if isinstance(scorer, Scorer):
        return scorer
    if not callable(optional_members(scorer, ("score",)).get("score")):
        raise ConfigError(f"{what} has no score(ctx) method, the one method a scorer needs")
    return _ScorerAdapter(scorer)
