from __future__ import annotations

import re
import sys
import types
from importlib import metadata
from pathlib import Path

import pytest
import torch

import flowkit
from flowkit import hookspecs, plugins
from flowkit.errors import FlowkitPluginWarning
from flowkit.registry import encoders, flows

ROOT = Path(__file__).resolve().parents[1]


def _module(name: str, source: str) -> str:
    mod = types.ModuleType(name)
    exec(source, mod.__dict__)
    sys.modules[name] = mod
    return name


GOOD = """
import torch
from flowkit import hookimpl
from flowkit.encoders.dcgan import DCGANAutoencoder

@hookimpl
def flowkit_register_encoders(registry):
    @registry.register("my_encoder")
    def my_encoder(**kwargs):
        return DCGANAutoencoder(**kwargs)
"""

RAISES = """
from flowkit import hookimpl

@hookimpl
def flowkit_register_encoders(registry):
    registry.register("half_registered")(lambda **kw: None)
    raise RuntimeError("boom")
"""


@pytest.fixture
def fake_entry_points(monkeypatch, fresh_plugins):
    """Replace entry-point discovery with the given (name, module) pairs plus built-ins."""

    def install(*pairs):
        eps = [metadata.EntryPoint("builtin", "flowkit.builtin", "flowkit")]
        eps += [metadata.EntryPoint(name, module, "flowkit") for name, module in pairs]
        monkeypatch.setattr(plugins, "_iter_entry_points", lambda: list(eps))

    return install


def test_third_party_plugin_registers_and_is_attributed(fake_entry_points):
    fake_entry_points(("mine", _module("fk_test_good", GOOD)))
    assert "my_encoder" in flowkit.list_encoders()
    assert encoders.get("my_encoder").plugin == "mine"
    enc = flowkit.create_encoder("my_encoder", in_channels=1, image_size=32, latent_dim=4)
    assert enc.embed_dim == 4
    info = {i.name: i for i in plugins.plugin_infos()}
    assert info["mine"].components == {"encoders": ["my_encoder"]}
    assert info["mine"].hooks == ["flowkit_register_encoders"]


def test_plugin_failing_to_import_warns_once_and_others_work(fake_entry_points):
    fake_entry_points(("broken", "fk_no_such_module_xyz"), ("mine", _module("fk_test_good", GOOD)))
    with pytest.warns(FlowkitPluginWarning, match="'broken'.*failed to import") as rec:
        names = flowkit.list_encoders()
    assert len([w for w in rec if issubclass(w.category, FlowkitPluginWarning)]) == 1
    assert {"dcgan_ae", "my_encoder"} <= set(names)
    assert flowkit.list_flows() == ["gaussian", "maf", "nsf", "patchflow", "patchknn", "realnvp"]


MISSPELT = """
from flowkit import hookimpl
from flowkit.flows.gaussian import gaussian

@hookimpl
def flowkit_register_encoder(registry):  # misspelt: the hook is flowkit_register_encoders
    registry.register("never_registered")(lambda **kw: None)

@hookimpl
def flowkit_register_flows(registry):
    registry.register("spelt_right")(gaussian)
"""


def test_a_misspelt_hook_is_named_in_a_warning_and_everything_else_works(fake_entry_points):
    fake_entry_points(
        ("typo", _module("fk_test_misspelt", MISSPELT)), ("mine", _module("fk_test_good", GOOD))
    )
    with pytest.warns(FlowkitPluginWarning) as rec:
        names = flowkit.list_encoders()
    (warning,) = [str(w.message) for w in rec if issubclass(w.category, FlowkitPluginWarning)]
    assert "'typo'" in warning and "'flowkit_register_encoder'" in warning
    assert "did you mean 'flowkit_register_encoders'" in warning
    assert "my_encoder" in names and "never_registered" not in names
    assert "spelt_right" in flowkit.list_flows()  # the plugin's other hook still works
    assert flowkit.create_flow("spelt_right", features=3).log_prob(torch.zeros(2, 3)).shape == (2,)


def test_plugin_raising_in_hook_leaves_nothing_behind(fake_entry_points):
    fake_entry_points(("raiser", _module("fk_test_raises", RAISES)))
    with pytest.warns(FlowkitPluginWarning, match="'raiser'.*RuntimeError: boom"):
        names = flowkit.list_encoders()
    assert "half_registered" not in names and "dcgan_ae" in names
    status = {i.name: i.error for i in plugins.plugin_infos()}
    assert status["raiser"] and status["builtin"] is None


def test_disable_plugins_by_name(fake_entry_points, monkeypatch):
    monkeypatch.setenv("FLOWKIT_DISABLE_PLUGINS", "mine, other")
    fake_entry_points(("mine", _module("fk_test_good", GOOD)))
    assert "my_encoder" not in flowkit.list_encoders()
    assert "dcgan_ae" in flowkit.list_encoders()


def test_builtins_come_through_the_hooks(fresh_plugins):
    pm = plugins.get_plugin_manager()
    assert "builtin" in {pm.get_name(p) for p in pm.get_plugins()}
    assert flows.get("realnvp").plugin == "builtin"


def test_every_hook_is_documented():
    docs = (ROOT / "README.md").read_text() + (ROOT / "CONTRIBUTING.md").read_text()
    specs = {name for name in dir(hookspecs) if name.startswith("flowkit_")}
    assert specs == set(hookspecs.HOOK_NAMES.values()) | set(hookspecs.EVENT_HOOKS)
    for name in specs:
        assert re.search(rf"`{name}\([a-z_, ]+\)`", docs), f"hook {name} is not documented"
        assert getattr(hookspecs, name).__doc__, f"hook {name} has no docstring"


ORDERED = """
from flowkit import hookimpl
CALLS = []

@hookimpl(tryfirst=True)
def flowkit_register_flows(registry):
    CALLS.append("{name}")
"""

WRAPPER = """
from flowkit import hookimpl
CALLS = []

@hookimpl(wrapper=True)
def flowkit_register_flows(registry):
    CALLS.append("before")
    result = yield
    CALLS.append("after " + ",".join(sorted(n for n in registry.names() if n == "realnvp")))
    return result
"""


def test_hooks_are_called_through_pluggy_in_its_order(fake_entry_points):
    first = _module("fk_first", ORDERED.format(name="first"))
    last = _module("fk_last", ORDERED.format(name="last").replace("tryfirst", "trylast"))
    wrap = _module("fk_wrap", WRAPPER)
    # registered last-first: pluggy still calls tryfirst before trylast
    fake_entry_points(("zlast", last), ("afirst", first), ("wrap", wrap))
    calls = sys.modules["fk_first"].CALLS
    sys.modules["fk_last"].CALLS = calls
    flowkit.list_flows()
    assert calls == ["first", "last"]
    # the wrapper ran around every implementation, built-ins included
    assert sys.modules["fk_wrap"].CALLS == ["before", "after realnvp"]


def test_a_raising_plugin_is_removed_from_every_registry(fake_entry_points):
    source = """
from flowkit import hookimpl
from flowkit.encoders.dcgan import DCGANAutoencoder

@hookimpl
def flowkit_register_encoders(registry):
    registry.register("kept_until_failure")(lambda **kw: DCGANAutoencoder(**kw))

@hookimpl
def flowkit_register_flows(registry):
    raise ValueError("bad flow")
"""
    fake_entry_points(("twohooks", _module("fk_two", source)), ("mine", _module("fk_g2", GOOD)))
    with pytest.warns(FlowkitPluginWarning, match="'twohooks'.*flowkit_register_flows"):
        names = flowkit.list_encoders()
    assert "kept_until_failure" not in names and "my_encoder" in names
    assert encoders.get("my_encoder").plugin == "mine"
    assert "realnvp" in flowkit.list_flows()
