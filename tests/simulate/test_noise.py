"""EM noise models: Poisson–Gaussian statistics, multiplicative film noise, additive row-correlated charge noise."""

import numpy as np
import pytest

from iscl.simulate.em import em_tissue
from iscl.simulate.noise import (
    charge_noise,
    charge_pattern,
    film_noise,
    film_transmission,
    gaussian_field,
    poisson_gaussian,
    power_law_field,
)


def _psnr(a, b):
    return 10 * np.log10(1.0 / np.mean((a.astype(float) - b) ** 2))


def test_fields_are_normalised_and_have_the_requested_spectrum():
    rng = np.random.default_rng(0)
    f = power_law_field((128, 128), rng, 2.5)
    assert abs(f.mean()) < 1e-9 and f.std() == pytest.approx(1.0)
    # Radially averaged power falls as |f|^-β: fit the log-log slope between 2 and 40 cycles/image.
    p = np.abs(np.fft.fft2(f)) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(128), np.fft.fftfreq(128), indexing="ij")
    r = np.hypot(fy, fx)
    sel = (r > 2 / 128) & (r < 40 / 128)
    slope = np.polyfit(np.log(r[sel]), np.log(p[sel]), 1)[0]
    assert slope == pytest.approx(-2.5, abs=0.3)
    g = gaussian_field((64, 64), rng, 3.0)
    assert g.std() == pytest.approx(1.0)
    assert np.corrcoef(g[:, :-1].ravel(), g[:, 1:].ravel())[0, 1] > 0.9  # smooth


def test_poisson_gaussian_variance_is_affine_in_the_signal():
    rng = np.random.default_rng(1)
    a, b = 0.01, 0.02
    for y in (0.2, 0.8):
        z = poisson_gaussian(np.full(200_000, y), rng, a, b)
        assert z.mean() == pytest.approx(y, abs=2e-3)
        assert z.var() == pytest.approx(a * y + b * b, rel=0.03)  # Foi et al.: Var z = a·y + b²


def test_film_noise_is_multiplicative():
    shape = (64, 64)
    t1 = em_tissue(shape, np.random.default_rng(0))
    t2 = em_tissue(shape, np.random.default_rng(1))
    # Zero tissue stays zero before shot noise.
    zero = film_noise(np.zeros(shape), np.random.default_rng(5), shot_noise=False)
    assert np.all(zero.noisy == 0)
    # Same film (same generator state), two different tissues: the ratio noisy/clean is the film
    # transmission, identical for both, i.e. independent of the tissue.
    n1 = film_noise(t1 * 0.8, np.random.default_rng(5), shot_noise=False)
    n2 = film_noise(t2 * 0.8, np.random.default_rng(5), shot_noise=False)
    np.testing.assert_array_equal(n1.component, n2.component)
    ok = (t1 > 0.05) & (t2 > 0.05) & (n1.noisy < 1) & (n2.noisy < 1)  # away from 0 and from clipping
    r1, r2 = n1.noisy[ok] / (t1[ok] * 0.8), n2.noisy[ok] / (t2[ok] * 0.8)
    np.testing.assert_allclose(r1, r2, rtol=1e-5)
    np.testing.assert_allclose(r1, n1.component[ok], rtol=1e-5)
    # The ratio is smooth compared with the tissue: neighbouring pixels are strongly correlated.
    trans = n1.component.astype(float)
    assert np.corrcoef(trans[:, :-1].ravel(), trans[:, 1:].ravel())[0, 1] > 0.8
    assert trans.mean() == pytest.approx(1.0, abs=1e-5)


def test_film_transmission_is_beer_lambert():
    t = np.array([[0.0, 1.0], [2.0, 3.0]])
    trans = film_transmission(t, 0.5)
    np.testing.assert_allclose(trans[0, 1] / trans[0, 0], np.exp(-0.5))
    np.testing.assert_allclose(film_transmission(t, 0.0), 1.0)


def test_charge_noise_is_additive():
    shape = (64, 64)
    t1 = 0.3 + 0.4 * em_tissue(shape, np.random.default_rng(0))
    t2 = 0.3 + 0.4 * em_tissue(shape, np.random.default_rng(1))
    n1 = charge_noise(t1, np.random.default_rng(9), shot_noise=False)
    n2 = charge_noise(t2, np.random.default_rng(9), shot_noise=False)
    ok = (n1.noisy > 0) & (n1.noisy < 1) & (n2.noisy > 0) & (n2.noisy < 1)
    d1, d2 = n1.noisy - t1, n2.noisy - t2
    np.testing.assert_allclose(d1[ok], d2[ok], atol=1e-6)  # same difference whatever the tissue
    np.testing.assert_allclose(d1[ok], n1.component[ok], atol=1e-6)


def test_charge_noise_is_row_correlated():
    rng = np.random.default_rng(3)
    ratios_var, ratios_ac = [], []
    for _ in range(4):
        c, _ = charge_pattern((128, 128), rng)
        c = c - c.mean()
        # Row means (one per scan line) vary much more than column means.
        ratios_var.append(c.mean(axis=1).var() / c.mean(axis=0).var())
        # Lag-1 autocorrelation along the scan (within rows) far above that across rows.
        along = np.corrcoef(c[:, :-1].ravel(), c[:, 1:].ravel())[0, 1]
        across = np.corrcoef(c[:-1, :].ravel(), c[1:, :].ravel())[0, 1]
        ratios_ac.append((along, across))
    assert np.median(ratios_var) > 10
    assert all(along > 0.9 for along, _ in ratios_ac)
    assert np.mean([along - across for along, across in ratios_ac]) > 0.2


@pytest.mark.parametrize("model", [film_noise, charge_noise])
def test_strength_zero_is_identity_and_strength_orders_psnr(model):
    clean = em_tissue(96, np.random.default_rng(4))
    np.testing.assert_allclose(model(clean, np.random.default_rng(0), strength=0.0).noisy, clean, atol=1e-6)
    psnrs = [_psnr(model(clean, np.random.default_rng(0), strength=s).noisy, clean) for s in (0.5, 1.0, 2.0)]
    assert psnrs[0] > psnrs[1] > psnrs[2]
    with pytest.raises(ValueError, match="strength"):
        model(clean, np.random.default_rng(0), strength=-1.0)


@pytest.mark.parametrize("model", [film_noise, charge_noise])
def test_default_strength_is_hard_but_fair(model):
    values = []
    for s in range(4):
        clean = em_tissue(128, np.random.default_rng(s))
        values.append(_psnr(model(clean, np.random.default_rng(100 + s)).noisy, clean))
    assert 14.0 < np.mean(values) < 23.0
