"""Tiny synthetic images for tests: smooth shapes and a toy structured noise."""

from __future__ import annotations

import numpy as np


def shapes_image(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """Smooth 'cells': discs of random grey levels on a background, float32 on [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size]
    im = np.full((size, size), rng.uniform(0.2, 0.35))
    for _ in range(rng.integers(4, 8)):
        cy, cx = rng.uniform(0, size, 2)
        rad = rng.uniform(size / 10, size / 4)
        im[(yy - cy) ** 2 + (xx - cx) ** 2 < rad**2] = rng.uniform(0.45, 0.9)
    return im.astype(np.float32)


def structured_noise(image: np.ndarray, rng: np.random.Generator, sigma: float = 0.08) -> np.ndarray:
    """Multiplicative low-frequency field plus Gaussian noise (a toy of EM film noise)."""
    size = image.shape[0]
    yy, xx = np.mgrid[0:size, 0:size] / size
    field = 1.0 + 0.25 * np.sin(2 * np.pi * (xx * rng.uniform(0.5, 1.5) + rng.uniform())) * np.cos(
        2 * np.pi * yy * rng.uniform(0.5, 1.5))
    return (image * field + rng.normal(0.0, sigma, image.shape)).astype(np.float32)


def perturbed_nets_and_image(height: int, width: int):
    """A tiny F and H with non-trivial BIN parameters (seeded) and a (height, width) float32 image whose
    content changes across it (so per-tile statistics would differ from whole-image ones)."""
    import torch

    from iscl.nn import Generator, NoiseExtractor

    torch.manual_seed(0)
    F, H = Generator(width=4, n_res=1).eval(), NoiseExtractor(4, 5).eval()
    with torch.no_grad():
        for m in [*F.modules(), *H.modules()]:
            if hasattr(m, "rho"):
                m.rho.uniform_(0, 1)
                m.gamma.uniform_(0.5, 1.5)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width] / height
    img = np.sin(8 * xx) * np.cos(5 * yy) * 0.5 + 0.2 * rng.normal(size=xx.shape) + 0.3 * (xx > 0.5)
    return F, H, img.astype(np.float32)
