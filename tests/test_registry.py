from __future__ import annotations

import numpy as np
import pytest

import flowkit
from flowkit.errors import ConfigError, UnknownComponentError
from flowkit.registry import Registry, format_spec, parse_spec


def make_registry() -> Registry:
    reg = Registry("widget")
    reg._ensure_loaded = lambda: None  # no plugins for a private registry
    return reg


def test_register_decorator_forms_and_create_drops_none():
    reg = make_registry()

    @reg.register
    def alpha(size: int = 1, colour: str = "red"):
        return (size, colour)

    @reg.register("beta")
    def _b(size: int = 2):
        return size

    reg.register("gamma")(lambda **kw: kw)
    assert reg.list() == ["alpha", "beta", "gamma"]
    assert reg.create("alpha", size=3, colour=None) == (3, "red")
    assert reg.create("gamma", a=1, b=None) == {"a": 1}


def test_duplicate_raises_unless_override():
    reg = make_registry()
    reg.register("a")(lambda: 1)
    with pytest.raises(ConfigError, match="already registered"):
        reg.register("a")(lambda: 2)
    reg.register("a", override=True)(lambda: 3)
    assert reg.create("a") == 3


def test_unknown_name_suggests_close_matches():
    reg = make_registry()
    reg.register("realnvp")(lambda: 1)
    reg.register("gaussian")(lambda: 1)
    with pytest.raises(UnknownComponentError) as info:
        reg.create("realnpv")
    msg = str(info.value)
    assert "did you mean 'realnvp'" in msg and "gaussian" in msg


def test_wrong_option_lists_accepted():
    reg = make_registry()

    @reg.register("a")
    def a(features: int, layers: int = 2):
        return layers

    with pytest.raises(ConfigError, match="no option 'layer'.*accepted: features, layers"):
        reg.create("a", features=2, layer=3)


def test_glob_patterns_and_namespaces():
    reg = make_registry()
    for n in ("resnet18", "resnet50", "vit"):
        reg.register(n)(lambda n=n: n)
    reg.register_namespace(
        "timm",
        lambda name, **kw: ("timm", name, kw),
        lister=lambda: ["resnet18", "efficientnet_b0"],
    )
    assert reg.list("resnet*") == ["resnet18", "resnet50"]
    assert "timm/*" in reg.list()  # namespaces are not expanded by a bare listing
    assert reg.list("timm/res*") == ["timm/resnet18"]
    assert reg.create("timm/anything", pretrained=False) == (
        "timm",
        "anything",
        {"pretrained": False},
    )
    assert "timm/x" in reg and "nope" not in reg


def test_entries_remember_their_plugin():
    entry = flowkit.registry.encoders.get("dcgan_ae")
    assert entry.plugin == "builtin" and entry.distribution == "flowkit"


def test_list_summary_is_the_docstrings_first_sentence():
    from flowkit.registry import Entry

    def make(doc):
        def factory():
            pass

        factory.__doc__ = doc
        return Entry("x", factory)

    # a sentence wrapped over lines is joined and ends at the full stop before a capital
    wrapped = """Distance to the k-th nearest latent (Ruff et al. 2018), e.g. with
    ``part=0`` on one part. Slow on big sets.

    Details."""
    assert make(wrapped).summary == (
        "Distance to the k-th nearest latent (Ruff et al. 2018), e.g. with part=0 on one part."
    )
    assert make("No full stop\n\nSecond paragraph.").summary == "No full stop"
    assert make(None).summary == "" and make("   ").summary == ""
    for kind in ("encoders", "flows", "scorers", "datasets"):  # built-in: whole sentences
        registry = getattr(flowkit.registry, kind)
        for name in registry.names():
            entry = registry.get(name)
            if entry.plugin == "builtin":
                assert entry.summary.endswith((".", ")")) and "``" not in entry.summary, name


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("realnvp", ("realnvp", {})),
        (
            "realnvp:layers=8,batch_norm=true,dropout=0.1,activation=elu",
            ("realnvp", {"layers": 8, "batch_norm": True, "dropout": 0.1, "activation": "elu"}),
        ),
        ("timm/resnet18:pretrained=false", ("timm/resnet18", {"pretrained": False})),
    ],
)
def test_parse_spec(spec, expected):
    assert parse_spec(spec) == expected
    assert parse_spec(format_spec(*expected)) == expected


@pytest.mark.parametrize("bad", [":x=1", "a:b", "a:=3"])
def test_parse_spec_rejects_malformed(bad):
    with pytest.raises(ConfigError):
        parse_spec(bad)


def test_public_helpers():
    assert {"gaussian", "maf", "nsf", "realnvp"} <= set(flowkit.list_flows())
    assert flowkit.list_flows("r*") == ["realnvp"]
    enc = flowkit.create_encoder("dcgan_ae:latent_dim=16", in_channels=3, image_size=64)
    assert enc.embed_dim == 16 and enc.input_shape == (3, 64, 64)
    assert flowkit.create_flow("realnvp:layers=2", features=4).features == 4


def test_names_that_would_not_parse_are_refused():
    reg = make_registry()
    reg.register_namespace("timm", lambda name, **kw: name)
    for bad in ("a:b", "nll+knn", "timm/resnet18"):
        with pytest.raises(ConfigError):
            reg.register(bad)(lambda: 1)


def test_a_renamed_component_keeps_loading_old_model_files_and_cache_entries(
    fresh_plugins, fake_split, tmp_path
):
    from flowkit import Detector
    from flowkit.bench.suite import Suite
    from flowkit.flows.gaussian import gaussian
    from flowkit.registry import flows

    flows.get("gaussian")  # load the plugins
    flows.register("old_gauss")(gaussian)
    det = Detector(encoder="dcgan_ae:width=8,latent_dim=8", flow="old_gauss", epochs_encoder=1)
    det.set_params(epochs_flow=2, device="cpu").fit(fake_split.train)
    path = det.save(tmp_path / "m.flowkit")
    # the component is renamed: the old name becomes an alias
    flows.unregister("old_gauss")
    flows.register("new_gauss")(gaussian)
    flows.alias("old_gauss", "new_gauss")
    with pytest.warns(FutureWarning, match="'old_gauss' was renamed 'new_gauss'"):
        again = Detector.load(path, device="cpu")
    x = fake_split.test.images
    np.testing.assert_array_equal(again.anomaly_score(x), det.anomaly_score(x))
    # bench cells (and so cache keys) written with either name are the same cell
    old = Suite(name="a", dataset="fake", flows=["old_gauss"]).validate().cells([0])[0]
    new = Suite(name="a", dataset="fake", flows=["new_gauss"]).validate().cells([0])[0]
    assert old.flow == "new_gauss" and old.flow_key == new.flow_key
    with pytest.raises(flowkit.ConfigError, match="registered name"):
        flows.alias("new_gauss", "gaussian")
