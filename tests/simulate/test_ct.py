"""Low-dose CT simulation: anatomy in HU, projection-space physics, windowing."""

import numpy as np
import pytest

from iscl.simulate.ct import (
    CTPhantomConfig,
    CTScanConfig,
    forward_project,
    hu_to_mu,
    mu_to_hu,
    phantom_hu,
    projection_angles,
    real_slices,
    simulate_low_dose,
    water_phantom,
    window,
)


def _inside_circle(n):
    c = np.arange(n) - (n - 1) / 2.0
    return c[:, None] ** 2 + c[None, :] ** 2 <= (n / 2.0 - 1) ** 2


@pytest.mark.parametrize("thorax", [True, False])
def test_phantom_has_realistic_hu(thorax):
    cfg = CTPhantomConfig(thorax_probability=1.0 if thorax else 0.0)
    hu, px = phantom_hu(96, np.random.default_rng(0), cfg)
    assert hu.shape == (96, 96) and hu.dtype == np.float32
    assert 300 / 96 < px < 500 / 96
    assert np.all(hu[~_inside_circle(96)] == -1000.0)
    assert hu.min() >= -1000.0 and hu.max() < 1500.0

    def frac(lo, hi):
        return np.mean((hu > lo) & (hu < hi))

    assert frac(-150, -60) > 0.02  # fat
    assert frac(-20, 250) > 0.04  # muscle, organs, blood (contrast-enhanced up to ~250 HU)
    assert frac(300, 1500) > 0.002  # bone
    assert (frac(-950, -700) > 0.05) == thorax  # lungs only in the thorax


def test_phantom_is_seeded():
    a, _ = phantom_hu(64, np.random.default_rng(1))
    b, _ = phantom_hu(64, np.random.default_rng(1))
    c, _ = phantom_hu(64, np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_hu_mu_roundtrip_and_window():
    hu = np.array([-1000.0, 0.0, 40.0, 1000.0])
    mu = hu_to_mu(hu, 0.02)
    np.testing.assert_allclose(mu, [0.0, 0.02, 0.0208, 0.04])
    np.testing.assert_allclose(mu_to_hu(mu, 0.02), hu, atol=1e-9)
    np.testing.assert_allclose(window(np.array([-500.0, -160.0, 40.0, 240.0, 900.0])), [0, 0, 0.5, 1, 1])
    with pytest.raises(ValueError):
        window(hu, (10.0, 10.0))


def test_forward_projection_is_a_line_integral():
    hu, px = water_phantom(64, radius_fraction=0.5, fov_mm=256.0)  # water disc of 128 mm diameter
    sino = forward_project(hu_to_mu(hu, 0.02), px, projection_angles(64, 8))
    assert sino.shape == (64, 8)
    # The central ray crosses the full diameter: p = μ·d = 0.02/mm · 128 mm, up to discretisation.
    assert sino[31:33].max() == pytest.approx(0.02 * 128, rel=0.05)


def _water_noise(i0, size=64, repeats=4):
    hu, px = water_phantom(size)
    scan = CTScanConfig(i0=i0, n_views=64)
    clean, _ = simulate_low_dose(hu, px, np.random.default_rng(0), scan, need_noisy=False)
    roi = (slice(size // 2 - 10, size // 2 + 10),) * 2
    stds = []
    for rep in range(repeats):
        _, noisy = simulate_low_dose(hu, px, np.random.default_rng(rep), scan, need_clean=False)
        stds.append(np.std((noisy - clean)[roi]))
    return clean[roi], float(np.mean(stds))


def test_noise_free_reconstruction_of_water_is_zero_hu():
    hu, px = water_phantom(64)
    clean, _ = simulate_low_dose(hu, px, np.random.default_rng(0), CTScanConfig(n_views=64), need_noisy=False)
    roi = clean[22:42, 22:42]
    assert abs(roi.mean()) < 10.0
    assert clean[0, 0] == -1000.0  # outside the scanned circle
    c = np.arange(64) - 31.5
    r = np.hypot(c[:, None], c[None, :])
    air = (r > 0.85 * 32) & (r < 30)  # air ring between the disc (radius 25.6 px) and the circle edge
    assert abs(clean[air].mean() + 1000.0) < 10.0


def test_noise_follows_the_square_root_dose_law():
    _, low = _water_noise(2.5e4)
    _, normal = _water_noise(1e5)
    assert low / normal == pytest.approx(2.0, rel=0.2)  # 4× fewer photons → 2× the noise


def test_strength_scales_the_dose():
    hu, px = phantom_hu(64, np.random.default_rng(3))
    clean, noisy0 = simulate_low_dose(hu, px, np.random.default_rng(0), strength=0.0)
    np.testing.assert_array_equal(clean, noisy0)
    _, n1 = simulate_low_dose(hu, px, np.random.default_rng(0), strength=1.0, need_clean=False)
    _, n2 = simulate_low_dose(hu, px, np.random.default_rng(0), strength=2.0, need_clean=False)
    assert np.std(n2 - clean) > 1.5 * np.std(n1 - clean) > 0
    with pytest.raises(ValueError, match="square"):
        simulate_low_dose(np.zeros((8, 10)), 1.0, np.random.default_rng(0))


def test_reference_dose_gives_a_noisy_clean_domain():
    hu, px = water_phantom(48)
    rng = np.random.default_rng(0)
    exact, _ = simulate_low_dose(hu, px, rng, CTScanConfig(n_views=48), need_noisy=False)
    normal, _ = simulate_low_dose(hu, px, rng, CTScanConfig(n_views=48, reference_i0=1e5), need_noisy=False)
    assert 0 < np.std(normal - exact) < 50


def test_real_slices_from_installed_packages():
    pytest.importorskip("pydicom")
    slices = real_slices(64)
    if not slices:
        pytest.skip("no readable CT test file in this pydicom install")
    inside = _inside_circle(64)
    for name, hu, px in slices:
        assert name.startswith("pydicom:")
        assert hu.shape == (64, 64) and px > 0
        assert np.all(hu[~inside] == -1000.0)
        assert -1000.0 <= hu.min() and hu.max() <= 3071.0
        assert np.mean(hu[inside] > -500) > 0.2  # there is tissue in it
