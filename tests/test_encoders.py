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
