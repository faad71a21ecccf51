"""PSNR/SSIM wrappers: hand-computed values and input checks."""

import math

import numpy as np
import pytest

from iscl.metrics import mean_metrics, psnr, ssim


def test_psnr_constant_error_matches_formula():
    ref = np.zeros((16, 16))
    est = np.full((16, 16), 0.1)  # MSE = 0.01
    assert psnr(ref, est, data_range=1.0) == pytest.approx(20.0)
    assert psnr(ref, est, data_range=2.0) == pytest.approx(10 * math.log10(4 / 0.01))


def test_psnr_random_pair_matches_hand_computation():
    rng = np.random.default_rng(0)
    ref = rng.random((32, 24))
    est = ref + rng.normal(0, 0.05, ref.shape)
    mse = np.mean((ref - est) ** 2)
    assert psnr(ref, est, 1.0) == pytest.approx(10 * np.log10(1.0 / mse), rel=1e-12)
    # HU-like range: the same error relative to a 400 HU window.
    assert psnr(ref * 400, est * 400, 400.0) == pytest.approx(10 * np.log10(1.0 / mse), rel=1e-9)


def test_identical_images():
    x = np.random.default_rng(1).random((20, 20))
    assert psnr(x, x, 1.0) == math.inf
    assert ssim(x, x, 1.0) == pytest.approx(1.0)


def test_ssim_drops_with_noise_and_matches_skimage():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(2)
    ref = rng.random((40, 40))
    mild, strong = ref + rng.normal(0, 0.05, ref.shape), ref + rng.normal(0, 0.3, ref.shape)
    assert ssim(ref, strong, 1.0) < ssim(ref, mild, 1.0) < 1.0
    assert ssim(ref, mild, 1.0) == pytest.approx(structural_similarity(ref, mild, data_range=1.0))


@pytest.mark.parametrize("fn", [psnr, ssim])
def test_input_checks(fn):
    a = np.zeros((10, 10))
    with pytest.raises(ValueError, match="shape mismatch"):
        fn(a, np.zeros((10, 11)), 1.0)
    with pytest.raises(ValueError, match="2-D"):
        fn(np.zeros((2, 10, 10)), np.zeros((2, 10, 10)), 1.0)
    for bad in (None, 0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="data_range"):
            fn(a, a + 0.1, bad)
    with pytest.raises(ValueError, match="NaN"):
        fn(a, np.full((10, 10), np.nan), 1.0)
    with pytest.raises(TypeError):
        fn(a, a)  # data_range has no default on purpose


def test_ssim_needs_7_pixels():
    with pytest.raises(ValueError, match="at least 7"):
        ssim(np.zeros((5, 20)), np.zeros((5, 20)), 1.0)


def test_mean_metrics():
    ref = np.zeros((3, 16, 16))
    est = ref + np.array([0.1, 0.01, 0.001])[:, None, None]  # PSNR 20, 40, 60 dB
    out = mean_metrics(ref, est, data_range=1.0)
    assert out["psnr_per_image"] == pytest.approx([20.0, 40.0, 60.0])
    assert out["psnr"] == pytest.approx(40.0)
    assert len(out["ssim_per_image"]) == 3
    assert out["ssim"] == pytest.approx(np.mean(out["ssim_per_image"]))
    assert mean_metrics(list(ref), list(est), 1.0)["psnr"] == pytest.approx(40.0)
    with pytest.raises(ValueError, match="references"):
        mean_metrics(ref, est[:2], 1.0)
    with pytest.raises(ValueError, match="at least one"):
        mean_metrics([], [], 1.0)
