"""Test-time augmentation: the mean over the 8 rotations/flips of the image, whole or tiled."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iscl.predict import predict_image
from synthetic import perturbed_nets_and_image

OUTPUTS = ("denoised", "generator", "bypass", "noise")
TILED = dict(tile=64, overlap=32)


class _Zeros(torch.nn.Module):
    """A noise extractor that finds no noise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


@pytest.fixture(scope="module")
def nets_and_image():
    return perturbed_nets_and_image(90, 101)  # sides not multiples of 4


@pytest.mark.parametrize("kw", [{}, TILED], ids=["whole", "tiled"])
def test_tta_of_the_identity_returns_the_input(nets_and_image, kw):
    *_, img = nets_and_image
    img = img * 1.5  # partly outside [-1, 1]: denoised is clipped, the other outputs are not
    out = predict_image(torch.nn.Identity(), _Zeros(), img, outputs=OUTPUTS, gamma=0.5, tta=True, **kw)
    # whole: every step is exact; tiled: the blend (weighted sum / summed weights) rounds
    atol = 0 if not kw else 1e-6
    np.testing.assert_allclose(out["denoised"], np.clip(img, -1, 1), rtol=0, atol=atol)
    np.testing.assert_allclose(out["generator"], img, rtol=0, atol=atol)
    np.testing.assert_allclose(out["bypass"], img, rtol=0, atol=atol)
    assert not out["noise"].any()


@pytest.mark.parametrize("kw", [{}, TILED], ids=["whole", "tiled"])
def test_tta_is_invariant_to_rotating_and_flipping_the_input(nets_and_image, kw):
    F, H, img = nets_and_image
    plain = predict_image(F, H, img, outputs=OUTPUTS, **kw)
    tta = predict_image(F, H, img, outputs=OUTPUTS, tta=True, **kw)
    assert all(tta[k].shape == img.shape and tta[k].dtype == np.float32 for k in OUTPUTS)
    assert np.abs(tta["denoised"] - plain["denoised"]).max() > 1e-3  # the model is not symmetric
    assert tta["denoised"].min() >= -1 and tta["denoised"].max() <= 1
    for transform in (np.rot90, np.fliplr):  # (they generate all 8)
        moved = predict_image(F, H, transform(img), outputs=OUTPUTS, tta=True, **kw)
        for k in OUTPUTS:  # the same 8 predictions, summed in another order (in float64)
            np.testing.assert_allclose(moved[k], transform(tta[k]), rtol=0, atol=1e-6)


def test_tiled_tta_agrees_with_whole_image_tta(nets_and_image):
    F, H, img = nets_and_image
    whole = predict_image(F, H, img, outputs=("noise",), tta=True)
    tiled = predict_image(F, H, img, outputs=("noise",), tta=True, **TILED)
    # H's receptive field is inside the overlap and every tile measures the statistics: exact
    np.testing.assert_allclose(tiled["noise"], whole["noise"], atol=1e-5)


def test_tta_progress_runs_over_the_eight_predictions(nets_and_image):
    F, H, img = nets_and_image
    seen = []
    predict_image(F, H, img, tta=True, on_tile=lambda d, t: seen.append((d, t)), **TILED)
    assert [d for d, _ in seen] == list(range(1, len(seen) + 1))
    assert len({t for _, t in seen}) == 1 and seen[-1][0] == seen[-1][1]
