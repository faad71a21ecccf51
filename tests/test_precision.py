"""Mixed precision, channels-last and torch.compile: what each option keeps and what it changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iscl.engine.iscl import ISCL
from iscl.nn import BatchInstanceNorm, Generator, NoiseExtractor
from iscl.precision import autocast, check_precision, grad_scaler
from iscl.predict import predict_image


def _model(config, **train):
    t = config.train.model_copy(update=train)
    return ISCL(config.network, t, generator=torch.Generator().manual_seed(0))


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 1, 64, 64, generator=g) * 2 - 1, torch.rand(2, 1, 64, 64, generator=g) * 2 - 1


def _psnr(a: np.ndarray, b: np.ndarray, data_range: float = 2.0) -> float:
    return float(10 * np.log10(data_range**2 / np.mean((a.astype(np.float64) - b) ** 2)))


def test_check_precision():
    check_precision("bf16", "cpu")
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        check_precision("fp8", "cpu")
    assert grad_scaler("bf16", "cpu") is None and grad_scaler("fp16", "cpu") is not None


def test_bin_statistics_stay_fp32_under_autocast():
    """A bf16 feature map is normalized with fp32 moments: the result equals the fp32 computation on
    the same (bf16-representable) values up to the final rounding to bf16."""
    torch.manual_seed(0)
    layer = BatchInstanceNorm(3)
    with torch.no_grad():
        layer.rho.copy_(torch.tensor([0.0, 0.5, 1.0]))
    h = (torch.randn(2, 3, 16, 16) * 3 + 100).bfloat16()  # large mean: bf16 moments would be off by ~0.4
    with autocast("bf16", "cpu"):
        out = layer(h)
    assert out.dtype == torch.bfloat16
    ref = layer(h.float())
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=1e-2)  # bf16 rounding of the output only


def test_bf16_training_keeps_fp32_weights_and_tracks_fp32(tiny_config):
    x, y = _batch()
    m32, m16 = _model(tiny_config), _model(tiny_config, precision="bf16")
    r32, r16 = m32.train_step(x, y), m16.train_step(x, y)
    assert all(p.dtype == torch.float32 for p in m16.nets.parameters())
    for key in ("d_total", "g_cycle", "g_bypass", "h_total"):
        assert np.isfinite(r16[key]) and r16[key] == pytest.approx(r32[key], rel=0.05), key
    for a, b in zip(m32.nets.F.parameters(), m16.nets.F.parameters()):
        assert torch.allclose(a, b, atol=5e-3)  # one RAdam step apart by bf16 rounding only


def test_fp16_training_scales_losses_and_resumes(tiny_config):
    x, y = _batch()
    m = _model(tiny_config, precision="fp16")
    results = [m.train_step(x, y) for _ in range(2)]
    assert all(np.isfinite(r["g_total"]) for r in results)
    state = m.state_dict()
    assert "scaler" in state and state["scaler"]["scale"] > 0
    again = _model(tiny_config, precision="fp16")
    again.load_state_dict(state)
    assert again.scaler.get_scale() == m.scaler.get_scale()
    # fp16 CPU kernels round differently from run to run at the 1e-5 level; the scale and the step agree
    assert again.train_step(x, y)["g_total"] == pytest.approx(m.train_step(x, y)["g_total"], rel=1e-3)


def test_channels_last_training_matches_nchw(tiny_config):
    x, y = _batch(1)
    a, b = _model(tiny_config), _model(tiny_config, channels_last=True)
    for _ in range(2):
        ra, rb = a.train_step(x, y), b.train_step(x, y)
    assert rb["g_total"] == pytest.approx(ra["g_total"], rel=1e-4)
    conv = next(mod for mod in b.nets.F.modules() if isinstance(mod, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    for p, q in zip(a.nets.parameters(), b.nets.parameters()):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("tile", [None, 48])
def test_bf16_prediction_is_close_to_fp32(tile):
    torch.manual_seed(0)
    F, H = Generator(1, 8, 2).eval(), NoiseExtractor(8, 4).eval()
    image = np.random.default_rng(0).random((90, 100)).astype(np.float32) * 2 - 1
    kw = dict(outputs=("denoised", "noise"), tile=tile, overlap=16)
    ref = predict_image(F, H, image, **kw)
    low = predict_image(F, H, image, precision="bf16", **kw)
    assert all(v.dtype == np.float32 for v in low.values())
    assert _psnr(ref["denoised"], low["denoised"]) > 35  # bf16 has 8 bits of mantissa


@pytest.mark.manual
def test_compiled_training_step_matches_eager(tiny_config):
    """torch.compile of the three sub-step objectives (the padding takes a compile-safe path).

    Slow (inductor compiles for ~3 minutes on 2 cores): not part of ``make test``; run with ``pytest --run-manual``."""
    x, y = _batch(2)
    eager, compiled = _model(tiny_config), _model(tiny_config, compile=True)
    r_eager, r_comp = eager.train_step(x, y), compiled.train_step(x, y)
    for key in ("d_total", "g_total", "h_total"):
        assert r_comp[key] == pytest.approx(r_eager[key], rel=1e-4), key
    for p, q in zip(eager.nets.parameters(), compiled.nets.parameters()):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-3)
