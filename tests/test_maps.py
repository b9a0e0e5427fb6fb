"""Anomaly maps (issue 38): spatial densities over feature maps, the map head, pixel
calibration, Detector.anomaly_map / predict_mask, save and load, ONNX, ``score --maps`` and
the bench's pixel metrics, end to end on synthetic blotches (tests/map_encoder.py)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import flowkit
from flowkit.cli import app
from flowkit.errors import ConfigError, ModelFileError
from flowkit.flows import spatial
from flowkit.flows.spatial import patchflow, patchknn, positional_encoding
from flowkit.heatmaps import COLOURS, heatmap_rgb, resize_map
from flowkit.maps import MapHead

from .map_encoder import register, write_blotches

MAPS = dict(
    encoder="maps_test",
    flow="patchknn",
    scorer="map_max",
    preprocess="none",
    epochs_flow=3,
    flow_batch_size=8,
    lr_flow=1e-3,
    val_fraction=0.35,  # 11 normal validation images: the thresholds come from them
    device="cpu",
    seed=0,
)


@pytest.fixture(autouse=True)
def _maps_test_registered():
    register()  # again, after any test that rebuilt the registries


@pytest.fixture(scope="module")
def blotches(tmp_path_factory):
    root = write_blotches(tmp_path_factory.mktemp("blotches") / "mtd")
    return root, flowkit.load_dataset("mtd", root=root, image_size=32)


@pytest.fixture(scope="module")
def knn_model(blotches):
    register()
    _, data = blotches
    train = data.subset((~data.is_test).nonzero().flatten())
    return flowkit.Detector(**MAPS).fit(train.images)


def _test_part(data):
    return data.subset(data.is_test.nonzero().flatten())


# -- the densities ----------------------------------------------------------------------------


def test_patchknn_is_the_nearest_training_patch_exactly():
    # one 2-channel map of 1 × 2 positions: latent = (c0x0, c0x1, c1x0, c1x1)
    flow = patchknn(4, maps=[[2, 1, 2]])
    train = torch.tensor([[0.0, 1.0, 0.0, 0.0], [3.0, 3.0, 4.0, 4.0]])
    flow.initialize(train)  # patches (0,0), (1,0), (3,4), (3,4)
    z = torch.tensor([[0.0, 2.0, 1.0, 0.0]])  # patches (0,1): nearest (0,0); (2,0): (1,0)
    (lp,) = flow.log_prob_maps(z)
    const = -math.log(2 * math.pi)  # -0.5 · C · log 2π with C = 2
    np.testing.assert_allclose(lp[0, 0].numpy(), [-0.5 * 1 + const, -0.5 * 1 + const], rtol=1e-6)
    assert torch.allclose(flow.log_prob(z), lp.flatten(1).sum(1))
    # the bank travels with the state dict, whatever its size
    other = patchknn(4, maps=[[2, 1, 2]])
    other.load_state_dict(flow.state_dict())
    assert torch.equal(other.log_prob(z), flow.log_prob(z))
    # a bank of 1 patch, drawn with the seed
    small = patchknn(4, maps=[[2, 1, 2]], bank=1)
    small.initialize(train)
    assert small.bank_0.shape == (1, 2)


def test_patchknn_cosine_compares_directions_exactly():
    flow = patchknn(4, maps=[[2, 1, 2]], metric="cosine")
    flow.initialize(torch.tensor([[1.0, 0.0, 0.0, 2.0]]))  # patches (1,0), (0,2)
    z = torch.tensor([[3.0, 1.0, 0.0, 1.0]])  # (3,0): same direction as (1,0); (1,1): 45°
    (lp,) = flow.log_prob_maps(z)
    d2 = torch.tensor([0.0, 2 - 2 * math.cos(math.pi / 4)])
    torch.testing.assert_close(lp[0, 0], -0.5 * d2 - math.log(2 * math.pi))
    other = patchknn(4, maps=[[2, 1, 2]], metric="cosine")  # the unit bank travels
    other.load_state_dict(flow.state_dict())
    assert torch.equal(other.log_prob(z), flow.log_prob(z))
    with pytest.raises(ConfigError, match="metric must be one of .*cosine.*'manhattan'"):
        patchknn(4, maps=[[2, 1, 2]], metric="manhattan")


def test_patchknn_euclidean_plus_cosine_averages_the_two_each_over_its_scale():
    flow = patchknn(4, maps=[[2, 1, 2]], metric="euclidean+cosine")
    flow.initialize(torch.tensor([[1.0, 0.0, 0.0, 2.0]]))  # patches (1,0), (0,2)
    # the scales: mean squared distance between random training patches (half the pairs
    # are the same patch): (1+4)/2 apart, and 2/2 as unit vectors
    torch.testing.assert_close(flow.scales[0], torch.tensor([2.5, 1.0]), atol=0.08, rtol=0)
    flow.scales[0] = torch.tensor([2.0, 0.5])
    z = torch.tensor([[3.0, 1.0, 0.0, 1.0]])  # (3,0): 4 and 0 away; (1,1): 1 and 2 - √2
    (lp,) = flow.log_prob_maps(z)
    fused = 0.5 * 2 * torch.tensor([4 / 2 + 0 / 0.5, 1 / 2 + (2 - math.sqrt(2)) / 0.5])
    torch.testing.assert_close(lp[0, 0], -0.5 * fused - math.log(2 * math.pi))
    other = patchknn(4, maps=[[2, 1, 2]], metric="euclidean+cosine")  # the scales travel
    other.load_state_dict(flow.state_dict())
    assert torch.equal(other.log_prob(z), flow.log_prob(z))


@pytest.mark.parametrize("blocked", [True, False])
def test_both_distances_from_one_product_equal_two_searches(blocked, monkeypatch):
    # small blocks, so that queries and bank rows span several; a zero row in each
    monkeypatch.setattr(spatial, "KNN_CHUNK", 3)
    monkeypatch.setattr(spatial, "BANK_CHUNK", 4)
    gen = torch.Generator().manual_seed(0)
    q, bank = torch.randn(10, 5, generator=gen), torch.randn(11, 5, generator=gen)
    q[2], bank[7] = 0.0, 0.0
    nearest = spatial._nearest_blocked if blocked else spatial._nearest
    unit = torch.nn.functional.normalize
    euclid, cosine = nearest(q, bank, with_cosine=True)
    expected = torch.cdist(q.double(), bank.double()).square().amin(1).float()
    torch.testing.assert_close(euclid, expected, rtol=1e-5, atol=1e-5)
    unit_q, unit_b = unit(q.double(), dim=1), unit(bank.double(), dim=1)
    torch.testing.assert_close(
        cosine, torch.cdist(unit_q, unit_b).square().amin(1).float(), rtol=1e-5, atol=1e-5
    )
    assert cosine[2] == 0.0  # normalize keeps zero rows zero: the two zero rows coincide
    torch.testing.assert_close(nearest(q, bank), euclid)


def test_patchflow_gives_a_map_per_scale_whose_sum_is_log_prob():
    flow = patchflow(2 * 3 * 3 + 4 * 2 * 2, maps=[[2, 3, 3], [4, 2, 2]], layers=2, hidden=8)
    z = torch.randn(5, 2 * 3 * 3 + 4 * 2 * 2)
    flow.initialize(z)
    maps = flow.log_prob_maps(z)
    assert [tuple(m.shape) for m in maps] == [(5, 3, 3), (5, 2, 2)]
    assert torch.allclose(flow.log_prob(z), sum(m.flatten(1).sum(1) for m in maps))
    # each position's value depends on that position's vector alone
    moved = z.clone()
    moved[0, 4] += 1.0  # channel 0, row 1, column 1 of the first map
    changed = flow.log_prob_maps(moved)[0] != maps[0]
    assert changed[0, 1, 1] and changed.sum() == 1
    # couplings whose networks output zero are the identity: each position's standardized
    # vector under a standard normal, with the standardization's Jacobian
    with torch.no_grad():
        for coupling in flow.flows[0].transform._transforms:
            coupling.transform_net.final_layer.weight.zero_()
            coupling.transform_net.final_layer.bias.zero_()
    maps = flow.log_prob_maps(z)
    x = (z[:, :18].reshape(5, 2, 9).permute(0, 2, 1) - flow.mean_0) / flow.std_0
    expect = -0.5 * (x * x).sum(-1) - math.log(2 * math.pi) - torch.log(flow.std_0).sum()
    torch.testing.assert_close(maps[0].reshape(5, 9), expect, rtol=1e-4, atol=1e-4)


def test_positional_encoding_tells_positions_apart():
    pe = positional_encoding(4, 5, 16)
    assert pe.shape == (20, 16)
    assert len({tuple(row.tolist()) for row in pe}) == 20
    with pytest.raises(ConfigError, match="multiple of 4"):
        positional_encoding(2, 2, 6)


def test_spatial_flows_refuse_latents_that_are_not_maps():
    with pytest.raises(ConfigError, match="needs an encoder that gives them"):
        patchknn(10)
    with pytest.raises(ConfigError, match="hold 18 values per image, but the latent has 20"):
        patchflow(20, maps=[[2, 3, 3]])


# -- maps as pictures -------------------------------------------------------------------------


def test_map_head_upsamples_averages_and_smooths():
    head = MapHead(32)
    assert head.sigma == 0.5  # 4 pixels at 256, scaled
    flat = head([torch.full((2, 4, 4), 3.0), torch.full((2, 8, 8), 1.0)])
    assert flat.shape == (2, 32, 32)
    torch.testing.assert_close(flat, torch.full((2, 32, 32), 2.0))
    spike = torch.zeros(1, 8, 8)
    spike[0, 4, 4] = 1.0
    out = MapHead(64, sigma=2.0)([spike])[0]
    assert out.argmax() // 64 in (35, 36, 37) and out.max() < 1.0  # smoothed, in place


def test_heatmap_scale_and_resize():
    rgb = heatmap_rgb(np.array([[1.0, 3.0, 5.0, 9.0]]), low=1.0, high=3.0)
    np.testing.assert_array_equal(rgb[0, 0], COLOURS[0])  # the normal median: black
    np.testing.assert_array_equal(rgb[0, 1], COLOURS[2])  # the pixel threshold: mid-scale
    np.testing.assert_array_equal(rgb[0, 2], COLOURS[-1])  # twice as far: the top
    np.testing.assert_array_equal(rgb[0, 3], COLOURS[-1])
    m = np.arange(16, dtype=np.float32).reshape(4, 4)
    assert resize_map(m, (6, 10)).shape == (6, 10)
    np.testing.assert_array_equal(resize_map(m, (4, 4)), m)


# -- the Detector ------------------------------------------------------------------------------


def test_maps_find_the_blotches_and_calibrate_on_normal_images(blotches, knn_model):
    _, data = blotches
    test = _test_part(data)
    maps = knn_model.anomaly_map(test.images)
    assert maps.shape == (len(test), 32, 32) and maps.dtype == np.float32
    from flowkit.metrics import pixel_auc

    assert pixel_auc(test.masks[:, 0].numpy(), maps) > 0.9
    scores = knn_model.anomaly_score(test.images)
    np.testing.assert_allclose(scores, maps.reshape(len(maps), -1).max(1), rtol=1e-5)
    # the pixel threshold: the confidence quantile of normal validation images' top pixel
    path = flowkit.pipeline.StagePipeline(
        knn_model.config, data.subset((~data.is_test).nonzero().flatten()).images, device="cpu"
    )
    val = knn_model.anomaly_map(path.val_images)
    expected = np.quantile(val.reshape(len(val), -1).max(1).astype(np.float64), 0.95)
    assert knn_model.pixel_threshold_ == pytest.approx(expected, rel=1e-5)
    masks = knn_model.predict_mask(test.images)
    assert masks.dtype == bool and masks.shape == maps.shape
    assert masks[test.anomaly].any() and not masks[~test.anomaly].all()


def test_maps_at_each_images_own_size(blotches, knn_model):
    _, data = blotches
    test = _test_part(data)
    sizes = [(40, 56), (36, 60)]
    maps = knn_model.anomaly_map(test.images[:2], sizes=sizes)
    assert [m.shape for m in maps] == sizes
    masks = knn_model.predict_mask(test.images[:2], sizes=sizes)
    assert [m.shape for m in masks] == sizes and masks[0].dtype == bool


def test_a_model_with_maps_saves_and_loads(tmp_path, blotches, knn_model):
    _, data = blotches
    test = _test_part(data)
    path = knn_model.save(tmp_path / "maps.flowkit")
    loaded = flowkit.Detector.load(path, device="cpu")
    np.testing.assert_array_equal(
        loaded.anomaly_map(test.images), knn_model.anomaly_map(test.images)
    )
    assert loaded.pixel_threshold_ == knn_model.pixel_threshold_


def test_a_tampered_pixel_threshold_is_refused(tmp_path, knn_model):
    from flowkit import artifact
    from flowkit.stages import model_payload

    stages = (knn_model.encoder_stage_, knn_model.density_stage_, knn_model.calibration_stage_)
    payload = model_payload(knn_model.fitted_config_.params(), *stages)
    payload["pixel_threshold"] = float("nan")
    artifact.write(tmp_path / "bad.flowkit", payload)
    with pytest.raises(ModelFileError, match="pixel_threshold and map_range must be finite"):
        flowkit.Detector.load(tmp_path / "bad.flowkit")


def test_patchflow_trains_and_localizes(blotches):
    _, data = blotches
    train = data.subset((~data.is_test).nonzero().flatten())
    det = flowkit.Detector(**{**MAPS, "flow": "patchflow:layers=2,hidden=16", "epochs_flow": 8})
    det.fit(train.images)
    test = _test_part(data)
    from flowkit.metrics import pixel_auc

    assert pixel_auc(test.masks[:, 0].numpy(), det.anomaly_map(test.images)) > 0.8
    assert det.history_["flow"]["epochs_run"] >= 1


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(flow="realnvp"), "the encoder gives feature maps, which the flow 'realnvp'"),
        (dict(preprocess="pca:8"), "a spatial flow standardizes each map's positions itself"),
        (dict(encoder="dcgan_ae:width=8,latent_dim=8"), "needs an encoder that gives them"),
        (
            dict(flow="realnvp:hidden=8", encoder="dcgan_ae:width=8,latent_dim=8"),
            "map_max scorer reads anomaly maps",
        ),
    ],
)
def test_mismatched_map_components_are_refused_before_training(blotches, params, message):
    _, data = blotches
    det = flowkit.Detector(**{**MAPS, **params, "epochs_encoder": 1})
    with pytest.raises(ConfigError, match=message):
        det.fit(data.images[:20])


def test_a_model_without_maps_says_so(tiny_detector, fake_split):
    with pytest.raises(ConfigError, match="gives no anomaly maps"):
        tiny_detector.anomaly_map(fake_split.test.images[:2])
    with pytest.raises(ConfigError, match="gives no anomaly maps"):
        _ = tiny_detector.pixel_threshold_


# -- export, command line, bench -----------------------------------------------------------


def test_exported_maps_match_and_need_only_onnxruntime(tmp_path, blotches, knn_model):
    pytest.importorskip("onnxruntime")
    from flowkit.runtime import OnnxDetector

    _, data = blotches
    test = _test_part(data)
    path = flowkit.export_onnx(knn_model, tmp_path / "maps.onnx")
    onnx = OnnxDetector(path, device="cpu")
    np.testing.assert_allclose(
        onnx.anomaly_map(test.images), knn_model.anomaly_map(test.images), rtol=1e-4, atol=1e-4
    )
    assert onnx.pixel_threshold_ == pytest.approx(knn_model.pixel_threshold_)
    assert [m.shape for m in onnx.anomaly_map(test.images[:1], sizes=[(7, 9)])] == [(7, 9)]


@pytest.mark.parametrize("suffix", ["flowkit", "onnx"])
def test_score_writes_one_heatmap_per_image_at_its_own_size(tmp_path, blotches, knn_model, suffix):
    root, _ = blotches
    model = knn_model.save(tmp_path / "m.flowkit")
    if suffix == "onnx":
        pytest.importorskip("onnxruntime")
        model = flowkit.export_onnx(knn_model, tmp_path / "m.onnx")
    res = CliRunner().invoke(
        app, ["score", str(model), str(root / "MT_Blotch"), "--maps", str(tmp_path / "out"), "-q"]
    )
    assert res.exit_code == 0, res.output
    for image in sorted((root / "MT_Blotch" / "Imgs").glob("*.jpg")):
        heat = tmp_path / "out" / "Imgs" / f"{image.stem}.png"
        with Image.open(heat) as h, Image.open(image) as im:
            assert h.size == im.size and h.mode == "RGB"


def test_score_maps_refuses_a_model_without_maps_and_clashing_names(tmp_path, tiny_detector):
    model = tiny_detector.save(tmp_path / "m.flowkit")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        Image.fromarray(np.zeros((12, 12), np.uint8)).save(tmp_path / d / "x.png")
    runner = CliRunner()
    res = runner.invoke(
        app, ["score", str(model), str(tmp_path / "a"), "--maps", str(tmp_path / "o")]
    )
    assert res.exit_code == 2 and "gives no anomaly maps" in res.output
    assert "Traceback" not in res.output
    from flowkit.scoring import map_outputs

    files = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"]
    with pytest.raises(ConfigError, match="would both write"):
        map_outputs(files, files, tmp_path / "o")
    assert (
        map_outputs(files, [tmp_path], tmp_path / "o")[files[1]] == tmp_path / "o" / "b" / "x.png"
    )


def test_the_bench_reports_pixel_metrics_per_defect_type(tmp_path, blotches):
    from flowkit.bench.report import write_report
    from flowkit.bench.runner import run_suite
    from flowkit.bench.suite import Suite

    root, _ = blotches
    suite = Suite(
        name="maps",
        dataset="mtd",
        protocol="given",
        image_size=32,
        encoders=["maps_test"],
        flows=["patchknn", "patchflow:layers=2,hidden=16"],
        scorers=["map_max", "map_topk"],
        preprocess=["none"],
        seeds=[0],
        epochs_flow=3,
        flow_batch_size=8,
        lr_flow=1e-3,
        val_fraction=0.35,
    ).validate()
    store = run_suite(suite, tmp_path / "run", data_root=root, device="cpu")
    records = store.records()
    assert len(records) == 4 and all(r["status"] == "ok" for r in records), records
    for rec in records:
        m = rec["metrics"]
        assert set(m) >= {"auc", "pixel_auc", "pro"}
        assert set(rec["per_type"]) == {"Blotch"}
        assert rec["per_type"]["Blotch"]["images"] == 8
    knn = next(r for r in records if r["config"]["flow"] == "patchknn")
    assert knn["metrics"]["pixel_auc"] > 0.9 and knn["metrics"]["auc"] > 0.9
    assert knn["per_type"]["Blotch"]["own_pixel_auc"] > 0.9  # inside each image, too
    paths = write_report(tmp_path / "run")
    text = paths["markdown"].read_text()
    assert "Pixel ROC AUC" in text and "PRO (per-region overlap" in text
    assert "Per defect type" in text and "each image's own pixel AUC" in text
    blotch = next(line for line in text.splitlines() if line.startswith("| Blotch |"))
    assert re.search(r"\| \d\.\d{3} / \d\.\d{3} / \d\.\d{3} / \d\.\d{3} \|", blotch)
    assert any("-maps-" in p.name for p in paths.values())


@pytest.mark.parametrize(
    "name, flow, scorer, image_size",
    [
        ("defects", "patchknn:metric=euclidean+cosine", "map_topk", 256),
        # CIFAR-10 is measured at its own 32 px; photographs load at the backbone's 224
        ("pretrained", "gaussian", "knn:k=2,metric=cosine", 32),
    ],
)
def test_a_pretrained_preset_is_its_suites_measured_cell(name, flow, scorer, image_size):
    """The preset and the suite that measured it cannot drift apart: every option of the
    density and calibration stages (and the encoder) of the suite's chosen cell is the
    preset's (the rest only train encoders, and these are frozen)."""
    from flowkit.bench.suite import load_suite
    from flowkit.config import DEFAULTS, PRESET_IMAGE_SIZE, preset, stage_of

    suite = load_suite(name)
    cell = next(c for c in suite.cells(["all"]) if c.flow == flow and c.scorer == scorer)
    measured = cell.detector_params("cpu")
    chosen = {**DEFAULTS.params(), **preset(name)}
    for key, value in measured.items():
        if stage_of(key) in ("density", "calibration") or key == "encoder":
            assert chosen[key] == value, key
    assert suite.image_size == image_size and PRESET_IMAGE_SIZE[name] >= image_size


def test_a_frozen_encoders_latents_are_embedded_once_across_fit_paths(blotches):
    # the bench's units (one per held-out class) share each process's LatentMemo
    from flowkit.config import DetectorConfig
    from flowkit.pipeline import LatentMemo, StagePipeline
    from flowkit.stages import EncoderStage

    _, data = blotches
    images, test = data.images[~data.is_test], _test_part(data).images
    config = DetectorConfig(**MAPS)
    memo = LatentMemo()
    first = StagePipeline(config, images[:30], device="cpu", memo=memo)
    z1, cost = first.embed_timed(test)
    assert memo.misses == len(test) + len(images[:30]) and memo.hits == 0 and cost > 0
    other = StagePipeline(config, images[10:], device="cpu", memo=memo)  # another class out
    z2, again = other.embed_timed(test)
    assert memo.hits == len(test) + 20  # the test set and the training images in common
    assert torch.equal(z1, z2) and again == pytest.approx(cost)  # the cost of embedding
    plain = StagePipeline(config, images[10:], device="cpu").embed(test)
    torch.testing.assert_close(z2, plain)
    # other weights, other rows: nothing is reused
    weights = {k: v.clone() for k, v in other.encoding.encoder_.state_dict().items()}
    weights["conv1.bias"] += 1.0
    changed = EncoderStage(config).restore(other.encoding.input_shape_, weights)
    assert not torch.allclose(other.embed(test, changed), z2) and memo.hits == len(test) + 20
    # an encoder that trains is embedded every time, never kept
    trains = DetectorConfig(encoder="dcgan_ae:latent_dim=4", epochs_encoder=1, epochs_flow=1)
    before = (memo.hits, memo.misses)
    StagePipeline(trains, images, device="cpu", memo=memo).embed(test)
    assert (memo.hits, memo.misses) == before
