from __future__ import annotations

import pytest

import flowkit
from flowkit.testing import check_flow


def test_registered_through_the_entry_point():
    assert "zuko/nsf" in flowkit.list_flows("zuko/*")
    entry = flowkit.registry.flows.get("zuko/nsf")
    assert entry.plugin == "zuko" and entry.distribution == "flowkit-zuko"


@pytest.mark.parametrize("name", ["zuko/nsf", "zuko/maf", "zuko/realnvp"])
def test_contract(name):
    check_flow(name, features=4, hidden=16, transforms=2, atol=1e-3)


def test_unknown_zuko_flow_suggests():
    with pytest.raises(flowkit.ConfigError, match="did you mean zuko/nsf"):
        flowkit.create_flow("zuko/nfs", features=3)


def test_detector_round_trip_with_zuko_flow(tmp_path):
    import numpy as np

    data = flowkit.load_dataset("fake", per_class=20)
    det = flowkit.Detector(
        encoder="dcgan_ae:width=8,latent_dim=4",
        flow="zuko/nsf:transforms=2",
        epochs_encoder=1,
        epochs_flow=2,
        device="cpu",
    ).fit(data)
    path = det.save(tmp_path / "z.flowkit")
    again = flowkit.Detector.load(path, device="cpu")
    np.testing.assert_allclose(
        again.score_samples(data.images[:8]), det.score_samples(data.images[:8]), rtol=1e-5
    )
