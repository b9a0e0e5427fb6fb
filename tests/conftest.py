from __future__ import annotations

import numpy as np
import pytest
import torch

from flowkit.data import ImageSet, leave_one_class_out
from flowkit.plugins import reset_plugins

torch.set_num_threads(2)

# Tiny settings that train in about a second on 2 CPU cores: the paper's pair
# (Detector.paper()), shrunk. The recommended defaults have tests of their own.
TINY = dict(
    encoder="dcgan_ae:width=8,latent_dim=8",
    flow="realnvp:hidden=16,layers=2,blocks=1",
    scorer="nll",
    preprocess="standardize",
    epochs_encoder=2,
    epochs_flow=5,
    patience=5,
    lr_encoder=2e-4,
    flow_augment=0,
    precision="fp32",
    device="cpu",
    seed=0,
)


def write_colour_classes(root, per_class: int) -> None:
    """A one-folder-per-class tree of RGB PNGs, laid out as the CIFAR-10 dev sample is: a
    dark class ``cars`` and a light class ``planes``, noisy, 32×32."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, base in (("cars", 60), ("planes", 190)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            px = np.clip(base + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(root / name / f"{i}.png")


@pytest.fixture
def fresh_plugins():
    """Registries rebuilt from scratch before and after the test."""
    reset_plugins()
    yield
    reset_plugins()


@pytest.fixture(scope="session")
def fake_data() -> ImageSet:
    from flowkit import load_dataset

    return load_dataset("fake", per_class=40)


@pytest.fixture(scope="session")
def fake_split(fake_data):
    return leave_one_class_out(fake_data, 0, seed=0)


@pytest.fixture(scope="session")
def tiny_detector(fake_split):
    from flowkit import Detector

    return Detector(**TINY).fit(fake_split.train)
