"""Capabilities are declared (base-class members with defaults, or metadata on the registry
entry) and read through one lookup, for every kind: flows, encoders, scorers, datasets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import flowkit
from flowkit.data.base import CAPABILITIES as DATA_CAPABILITIES
from flowkit.data.base import ImageSet
from flowkit.encoders.base import check_encoder_object, is_trainable
from flowkit.errors import ConfigError, DataError
from flowkit.flows.base import CAPABILITIES as FLOW_CAPABILITIES
from flowkit.flows.base import Flow, flow_capabilities
from flowkit.flows.product import ProductFlow
from flowkit.registry import Registry, datasets
from flowkit.scorers import Scorer, check_scorer_object, check_scorer_parts
from flowkit.training import fit_flow


def test_registry_entries_carry_declared_capabilities_and_refuse_unknown_ones():
    reg = Registry("dataset", capabilities={"categories": "lists categories"})

    def lister(root):
        return ["a", "b"]

    @reg.register("given", categories=lister)
    def given(root=None, split="all", image_size=32, download=False):
        return None

    assert reg.get("given").capabilities == {"categories": lister}

    def old_style(root=None, split="all", image_size=32, download=False):
        return None

    old_style.categories = lister  # the earlier way: read once, when registered
    reg.register("old")(old_style)
    assert reg.get("old").capabilities["categories"] is lister
    reg.register("plain")(lambda **kw: None)
    assert reg.get("plain").capabilities == {}
    with pytest.raises(
        ConfigError, match="a dataset has no capability 'masks'; declared ones: categories"
    ):
        reg.register("bad", masks=True)
    # the built-in MVTec AD reader declares its categories on its entry
    assert callable(datasets.get("mvtec").capabilities["categories"])


class _PlainFlow(nn.Module):
    """A plugin's flow that does not subclass flowkit.Flow: log_prob and initialize only."""

    def __init__(self, features: int = 2) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(features))
        self.initialized = False

    def log_prob(self, z):
        return -((z - self.loc) ** 2).sum(1)

    def initialize(self, z):
        self.initialized = True
        with torch.no_grad():
            self.loc.copy_(z.mean(0))


def test_flow_capabilities_are_declared_on_the_base_and_a_product_has_what_all_parts_have():
    realnvp = flowkit.create_flow("realnvp", features=4)
    assert {"sample", "transform_to_noise", "inverse", "base_log_prob", "features"} <= set(
        realnvp.capabilities()
    )
    assert set(flow_capabilities(realnvp)) <= set(FLOW_CAPABILITIES)
    nsf = flowkit.create_flow("nsf", features=2)
    assert flow_capabilities(nsf)["not_exportable"]  # a reason, declared
    plain = _PlainFlow()
    assert set(flow_capabilities(plain)) == {"initialize"}
    both = ProductFlow([flowkit.create_flow("gaussian", features=2), plain], (2, 2))
    caps = both.capabilities()
    assert "sample" not in caps and "inverse" not in caps  # the plain part has neither
    assert "initialize" in caps and caps["features"] == 4
    assert "not_exportable" not in caps  # gaussian exports; a plain module has no reason
    with_nsf = ProductFlow([flowkit.create_flow("gaussian", features=2), nsf], (2, 2))
    assert with_nsf.capabilities()["not_exportable"] == flow_capabilities(nsf)["not_exportable"]
    # the declared initialize is what training calls, once, before the first step
    z = torch.randn(64, 2) + 3
    fit_flow(plain, z[:48], z[48:], epochs=1, device="cpu")
    assert plain.initialized

    # a Flow subclass that declares nothing has no capability
    class Bare(Flow):
        def log_prob(self, z):
            return z.sum(1)

    assert Bare().capabilities() == {}


def test_encoder_members_are_read_once_where_it_enters():
    class Fixed(nn.Module):
        embed_dim = 4

        def encode(self, x):
            return x.flatten(1)[:, :4]

    assert not is_trainable(check_encoder_object(Fixed(), "encoder 'fixed'"))

    class Insists(Fixed):
        trainable = True

    with pytest.raises(ConfigError, match="says trainable = True but has no loss"):
        check_encoder_object(Insists(), "encoder 'insists'")


def test_scorer_capabilities_are_declared_and_a_plugin_scorer_is_adapted_once():
    class PartScorer:  # a plugin's scorer: score and part only
        part = 1

        def score(self, ctx):
            return -ctx.log_prob

    adapted = check_scorer_object(PartScorer(), "scorer 'p'")
    assert isinstance(adapted, Scorer) and adapted.part == 1 and not adapted.exportable
    assert adapted.members() == [adapted] and adapted.state_dict() == {}
    with pytest.raises(ConfigError, match="part=1 of the latent, which has one part"):
        check_scorer_parts(adapted, 1)
    check_scorer_parts(adapted, 2)
    combo = flowkit.registry.scorers.create("combo", parts="nll+knn:part=0")
    assert [type(s).__name__ for s in combo.members()] == ["NLLScorer", "KNNScorer"]
    assert combo.exportable and flowkit.registry.scorers.create("nll").exportable
    assert not flowkit.registry.scorers.create("complexity").exportable
    with pytest.raises(ConfigError, match="has no score"):
        check_scorer_object(object(), "scorer 'x'")


def _set(masks=None, anomaly=None, is_test=None, defect_types=None, n=4):
    images = torch.zeros(n, 1, 8, 8, dtype=torch.uint8)
    return ImageSet(
        images,
        torch.zeros(n),
        ["good"],
        "t",
        anomaly=anomaly,
        is_test=is_test,
        masks=masks,
        defect_types=defect_types,
    )


def test_image_sets_declare_what_they_carry_and_keep_it_through_subset_and_concat():
    plain = _set()
    assert plain.capabilities == ("labels", "classes")
    masks = torch.zeros(4, 1, 8, 8, dtype=torch.bool)
    masks[3, 0, 2:4, 2:4] = True
    full = _set(
        masks=masks,
        anomaly=[False, False, False, True],
        is_test=[False, False, True, True],
        defect_types=["good", "good", "good", "crack"],
    )
    assert set(full.capabilities) == {
        "labels",
        "classes",
        "anomaly",
        "is_test",
        "masks",
        "defect_types",
    }
    assert set(full.capabilities) <= set(DATA_CAPABILITIES)
    sub = full.subset([3, 0])
    assert sub.masks[0].sum() == 4 and sub.masks[1].sum() == 0
    assert sub.defect_types == ["crack", "good"]
    both = ImageSet.concat([full, sub])
    assert both.masks.shape == (6, 1, 8, 8) and both.defect_types[-2:] == ["crack", "good"]
    assert ImageSet.concat([full, plain]).masks is None  # only when every part has them
    with pytest.raises(DataError, match=r"masks must have shape \(4, 1, 8, 8\)"):
        _set(masks=torch.zeros(4, 1, 4, 4))
    with pytest.raises(DataError, match="defect_types has 2 entries"):
        _set(defect_types=["good", "good"])


def test_check_dataset_checks_what_a_set_declares(fresh_plugins):
    from flowkit.testing import check_dataset

    def make(bad: bool):
        def factory(root=None, split="all", image_size: int = 16, download=False):
            flowkit.data.check_split(split)
            n = 4
            masks = torch.zeros(n, 1, image_size, image_size, dtype=torch.bool)
            masks[3] = True
            if bad:
                masks[0] = True  # a normal image with defect pixels
            return ImageSet(
                torch.zeros(n, 1, image_size, image_size, dtype=torch.uint8),
                torch.zeros(n),
                ["good"],
                "m",
                anomaly=[False, False, False, True],
                is_test=[False, False, True, True],
                masks=masks,
            )

        return factory

    datasets.register("masked_ok", categories=lambda root: ["one"])(make(False))
    datasets.register("masked_bad")(make(True))
    check_dataset("masked_ok")
    with pytest.raises(AssertionError, match="a normal image has defect pixels"):
        check_dataset("masked_bad")
