"""Procedural EM tissue: determinism, range, and the presence of its structures."""

import numpy as np
import pytest

from iscl.simulate.em import EMTissueConfig, em_tissue


def test_shape_dtype_range():
    img = em_tissue(64, np.random.default_rng(0))
    assert img.shape == (64, 64) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    assert em_tissue((48, 80), np.random.default_rng(0)).shape == (48, 80)


def test_same_seed_same_image_different_seed_different_image():
    a = em_tissue(64, np.random.default_rng(7))
    b = em_tissue(64, np.random.default_rng(7))
    c = em_tissue(64, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 0.02


def test_bright_cytoplasm_with_dark_membranes():
    img = em_tissue(128, np.random.default_rng(3))
    # Mostly mid/bright cytoplasm, with a minority of dark membrane/organelle pixels.
    assert 0.35 < np.median(img) < 0.85
    dark = np.mean(img < np.median(img) - 0.2)
    assert 0.02 < dark < 0.4
    # Membranes make the image far from a smooth field: large local gradients exist.
    grad = np.hypot(*np.gradient(img.astype(float)))
    assert np.percentile(grad, 99) > 0.08


def test_parameters_are_randomised_per_image():
    # Mean grey levels and membrane fractions vary from image to image (nothing to memorise).
    imgs = [em_tissue(64, np.random.default_rng(s)) for s in range(6)]
    assert np.std([i.mean() for i in imgs]) > 0.01


def test_myelinated_axon_can_be_forced():
    cfg = EMTissueConfig(axon_density=(40.0, 40.0), axon_radius_px=(12.0, 12.0))
    img = em_tissue(96, np.random.default_rng(0), cfg)
    assert np.mean(img < 0.25) > 0.05  # dark myelin rings


def test_too_small_raises():
    with pytest.raises(ValueError, match="at least 8x8"):
        em_tissue(4, np.random.default_rng(0))
