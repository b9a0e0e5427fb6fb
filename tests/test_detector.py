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
from flowkit.errors import ConfigError, DataError, ModelFileError

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
    _, val = det.split_validation(fake_split.train.images)
    flagged = (det.anomaly_score(val) > det.threshold_).mean()
    assert flagged <= 0.05 + 1 / len(val)


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


def test_model_needing_a_missing_plugin_is_refused(tiny_detector, tmp_path, monkeypatch):
    from flowkit.registry import encoders

    path = _saved(tiny_detector, tmp_path)
    entry = encoders.get("dcgan_ae")
    encoders.unregister("dcgan_ae")
    try:
        with pytest.raises(ModelFileError, match="needs the encoder 'dcgan_ae'"):
            Detector.load(path)
    finally:
        encoders._entries["dcgan_ae"] = entry


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
    det = Detector(**{**TINY, "contamination": 0.3})
    det.set_encoder(tiny_detector.encoder_, tiny_detector.input_shape_)
    train, val = det.split_validation(fake_split.train.images)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det.fit_density(det.embed(train), det.embed(val))
    flagged = (det.anomaly_score(val) > det.threshold_).mean()
    assert 0.2 <= flagged <= 0.4
