"""The prediction module equals Denoiser's whole-image prediction; the export check catches size-bound traces."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from iscl.config import NetworkConfig
from iscl.engine.iscl import blend
from iscl.exporters import ExportError, ExportJob, check_against_pytorch
from iscl.exporters.module import IsclPredictor
from iscl.predict import predict_image


def _perturbed(residual: bool) -> IsclPredictor:
    """A predictor with random, non-trivial weights (BIN affine parameters away from 1/0 too)."""
    torch.manual_seed(0)
    net = NetworkConfig(generator_width=4, generator_res_blocks=1, extractor_width=4, extractor_layers=3,
                        residual_generators=residual)
    m = IsclPredictor(net, gamma=0.3).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.requires_grad_(False)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("size", [(48, 40), (37, 53), (4, 4), (5, 7)])
def test_predictor_equals_whole_image_prediction(residual, size):
    m = _perturbed(residual)
    x = np.random.default_rng(1).uniform(-1, 1, size).astype(np.float32)
    want = predict_image(m.F, m.H, x, gamma=0.3)["denoised"]  # what Denoiser.predict runs (tile=None)
    with torch.no_grad():
        got = m(torch.from_numpy(x)[None, None])
    assert got.shape == (1, 1, *size)
    np.testing.assert_allclose(got[0, 0].numpy(), want, rtol=0, atol=1e-6)


def test_predictor_rejects_gamma_outside_unit_interval():
    with pytest.raises(ValueError, match="gamma"):
        IsclPredictor(gamma=1.5)


class _Normalizer:
    low, high = -1.0, 1.0

    @staticmethod
    def forward(a):
        return np.asarray(a, np.float32)


class _Model:
    normalizer = _Normalizer()


def test_check_catches_a_trace_that_only_works_at_its_traced_size(tmp_path):
    # the generator's own padding branch, traced at a multiple of 4, is not recorded: at 45x39 the
    # trace skips the padding and the stride-2 stages go wrong. The export check must see it.
    m = _perturbed(residual=False)

    def naive(x):
        return blend(m.F(x), x - m.H(x), m.gamma)

    sample = np.random.default_rng(2).uniform(-1, 1, (48, 40)).astype(np.float32)
    job = ExportJob(m, _Model(), m.gamma, "swa", sample, "test", tmp_path / "m.pt")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bad = torch.jit.trace(naive, torch.from_numpy(sample)[None, None], check_trace=False)
        good = torch.jit.trace(m, torch.from_numpy(sample)[None, None], check_trace=False)
        with pytest.raises(ExportError, match=r"m\.pt: the exported TorchScript model .* 45x39"):
            check_against_pytorch(job, lambda t: bad(t).numpy(), "TorchScript")
        assert check_against_pytorch(job, lambda t: good(t).numpy(), "TorchScript") <= 1e-5
