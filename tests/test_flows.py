from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

import flowkit
from flowkit.testing import check_flow, registered

SMALL = {
    "realnvp": {"hidden": 16, "layers": 2, "blocks": 1},
    "maf": {"hidden": 16, "layers": 2, "blocks": 1},
    "nsf": {"hidden": 16, "layers": 2, "blocks": 1},
    # spatial flows: the latent is feature maps (here one 2-channel map of 1 × 2 positions)
    "patchflow": {"maps": [[2, 1, 2]], "hidden": 8, "layers": 2, "pos": 4},
    "patchknn": {"maps": [[2, 1, 2]]},
}


@pytest.mark.parametrize("name", registered("flows"))
def test_flow_contract(name):
    check_flow(name, features=4, **SMALL.get(name, {}))


def test_realnvp_with_batch_norm_passes_contract():
    check_flow("realnvp", features=6, hidden=8, layers=3, blocks=1, batch_norm=True)


def test_gaussian_log_prob_matches_scipy_exactly():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 3, generator=g, dtype=torch.double)
    z = torch.randn(500, 3, generator=g, dtype=torch.double) @ a.T + torch.tensor(
        [1.0, -2.0, 0.5], dtype=torch.double
    )
    flow = flowkit.create_flow("gaussian", features=3, shrinkage=0.0).double()
    flow.initialize(z)
    mean = z.mean(0).numpy()
    cov = np.cov(z.numpy().T)
    x = torch.randn(20, 3, generator=g, dtype=torch.double)
    expected = multivariate_normal(mean, cov).logpdf(x.numpy())
    got = flow.log_prob(x).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_fresh_realnvp_is_close_to_standard_normal_and_learns():
    torch.manual_seed(0)
    flow = flowkit.create_flow("realnvp", features=2, hidden=16, layers=4, blocks=1)
    # Data from a known 2-D density: a correlated Gaussian, fitted by maximum likelihood.
    cov = torch.tensor([[1.0, 0.9], [0.9, 1.0]])
    data = torch.distributions.MultivariateNormal(torch.zeros(2), cov)
    z = data.sample((2000,))
    from flowkit.training import fit_flow

    fit_flow(flow, z[:1600], z[1600:], epochs=60, lr=3e-3, patience=60, device="cpu")
    test = data.sample((2000,))
    with torch.no_grad():
        gap = (data.log_prob(test) - flow.log_prob(test)).mean()
    # KL(true || flow) estimated on fresh samples: small after fitting (0 would be perfect).
    assert 0 <= float(gap) < 0.1


def test_realnvp_rejects_one_feature():
    with pytest.raises(flowkit.ConfigError, match="at least 2 features"):
        flowkit.create_flow("realnvp", features=1)


class _ShiftNotInStateDict(torch.nn.Module):
    """A minimal flow whose fitted shift lives in a plain attribute: lost by state_dict()."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.log_scale = torch.nn.Parameter(torch.zeros(features))
        self.shift = torch.zeros(features)

    def initialize(self, z: torch.Tensor) -> None:
        self.shift = z.mean(0) + 0.7

    def log_prob(self, z):
        dist = torch.distributions.Normal(self.shift.to(z), self.log_scale.exp())
        return dist.log_prob(z).sum(1)


def test_check_flow_on_an_instance_catches_state_missing_from_state_dict():
    """Given an instance, check_flow used to compare it with itself after save/load."""
    with pytest.raises(AssertionError, match="changed after a state_dict save/load"):
        check_flow(_ShiftNotInStateDict(4))
    check_flow(flowkit.create_flow("gaussian", features=4))  # a complete one passes


def test_transform_flows_satisfy_the_change_of_variables_formula():
    """log_prob of every TransformFlow equals base log-density + log|det J| (autograd)."""
    from flowkit.testing import _check_change_of_variables

    torch.manual_seed(0)
    z = torch.randn(4, 3, dtype=torch.double)
    for name in ("realnvp", "maf", "nsf", "gaussian"):
        flow = flowkit.create_flow(name, features=3, **SMALL.get(name, {})).double().eval()
        for p in flow.parameters():  # away from the identity
            p.data.add_(torch.randn_like(p) * 0.1)
        _check_change_of_variables(flow, z, atol=1e-6)


def test_transform_to_noise_means_what_it_means_in_nflows():
    flow = flowkit.create_flow("realnvp", features=4, hidden=8, layers=2, blocks=1)
    z = torch.randn(5, 4)
    u = flow.transform_to_noise(z)
    assert isinstance(u, torch.Tensor) and u.shape == z.shape  # the noise only, no logabsdet


@pytest.mark.parametrize("features", [5, 6])
def test_strided_coupling_equals_the_indexed_one(features):
    """The fast path for alternating masks gives the numbers of nflows' index-based merge."""
    from flowkit.flows.coupling import AffineCoupling

    torch.manual_seed(0)
    mask = torch.ones(features)
    mask[::2] = -1
    for m in (mask, -mask):
        fast = AffineCoupling(m, lambda i, o: torch.nn.Linear(i, o), "tanh")
        slow = AffineCoupling(m, lambda i, o: torch.nn.Linear(i, o), "tanh")
        slow.load_state_dict(fast.state_dict())
        slow._identity_offset = None  # force the general path
        assert fast._identity_offset is not None
        x = torch.randn(7, features)
        (a, la), (b, lb) = fast(x), slow(x)
        assert torch.equal(a, b) and torch.equal(la, lb)
        assert torch.allclose(fast.inverse(a)[0], x, atol=1e-6)


@pytest.mark.parametrize("features", [5, 6])
def test_halves_path_equals_layer_by_layer(features):
    """AlternatingCouplings splits once and merges once: the same outputs, log-determinants
    and inverse as nflows' CompositeTransform running the same couplings one by one."""
    from nflows.transforms.base import CompositeTransform

    torch.manual_seed(0)
    flow = flowkit.create_flow("realnvp", features=features, hidden=8, layers=3)
    stack = flow.transform
    assert stack._halves_path()
    plain = CompositeTransform(list(stack._transforms))
    x = torch.randn(9, features) * 2
    (a, la), (b, lb) = stack(x), plain(x)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(la, lb)
    (xa, ia), (xb, ib) = stack.inverse(a), plain.inverse(b)
    torch.testing.assert_close(xa, xb)
    torch.testing.assert_close(ia, ib)
    torch.testing.assert_close(xa, x, atol=1e-5, rtol=1e-5)
    # with BatchNorm between the couplings it runs layer by layer (and is still a flow)
    bn = flowkit.create_flow("realnvp", features=features, hidden=8, layers=2, batch_norm=True)
    assert not bn.transform._halves_path()
    assert bn.log_prob(x).shape == (9,)


def test_product_flow_is_the_product_of_its_parts_densities():
    from flowkit.flows.product import ProductFlow

    g = torch.Generator().manual_seed(0)
    z = (
        torch.randn(400, 5, generator=g, dtype=torch.double)
        @ torch.randn(5, 5, generator=g).double()
    )
    parts = [flowkit.create_flow("gaussian", features=d, shrinkage=0.0).double() for d in (3, 2)]
    parts[0].initialize(z[:, :3])
    parts[1].initialize(z[:, 3:])
    flow = ProductFlow(parts, (3, 2))
    # the density of independent blocks: a Gaussian with a block-diagonal covariance
    cov = np.zeros((5, 5))
    cov[:3, :3], cov[3:, 3:] = np.cov(z[:, :3].numpy().T), np.cov(z[:, 3:].numpy().T)
    x = torch.randn(20, 5, generator=g, dtype=torch.double)
    expected = multivariate_normal(z.mean(0).numpy(), cov).logpdf(x.numpy())
    np.testing.assert_allclose(flow.log_prob(x).detach().numpy(), expected, rtol=1e-4, atol=1e-4)
    # invertible, change of variables exact, sampling, save/load: the flow contract
    nvp = [flowkit.create_flow("realnvp", features=d, hidden=8, layers=2) for d in (4, 3)]
    check_flow(ProductFlow(nvp, (4, 3)), features=7)
    with pytest.raises(flowkit.ConfigError, match="2 flows for 3 latent parts"):
        ProductFlow(parts, (2, 2, 1))
