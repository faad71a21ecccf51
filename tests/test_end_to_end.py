"""A short ISCL run on tiny synthetic structured noise must beat the noisy input in PSNR."""

from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio

import iscl
from iscl.config import Config, NetworkConfig, TrainConfig
from synthetic import shapes_image, structured_noise


def test_short_training_run_improves_psnr(tmp_path):
    rng = np.random.default_rng(5)
    # unpaired pools: clean scenes and *other* scenes under multiplicative field + Gaussian noise
    clean = [shapes_image(rng, 96) for _ in range(8)]
    noisy = [structured_noise(shapes_image(rng, 96), rng, sigma=0.15) for _ in range(8)]
    test_clean = [shapes_image(rng, 96) for _ in range(4)]
    test_noisy = [structured_noise(c, rng, sigma=0.15) for c in test_clean]
    config = Config(
        preset="e2e-test",
        network=NetworkConfig(generator_width=8, generator_res_blocks=2, extractor_width=16, extractor_layers=6,
                              discriminator_width=8),
        train=TrainConfig(steps=100, batch_size=4, lr=2e-3, seed=0),
        normalization={"mode": "fixed", "low": -0.25, "high": 1.25},
    )
    model = iscl.train(clean, noisy, config, run_dir=tmp_path / "run", progress=False)

    def mean_psnr(outputs):
        return float(np.mean([peak_signal_noise_ratio(c, o, data_range=1.0) for c, o in zip(test_clean, outputs)]))

    noisy_psnr = mean_psnr(test_noisy)
    denoised_psnr = mean_psnr([model.denoise(n) for n in test_noisy])
    assert denoised_psnr > noisy_psnr + 1.0, (noisy_psnr, denoised_psnr)
    # the log holds every loss term for every step
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert len(lines) == 100
