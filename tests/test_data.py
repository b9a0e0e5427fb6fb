from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torchvision

import flowkit
from flowkit.data import as_uint8_images, find_images, leave_one_class_out, load_images, ood
from flowkit.errors import DataError, DatasetNotFoundError


def write_mnist(root: Path, n: int = 20) -> np.ndarray:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 10
    for prefix in ("train", "t10k"):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes()
        )
    return labels


def test_mnist_reads_native_idx_files_offline(tmp_path):
    labels = write_mnist(tmp_path)
    data = flowkit.load_dataset("mnist", root=tmp_path, split="all", download=False)
    assert data.images.shape == (40, 1, 32, 32) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == labels.tolist() * 2
    train = flowkit.load_dataset("mnist", root=tmp_path, split="train", download=False)
    assert len(train) == 20


def write_cifar10(root: Path, monkeypatch) -> Path:
    # torchvision checks the md5 of the real archive's files; ours are tiny stand-ins.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    base = root / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 9]}
        (base / name).write_bytes(pickle.dumps(batch))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    return base


def write_svhn(root: Path, monkeypatch) -> None:
    monkeypatch.setattr(torchvision.datasets.svhn, "check_integrity", lambda *a, **k: True)
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        scipy.io.savemat(
            root / f"{split}_32x32.mat",
            {
                "X": rng.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8),
                "y": np.array([[10], [1], [2], [3], [10]], dtype=np.uint8),
            },
        )


def test_cifar10_reads_python_batches_offline(tmp_path, monkeypatch):
    base = write_cifar10(tmp_path, monkeypatch)
    data = flowkit.load_dataset("cifar10", root=tmp_path, split="all", download=False)
    assert data.images.shape == (24, 3, 32, 32)
    assert data.classes[1] == "car" and data.labels[:4].tolist() == [0, 1, 2, 9]
    # channel order: CIFAR stores R plane, then G, then B
    first = np.frombuffer(pickle.loads((base / "data_batch_1").read_bytes())["data"][0], np.uint8)
    assert data.images[0, 0].flatten().tolist() == first[:1024].tolist()


def test_svhn_reads_mat_files_offline(tmp_path, monkeypatch):
    write_svhn(tmp_path, monkeypatch)
    data = flowkit.load_dataset("svhn", root=tmp_path, split="test", download=False)
    assert data.images.shape == (5, 3, 32, 32)
    assert data.labels.tolist() == [0, 1, 2, 3, 0]  # SVHN's label 10 is the digit 0


@pytest.mark.parametrize(
    "name,hint",
    [("mnist", "MNIST/raw"), ("cifar10", "cifar-10-batches-py"), ("svhn", "test_32x32.mat")],
)
def test_missing_dataset_says_where_to_put_files(tmp_path, name, hint):
    with pytest.raises(DatasetNotFoundError) as info:
        flowkit.load_dataset(name, root=tmp_path, download=False)
    msg = str(info.value)
    assert hint in msg and str(tmp_path) in msg and "--data-root" in msg


def test_failed_download_becomes_a_clear_error(tmp_path, monkeypatch):
    def no_network(self, *a, **kw):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", no_network)
    with pytest.raises(DatasetNotFoundError, match="could not be downloaded.*unreachable"):
        flowkit.load_dataset("mnist", root=tmp_path, download=True)


def test_digits_is_real_embedded_data():
    data = flowkit.load_dataset("digits")
    assert data.images.shape == (1797, 1, 32, 32)
    assert sorted(set(data.labels.tolist())) == list(range(10))
    train = flowkit.load_dataset("digits", split="train")
    test = flowkit.load_dataset("digits", split="test")
    assert len(train) + len(test) == 1797


def test_leave_one_class_out_has_no_leakage(fake_data):
    split = leave_one_class_out(fake_data, 2, seed=3)
    assert not (split.train.labels == 2).any()
    assert int(split.is_anomaly.sum()) == int((fake_data.labels == 2).sum())
    assert (split.test.labels[split.is_anomaly] == 2).all()
    assert not (split.test.labels[~split.is_anomaly] == 2).any()
    # train and test are disjoint images of the pool (fake images are all distinct)
    train = {bytes(x.numpy()) for x in split.train.images}
    assert not any(bytes(x.numpy()) in train for x in split.test.images)
    normal = len(fake_data) - int((fake_data.labels == 2).sum())
    assert len(split.train) == normal - int((~split.is_anomaly).sum())
    assert abs(int((~split.is_anomaly).sum()) - 0.2 * normal) <= 1
    assert leave_one_class_out(fake_data, 2, seed=3).test.images.equal(split.test.images)
    assert not leave_one_class_out(fake_data, 2, seed=4).test.images.equal(split.test.images)


def _png(path: Path, mode: str = "L", size: int = 20) -> None:
    from PIL import Image

    Image.fromarray(
        np.random.default_rng(0)
        .integers(0, 255, (size, size, 3 if mode == "RGB" else 1))
        .astype(np.uint8)
        .squeeze(),
        mode=mode,
    ).save(path)


def test_folder_dataset_and_corrupt_files_named(tmp_path):
    (tmp_path / "normal").mkdir()
    (tmp_path / "anomalous").mkdir()
    for i in range(3):
        _png(tmp_path / "normal" / f"n{i}.png")
    _png(tmp_path / "anomalous" / "a0.png", "RGB")
    data = flowkit.load_dataset("folder", root=tmp_path, image_size=16)
    assert data.images.shape == (4, 3, 16, 16)  # one RGB image → all converted to RGB
    assert data.labels.tolist() == [0, 0, 0, 1] and data.classes == ["normal", "anomalous"]
    (tmp_path / "normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match=r"1 of 5 image file\(s\) could not be read: .*broken.png"):
        flowkit.load_dataset("folder", root=tmp_path)
    with pytest.warns(UserWarning, match="broken.png"):
        data = flowkit.load_dataset("folder", root=tmp_path, skip_unreadable=True)
    assert len(data) == 4


def test_load_images_converts_channels(tmp_path):
    _png(tmp_path / "a.png", "RGB", 40)
    images, kept = load_images(find_images([tmp_path]), image_size=32, channels=1)
    assert images.shape == (1, 1, 32, 32) and kept == [tmp_path / "a.png"]
    with pytest.raises(DataError, match="no such file"):
        find_images([tmp_path / "missing"])


def test_as_uint8_images_validates():
    assert as_uint8_images(torch.ones(2, 8, 8)).shape == (2, 1, 8, 8)
    assert as_uint8_images(np.full((1, 1, 2, 2), 1.0)).max() == 255
    bad = torch.zeros(3, 1, 4, 4)
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match=r"1 image\(s\) contain NaN.*\[1\]"):
        as_uint8_images(bad)
    with pytest.raises(DataError, match="shape"):
        as_uint8_images(torch.zeros(4, 4))
    with pytest.raises(DataError, match=r"must lie in \[0, 1\]"):
        as_uint8_images(torch.full((1, 1, 2, 2), -3.0))


def test_float_contract_is_declared_not_guessed_from_the_batch():
    """One pixel at 1.02 used to switch the whole batch to a [0, 255] reading."""
    x = torch.rand(5, 1, 4, 4)
    x[3, 0, 1, 1] = 1.02
    with pytest.raises(DataError, match=r"1 image\(s\) do not \(indices \[3\]\)"):
        as_uint8_images(x)
    ok = torch.rand(4, 1, 4, 4)
    whole = as_uint8_images(ok)
    for i in range(4):  # the same pixels alone or in a batch
        assert torch.equal(as_uint8_images(ok[i : i + 1]), whole[i : i + 1])
    # a float batch that happens to be all zeros but one small value is still [0, 1]
    assert as_uint8_images(torch.full((1, 1, 2, 2), 0.5)).max() == 128
    # a declared [0, 255] float range maps exactly onto uint8
    arr = torch.arange(256.0).reshape(1, 1, 16, 16)
    assert torch.equal(
        as_uint8_images(arr, value_range=(0, 255)).flatten(), torch.arange(256).to(torch.uint8)
    )
    # integers are [0, 255]; outside is refused with the index
    ints = np.zeros((3, 1, 2, 2), np.int64)
    ints[2, 0, 0, 0] = 300
    with pytest.raises(DataError, match=r"\[0, 255\].*indices \[2\]"):
        as_uint8_images(ints)
    assert as_uint8_images(ints[:2]).dtype == torch.uint8


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.array([["a", "b"]]), "numeric image array"),
        (np.zeros((0, 1, 4, 4), np.uint8), "empty"),
        (torch.zeros(2, 1, 4, 4, dtype=torch.complex64), "complex"),
        (np.zeros((2, 1, 1, 4, 4)), "shape"),
    ],
)
def test_as_uint8_images_refuses_non_images(bad, match):
    with pytest.raises(DataError, match=match):
        as_uint8_images(bad)


@pytest.mark.parametrize("name", ood.__all__)
def test_offline_ood_sets(name):
    one = flowkit.load_dataset(name, split="test")
    assert one.images.dtype == torch.uint8 and one.images.shape[1:] == (1, 32, 32)
    assert len(one) > 100
    rgb = flowkit.load_dataset(name, split="test", channels=3, image_size=16)
    assert rgb.images.shape[1:] == (3, 16, 16)


def test_ood_transforms_do_what_they_say():
    digits = flowkit.load_dataset("digits", split="test")
    inv = flowkit.load_dataset("digits_inverted", split="test")
    assert torch.equal(inv.images, 255 - digits.images)
    blurred = flowkit.load_dataset("digits_blurred", split="test", sigma=2.0)

    def roughness(x):
        return x.float().diff(dim=-1).abs().mean()

    assert roughness(blurred.images) < 0.8 * roughness(digits.images)
    dimmed = flowkit.load_dataset("digits_dimmed", split="test", factor=0.5)
    assert dimmed.images.max() <= 128
