"""Shared fixtures: tiny seeded images and a tiny configuration, so the whole suite stays fast."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iscl.config import Config, NetworkConfig, TrainConfig
from synthetic import shapes_image, structured_noise


def pytest_addoption(parser):
    parser.addoption("--run-manual", action="store_true", help="also run tests marked manual (minutes each)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-manual"):
        return
    skip = pytest.mark.skip(reason="manual: minutes long (torch.compile); run with pytest --run-manual")
    for item in items:
        if "manual" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # same thread count in every test: CPU kernels are then bit-for-bit repeatable
    torch.set_num_threads(2)
    yield


@pytest.fixture
def tiny_pair():
    """Unpaired pools: 4 clean 64×64 images and 4 noisy images of *other* scenes."""
    rng = np.random.default_rng(1234)
    clean = [shapes_image(rng) for _ in range(4)]
    noisy = [structured_noise(shapes_image(rng), rng) for _ in range(4)]
    return clean, noisy


@pytest.fixture
def tiny_config() -> Config:
    """Smallest useful ISCL: narrow networks, batch 2, 64×64 patches, 6 steps."""
    return Config(
        preset="test",
        network=NetworkConfig(generator_width=4, generator_res_blocks=1, extractor_width=4, extractor_layers=3,
                              discriminator_width=4),
        train=TrainConfig(steps=6, batch_size=2, patch_size=64, seed=7),
    )


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A tiny trained model saved as a run folder (2 steps; data range fixed to [0, 1])."""
    import iscl

    rng = np.random.default_rng(3)
    clean = [shapes_image(rng) for _ in range(3)]
    noisy = [structured_noise(shapes_image(rng), rng) for _ in range(3)]
    config = Config(network=NetworkConfig(generator_width=4, generator_res_blocks=1, extractor_width=4,
                                          extractor_layers=3, discriminator_width=4),
                    train=TrainConfig(steps=2, batch_size=2), normalization={"mode": "fixed", "low": 0, "high": 1})
    path = tmp_path_factory.mktemp("tiny-run") / "run"
    iscl.train(clean, noisy, config, run_dir=path, progress=False)
    return path
