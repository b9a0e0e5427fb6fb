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

__all__ = ["check_encoder", "check_flow", "registered"]


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
        for t in list(clone.parameters()) + list(clone.buffers()):
            if t.is_floating_point():
                t.add_(torch.randn_like(t)).mul_(1.5)
    return clone


def check_flow(
    flow: Any, features: int = 4, batch: int = 16, atol: float = 1e-4, **options: Any
) -> None:
    """Check a flow: log_prob shape and finiteness, gradients reaching every parameter,
    train/eval agreement in eval mode, invertibility, log|det J| against
    ``torch.autograd.functional.jacobian``, sampling, and a save/load round trip.

    Args:
        flow: a registered name (built with ``features`` and ``options``) or a Flow.
    """
    from flowkit.registry import flows

    def build() -> Any:
        return flows.create(flow, features=features, **options) if isinstance(flow, str) else flow

    torch.manual_seed(0)
    f = build().double() if isinstance(flow, str) else copy.deepcopy(flow).double()
    features = int(f.features)
    z = torch.randn(batch, features, dtype=torch.double)
    f.initialize(z)
    # A few optimisation steps so that checks do not pass trivially at the identity.
    opt = torch.optim.Adam(f.parameters(), lr=1e-2)
    for _ in range(3):
        f.train()
        loss = -f.log_prob(z * 1.5 + 0.3).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    f.train()
    lp = f.log_prob(z)
    assert lp.shape == (batch,), f"log_prob shape {tuple(lp.shape)}, expected ({batch},)"
    assert torch.isfinite(lp).all(), "log_prob is not finite"
    f.zero_grad()
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
        u, logdet = f.transform_to_noise(z)
        assert u.shape == z.shape, f"noise shape {tuple(u.shape)} != {tuple(z.shape)}"
        back = f.inverse(u)
        assert torch.allclose(back, z, atol=atol), (
            f"inverse(transform_to_noise(z)) != z (max error {(back - z).abs().max():.2e})"
        )
        s = f.sample(5)
        assert s.shape == (5, features) and torch.isfinite(s).all(), "bad samples"
    if features <= 16:
        for i in range(min(batch, 3)):
            jac = torch.autograd.functional.jacobian(
                lambda x: f.transform_to_noise(x.unsqueeze(0))[0].squeeze(0), z[i]
            )
            expected = torch.linalg.slogdet(jac).logabsdet
            assert torch.allclose(logdet[i], expected, atol=atol), (
                f"log|det J| {float(logdet[i]):.6f} != autograd {float(expected):.6f}"
            )
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


def check_encoder(
    encoder: Any, in_channels: int = 1, image_size: int = 32, batch: int = 4, **options: Any
) -> None:
    """Check an encoder: attributes, output shape ``(B, embed_dim)``, finite, deterministic in
    eval mode, a finite scalar ``loss`` with gradients if trainable, and a save/load round trip.

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

    torch.manual_seed(0)
    e = build() if isinstance(encoder, str) else copy.deepcopy(encoder)
    for attr in ("embed_dim", "input_shape", "trainable"):
        assert hasattr(e, attr), f"encoder has no attribute {attr!r}"
    shape = tuple(e.input_shape)
    assert len(shape) == 3, f"input_shape must be (C, H, W), got {shape}"
    x = torch.rand(batch, *shape) * 2 - 1
    if e.trainable:
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
