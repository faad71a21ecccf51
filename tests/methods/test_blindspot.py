"""Noise2Void (the ``blindspot`` row): the n2v network, masking and loss, and that it denoises white noise."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from iscl.methods import registry
from iscl.methods.blindspot import N2V_MASK_FRACTION, BlindSpot, blind_spot_mask, masked_mse
from iscl.metrics import psnr
from iscl.nn.unet import UNet
from synthetic import shapes_image


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny networks gain nothing from a second thread, and a spinning pool crawls on a busy machine
    torch.set_num_threads(1)
    yield


def _smooth(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth product of sinusoids on [0.3, 0.7]: all its detail is far below the noise's frequencies."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    im = 0.5 + 0.2 * np.sin(2 * np.pi * (xx * rng.uniform(0.5, 1.5) + rng.uniform())) * np.cos(
        2 * np.pi * yy * rng.uniform(0.5, 1.5))
    return im.astype(np.float32)


def test_unet_has_the_n2v_layers_and_keeps_shape():
    net = UNet()  # n2v defaults: depth 2, 32 first maps, 3x3 kernels, linear 1x1 head
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64, 128, 64, 64, 32, 32, 32, 1]
    assert [c.in_channels for c in convs] == [1, 32, 32, 64, 64, 128, 128, 64, 64, 32, 32]
    assert all(c.kernel_size == (3, 3) for c in convs[:-1]) and convs[-1].kernel_size == (1, 1)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 10
    tiny = UNet(width=4).eval()
    assert tiny(torch.zeros(2, 1, 32, 36)).shape == (2, 1, 32, 36)
    with pytest.raises(ValueError, match="multiples of 4"):
        tiny(torch.zeros(1, 1, 33, 32))


def test_unet_initialisation_follows_the_generator():
    a, b = (UNet(width=4, generator=torch.Generator().manual_seed(s)) for s in (1, 1))
    c = UNet(width=4, generator=torch.Generator().manual_seed(2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.down[0][0][0].weight, c.down[0][0][0].weight)


def test_mask_fraction_and_stratification():
    rng = np.random.default_rng(0)
    batch = np.zeros((400, 1, 64, 64), np.float32)
    _, mask = blind_spot_mask(batch, rng)  # n2v: 0.198 % → one pixel per 22x22 box, cut boxes drop outsiders
    assert mask.mean() == pytest.approx(N2V_MASK_FRACTION, rel=0.1)
    per_patch = mask.sum(axis=(1, 2, 3))
    assert per_patch.max() <= 9 and per_patch.mean() == pytest.approx((2 + 20 / 22) ** 2, rel=0.05)
    # a box side that divides the patch masks exactly one pixel per box
    _, mask = blind_spot_mask(np.zeros((3, 1, 64, 64), np.float32), rng, fraction=1 / 64)
    boxes = mask[:, 0].reshape(3, 8, 8, 8, 8).sum(axis=(2, 4))
    assert np.array_equal(boxes, np.ones_like(boxes))


@pytest.mark.parametrize("radius", [5, 1])
def test_mask_replaces_pixels_by_other_pixels_of_the_window(radius):
    rng = np.random.default_rng(1)
    b, p = 20, 64
    batch = np.arange(b * p * p, dtype=np.float32).reshape(b, 1, p, p)  # every value unique
    masked, mask = blind_spot_mask(batch, rng, fraction=1 / 16, radius=radius)
    assert np.array_equal(masked[mask == 0], batch[mask == 0])
    offsets = []
    for bi, _, y, x in zip(*np.nonzero(mask)):
        src = np.argwhere(batch[bi, 0] == masked[bi, 0, y, x])
        assert len(src) == 1  # comes from the same patch
        offsets.append((int(src[0][0]) - int(y), int(src[0][1]) - int(x)))
    offsets = np.array(offsets)
    assert np.abs(offsets).max() == radius  # the whole window is used, nothing beyond it
    assert not np.any((offsets == 0).all(axis=1))  # never the pixel itself
    if radius == 1:  # uniform over the 8 neighbours (masked pixels near the border are a small minority)
        counts = np.unique(offsets, axis=0, return_counts=True)[1]
        assert len(counts) == 8 and counts.min() > 0.7 * counts.mean()


def test_mask_stays_inside_the_patch_at_the_border():
    rng = np.random.default_rng(2)
    batch = np.arange(2 * 6 * 6, dtype=np.float32).reshape(2, 1, 6, 6)
    for _ in range(50):
        masked, mask = blind_spot_mask(batch, rng, fraction=0.25, radius=5)  # window wider than the patch
        src = masked[mask == 1]
        own = batch[mask == 1]
        assert np.all(src != own)
        for bi in range(2):  # replacements come from the same patch
            assert np.isin(masked[bi][mask[bi] == 1], batch[bi]).all()


def test_loss_counts_masked_pixels_only():
    g = torch.Generator().manual_seed(0)
    out, target = torch.randn(2, 1, 16, 16, generator=g), torch.randn(2, 1, 16, 16, generator=g)
    mask = torch.zeros_like(out)
    mask[0, 0, 3, 4] = mask[1, 0, 10, 2] = 1.0
    loss = masked_mse(out, target, mask)
    expected = ((out - target)[mask == 1] ** 2).mean()
    assert torch.allclose(loss, expected)
    changed = out + 5.0 * (1 - mask)  # other outputs at unmasked pixels only
    assert torch.equal(masked_mse(changed, target, mask), loss)
    assert not torch.equal(masked_mse(out + mask, target, mask), loss)


def test_denoises_pixel_independent_noise():
    # N2V's premise: with zero-mean noise independent from pixel to pixel, predicting a pixel from its
    # neighbours recovers the signal. A short training must clearly beat the noisy input.
    rng = np.random.default_rng(0)
    clean = [_smooth(rng, 96) for _ in range(5)]
    noisy = [(c + rng.normal(0.0, 0.2, c.shape)).astype(np.float32) for c in clean]
    m = BlindSpot(network={"unet_width": 8})
    m.fit(noisy=noisy[:4], steps=150, batch_size=4, seed=0)
    before = psnr(clean[4], np.clip(noisy[4], 0, 1), 1.0)
    after = psnr(clean[4], np.clip(m.denoise(noisy[4]), 0, 1), 1.0)
    assert after > before + 3.5, (before, after)  # a copy of the input (no blind spot) gets ~2.5


def test_fit_is_deterministic_and_records_its_settings():
    rng = np.random.default_rng(3)
    noisy = [(shapes_image(rng) + rng.normal(0, 0.1, (64, 64))).astype(np.float32) for _ in range(2)]
    test = noisy[0][:37, :50]  # odd sides: padded to the U-Net's multiple and cropped back
    runs = []
    for seed in (4, 4, 5):
        m = registry.get_method("blindspot", network={"generator_width": 4})
        m.fit(clean=None, noisy=noisy, pairs=None, steps=3, batch_size=2, seed=seed)
        out = m.denoise(test)
        assert out.shape == test.shape and out.dtype == np.float32
        runs.append((out, [h["loss"] for h in m.history]))
    assert np.array_equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    assert not np.array_equal(runs[0][0], runs[2][0])
    assert [set(h) >= {"step", "loss", "lr"} for h in m.history] == [True] * 3
    d = json.loads(json.dumps(m.describe()))
    assert d["network"]["first_width"] == 4 and d["masking"]["window"] == "11x11"
    assert d["normalisation"]["std"] == pytest.approx(float(np.concatenate([a.ravel() for a in noisy]).std()))
    assert d["optimiser"]["lr"] == 4e-4 and d["data"]["steps"] == 3


def test_rejects_unknown_network_overrides():
    with pytest.raises(ValueError, match="unet_width"):
        BlindSpot(network={"unet_widht": 8})
    assert BlindSpot(network={"unet_width": 8, "generator_width": 4}).unet_width == 8
