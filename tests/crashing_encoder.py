"""An encoder whose training kills its own process (SIGKILL): a worker that dies, for the
executor tests. Imported by the test and, through the registry, by spawned workers."""

from __future__ import annotations

import os
import signal

from flowkit.encoders.dcgan import DCGANAutoencoder
from flowkit.registry import encoders


class CrashingEncoder(DCGANAutoencoder):
    def loss(self, x):
        os.kill(os.getpid(), signal.SIGKILL)


def crash_test(in_channels: int = 1, image_size: int = 32) -> CrashingEncoder:
    """Dies in its first training step."""
    return CrashingEncoder(in_channels, image_size, latent_dim=8, width=8)


def register() -> None:
    if "crash_test" not in encoders:
        encoders.register("crash_test")(crash_test)


register()
