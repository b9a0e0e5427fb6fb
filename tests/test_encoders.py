from __future__ import annotations

import pytest
import torch

import flowkit
from flowkit.testing import check_encoder, registered


@pytest.mark.parametrize("name", registered("encoders"))
@pytest.mark.parametrize("channels", [1, 3])
def test_encoder_contract(name, channels):
    check_encoder(name, in_channels=channels, image_size=32)


def test_dcgan_sizes_and_reconstruction_range():
    enc = flowkit.create_encoder("dcgan_ae", in_channels=3, image_size=64, latent_dim=20, width=8)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert enc.encode(x).shape == (2, 20)
    rec = enc.reconstruct(x)
    assert rec.shape == x.shape and rec.abs().max() <= 1.0
    assert enc.reconstruction_error(x).shape == (2,)


@pytest.mark.parametrize("size", [8, 48, 0])
def test_dcgan_rejects_bad_sizes(size):
    with pytest.raises(flowkit.ConfigError, match="power-of-two"):
        flowkit.create_encoder("dcgan_ae", in_channels=1, image_size=size)


def test_nt_xent_matches_its_definition():
    from flowkit.encoders.selfsup import nt_xent

    a = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    assert float(nt_xent(a, a.clone(), temperature=0.01)) < 1e-3  # views agree perfectly
    b = torch.randn(4, 8)
    z = torch.nn.functional.normalize(torch.cat([a, b]), dim=1)
    sim = z @ z.T / 0.5
    expected = 0.0
    for i in range(8):
        j = (i + 4) % 8
        others = torch.cat([sim[i, :i], sim[i, i + 1 :]])
        expected += -(sim[i, j] - torch.logsumexp(others, 0)) / 8
    torch.testing.assert_close(nt_xent(a, b, 0.5), expected)


def test_augmentations_are_batched_seeded_and_in_range():
    from flowkit.encoders.augment import Augment

    x = torch.rand(6, 3, 32, 32) * 2 - 1
    torch.manual_seed(1)
    a = Augment(hflip=True, jitter=0.3, noise=0.05)(x)
    torch.manual_seed(1)
    b = Augment(hflip=True, jitter=0.3, noise=0.05)(x)
    assert torch.equal(a, b) and a.shape == x.shape
    assert a.min() >= -1 and a.max() <= 1 and not torch.equal(a, x)
    blank = -torch.ones(2, 1, 32, 32)
    assert torch.allclose(Augment()(blank), blank, atol=1e-6)  # background stays background


def test_natural_views_follow_simclrs_recipe_exactly_where_it_is_defined():
    from flowkit.encoders.augment import (
        color_jitter,
        natural_views,
        random_grayscale,
        random_resized_crop,
    )

    torch.manual_seed(0)
    x = torch.rand(64, 3, 32, 32) * 2 - 1
    # a crop of the whole image at ratio 1 is the image itself
    full = random_resized_crop(x, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    torch.testing.assert_close(full, x, atol=1e-5, rtol=0)
    # a crop of a quarter of the area magnifies: neighbouring pixels get closer
    small = random_resized_crop(x, scale=(0.25, 0.25), ratio=(1.0, 1.0))
    assert (small.diff(dim=-1).abs().mean()) < 0.7 * x.diff(dim=-1).abs().mean()
    # zero-strength jitter is the identity; brightness alone scales [0, 1] images
    torch.testing.assert_close(color_jitter(x, 0, 0, 0, 0, p=1.0), x, atol=1e-5, rtol=0)
    torch.manual_seed(3)
    bright = color_jitter(x, 0.4, 0, 0, 0, p=1.0)
    ratio = (bright + 1) / (x + 1).clamp(min=1e-3)
    keep = (bright < 0.99) & (x > -0.9)  # not clipped at white, not near black
    per_image = torch.stack([r[k].std() for r, k in zip(ratio, keep, strict=True)])
    assert per_image.max() < 1e-3  # one factor per image...
    factors = torch.stack([r[k].mean() for r, k in zip(ratio, keep, strict=True)])
    assert factors.min() >= 0.6 - 1e-4 and factors.max() <= 1.4 + 1e-4 and factors.std() > 0.05
    # a hue rotation keeps gray pixels gray; saturation and hue keep every pixel's luma
    gray = x[:, :1].expand(-1, 3, -1, -1).contiguous()
    torch.testing.assert_close(color_jitter(gray, 0, 0, 0, 0.5, p=1.0), gray, atol=1e-5, rtol=0)

    def luma(im):
        return 0.299 * im[:, 0] + 0.587 * im[:, 1] + 0.114 * im[:, 2]

    mid = x * 0.3  # far from the clipping bounds
    for s, h in ((0.3, 0.0), (0.0, 0.1)):
        moved = color_jitter(mid, 0, 0, s, h, p=1.0)
        assert (moved - mid).abs().max() > 0.01  # the colours did change
        torch.testing.assert_close(luma(moved), luma(mid), atol=2e-2, rtol=0)
    torch.testing.assert_close(
        random_grayscale(x, p=1.0), luma(x)[:, None].expand(-1, 3, -1, -1), atol=1e-5, rtol=0
    )
    # grayscale images get no colour operations, and keep one channel
    one = x[:, :1]
    assert random_grayscale(one, p=1.0) is one
    assert natural_views()(one).shape == one.shape
    # the recipe: seeded, in range, different from the input
    torch.manual_seed(1)
    a = natural_views()(x)
    torch.manual_seed(1)
    assert torch.equal(a, natural_views()(x)) and a.min() >= -1 and a.max() <= 1
    assert not torch.allclose(a, x, atol=0.1)


def test_views_auto_picks_the_recipe_by_channels_alone():
    from flowkit.encoders.augment import resolve_views
    from flowkit.encoders.selfsup import csi, simclr
    from flowkit.errors import ConfigError

    assert resolve_views("auto", 3) == "natural" and resolve_views("auto", 1) == "affine"
    assert resolve_views("natural", 1) == "natural" and resolve_views("affine", 3) == "affine"
    color, gray = simclr(in_channels=3), simclr(in_channels=1)
    assert color.augment.crop > 0 and color.augment.hflip and not color.augment.affine
    assert gray.augment.affine and gray.augment.crop == 0 and not gray.augment.hflip
    assert csi(in_channels=3, views="affine").augment.affine
    with pytest.raises(ConfigError, match="views must be one of auto, affine, natural"):
        simclr(views="crops")


def test_simclr_multi_crop_pulls_every_view_towards_both_global_ones():
    from flowkit.encoders.augment import Augment
    from flowkit.encoders.selfsup import multi_crop_nt_xent, nt_xent

    torch.manual_seed(0)
    p = [torch.randn(5, 8) for _ in range(4)]
    # the mean over the (global, other view) pairs; two views: plain NT-Xent
    pairs = [(0, 1), (0, 2), (0, 3), (1, 0), (1, 2), (1, 3)]
    expected = sum(nt_xent(p[g], p[v], 0.5) for g, v in pairs) / 6
    torch.testing.assert_close(multi_crop_nt_xent(p, 0.5), expected)
    torch.testing.assert_close(multi_crop_nt_xent(p[:2], 0.5), nt_xent(p[0], p[1], 0.5))

    spec = "simclr:width=8,latent_dim=16,projection_dim=12"
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    plain = flowkit.create_encoder(spec, in_channels=3)
    multi = flowkit.create_encoder(spec + ",local_crops=2,local_area=0.3", in_channels=3)
    multi.load_state_dict(plain.state_dict())
    # the local views: the global recipe, cropped to 5-30 % of the area, never warped
    assert multi.local_augment == Augment(
        affine=False, hflip=True, crop=0.05, crop_max=0.3, color=0.5, grayscale=0.2
    )
    assert plain.local_crops == 0 and multi.local_crops == 2
    # the loss draws two global and two local views and scores them by multi_crop_nt_xent
    torch.manual_seed(1)
    got = multi.loss(x)
    torch.manual_seed(1)
    views = [multi.augment(x), multi.augment(x), multi.local_augment(x), multi.local_augment(x)]
    proj = multi.head(multi.trunk(torch.cat(views)))
    torch.testing.assert_close(got, multi_crop_nt_xent(list(proj.split(4)), multi.temperature))
    # without local crops, the loss is SimCLR's, drawing the same random numbers as before
    torch.manual_seed(1)
    got = plain.loss(x)
    torch.manual_seed(1)
    a, b = plain.augment(x), plain.augment(x)
    proj = plain.head(plain.trunk(torch.cat([a, b])))
    torch.testing.assert_close(got, nt_xent(proj[:4], proj[4:], plain.temperature))
    for bad in ("local_crops=-1", "local_crops=1.5", "local_area=0.05", "local_area=1.5"):
        with pytest.raises(flowkit.ConfigError, match=bad.split("=")[0]):
            flowkit.create_encoder(f"{spec},{bad}")


def test_small_crops_cover_only_the_area_asked_for():
    from flowkit.encoders.augment import random_resized_crop

    torch.manual_seed(0)
    # a horizontal ramp: a crop of width fraction w spans w of the ramp's range
    ramp = torch.linspace(-1, 1, 32).expand(256, 1, 32, 32).contiguous()
    small = random_resized_crop(ramp, scale=(0.05, 0.2), ratio=(1.0, 1.0))
    spans = (small[:, 0, 0, -1] - small[:, 0, 0, 0]) / 2
    assert spans.min() > 0.05**0.5 * 0.9 and spans.max() < 0.2**0.5 * 1.05


def test_rotnet_learns_rotations():
    torch.manual_seed(0)
    enc = flowkit.create_encoder("rotnet:width=8,latent_dim=16,affine=false", in_channels=1)
    x = torch.zeros(16, 1, 32, 32) - 1
    x[:, :, 4:10, 4:28] = 1  # a bar at the top: its rotation is easy to tell
    opt = torch.optim.Adam(enc.parameters(), lr=1e-2)
    for _ in range(30):
        loss = enc.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    enc.eval()
    with torch.no_grad():
        loss = float(enc.rotation_loss(x).mean())
    assert loss < 0.3 < float(torch.log(torch.tensor(4.0)))


def test_csi_contrasts_each_rotation_as_its_own_instance():
    from flowkit.encoders.selfsup import nt_xent

    torch.manual_seed(0)
    enc = flowkit.create_encoder("csi:width=8,latent_dim=16,affine=false,rotation_weight=0")
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    rotated = torch.cat([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)])  # 12 instances
    enc.eval()  # BatchNorm in eval: both sides see the same statistics
    with torch.no_grad():
        proj = enc.head(enc.trunk(rotated))
        # without views' noise, a rotation's only positive is itself; the other 11 are negatives
        torch.testing.assert_close(enc.loss(x), nt_xent(proj, proj.clone(), enc.temperature))
    with pytest.raises(flowkit.ConfigError, match="rotation_weight"):
        flowkit.create_encoder("csi:rotation_weight=-1")


def test_csi_learns_rotations():
    torch.manual_seed(0)
    enc = flowkit.create_encoder("csi:width=8,latent_dim=16,affine=false")
    x = torch.zeros(16, 1, 32, 32) - 1
    x[:, :, 4:10, 4:28] = 1
    x += torch.rand_like(x) * 0.2  # distinct images, so the contrastive part has work to do
    opt = torch.optim.Adam(enc.parameters(), lr=1e-2)
    for _ in range(30):
        loss = enc.loss(x.clamp(-1, 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    enc.eval()
    with torch.no_grad():
        per = enc.rotation_loss(x.clamp(-1, 1))
    assert per.shape == (16,)
    assert float(per.mean()) < 0.3 < float(torch.log(torch.tensor(4.0)))


@pytest.mark.parametrize("name", ["simclr", "csi"])
def test_contrastive_features_trunk_head_or_both(name):
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    spec = f"{name}:width=8,latent_dim=16,projection_dim=12"
    trunk = flowkit.create_encoder(spec, in_channels=3).eval()
    both = flowkit.create_encoder(spec + ",features=trunk+head", in_channels=3).eval()
    head = flowkit.create_encoder(spec + ",features=head", in_channels=3).eval()
    assert (trunk.embed_dim, trunk.latent_parts) == (16, (16,))
    assert (both.embed_dim, both.latent_parts) == (28, (16, 12))
    assert (head.embed_dim, head.latent_parts) == (12, (12,))
    both.load_state_dict(trunk.state_dict())  # the same networks: only encode differs
    head.load_state_dict(trunk.state_dict())
    with torch.no_grad():
        z, zb, zh = trunk.encode(x), both.encode(x), head.encode(x)
        proj = trunk.head(trunk.trunk(x))
    torch.testing.assert_close(zb[:, :16], z)
    torch.testing.assert_close(zb[:, 16:], proj / proj.norm(dim=1, keepdim=True))
    torch.testing.assert_close(zh.norm(dim=1), torch.ones(4))  # the sphere NT-Xent works on
    torch.testing.assert_close(zh, zb[:, 16:])
    with pytest.raises(flowkit.ConfigError, match="features must be one of trunk, head"):
        flowkit.create_encoder(f"{name}:features=projection")


def test_capabilities_are_read_through_the_declared_helpers():
    from torch import nn

    from flowkit.encoders.base import capability, has_capability, latent_parts

    class Old(nn.Module):  # a plugin written before latent_parts: its embed_blocks still count
        embed_dim = 5
        embed_blocks = (3, 2)

        def encode(self, x):
            return x.flatten(1)[:, :5]

    assert latent_parts(Old()) == (3, 2) and has_capability(Old(), "latent_parts")

    class WithViews(flowkit.Encoder):  # a submodule named like a capability is found
        embed_dim = 4

        def __init__(self):
            super().__init__()
            self.augment = nn.Identity()

        def encode(self, x):
            return x.flatten(1)[:, :4]

    assert isinstance(capability(WithViews(), "augment"), nn.Identity)
    assert not has_capability(WithViews(), "reconstruction_error")
    with pytest.raises(ValueError, match="unknown encoder capability"):
        has_capability(WithViews(), "teleport")
    with pytest.raises(flowkit.ConfigError, match="add up to embed_dim 5"):

        class Bad(Old):
            embed_blocks = (3, 3)

        flowkit.encoders.base.check_encoder_object(Bad(), "encoder bad")
