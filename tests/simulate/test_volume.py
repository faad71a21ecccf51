"""The streaked EM volume of the --axis study: isotropic clean tissue, noise that changes from slice to slice."""

from __future__ import annotations

import numpy as np
import pytest

from iscl.simulate.volume import SliceNoiseConfig, em_volume, slice_streak_noise


def test_clean_volume_is_seeded_bounded_and_isotropic():
    a = em_volume((24, 24, 24), np.random.default_rng(1))
    b = em_volume((24, 24, 24), np.random.default_rng(1))
    assert a.dtype == np.float32 and a.shape == (24, 24, 24)
    np.testing.assert_array_equal(a, b)
    assert 0.0 <= a.min() and a.max() <= 1.0 and a.std() > 0.05
    # the same structure statistics along every axis: mean absolute step between neighbours
    big = em_volume((48, 48, 48), np.random.default_rng(1))  # enough cells for the statistics
    steps = [float(np.abs(np.diff(big, axis=d)).mean()) for d in range(3)]
    assert max(steps) / min(steps) < 1.15, steps


def test_noise_varies_from_slice_to_slice_not_within_a_slice():
    rng = np.random.default_rng(2)
    clean = em_volume((32, 32, 32), rng)
    cfg = SliceNoiseConfig(gain_std=0.0, shading_std=0.0, pixel_std=0.0, offset_std=0.1)
    noisy = slice_streak_noise(clean, rng, cfg)
    offsets = (noisy - clean).reshape(32, -1)
    np.testing.assert_allclose(offsets, offsets[:, :1].repeat(offsets.shape[1], axis=1), atol=1e-6)  # one per slice
    assert offsets[:, 0].std() > 0.05  # and they differ between slices: streaks in the (Z, W) and (Z, H) planes
    pix = slice_streak_noise(clean, rng, SliceNoiseConfig(0.0, 0.0, 0.0, 16.0, 0.06)) - clean
    assert abs(pix.std() - 0.06) < 0.005


def test_noise_refuses_a_2d_image():
    with pytest.raises(ValueError, match=r"expected a \(Z, H, W\) volume"):
        slice_streak_noise(np.zeros((8, 8)), np.random.default_rng(0))
