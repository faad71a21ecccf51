"""Tiled prediction equals whole-image prediction (BIN statistics made global), also at odd sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iscl.nn import Generator, NoiseExtractor
from iscl.predict import predict_image


def psnr(a, b, data_range=2.0):
    return 10 * np.log10(data_range**2 / np.mean((a - b) ** 2))


@pytest.fixture(scope="module")
def nets_and_image():
    torch.manual_seed(0)
    F, H = Generator(width=4, n_res=1).eval(), NoiseExtractor(4, 5).eval()
    with torch.no_grad():  # non-trivial BIN parameters
        for m in [*F.modules(), *H.modules()]:
            if hasattr(m, "rho"):
                m.rho.uniform_(0, 1)
                m.gamma.uniform_(0.5, 1.5)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:150, 0:161] / 150
    # content that changes across the image, so per-tile statistics would differ from global ones
    img = np.sin(8 * xx) * np.cos(5 * yy) * 0.5 + 0.2 * rng.normal(size=xx.shape) + 0.3 * (xx > 0.5)
    return F, H, img.astype(np.float32)


def test_tiled_equals_whole_image(nets_and_image):
    F, H, img = nets_and_image  # 150x161: odd, not a multiple of 4
    outputs = ("denoised", "noise", "generator", "bypass")
    whole = predict_image(F, H, img, outputs=outputs)
    tiled = predict_image(F, H, img, outputs=outputs, tile=96, overlap=48)
    assert all(tiled[k].shape == img.shape for k in outputs)
    # H's receptive field (5 px) is inside the overlap: exact up to float rounding
    np.testing.assert_allclose(tiled["noise"], whole["noise"], atol=1e-5)
    assert psnr(whole["denoised"], tiled["denoised"]) > 60


def test_tiles_with_own_statistics_would_differ(nets_and_image):
    # the reason for the statistics passes: normalizing each tile by itself changes the output
    F, H, img = nets_and_image
    whole = predict_image(F, H, img[:96, :96], outputs=("noise",))
    alone = predict_image(F, H, img[:64, :64], outputs=("noise",))
    assert np.abs(whole["noise"][:40, :40] - alone["noise"][:40, :40]).max() > 1e-3


def test_no_seams_at_tile_borders(nets_and_image):
    F, H, img = nets_and_image
    tiled = predict_image(F, H, img, outputs=("denoised",), tile=96, overlap=48)["denoised"]
    whole = predict_image(F, H, img, outputs=("denoised",))["denoised"]
    diff = np.abs(tiled - whole)
    # the largest deviation is tiny everywhere, tile borders included
    assert diff.max() < 5e-3


def test_statistics_from_a_subset_of_tiles_is_an_estimate(nets_and_image):
    F, H, img = nets_and_image
    whole = predict_image(F, H, img, outputs=("denoised",))["denoised"]
    est = predict_image(F, H, img, outputs=("denoised",), tile=64, overlap=32, stats_tiles=4)["denoised"]
    assert 20 < psnr(whole, est) < 200
