"""Intensity normalization: fitting rules and an exact round trip."""

from __future__ import annotations

import numpy as np
import pytest

from iscl.data.normalize import NormalizationConfig, Normalizer, fit_normalizer


def test_uint8_auto_is_the_papers_fixed_range_and_round_trips_exactly():
    im = np.arange(256, dtype=np.uint8).reshape(16, 16)
    n = fit_normalizer([im])
    assert (n.low, n.high) == (0.0, 255.0)
    x = n.forward(im)
    assert x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_allclose(x, im / 255 * 2 - 1, atol=1e-6)  # demo_EM.py's x/255*2-1
    assert np.array_equal(n.inverse(x, np.uint8), im)


def test_uint16_percentile_round_trip_and_clipping():
    rng = np.random.default_rng(0)
    im = rng.integers(1000, 3000, (64, 64)).astype(np.uint16)
    im[0, 0] = 65535  # a hot pixel must not set the window
    n = fit_normalizer([im])
    assert n.high < 3100
    assert np.array_equal(n.inverse(n.forward(im), np.uint16)[1:], im[1:])
    assert n.inverse(np.array([-100.0, 100.0]), np.uint16).tolist() == [0, 65535]  # clipped to the dtype


def test_ct_window_and_fixed():
    n = fit_normalizer([np.zeros((4, 4), np.float32)], NormalizationConfig(mode="ct-window", center=40, width=400))
    assert (n.low, n.high) == (-160.0, 240.0)
    n = fit_normalizer([np.zeros((4, 4))], NormalizationConfig(mode="fixed", low=-1, high=3))
    assert n.forward(np.array([1.0])).tolist() == [0.0]


def test_constant_images_get_a_usable_window():
    n = fit_normalizer([np.full((8, 8), 7.0, np.float32)])
    assert n.low < 7.0 < n.high


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="low < high"):
        NormalizationConfig(mode="fixed", low=3, high=1)
    with pytest.raises(ValueError, match="finite low < high"):
        Normalizer(low=1, high=1)


@pytest.mark.parametrize("mode", ["fixed", "ct-window", "percentile"])
def test_headroom_maps_the_window_inside_the_tanh_range_and_round_trips(mode):
    rng = np.random.default_rng(1)
    im = rng.uniform(0, 1, (32, 32)).astype(np.float32)
    base = NormalizationConfig(mode=mode, low=0.0, high=1.0, center=0.5, width=1.0)
    plain = fit_normalizer([im], base)
    wide = fit_normalizer([im], base.model_copy(update={"headroom": 0.05}))
    width = plain.high - plain.low
    assert wide.low == pytest.approx(plain.low - 0.05 * width) and wide.high == pytest.approx(plain.high + 0.05 * width)
    # the plain window's ends land at +-1/1.1, inside (-1, 1)
    np.testing.assert_allclose(wide.forward(np.array([plain.low, plain.high])), [-1 / 1.1, 1 / 1.1], atol=1e-6)
    np.testing.assert_allclose(wide.inverse(wide.forward(im)), im, atol=1e-6)
    assert "widened by 0.05" in wide.source
    assert fit_normalizer([im], base.model_copy(update={"headroom": 0.0})) == plain  # 0: the paper's mapping
