from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import flowkit
from flowkit import Detector
from flowkit.bench.runner import run_suite
from flowkit.bench.suite import Suite
from flowkit.scorers import ScoreContext, image_complexity
from flowkit.stages import split_validation
from flowkit.testing import registered

from .conftest import TINY


@pytest.fixture(scope="module")
def fitted(tiny_detector, fake_split):
    det = tiny_detector
    train, val = split_validation(fake_split.train.images, det.val_fraction, det.seed)
    return det, (det.embed(train), det.embed(val), train, val)


def _context(det, z, images):
    return det.density_stage_.context(z, images, det.encoder_, "cpu")


NEEDS_ROTNET = {"rotation"}
# map scorers read anomaly maps: their round trip is tests/test_maps.py's, on a spatial model
NEEDS_MAPS = {"map_max", "map_topk"}


@pytest.mark.parametrize(
    "scorer",
    [s for s in registered("scorers", plugin="builtin") if s not in NEEDS_ROTNET | NEEDS_MAPS]
    + ["nll+knn:k=3"],
)
def test_every_scorer_round_trips_with_identical_scores(scorer, fitted, fake_split, tmp_path):
    det = fitted[0].with_scorer(fake_split.train, scorer)
    assert det.scorer == scorer and det.flow_ is fitted[0].flow_  # nothing retrained
    x = fake_split.test.images
    before = det.anomaly_score(x)
    assert before.shape == (len(x),) and np.isfinite(before).all()
    again = Detector.load(det.save(tmp_path / "m.flowkit"), device="cpu")
    np.testing.assert_array_equal(again.anomaly_score(x), before)
    assert again.threshold_ == det.threshold_
    np.testing.assert_array_equal(again.predict(x), det.predict(x))


def test_scorer_semantics(fitted):
    det, (zt, zv, xt, xv) = fitted
    ctx = _context(det, zv, xv)
    nll = -ctx.log_prob
    typ = flowkit.create_scorer("typicality").fit(_context(det, zt, xt), ctx)
    np.testing.assert_allclose(typ.score(ctx), (nll - nll.mean()).abs() / nll.std())
    knn = flowkit.create_scorer("knn:k=1").fit(_context(det, zt, xt), ctx)
    train_ctx = _context(det, zt, xt)
    assert torch.allclose(knn.score(train_ctx), torch.zeros(len(zt), dtype=torch.double))
    combo = flowkit.create_scorer("combo:parts=nll+typicality").fit(train_ctx, ctx)
    s = combo.score(ctx)
    assert abs(float(s.mean())) < 1e-6  # each part standardized on validation data
    with pytest.raises(flowkit.ConfigError, match="two or more"):
        flowkit.create_scorer("combo:parts=nll")
    with pytest.raises(flowkit.UnknownComponentError, match="did you mean 'knn'"):
        flowkit.create_scorer("combo:parts=nll+knm")
    # the combination syntax of the bench and the Detector builds the same scorer
    plus = flowkit.create_scorer("nll+typicality").fit(train_ctx, ctx)
    assert isinstance(plus, type(combo)) and plus.parts == combo.parts
    torch.testing.assert_close(plus.score(ctx), s)
    cos = flowkit.create_scorer("nll+knn:k=1,metric=cosine")
    assert [type(p).__name__ for p in cos.scorers] == ["NLLScorer", "KNNScorer"]
    assert (cos.scorers[1].k, cos.scorers[1].metric) == (1, "cosine")
    with pytest.raises(flowkit.UnknownComponentError, match="did you mean 'knn'"):
        flowkit.create_scorer("nll+knm")
    with pytest.raises(flowkit.ConfigError, match="single scorer"):
        flowkit.create_scorer("nll+knn", k=3)


def test_knn_on_one_part_sees_that_part_alone():
    g = torch.Generator().manual_seed(0)
    # part 0 (3 dims) carries the anomaly; part 1 (2 dims) is loud noise that hides it
    train = torch.cat([torch.randn(200, 3, generator=g), 100 * torch.randn(200, 2, generator=g)], 1)
    test = torch.cat([torch.randn(40, 3, generator=g), 100 * torch.randn(40, 2, generator=g)], 1)
    test[20:, :3] += 6.0
    y = np.r_[np.zeros(20), np.ones(20)]

    def ctx(z: torch.Tensor, blocks: tuple[int, ...] | None = (3, 2)) -> ScoreContext:
        return ScoreContext(log_prob=torch.zeros(len(z)), latents=z, part_sizes=blocks)

    whole = flowkit.create_scorer("knn:k=2").fit(ctx(train), ctx(train))
    first = flowkit.create_scorer("knn:k=2,part=0").fit(ctx(train), ctx(train))
    alone = flowkit.create_scorer("knn:k=2").fit(ctx(train[:, :3], None), ctx(train[:, :3], None))
    torch.testing.assert_close(first.score(ctx(test)), alone.score(ctx(test[:, :3], None)))
    torch.testing.assert_close(
        first.export_score(ctx(test)), first.score(ctx(test)).float(), rtol=1e-4, atol=1e-5
    )
    assert roc_auc_score(y, first.score(ctx(test))) == 1.0
    assert roc_auc_score(y, whole.score(ctx(test))) < 0.75
    second = flowkit.create_scorer("knn:k=2,part=1").fit(ctx(train), ctx(train))
    assert second.reference.shape == (200, 2)
    # a latent of one part has part 0 only; part=1 is refused with the parts it has
    with pytest.raises(flowkit.ConfigError, match=r"part=1 .* one part \(part=0\)"):
        second.score(ctx(test, None))
    with pytest.raises(flowkit.ConfigError, match="part must be >= 0"):
        flowkit.create_scorer("knn:part=-1")


def test_a_part_the_encoder_does_not_have_is_refused_before_training(fake_split):
    det = Detector(**{**TINY, "scorer": "nll+knn:part=1"})  # dcgan_ae: one part
    with pytest.raises(flowkit.ConfigError, match=r"part=1 .* one part"):
        det.fit(fake_split.train)
    assert not hasattr(det, "encoder_")  # nothing trained


def test_complexity_orders_noise_above_blank():
    blank = torch.full((2, 1, 32, 32), 128, dtype=torch.uint8)
    noise = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    c = image_complexity(torch.cat([blank, noise]))
    assert c[2:].min() > 7.0 > 1.0 > c[:2].max()


def test_recon_needs_a_decoder(fitted):
    ctx = ScoreContext(
        log_prob=torch.zeros(2), latents=torch.zeros(2, 2), encoder=torch.nn.Identity()
    )
    with pytest.raises(flowkit.ConfigError, match="encoder that can decode"):
        flowkit.create_scorer("recon").fit(ctx, ctx)


def test_scorers_never_see_the_test_set(tmp_path):
    """The fitted scorer state is identical whatever the test data is."""
    suite = Suite(
        name="leak",
        dataset="fake:per_class=20",
        protocol="ood",
        out_datasets=["constant", "uniform_noise"],
        encoders=["dcgan_ae:width=8,latent_dim=8"],
        flows=["gaussian"],
        scorers=["nll", "typicality", "knn", "complexity", "nll+recon"],
        epochs_encoder=1,
        epochs_flow=2,
    ).validate()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_suite(suite, tmp_path, device="cpu")
    recs = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 10 and all(r["status"] == "ok" for r in recs)
    by_scorer: dict[str, set[str]] = {}
    for r in recs:
        by_scorer.setdefault(r["config"]["scorer"], set()).add(r["scorer_state_sha"])
        by_scorer.setdefault("threshold:" + r["config"]["scorer"], set()).add(str(r["threshold"]))
    assert all(len(v) == 1 for v in by_scorer.values()), by_scorer
    # and the test sets really differed
    assert len({r["metrics"]["auc"] for r in recs if r["config"]["scorer"] == "knn"}) == 2


@pytest.mark.parametrize("encoder", ["rotnet:width=8,latent_dim=8", "csi:width=8,latent_dim=8"])
def test_rotation_scorer_with_rotnet_round_trips(fake_split, tmp_path, encoder):
    det = Detector(**{**TINY, "encoder": encoder, "scorer": "rotation+nll"})
    det.fit(fake_split.train)
    x = fake_split.test.images
    score = det.anomaly_score(x)
    again = Detector.load(det.save(tmp_path / "r.flowkit"), device="cpu")
    np.testing.assert_array_equal(again.anomaly_score(x), score)
    rot = det.encoder_.rotation_loss(torch.zeros(3, 1, 32, 32))
    assert rot.shape == (3,) and (rot >= 0).all()
    with pytest.raises(flowkit.ConfigError, match="rotation-prediction encoder"):
        Detector(**{**TINY, "scorer": "rotation"}).fit(fake_split.train)
