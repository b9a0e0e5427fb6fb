"""Contract checks for encoders and flows, for flowkit's tests and for plugin authors.

One call checks a component the way flowkit's own suite checks every registered one::

    from flowkit.testing import check_encoder, check_flow

    def test_my_encoder():
        check_encoder("my_encoder")            # a registered name, or an Encoder instance

    def test_my_flow():
        check_flow("my_flow", features=4)

or parametrize over everything a plugin registers::

    from flowkit.testing import registered

    @pytest.mark.parametrize("name", registered("flows", plugin="my_plugin"))
    def test_flows(name):
        check_flow(name)

Each check raises ``AssertionError`` with a message saying which property failed.
"""

from __future__ import annotations

import copy
import io
from typing import Any

import torch

__all__ = ["check_encoder", "check_flow", "check_scorer", "check_dataset", "registered"]


def registered(kind: str, plugin: str | None = None, pattern: str = "*") -> list[str]:
    """Names registered in ``kind`` ("encoders", "flows", ...), optionally by one plugin."""
    from flowkit.registry import REGISTRIES

    reg = REGISTRIES[kind]
    return [
        n
        for n in reg.list(pattern)
        if not n.endswith("/*") and (plugin is None or reg.get(n).plugin == plugin)
    ]


def _roundtrip(module: torch.nn.Module, factory: Any) -> torch.nn.Module:
    """``module``'s state saved and loaded into a *different* instance from ``factory``."""
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    buf.seek(0)
    clone = factory()
    clone.load_state_dict(torch.load(buf, weights_only=True))
    return clone.eval()


def _scrambled_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of an untouched instance whose parameters and buffers are all changed, so that
    a save/load round trip into it proves the state dict holds everything (comparing the
    instance with itself would prove nothing)."""
    clone = copy.deepcopy(module)
    with torch.no_grad():
        for t in clone.state_dict().values():  # persistent state only: shares storage
            if t.is_floating_point():
                t.add_(torch.randn_like(t)).mul_(1.5)
    return clone


def check_flow(
    flow: Any, features: int = 4, batch: int = 16, atol: float = 1e-4, **options: Any
) -> None:
    """Check a flow: the minimum (``log_prob`` shape and finiteness, gradients reaching every
    parameter, eval-mode determinism and batch independence, a save/load round trip) and,
    where the flow has them, the optional methods: ``transform_to_noise``/``inverse``
    invertibility; ``log_prob`` against the change-of-variables formula with an autograd
    Jacobian (with ``base_log_prob``); ``sample``.

    Args:
        flow: a registered name (built with ``features`` and ``options``) or a flow instance
            (a ``torch.nn.Module`` with ``log_prob``; it is copied, never changed).
    """
    from flowkit.flows.base import check_flow_object, flow_capabilities, initialize_flow
    from flowkit.registry import flows

    def build() -> Any:
        return flows.create(flow, features=features, **options)

    torch.manual_seed(0)
    if isinstance(flow, str):
        f = build().double()
    else:
        f = check_flow_object(copy.deepcopy(flow), f"flow {type(flow).__name__}").double()
        features = int(flow_capabilities(flow).get("features", features))
    z = torch.randn(batch, features, dtype=torch.double)
    initialize_flow(f, z)
    # A few optimisation steps so that checks do not pass trivially at the identity (a flow
    # with nothing to train, such as patchknn's memory bank, skips them).
    trainable = [p for p in f.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=1e-2) if trainable else None
    for _ in range(3 if opt is not None else 0):
        f.train()
        loss = -f.log_prob(z * 1.5 + 0.3).mean()
        opt.zero_grad()  # type: ignore[union-attr]
        loss.backward()
        opt.step()  # type: ignore[union-attr]
    f.train()
    lp = f.log_prob(z)
    assert lp.shape == (batch,), f"log_prob shape {tuple(lp.shape)}, expected ({batch},)"
    assert torch.isfinite(lp).all(), "log_prob is not finite"
    f.zero_grad()
    if trainable:
        (-lp.mean()).backward()
    missing = [
        n
        for n, p in f.named_parameters()
        if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())
    ]
    assert not missing, f"no (finite) gradient reaches: {missing}"

    f.eval()
    with torch.no_grad():
        a, b = f.log_prob(z), f.log_prob(z)
        assert torch.allclose(a, b), "eval-mode log_prob is not deterministic"
        single = torch.cat([f.log_prob(z[i : i + 1]) for i in range(batch)])
        assert torch.allclose(a, single, atol=atol), (
            "eval-mode log_prob depends on the batch (batch statistics used in eval?)"
        )
        has = flow_capabilities(f)
        if _has(has, "transform_to_noise", "inverse"):
            u = f.transform_to_noise(z)
            assert u.shape == z.shape, f"noise shape {tuple(u.shape)} != {tuple(z.shape)}"
            back = f.inverse(u)
            assert torch.allclose(back, z, atol=atol), (
                f"inverse(transform_to_noise(z)) != z (max error {(back - z).abs().max():.2e})"
            )
        if _has(has, "sample"):
            s = f.sample(5)
            assert s.shape == (5, features) and torch.isfinite(s).all(), "bad samples"
    if _has(has, "transform_to_noise", "base_log_prob") and features <= 16:
        _check_change_of_variables(f, z[:3], atol)
    # Load into an instance that never saw this training: a fresh one, or a scrambled copy
    # of the untouched original (state kept outside the state dict is then missing).
    clone = _roundtrip(
        f,
        (lambda: build().double())
        if isinstance(flow, str)
        else (lambda: _scrambled_copy(flow).double()),
    )
    with torch.no_grad():
        assert torch.allclose(clone.log_prob(z), f.log_prob(z), atol=1e-8), (
            "log_prob changed after a state_dict save/load round trip"
        )


def _has(capabilities: dict[str, Any], *methods: str) -> bool:
    return all(callable(capabilities.get(m)) for m in methods)


def _check_change_of_variables(f: Any, z: torch.Tensor, atol: float) -> None:
    """``log_prob(z) = base_log_prob(u) + log|det ∂u/∂z|`` with an autograd Jacobian."""
    for zi in z:
        jac = torch.autograd.functional.jacobian(
            lambda x: f.transform_to_noise(x.unsqueeze(0)).squeeze(0), zi
        )
        with torch.no_grad():
            u = f.transform_to_noise(zi.unsqueeze(0))
            expected = f.base_log_prob(u) + torch.linalg.slogdet(jac).logabsdet
            got = f.log_prob(zi.unsqueeze(0))
        assert torch.allclose(got, expected, atol=atol), (
            f"log_prob {float(got):.6f} != base log-density + log|det J| (autograd) "
            f"{float(expected):.6f}"
        )


def check_encoder(
    encoder: Any, in_channels: int = 1, image_size: int = 32, batch: int = 4, **options: Any
) -> None:
    """Check an encoder: attributes, output shape ``(B, embed_dim)``, finite, deterministic in
    eval mode, a finite scalar ``loss`` with gradients if trainable, a save/load round trip,
    and every optional capability it declares (:data:`flowkit.encoders.base.CAPABILITIES`):
    ``latent_parts`` positive and adding up to ``embed_dim``; ``augment`` keeping the batch's
    shape and range and changing it; ``reconstruction_error`` and ``rotation_loss`` giving one
    finite, non-negative value per image that depends on that image alone.

    Args:
        encoder: a registered name (built with ``in_channels``, ``image_size`` and
            ``options``) or an Encoder instance.
    """
    from flowkit.registry import encoders

    def build() -> Any:
        if isinstance(encoder, str):
            return encoders.create(
                encoder, in_channels=in_channels, image_size=image_size, **options
            )
        return encoder

    from flowkit.encoders.base import check_encoder_object, input_shape_of, is_trainable

    torch.manual_seed(0)
    e = build() if isinstance(encoder, str) else copy.deepcopy(encoder)
    check_encoder_object(e, f"encoder {type(e).__name__}")
    shape = input_shape_of(e, (in_channels, image_size, image_size))
    assert len(shape) == 3, f"input_shape must be (C, H, W), got {shape}"
    x = torch.rand(batch, *shape) * 2 - 1
    if is_trainable(e):
        e.train()
        loss = e.loss(x)
        assert loss.ndim == 0 and torch.isfinite(loss), f"loss must be a finite scalar, got {loss}"
        loss.backward()
        assert any(p.grad is not None for p in e.parameters()), "loss reaches no parameter"
    e.eval()
    with torch.no_grad():
        z1, z2 = e.encode(x), e.encode(x)
    assert z1.shape == (batch, e.embed_dim), (
        f"encode shape {tuple(z1.shape)}, expected ({batch}, {e.embed_dim})"
    )
    assert torch.isfinite(z1).all(), "latents are not finite"
    assert torch.allclose(z1, z2), "encode is not deterministic in eval mode"
    clone = _roundtrip(e, build if isinstance(encoder, str) else lambda: _scrambled_copy(encoder))
    with torch.no_grad():
        assert torch.allclose(clone.encode(x), z1, atol=1e-5), (
            "latents changed after a state_dict save/load round trip"
        )
    _check_capabilities(e, x)


def _check_capabilities(e: Any, x: torch.Tensor) -> None:
    """The optional capabilities ``e`` declares work as :mod:`flowkit.encoders.base` says."""
    from flowkit.encoders.base import capability, has_capability, latent_parts

    parts = latent_parts(e)
    assert sum(parts) == e.embed_dim and min(parts) >= 1, (
        f"latent_parts {parts} must be positive and add up to embed_dim {e.embed_dim}"
    )
    if has_capability(e, "augment"):
        torch.manual_seed(0)
        with torch.no_grad():
            views = capability(e, "augment")(x)
        assert views.shape == x.shape, f"augment changed the shape to {tuple(views.shape)}"
        assert views.min() >= -1 and views.max() <= 1, "augment left the [-1, 1] range"
        assert not torch.allclose(views, x), "augment returned the images unchanged"
    for name in ("reconstruction_error", "rotation_loss"):
        if not has_capability(e, name):
            continue
        with torch.no_grad():
            per = capability(e, name)(x)
            alone = torch.cat([capability(e, name)(x[i : i + 1]) for i in range(len(x))])
        assert per.shape == (len(x),), f"{name} must return ({len(x)},), got {tuple(per.shape)}"
        assert torch.isfinite(per).all() and (per >= 0).all(), f"{name} must be finite, >= 0"
        assert torch.allclose(per, alone, atol=1e-4), f"{name} of an image depends on its batch"


def _score_contexts(features: int = 3) -> tuple[Any, Any, Any]:
    """Normal train/validation contexts and a test context whose second half is shifted."""
    from flowkit.scorers import ScoreContext

    g = torch.Generator().manual_seed(0)

    def ctx(n: int, shift: float) -> ScoreContext:
        z = torch.randn(n, features, generator=g, dtype=torch.double) + shift
        lp = -0.5 * (z**2).sum(1) - 0.5 * features * torch.log(torch.tensor(2 * torch.pi))
        img = (torch.rand(n, 1, 8, 8, generator=g) * 60 + 100 * min(shift, 1)).to(torch.uint8)
        maps = img[:, 0].float() / 255.0  # an anomaly map per image, for map scorers
        return ScoreContext(log_prob=lp, latents=z.float(), images=img, maps=maps)

    test = ctx(20, 0.0)
    far = ctx(20, 4.0)
    test = ScoreContext(
        torch.cat([test.log_prob, far.log_prob]),
        torch.cat([test.latents, far.latents]),
        torch.cat([test.images, far.images]),  # type: ignore[list-item]
        maps=torch.cat([test.maps, far.maps]),  # type: ignore[list-item]
    )
    return ctx(64, 0.0), ctx(32, 0.0), test


def check_scorer(scorer: Any, **options: Any) -> None:
    """Check a scorer on latents of a standard normal (normal) and a shifted one (anomalous):
    ``score`` returns finite ``(B,)`` scores that depend on each image alone, its fitted state
    survives a save/load round trip (``torch.load(weights_only=True)``), and ``fit`` never
    needs test data; what it declares holds: its ``members()`` are scorers, and, where it is
    ``exportable``, ``export_score`` gives its scores. Scorers that call encoder methods are
    checked by the bench, not here.

    Args:
        scorer: a registered name (built with ``options``) or a scorer instance (copied).
    """
    from flowkit.registry import scorers
    from flowkit.scorers import Scorer, check_scorer_object

    def build() -> Any:
        if isinstance(scorer, str):
            return scorers.create(scorer, **options)
        return check_scorer_object(copy.deepcopy(scorer), f"scorer {type(scorer).__name__}")

    s = build()
    train, val, test = _score_contexts()
    fitted = s.fit(train, val)
    assert fitted is None or fitted is s or isinstance(fitted, Scorer), "fit returned junk"
    out = s.score(test)
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    assert isinstance(out, torch.Tensor) and out.shape == (40,), (
        f"score must return a tensor of shape (40,), got {got}"
    )
    assert torch.isfinite(out).all(), "scores are not finite"
    from flowkit.scorers import ScoreContext

    one = torch.cat(
        [
            s.score(
                ScoreContext(
                    test.log_prob[i : i + 1],
                    test.latents[i : i + 1],
                    test.images[i : i + 1] if test.images is not None else None,
                    maps=test.maps[i : i + 1] if test.maps is not None else None,
                )
            )
            for i in range(40)
        ]
    )
    assert torch.allclose(one.double(), out.double(), atol=1e-6), (
        "an image's score depends on the other images scored with it"
    )
    buf = io.BytesIO()
    torch.save(s.state_dict(), buf)
    buf.seek(0)
    clone = build()
    clone.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.allclose(clone.score(test).double(), out.double(), atol=1e-8), (
        "scores changed after a state_dict save/load round trip"
    )
    # what it declares (flowkit.scorers.CAPABILITIES)
    assert s.members() and all(isinstance(m, Scorer) for m in s.members()), "members()"
    if s.exportable:  # its ONNX form gives its scores, in float32
        exported = s.export_score(
            ScoreContext(test.log_prob.float(), test.latents.float(), test.images, maps=test.maps)
        )
        assert torch.allclose(exported.double(), out.double(), rtol=1e-4, atol=1e-4), (
            "export_score(ctx) differs from score(ctx)"
        )


def _check_declared(data: Any, split: str) -> None:
    """The capabilities an ImageSet carries hold together."""
    have = data.capabilities
    assert ("anomaly" in have) == ("is_test" in have), (
        f"{split}: anomaly and is_test come together (labelled anomalies and their test part)"
    )
    if "masks" in have:
        assert "anomaly" in have, f"{split}: pixel masks need the anomaly labels"
        normal = ~data.anomaly
        assert not data.masks[normal].any(), f"{split}: a normal image has defect pixels"
    if "defect_types" in have and "anomaly" in have:
        good = [t == "good" for t in data.defect_types]
        assert good == (~data.anomaly).tolist(), f"{split}: defect_types 'good' != normal"


def check_dataset(name: str, root: Any = None, image_size: int = 16, **options: Any) -> None:
    """Check a registered dataset: its factory accepts the documented keywords (``root``,
    ``split``, ``image_size``, ``download``), every split returns an ImageSet of uint8
    ``(N, C, image_size, image_size)`` images with labels inside ``classes``, and an
    unknown split is refused with a :class:`~flowkit.ConfigError`. What a set declares it
    carries (:data:`flowkit.data.base.CAPABILITIES`) is checked too: ``anomaly`` comes with
    ``is_test``, pixel ``masks`` are empty on normal images, and a
    declared ``categories(root)`` lister returns names.
    """
    from flowkit.data.base import DATASET_KEYWORDS, ImageSet
    from flowkit.registry import accepted_options, datasets

    entry = datasets.get(name)
    accepted = accepted_options(entry.factory, skip=1 if entry.namespace else 0)
    if accepted is not None:
        missing = [k for k in DATASET_KEYWORDS if k not in accepted]
        assert not missing, f"dataset {name!r} does not accept {missing}"
    for split in ("train", "test", "all"):
        data = datasets.create(
            name, root=root, split=split, image_size=image_size, download=False, **options
        )
        assert isinstance(data, ImageSet), f"{split}: not an ImageSet"
        assert data.images.dtype == torch.uint8 and data.images.ndim == 4, f"{split}: images"
        assert tuple(data.images.shape[2:]) == (image_size, image_size), (
            f"{split}: images are {tuple(data.images.shape[2:])}, expected "
            f"{(image_size, image_size)}"
        )
        assert data.labels.min() >= 0 and data.labels.max() < len(data.classes), (
            f"{split}: labels outside classes"
        )
        _check_declared(data, split)
    lister = entry.capabilities.get("categories")
    if lister is not None:
        found = lister(root)
        assert isinstance(found, list) and all(isinstance(c, str) for c in found), (
            f"categories({root!r}) must return a list of names, got {found!r}"
        )
    from flowkit.errors import ConfigError

    try:
        datasets.create(name, root=root, split="validation", image_size=image_size, **options)
    except ConfigError:
        pass
    else:
        raise AssertionError(f"dataset {name!r} accepts the unknown split 'validation'")
