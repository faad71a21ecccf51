"""The ISCL objectives (Lee & Jeong, IEEE TMI 2021, §III; official ``models/trainer.py``) as pure functions.

Every function returns a scalar tensor: a mean over *all* elements of its inputs (``tf.reduce_mean``
in the official code). Images are (N, 1, H, W) on [-1, 1]; discriminator outputs are (N, 1, h, w)
logits. Weights such as λ live in the configuration; :mod:`iscl.engine.iscl` sums the terms.
"""

from __future__ import annotations

import torch

__all__ = [
    "hinge_discriminator",
    "boosting",
    "adversarial_generator",
    "cycle_consistency",
    "bypass_consistency",
    "pseudo_noise",
    "noise_consistency",
    "identity",
    "no_noise",
    "gaussian_blur",
    "lowpass_fidelity",
]


def _same_shape(name: str, *tensors: torch.Tensor) -> None:
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"{name}: inputs must have the same shape, got {sorted(shapes)}")


def hinge_discriminator(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge loss of one discriminator: ``mean relu(1 - D(real)) + mean relu(D(fake))``.

    Used for D_X (real = noisy x, fake = G(y)) and D_Y (real = clean y, fake = F(x)).
    The two means are taken separately, so real and fake maps may differ in size.
    """
    return torch.relu(1.0 - real_logits).mean() + torch.relu(fake_logits).mean()


def boosting(dx_pseudo_noisy: torch.Tensor, dy_pseudo_clean: torch.Tensor) -> torch.Tensor:
    """Boosting term of the D step: the pseudo images are shown as fakes.

    ``mean relu(D_X(y + H(x))) + mean relu(D_Y(x - H(x)))``.
    """
    return torch.relu(dx_pseudo_noisy).mean() + torch.relu(dy_pseudo_clean).mean()


def adversarial_generator(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator side of the hinge GAN: ``-mean D(fake)`` (for F: D_Y(F(x)); for G: D_X(G(y)))."""
    return -fake_logits.mean()


def cycle_consistency(
    x: torch.Tensor, x_cycled: torch.Tensor, y: torch.Tensor, y_cycled: torch.Tensor
) -> torch.Tensor:
    """Cycle loss ``mean|x - G(F(x))| + mean|y - F(G(y))|``."""
    _same_shape("cycle_consistency (noisy)", x, x_cycled)
    _same_shape("cycle_consistency (clean)", y, y_cycled)
    return (x - x_cycled).abs().mean() + (y - y_cycled).abs().mean()


def bypass_consistency(
    f_x: torch.Tensor, pseudo_clean: torch.Tensor, y: torch.Tensor, f_pseudo_noisy: torch.Tensor
) -> torch.Tensor:
    """Bypass consistency ``mean|F(x) - (x - H(x))| + mean|y - F(y + H(x))|``.

    Parameters
    ----------
    f_x : F(x).
    pseudo_clean : x - H(x), the bypass estimate of the clean image.
    y : clean batch.
    f_pseudo_noisy : F(y + H(x)), F applied to the pseudo-noisy image.
    """
    _same_shape("bypass_consistency (noisy)", f_x, pseudo_clean)
    _same_shape("bypass_consistency (clean)", y, f_pseudo_noisy)
    return (f_x - pseudo_clean).abs().mean() + (y - f_pseudo_noisy).abs().mean()


def pseudo_noise(h_x: torch.Tensor, x: torch.Tensor, f_x: torch.Tensor) -> torch.Tensor:
    """Pseudo-noise label loss ``mean|H(x) - (x - F(x))|``: F's residual teaches H."""
    _same_shape("pseudo_noise", h_x, x, f_x)
    return (h_x - (x - f_x)).abs().mean()


def noise_consistency(h_gy: torch.Tensor, g_y: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Noise consistency ``mean|H(G(y)) - (G(y) - y)|``: H must find the noise G added to y."""
    _same_shape("noise_consistency", h_gy, g_y, y)
    return (h_gy - (g_y - y)).abs().mean()


def identity(y: torch.Tensor, f_y: torch.Tensor) -> torch.Tensor:
    """Identity term ``mean|F(y) - y|``: the denoiser leaves a clean image unchanged.

    Not in ISCL (it is CycleGAN's identity-mapping loss, Zhu et al. 2017, §5.2); an option of the
    faster presets (``TrainConfig.identity_weight``), off in ``paper``.
    """
    _same_shape("identity", y, f_y)
    return (f_y - y).abs().mean()


def no_noise(h_y: torch.Tensor) -> torch.Tensor:
    """``mean|H(y)|`` on clean images: there is no noise to extract from a clean image.

    The noise extractor's analogue of :func:`identity`. Not in ISCL: an option of the faster presets
    (``TrainConfig.extractor_identity_weight``), off in ``paper``.
    """
    return h_y.abs().mean()


def renoise_consistency(h_pseudo_noisy: torch.Tensor, h_x: torch.Tensor) -> torch.Tensor:
    """``mean|H(y + H(x)) - H(x)|`` with ``H(x)`` held fixed (detached by the caller): the noise H finds in a
    real noisy image, laid on an unrelated clean image, is what H must find there.

    A noisy image with known noise, made of the real noise H extracts rather than of G's imitation. Not in
    ISCL: an option (``TrainConfig.extractor_renoise_weight``), off in ``paper``.
    """
    _same_shape("renoise_consistency", h_pseudo_noisy, h_x)
    return (h_pseudo_noisy - h_x).abs().mean()


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) images, truncated at 3 sigma, reflect-padded (same shape).

    Written here (a few lines) rather than taken from torchvision, which iscl does not depend on.
    """
    radius = max(1, int(3.0 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = images.shape[1]
    h = torch.nn.functional.pad(images, (radius, radius, radius, radius), mode="reflect")
    h = torch.nn.functional.conv2d(h, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return torch.nn.functional.conv2d(h, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def lowpass_fidelity(source: torch.Tensor, output: torch.Tensor, sigma: float) -> torch.Tensor:
    """``mean|blur(output) - blur(source)|`` with a Gaussian of ``sigma`` pixels.

    Zero-mean noise leaves an image's local mean unchanged, so a denoiser (F: noisy -> clean) and a noise
    model (G: clean -> noisy) should too; the adversarial terms alone let both drift in tone (on CT, F
    darkens bright structures: ``benchmarks/error_anatomy.py``). Not in ISCL: an option of the faster
    presets (``TrainConfig.lowpass_weight``), off in ``paper``.
    """
    _same_shape("lowpass_fidelity", source, output)
    return (gaussian_blur(output, sigma) - gaussian_blur(source, sigma)).abs().mean()
