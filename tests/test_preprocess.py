from __future__ import annotations

import pytest
import torch

from flowkit.errors import ConfigError
from flowkit.preprocess import Preprocess, parse_preprocess


def test_parse_and_errors():
    assert parse_preprocess("l2+pca:32") == [("l2", None), ("pca", 32)]
    assert parse_preprocess("none") == []
    for bad in ("pca", "pca:x", "zca", "standardize:3"):
        with pytest.raises(ConfigError):
            parse_preprocess(bad)
    with pytest.raises(ConfigError, match="1 <= K <= 4"):
        Preprocess("pca:8", in_dim=4)


def test_standardize_and_whitened_pca():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(500, 6, generator=g) @ torch.randn(6, 6, generator=g) + 3
    std = Preprocess("standardize", 6).fit(z)(z)
    torch.testing.assert_close(std.mean(0), torch.zeros(6), atol=1e-4, rtol=0)
    torch.testing.assert_close(std.std(0), torch.ones(6), atol=1e-4, rtol=0)
    pipe = Preprocess("pca:3", 6).fit(z)
    w = pipe(z)
    assert pipe.out_dim == 3 and w.shape == (500, 3)
    torch.testing.assert_close(torch.cov(w.T), torch.eye(3), atol=1e-3, rtol=0)


def test_l2_then_pca_and_state_round_trip():
    z = torch.randn(100, 5) * 4
    pipe = Preprocess("l2+pca:2", 5).fit(z)
    out = pipe(z)
    clone = Preprocess("l2+pca:2", 5)
    clone.load_state_dict(pipe.state_dict())
    torch.testing.assert_close(clone(z), out)
    unit = Preprocess("l2", 5).fit(z)
    normed = unit(z) + unit.stages[0].center
    torch.testing.assert_close(normed.norm(dim=1), torch.ones(100))
    with pytest.raises(ConfigError, match=r"shape \(N, 5\)"):
        pipe(torch.zeros(3, 4))


def test_dead_dimension_does_not_divide_by_zero():
    z = torch.randn(50, 3)
    z[:, 1] = 2.0
    out = Preprocess("standardize", 3).fit(z)(z)
    assert torch.isfinite(out).all()


def test_auto_is_whitened_pca_to_at_most_32_dimensions():
    z = torch.randn(200, 48) * torch.linspace(0.1, 3, 48)
    auto, explicit = Preprocess("auto", in_dim=48).fit(z), Preprocess("pca:32", 48).fit(z)
    assert auto.out_dim == 32
    torch.testing.assert_close(auto(z), explicit(z))
    small = Preprocess("auto", in_dim=8).fit(z[:, :8])  # a small latent is whitened whole
    assert small.out_dim == 8
    torch.testing.assert_close(small(z[:, :8]).std(0), torch.ones(8), rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError):
        parse_preprocess("auto:3")


def test_blocks_are_preprocessed_each_on_its_own_and_round_trip():
    g = torch.Generator().manual_seed(0)
    # two parts on very different scales: one pipeline over both would whiten by the big one
    z = torch.cat([torch.randn(300, 6, generator=g) * 100, torch.randn(300, 4, generator=g)], 1)
    pipe = Preprocess("pca:3", 10, part_sizes=(6, 4)).fit(z)
    a, b = Preprocess("pca:3", 6).fit(z[:, :6]), Preprocess("pca:3", 4).fit(z[:, 6:])
    assert pipe.out_dim == 6
    torch.testing.assert_close(pipe(z), torch.cat([a(z[:, :6]), b(z[:, 6:])], 1))
    torch.testing.assert_close(pipe.log_abs_det(), a.log_abs_det() + b.log_abs_det())
    # auto on a blocked latent: pca to at most 32 per block
    assert Preprocess("auto", 80, part_sizes=(48, 32)).out_dim == 64
    clone = Preprocess("pca:3", 10, blocks=[6, 4])
    clone.load_state_dict(pipe.state_dict())
    torch.testing.assert_close(clone(z), pipe(z))
    with pytest.raises(ConfigError, match="add up to 10"):
        Preprocess("pca:3", 10, blocks=(6, 3))
    with pytest.raises(ConfigError, match="1 <= K <= 4"):
        Preprocess("pca:5", 10, part_sizes=(6, 4))


def test_the_earlier_names_still_work():
    from flowkit.preprocess import LatentPipeline, parse_pipeline

    assert LatentPipeline is Preprocess and parse_pipeline is parse_preprocess
    assert Preprocess("pca:3", 10, blocks=(6, 4)).part_sizes == (6, 4)
