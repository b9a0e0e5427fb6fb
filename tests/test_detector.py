from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from flowkit import Detector, artifact
from flowkit.data import leave_one_class_out
from flowkit.errors import ConfigError, DataError, ModelFileError
from flowkit.stages import split_validation

from .conftest import TINY


def test_fit_score_predict_conventions(tiny_detector, fake_split):
    det = tiny_detector
    test = fake_split.test.images
    ll = det.score_samples(test)
    score = det.anomaly_score(test)
    np.testing.assert_allclose(score, -ll)  # nll scorer
    pred = det.predict(test)
    assert set(np.unique(pred)) <= {-1, 1}
    np.testing.assert_array_equal(pred == -1, score > det.threshold_)
    np.testing.assert_allclose(det.decision_function(test), det.threshold_ - score)
    assert det.offset_ == -det.threshold_
    # even a tiny model separates the synthetic held-out class
    assert roc_auc_score(fake_split.is_anomaly.numpy(), score) > 0.7


def test_threshold_is_the_confidence_quantile_of_validation_scores(tiny_detector, fake_split):
    det = tiny_detector
    _, val = split_validation(fake_split.train.images, det.val_fraction, det.seed)
    scores = det.anomaly_score(val)
    assert np.isfinite(det.threshold_)
    assert det.threshold_ == pytest.approx(float(np.quantile(scores, 0.95)), rel=1e-6)
    flagged = (scores > det.threshold_).mean()
    assert 0.05 - 1 / len(val) <= flagged <= 0.05 + 1 / len(val)


def test_same_seed_same_scores(fake_split):
    a = Detector(**TINY).fit(fake_split.train).score_samples(fake_split.test.images[:20])
    b = Detector(**TINY).fit(fake_split.train).score_samples(fake_split.test.images[:20])
    np.testing.assert_array_equal(a, b)


def test_save_load_round_trip(tiny_detector, fake_split, tmp_path):
    path = tiny_detector.save(tmp_path / "m.flowkit")
    loaded = Detector.load(path, device="cpu")
    x = fake_split.test.images
    np.testing.assert_array_equal(loaded.anomaly_score(x), tiny_detector.anomaly_score(x))
    assert loaded.threshold_ == tiny_detector.threshold_
    assert loaded.get_params()["encoder"] == TINY["encoder"]
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temporary behind


def _saved(tiny_detector, tmp_path) -> Path:
    return tiny_detector.save(tmp_path / "m.flowkit")


def test_tampered_file_is_refused(tiny_detector, tmp_path):
    path = _saved(tiny_detector, tmp_path)
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="modified after it was saved"):
        Detector.load(path)


def test_truncated_file_is_refused(tiny_detector, tmp_path):
    path = _saved(tiny_detector, tmp_path)
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(ModelFileError, match="truncated"):
        Detector.load(path)


def test_foreign_files_are_refused(tmp_path):
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n....")
    with pytest.raises(ModelFileError, match="not a flowkit model file"):
        Detector.load(png)
    with pytest.raises(ModelFileError, match="no such model file"):
        Detector.load(tmp_path / "missing.flowkit")


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_payload_with_code_is_refused_even_with_valid_checksum(tmp_path):
    # A file crafted with a correct header: weights_only=True must still refuse it.
    buf = io.BytesIO()
    torch.save({"params": Evil()}, buf, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    import hashlib
    import json

    body = buf.getvalue()
    header = {"format": 1, "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    path = tmp_path / "evil.flowkit"
    path.write_bytes(artifact.MAGIC + json.dumps(header).encode() + b"\n" + body)
    with pytest.raises(ModelFileError, match="refused to load the payload safely"):
        Detector.load(path)


def test_newer_format_and_version_drift(tiny_detector, tmp_path, monkeypatch):
    path = _saved(tiny_detector, tmp_path)
    monkeypatch.setattr(artifact, "FORMAT_VERSION", 0)
    with pytest.raises(ModelFileError, match="newer flowkit"):
        Detector.load(path)
    monkeypatch.undo()
    real = artifact.package_versions
    monkeypatch.setattr(artifact, "package_versions", lambda: {**real(), "torch": "9.9.0"})
    with pytest.warns(UserWarning, match=r"torch .* → 9\.9\.0"):
        Detector.load(path)


def test_model_needing_a_missing_plugin_is_refused(tiny_detector, tmp_path, fresh_plugins):
    from flowkit.registry import encoders

    path = _saved(tiny_detector, tmp_path)
    encoders.get("dcgan_ae")  # loads the plugins; the fixture reloads them afterwards
    encoders.unregister("dcgan_ae")
    with pytest.raises(ModelFileError, match="needs the encoder 'dcgan_ae'"):
        Detector.load(path)


def test_wrong_channels_or_size_are_clear_errors(tiny_detector):
    with pytest.raises(DataError, match="expects 1-channel 32×32 images, got 3-channel 32×32"):
        tiny_detector.score_samples(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(DataError, match="got 1-channel 28×28"):
        tiny_detector.predict(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    nan = torch.zeros(2, 1, 32, 32)
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        tiny_detector.anomaly_score(nan)


def test_unfitted_and_bad_params():
    with pytest.raises(ConfigError, match="not fitted"):
        Detector().predict(torch.zeros(1, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="confidence"):
        Detector(confidence=1.5).fit(torch.zeros(20, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="no parameter"):
        Detector().set_params(bogus=1)
    assert "flow='gaussian'" in repr(Detector(flow="gaussian"))


def test_contamination_overrides_confidence(tiny_detector, fake_split):
    det = tiny_detector.with_scorer(fake_split.train, "nll", contamination=0.3)
    assert det.contamination == 0.3 and tiny_detector.contamination is None
    _, val = split_validation(fake_split.train.images, det.val_fraction, det.seed)
    flagged = (det.anomaly_score(val) > det.threshold_).mean()
    assert 0.2 <= flagged <= 0.4


def test_scores_do_not_depend_on_the_other_images_in_the_batch(tiny_detector, fake_split):
    """Float input in [0, 1], scored alone, in a batch, and in shuffled mixed batches."""
    det = tiny_detector
    x = fake_split.test.images[:12].float() / 255.0
    whole = det.anomaly_score(x)
    alone = np.concatenate([det.anomaly_score(x[i : i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(alone, whole, rtol=1e-5, atol=1e-5)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    mixed = det.anomaly_score(torch.cat([x[perm], fake_split.train.images[:5].float() / 255]))
    np.testing.assert_allclose(mixed[: len(x)], whole[perm.numpy()], rtol=1e-5, atol=1e-5)
    # uint8 and the same pixels as floats score the same
    np.testing.assert_allclose(det.anomaly_score(fake_split.test.images[:12]), whole, rtol=1e-6)
    # one out-of-range pixel is refused with its index, never a silent rescale of the batch
    bad = x.clone()
    bad[7, 0, 3, 3] = 1.02
    with pytest.raises(DataError, match=r"indices \[7\]"):
        det.anomaly_score(bad)
    # a declared [0, 255] float range reads the same pixels
    wide = det.set_params(value_range=(0, 255)).anomaly_score(x * 255.0)
    det.set_params(value_range=(0.0, 1.0))
    np.testing.assert_allclose(wide, whole, rtol=1e-6)


@pytest.mark.parametrize("scorer", ["nll", "knn", "typicality", "recon", "nll+knn"])
def test_sklearn_score_conventions_hold_for_every_scorer(tiny_detector, fake_split, scorer):
    det = tiny_detector.with_scorer(fake_split.train, scorer)
    x = fake_split.test.images
    s = det.score_samples(x)
    np.testing.assert_allclose(s, -det.anomaly_score(x))
    np.testing.assert_allclose(det.decision_function(x), s - det.offset_)
    assert det.offset_ == -det.threshold_
    np.testing.assert_array_equal(det.predict(x), np.where(det.decision_function(x) < 0, -1, 1))
    # the raw flow log-likelihood keeps its own name, whatever the scorer
    ll = det.log_likelihood(x)
    assert ll.shape == s.shape and np.isfinite(ll).all()
    if scorer != "nll":
        assert not np.allclose(ll, s)


def test_fit_predict_and_joblib_round_trip(fake_split, tmp_path):
    import joblib

    det = Detector(**{**TINY, "scorer": "nll+knn"})
    labels = det.fit_predict(fake_split.train)
    assert set(np.unique(labels)) <= {-1, 1} and (labels == 1).mean() > 0.5
    np.testing.assert_array_equal(labels, det.predict(fake_split.train))
    path = tmp_path / "det.joblib"
    joblib.dump(det, path)
    again = joblib.load(path)
    x = fake_split.test.images
    np.testing.assert_array_equal(again.anomaly_score(x), det.anomaly_score(x))
    assert pickle.loads(pickle.dumps(det)).threshold_ == det.threshold_


def test_unfitted_detector_says_so():
    from flowkit.errors import NotFittedError

    x = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    for method in ("decision_function", "score_samples", "anomaly_score", "predict", "embed"):
        with pytest.raises(NotFittedError, match="not fitted|no encoder"):
            getattr(Detector(), method)(x)
    with pytest.raises(NotFittedError):
        Detector().save(Path("never-written.flowkit"))
    assert not Path("never-written.flowkit").exists()


@pytest.mark.parametrize(
    "params, match",
    [
        ({"batch_size": 1}, r"batch_size must be >= 2"),
        ({"batch_size": 0}, r"batch_size must be >= 2"),
        ({"flow_batch_size": 1}, r"flow_batch_size must be >= 2"),
        ({"epochs_encoder": 0}, r"epochs_encoder must be >= 1"),
        ({"epochs_flow": -3}, r"epochs_flow must be >= 1"),
        ({"epochs_flow": 2.5}, r"epochs_flow must be an integer"),
        ({"patience": 0}, r"patience must be >= 1"),
        ({"seed": None}, r"seed must be an integer"),
        ({"seed": -1}, r"seed must be in \[0"),
        ({"seed": "zero"}, r"seed must be an integer"),
        ({"lr_flow": 0.0}, r"lr_flow must be in"),
        ({"flow_augment": -1}, r"flow_augment must be >= 0 \(0 turns it off\), got -1"),
        ({"flow_augment": 1.5}, r"flow_augment must be an integer"),
        ({"lr_encoder": float("nan")}, r"lr_encoder must be in"),
        ({"confidence": 1.0}, r"confidence must be in"),
        ({"contamination": 0.7}, r"contamination must be in"),
        ({"val_fraction": 0.0}, r"val_fraction must be in"),
        ({"value_range": (1, 0)}, r"value_range"),
        ({"device": "tpu:9"}, r"device"),
        ({"preprocess": "pca:abc"}, r"pca"),
        ({"flow": "realnvp:layers=abc"}, r"option layers must be an integer, got 'abc'"),
        ({"flow": "realnvp:layers=-2"}, r"layers must be >= 1, got -2"),
        ({"flow": "realnvp:hidden=0"}, r"hidden must be >= 1"),
        ({"flow": "realnvp:dropout=2"}, r"dropout must be in \[0, 1\)"),
        ({"flow": "realnvp:scale=cubic"}, r"scale must be one of"),
        ({"flow": "realnvp:batch_norm=maybe"}, r"batch_norm must be true or false"),
        ({"flow": "maf:layers=0"}, r"layers must be >= 1"),
        ({"flow": "nsf:bins=1"}, r"bins >= 2"),
        ({"encoder": "dcgan_ae:latent_dim=abc"}, r"latent_dim must be an integer"),
        ({"encoder": "dcgan_ae:latent_dim=0"}, r"latent_dim must be >= 1"),
        ({"encoder": "dcgan_ae:width=-1"}, r"width must be >= 1"),
        ({"encoder": "simclr:temperature=0"}, r"temperature must be positive"),
        ({"scorer": "knn:k=0"}, r"k >= 1"),
        ({"scorer": "knn:metric=manhattan"}, r"metric"),
        ({"scorer": "knn:k=two"}, r"option k must be an integer"),
        ({"preprocess": "pca:64", "encoder": "dcgan_ae:latent_dim=8"}, r"pca:64 needs 1 <= K <= 8"),
    ],
)
def test_bad_configuration_is_refused_before_any_training(params, match, monkeypatch):
    import flowkit.stages as stages_module

    def no_training(*args, **kwargs):
        raise AssertionError("training started on a configuration that cannot finish")

    monkeypatch.setattr(stages_module, "fit_encoder", no_training)
    monkeypatch.setattr(stages_module, "fit_flow", no_training)
    images = torch.randint(0, 255, (40, 1, 32, 32), dtype=torch.uint8)
    with pytest.raises(ConfigError, match=match):
        Detector(**{**TINY, **params}).fit(images)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.array([["a"]]), "numeric image array"),
        (np.zeros((0, 1, 32, 32), np.uint8), "empty"),
        (np.zeros((3, 32, 32, 1, 1), np.uint8), "shape"),
        (np.zeros((3, 3, 32, 32), np.uint8), "expects 1-channel"),
    ],
)
def test_bad_batches_are_clear_errors(tiny_detector, bad, match):
    with pytest.raises(DataError, match=match):
        tiny_detector.decision_function(bad)


def test_saved_models_record_every_flow_option_and_old_files_still_load(tiny_detector, tmp_path):
    """A saved model keeps the flow's defaults of its day, so a later default change cannot
    break it; files saved before that (realnvp then defaulted to hidden=256, blocks=2) have
    their width and depth read off the weights."""
    import torch

    import flowkit
    from flowkit.artifact import read
    from flowkit.stages import _legacy_flow_options

    path = tiny_detector.save(tmp_path / "m.flowkit")
    saved = read(path)["flow"]["options"]
    assert saved["hidden"] == 16 and saved["scale"] == "tanh" and saved["dropout"] == 0.0
    assert flowkit.Detector.load(path).flow_.transform._transforms[0].scale == "tanh"
    old = flowkit.create_flow("realnvp", features=6, hidden=16, blocks=2, layers=2)
    opts = _legacy_flow_options("realnvp", {"layers": 2}, old.state_dict())
    assert opts == {"hidden": 16, "blocks": 2, "layers": 2}
    rebuilt = flowkit.create_flow("realnvp", features=6, **opts)
    rebuilt.load_state_dict(old.state_dict())  # the same network: loads strictly
    z = torch.randn(4, 6)
    torch.testing.assert_close(rebuilt.log_prob(z), old.log_prob(z))
    assert _legacy_flow_options("realnvp", {"hidden": 8, "blocks": 1}, {}) == {
        "hidden": 8,
        "blocks": 1,
    }


def test_flow_augment_trains_the_flow_on_augmented_latents_too(fake_split, tmp_path):
    train = fake_split.train.images
    det = Detector(**{**TINY, "encoder": "simclr:width=8,latent_dim=8", "flow_augment": 2})
    det.fit(train)
    tr, val = split_validation(train, det.val_fraction, det.seed)
    clean = det.embed(tr)
    aug = det.encoder_stage_.embed_augmented(tr, device="cpu")
    assert aug.shape == (2 * len(tr), clean.shape[1])
    assert not torch.allclose(aug[: len(tr)], clean)  # the copies are really augmented
    torch.testing.assert_close(det.encoder_stage_.embed_augmented(tr, device="cpu"), aug)
    # the preprocessing (and so the flow) saw clean + augmented latents; the threshold did not
    torch.testing.assert_close(det.pipeline_.stages[0].mean, torch.cat([clean, aug]).mean(0))
    scores = det.anomaly_score(fake_split.test.images)
    again = Detector.load(det.save(tmp_path / "a.flowkit"), device="cpu")
    assert again.flow_augment == 2
    np.testing.assert_array_equal(again.anomaly_score(fake_split.test.images), scores)
    # an encoder without views of its own gets flowkit's random affine warps
    plain = Detector(**{**TINY, "flow_augment": 1}).fit(train)
    assert plain.encoder_stage_.embed_augmented(tr, device="cpu").shape == (len(tr), 8)


def test_defaults_are_the_recommended_pipeline_and_paper_the_papers_pair(fake_split, tmp_path):
    params = Detector().get_params()
    assert (
        params["encoder"].startswith("simclr")
        and params["flow"] == "realnvp:batch_norm=true,hidden=128,layers=4"
    )
    assert params["scorer"] == "nll+knn:k=2,metric=cosine,part=0" and params["preprocess"] == "auto"
    assert params["flow_augment"] == 2 and params["precision"] == "auto"
    paper = Detector.paper(seed=3)
    assert (paper.encoder, paper.scorer, paper.preprocess) == (
        "dcgan_ae:latent_dim=100",
        "nll",
        "standardize",
    )
    assert paper.seed == 3 and paper.flow_augment == 0 and paper.lr_encoder == 2e-4
    # the defaults, with only the networks shrunk, train, score and round-trip
    small = {"encoder": "simclr:width=8,latent_dim=8", "flow": TINY["flow"], "device": "cpu"}
    det = Detector(**small, epochs_encoder=1, epochs_flow=3).fit(fake_split.train)
    assert det.pipeline_.out_dim == 8  # auto: every dimension of a small latent, whitened
    assert det.scorer_spec_[0] == "combo"
    scores = det.anomaly_score(fake_split.test.images)
    assert np.isfinite(scores).all()
    again = Detector.load(det.save(tmp_path / "d.flowkit"), device="cpu")
    np.testing.assert_array_equal(again.anomaly_score(fake_split.test.images), scores)


def test_an_encoder_of_two_parts_gets_each_part_preprocessed_and_round_trips(fake_split, tmp_path):
    enc = "simclr:width=8,latent_dim=8,projection_dim=6,features=trunk+head"
    det = Detector(**{**TINY, "encoder": enc, "preprocess": "pca:4"}).fit(fake_split.train)
    assert det.preprocess_.part_sizes == (8, 6) and det.pipeline_.out_dim == 8  # 4 per part
    # one flow per part, each trained on its own block with its own early stopping
    assert [p.features for p in det.flow_.parts] == [4, 4]
    assert len(det.history_["flow"]["parts"]) == 2
    z = det.embed(fake_split.test.images)
    torch.testing.assert_close(det.pipeline_.parts[1](z[:, 8:]), det.pipeline_(z)[:, 4:])
    scores = det.anomaly_score(fake_split.test.images)
    again = Detector.load(det.save(tmp_path / "b.flowkit"), device="cpu")
    assert again.preprocess_.part_sizes == (8, 6)
    np.testing.assert_array_equal(again.anomaly_score(fake_split.test.images), scores)


def test_a_3d_batch_that_reads_two_ways_is_refused_with_both_readings(tiny_detector):
    rgb = torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8)  # one RGB image, or 3 gray?
    with pytest.raises(DataError, match=r"ambiguous: 3 one-channel 32×32 images .* x\[:, None\]"):
        tiny_detector.anomaly_score(rgb)
    assert tiny_detector.anomaly_score(rgb[:, None]).shape == (3,)  # said: three images
    assert tiny_detector.anomaly_score(torch.zeros(5, 32, 32, dtype=torch.uint8)).shape == (5,)
    with pytest.raises(DataError, match="expects 1-channel"):
        tiny_detector.anomaly_score(rgb[None])  # one 3-channel image: the wrong channels


def _rewrite(path, edit) -> None:
    """Edit a saved model's payload and save it with a valid checksum (a careful tamperer)."""
    payload = artifact.read(path)
    payload.pop("_versions")
    edit(payload)
    artifact.write(path, payload)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda p: p.__setitem__("threshold", float("nan")), "threshold must be finite"),
        (lambda p: p.__setitem__("threshold", "0.5"), "threshold must be a number"),
        (lambda p: p["encoder"].__setitem__("input_shape", [1, 0, 32]), "three positive"),
        (lambda p: p["encoder"].__setitem__("input_shape", "1,32,32"), "three positive"),
        (lambda p: p["flow"].__setitem__("name", 7), "flow must have a name"),
        (lambda p: p.__setitem__("params", []), "params must be a mapping"),
    ],
)
def test_a_model_with_a_valid_checksum_but_bad_fields_is_refused(
    tiny_detector, tmp_path, edit, match
):
    path = tiny_detector.save(tmp_path / "m.flowkit")
    _rewrite(path, edit)
    with pytest.raises(ModelFileError, match=match) as info:
        Detector.load(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "header, match",
    [
        ('["a list"]', "not a JSON object"),
        ('{"format": "1", "size": 1, "sha256": "x"}', "format must be a positive integer"),
        ('{"format": 1, "size": -1, "sha256": "x"}', "size must be a non-negative"),
        ('{"format": 1, "size": 1, "sha256": "x"}', "sha256 must be 64"),
        ('{"format": 1, "size": 1, "sha256": "' + "a" * 64 + '", "versions": 5}', "versions"),
        ('{"format": 1, "size": 1, "sha256": "' + "a" * 64 + '", "versions": {"torch": 2}}',
         "versions"),
        ("not json", "not a JSON object"),
    ],
)  # fmt: skip
def test_a_header_edited_by_hand_is_refused_in_one_line(tiny_detector, tmp_path, header, match):
    path = tiny_detector.save(tmp_path / "m.flowkit")
    raw = path.read_bytes()
    magic_end = raw.index(b"\n") + 1
    body = raw[raw.index(b"\n", magic_end) + 1 :]
    path.write_bytes(raw[:magic_end] + header.encode() + b"\n" + body)
    with pytest.raises(ModelFileError, match=match):
        Detector.load(path)


def test_small_inputs_and_mixed_sizes_get_one_clear_line(tiny_detector, fake_split):
    mixed = [
        np.zeros((32, 32), np.uint8),
        np.zeros((32, 32), np.uint8),
        np.zeros((28, 28), np.uint8),
    ]
    with pytest.raises(
        DataError, match=r"different shapes \(\(32, 32\) at index 0, \(28, 28\) at index 2\)"
    ):
        tiny_detector.anomaly_score(mixed)
    three = fake_split.train.images[:3]
    with pytest.warns(UserWarning, match="only 1 normal validation image"):
        Detector(**{**TINY, "epochs_encoder": 1, "epochs_flow": 2}).fit(three)


def test_a_model_needing_disabled_builtins_says_so(
    tiny_detector, tmp_path, monkeypatch, fresh_plugins
):
    path = tiny_detector.save(tmp_path / "m.flowkit")
    monkeypatch.setenv("FLOWKIT_DISABLE_PLUGINS", "builtin")
    from flowkit.plugins import reset_plugins

    reset_plugins()
    with pytest.raises(
        ModelFileError, match="built-in components are disabled .* includes builtin"
    ):
        Detector.load(path)


def test_the_density_owns_the_log_likelihood_jacobian_included(tiny_detector, fake_split):
    import pickle

    x = fake_split.test.images[:16]
    z = tiny_detector.embed(x)
    density = tiny_detector.density_
    with torch.no_grad():
        u, lp = density(z)
    pre = tiny_detector.preprocess_
    jacobian = float(pre.log_abs_det())
    assert jacobian != 0.0  # standardize: a real Jacobian, so the test can fail
    with torch.no_grad():
        torch.testing.assert_close(lp, tiny_detector.flow_.log_prob(pre(z)) + jacobian)
        u2, lp2 = density.for_export()(z)  # the export form is the same density
    np.testing.assert_allclose(tiny_detector.log_likelihood(x), lp.double().numpy(), rtol=1e-6)
    torch.testing.assert_close(lp2, lp)
    torch.testing.assert_close(u2, u)
    # every stage pickles on its own
    for stage in (
        tiny_detector.encoder_stage_,
        tiny_detector.density_stage_,
        tiny_detector.calibration_stage_,
    ):
        assert pickle.loads(pickle.dumps(stage)).fitted


def test_a_three_channel_imageset_is_scored_as_the_images_it_holds(tmp_path):
    # an ImageSet's ``shape`` is one image's (3, 32, 32): it must not read as an ambiguous
    # 3-D batch (flowkit train --anomaly-class on photographs failed there after training)
    from flowkit import load_dataset

    data = load_dataset("fake", per_class=20, channels=3)
    split = leave_one_class_out(data, 0, seed=0)
    assert split.test.shape == (3, 32, 32)
    det = Detector(**TINY).fit(split.train)
    scores = det.anomaly_score(split.test)
    assert scores.shape == (len(split.test),)
    np.testing.assert_array_equal(scores, det.anomaly_score(split.test.images))
    with pytest.raises(DataError, match="ambiguous: 3 one-channel"):
        det.anomaly_score(split.test.images[0])  # a bare (3, 32, 32) tensor still is
    # channels-last images, as PIL and most image libraries give them, are refused with
    # the transpose that fixes them (they read as 32-channel 32×3 images before)
    nhwc = split.test.images[:4].permute(0, 2, 3, 1).numpy()
    with pytest.raises(
        DataError, match=r"channels-last images \(N, H, W, C\).*transpose\(0, 3, 1, 2\)"
    ):
        det.anomaly_score(nhwc)
    np.testing.assert_allclose(
        det.anomaly_score(nhwc.transpose(0, 3, 1, 2)), scores[:4], rtol=1e-5, atol=1e-4
    )
    from PIL import Image

    with pytest.raises(DataError, match=r"one channels-last image \(H, W, C\).*\[None\]"):
        det.anomaly_score(Image.fromarray(nhwc[0]))
    # a read-only buffer (np.frombuffer, a PIL image's) scores without torch's warning
    frozen = np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))
    frozen.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(det.anomaly_score(frozen), scores[:4], rtol=1e-5, atol=1e-4)
