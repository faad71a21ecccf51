"""Each ISCL loss on hand-made tensors, with the expected values worked out by hand."""

from __future__ import annotations

import pytest
import torch

from iscl import losses


def t(*values):
    return torch.tensor(values, dtype=torch.float64).reshape(1, 1, 1, -1)


def test_hinge_discriminator():
    # real logits 2, 0.5, -1 → relu(1 - r) = 0, 0.5, 2 → mean 2.5/3; fake logits -1, 0.5 → relu = 0, 0.5 → mean 0.25
    assert losses.hinge_discriminator(t(2.0, 0.5, -1.0), t(-1.0, 0.5)).item() == pytest.approx(2.5 / 3 + 0.25)


def test_hinge_perfect_discriminator_is_zero():
    assert losses.hinge_discriminator(t(1.0, 3.0), t(-1.0, -2.0)).item() == 0.0


def test_boosting():
    # relu(0.4, -2) mean 0.2; relu(1, 3) mean 2
    assert losses.boosting(t(0.4, -2.0), t(1.0, 3.0)).item() == pytest.approx(2.2)


def test_adversarial_generator():
    assert losses.adversarial_generator(t(1.0, -3.0, 5.0)).item() == pytest.approx(-1.0)


def test_cycle_consistency():
    x, xc = t(0.0, 1.0), t(0.5, 0.0)  # |.| = 0.5, 1 → mean 0.75
    y, yc = t(-1.0, -1.0), t(-1.0, 0.0)  # 0, 1 → 0.5
    assert losses.cycle_consistency(x, xc, y, yc).item() == pytest.approx(1.25)


def test_bypass_consistency():
    f_x, pseudo_clean = t(0.2, 0.4), t(0.0, 0.0)  # mean 0.3
    y, f_pn = t(1.0, 1.0), t(0.0, 1.0)  # mean 0.5
    assert losses.bypass_consistency(f_x, pseudo_clean, y, f_pn).item() == pytest.approx(0.8)


def test_pseudo_noise():
    # x - F(x) = 0.5, -0.5; H(x) = 0.5, 0.5 → |0|, |1| → 0.5
    assert losses.pseudo_noise(t(0.5, 0.5), t(1.0, 0.0), t(0.5, 0.5)).item() == pytest.approx(0.5)


def test_noise_consistency():
    # G(y) - y = 0.25, -0.25; H(G(y)) = 0.25, 0.75 → 0, 1 → 0.5
    assert losses.noise_consistency(t(0.25, 0.75), t(0.5, 0.0), t(0.25, 0.25)).item() == pytest.approx(0.5)


def test_perfect_predictions_give_zero_and_shape_checks():
    x = torch.randn(2, 1, 4, 4)
    assert losses.pseudo_noise(x * 0.1, x, x * 0.9).abs().item() < 1e-7
    with pytest.raises(ValueError, match="same shape"):
        losses.pseudo_noise(x, x[:1], x)


def test_losses_have_gradients():
    a = torch.randn(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda u: losses.cycle_consistency(u, b, b, u * 0.5), (a,))
    assert torch.autograd.gradcheck(lambda u: losses.hinge_discriminator(u, u * 2), (a,))


def test_gaussian_blur_keeps_constants_and_means_and_lowpass_fidelity_measures_tone_only():
    from iscl.losses import gaussian_blur, lowpass_fidelity

    const = torch.full((2, 1, 20, 24), 0.3)
    assert torch.allclose(gaussian_blur(const, 2.0), const, atol=1e-6)
    rng = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 32, 32, generator=rng) * 2 - 1
    assert gaussian_blur(x, 1.5).shape == x.shape
    assert gaussian_blur(x, 1.5).std() < 0.5 * x.std()  # a low-pass
    # a tone shift is seen in full; fine-grained zero-mean noise (a +-0.2 checkerboard) almost not at all
    assert lowpass_fidelity(x, x + 0.1, 2.0).item() == pytest.approx(0.1, abs=1e-5)
    checker = 0.2 * (1 - 2 * ((torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2)).float()
    assert lowpass_fidelity(x, x + checker, 2.0).item() < 0.01
