"""A tiny trained run for the export tests, with a non-trivial intensity window, and a sample image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from iscl.config import Config, NetworkConfig, TrainConfig
from synthetic import shapes_image, structured_noise

LOW, HIGH = -100.0, 1900.0  # the run's fixed window: gain 1e-3, offset -0.9 (not the identity map)


def to_units(image: np.ndarray) -> np.ndarray:
    """[0, 1]-ish synthetic image → float32 in the run's units."""
    return (LOW + (HIGH - LOW) * image).astype(np.float32)


@pytest.fixture(scope="session")
def export_run(tmp_path_factory) -> Path:
    """A 2-step run with a residual generator (its prediction path adds x in place)."""
    import iscl

    rng = np.random.default_rng(11)
    clean = [to_units(shapes_image(rng)) for _ in range(3)]
    noisy = [to_units(structured_noise(shapes_image(rng), rng)) for _ in range(3)]
    config = Config(network=NetworkConfig(generator_width=4, generator_res_blocks=1, extractor_width=4,
                                          extractor_layers=3, discriminator_width=4, residual_generators=True),
                    train=TrainConfig(steps=2, batch_size=2, seed=5),
                    normalization={"mode": "fixed", "low": LOW, "high": HIGH})
    path = tmp_path_factory.mktemp("export-run") / "run"
    iscl.train(clean, noisy, config, run_dir=path, progress=False)
    return path


@pytest.fixture(scope="session")
def sample() -> np.ndarray:
    """A noisy 48x40 image (sides multiples of 4) in the run's units."""
    rng = np.random.default_rng(12)
    return to_units(structured_noise(shapes_image(rng), rng))[:48, :40].copy()


@pytest.fixture(scope="session")
def noisy():
    """``noisy(height, width)``: a noisy image (at most 64x64) in the run's units, other than the sample."""

    def make(height: int, width: int, seed: int = 13) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return to_units(structured_noise(shapes_image(rng), rng))[:height, :width].copy()

    return make


@pytest.fixture(scope="session")
def exported(export_run, sample, tmp_path_factory) -> dict[str, Path]:
    """The run exported once to each format (checked against PyTorch by the export itself) with the sample."""
    import iscl

    out = tmp_path_factory.mktemp("exported")
    return {fmt: iscl.export(export_run, fmt, out / f"model.{suffix}", sample=sample)
            for fmt, suffix in (("torchscript", "pt"), ("onnx", "onnx"), ("bmz", "zip"))}
