"""Padding, TF-'same' convolutions and BIN against NumPy references written from their definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iscl.nn import BatchInstanceNorm, ConvTranspose2dSame, symmetric_pad, tf_same_pad
from iscl.nn.layers import Conv2dSame


def np_conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    """Direct cross-correlation, 'valid'. x (N, Ci, H, W), w (Co, Ci, k, k)."""
    n, ci, h, wd = x.shape
    co, _, k, _ = w.shape
    oh, ow = (h - k) // stride + 1, (wd - k) // stride + 1
    out = np.zeros((n, co, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, :, i * stride : i * stride + k, j * stride : j * stride + k]
            out[:, :, i, j] = np.einsum("nckl,ockl->no", patch, w)
    return out + b[None, :, None, None]


def np_conv_transpose_tf_same(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    """TF conv2d_transpose 'same' from its definition: scatter every input pixel times the kernel,
    then keep the s·H window starting at pad_before = (k - s) // 2 (the forward conv's TF padding).
    w has torch's transposed layout (Ci, Co, k, k)."""
    n, ci, h, wd = x.shape
    _, co, k, _ = w.shape
    full = np.zeros((n, co, (h - 1) * stride + k, (wd - 1) * stride + k))
    for i in range(h):
        for j in range(wd):
            full[:, :, i * stride : i * stride + k, j * stride : j * stride + k] += np.einsum(
                "nc,cokl->nokl", x[:, :, i, j], w)
    start = (k - stride) // 2
    return full[:, :, start : start + stride * h, start : start + stride * wd] + b[None, :, None, None]


@pytest.mark.parametrize("pad", [1, 2, 3])
def test_symmetric_pad_equals_numpy_symmetric(pad):
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 7)).astype(np.float32)
    ref = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="symmetric")
    assert np.array_equal(symmetric_pad(torch.from_numpy(x), pad).numpy(), ref)


def test_tf_same_pad_rule():
    assert tf_same_pad(64, 4, 2) == (1, 1)
    assert tf_same_pad(65, 4, 2) == (1, 2)  # TF puts the odd pixel after
    assert tf_same_pad(10, 3, 1) == (1, 1)
    assert tf_same_pad(5, 1, 1) == (0, 0)


@pytest.mark.parametrize("size", [(8, 8), (9, 7)])
def test_conv2d_same_4x4_stride2_matches_tf_rule(size):
    rng = np.random.default_rng(1)
    conv = Conv2dSame(2, 3, 4, 2)
    x = rng.normal(size=(2, 2, *size)).astype(np.float32)
    (t, bo), (le, r) = tf_same_pad(size[0], 4, 2), tf_same_pad(size[1], 4, 2)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (t, bo), (le, r)))
    ref = np_conv2d(xp, conv.weight.detach().double().numpy(), conv.bias.detach().double().numpy(), 2)
    got = conv(torch.from_numpy(x)).detach().numpy()
    assert got.shape == (2, 3, -(-size[0] // 2), -(-size[1] // 2))
    np.testing.assert_allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("size", [(4, 4), (3, 5)])
def test_conv_transpose_same_matches_reference(size):
    rng = np.random.default_rng(2)
    layer = ConvTranspose2dSame(3, 2, 3, 2)
    with torch.no_grad():
        layer.bias.normal_()
    x = rng.normal(size=(2, 3, *size)).astype(np.float32)
    ref = np_conv_transpose_tf_same(x.astype(np.float64), layer.weight.detach().double().numpy(),
                                    layer.bias.detach().double().numpy(), 2)
    got = layer(torch.from_numpy(x)).detach().numpy()
    assert got.shape == (2, 2, 2 * size[0], 2 * size[1])
    np.testing.assert_allclose(got, ref, atol=1e-5)
    # the common torch idiom padding=1, output_padding=1 is shifted by one pixel: not what TF computes
    shifted = torch.nn.ConvTranspose2d(3, 2, 3, 2, padding=1, output_padding=1)
    shifted.load_state_dict(layer.state_dict())
    assert not np.allclose(shifted(torch.from_numpy(x)).detach().numpy(), ref, atol=1e-3)


def np_bin(h, gamma, beta, rho, eps=1e-7):
    """BIN from its definition (method.md §1), float64, biased variances."""
    b = (h - h.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(h.var(axis=(0, 2, 3), keepdims=True) + eps)
    i = (h - h.mean(axis=(2, 3), keepdims=True)) / np.sqrt(h.var(axis=(2, 3), keepdims=True) + eps)
    r, g, be = (v.reshape(1, -1, 1, 1) for v in (rho, gamma, beta))
    return (r * b + (1 - r) * i) * g + be


@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (1, 2, 5, 7), (3, 4, 1, 1), (2, 3, 2, 3)])
def test_batch_instance_norm_matches_definition(shape):
    rng = np.random.default_rng(3)
    norm = BatchInstanceNorm(shape[1])
    with torch.no_grad():
        norm.gamma.copy_(torch.from_numpy(rng.uniform(0.5, 2, shape[1]).astype(np.float32)))
        norm.beta.copy_(torch.from_numpy(rng.normal(size=shape[1]).astype(np.float32)))
        norm.rho.copy_(torch.from_numpy(rng.uniform(0, 1, shape[1]).astype(np.float32)))
    h = (rng.normal(size=shape) * 3 + 1.5).astype(np.float32)
    ref = np_bin(h.astype(np.float64), *(p.detach().double().numpy() for p in (norm.gamma, norm.beta, norm.rho)))
    got = norm(torch.from_numpy(h)).detach().numpy()
    # 1x1 maps: instance variance 0, 1/sqrt(eps) ~ 3162; the centred fold keeps fp32 error ~1e-5
    np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-5)


def test_bin_uses_batch_statistics_no_running_stats():
    norm = BatchInstanceNorm(2)
    assert len(list(norm.buffers())) == 0
    x = torch.randn(4, 2, 6, 6)
    norm.eval()
    a = norm(x)
    norm.train()
    assert torch.equal(a, norm(x))
    # one image vs. the same image inside a batch: different statistics, different output
    assert not torch.allclose(norm(x[:1]), a[:1], atol=1e-3)


@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (3, 4, 1, 1)])
def test_inplace_prediction_path_equals_autograd_path(shape):
    torch.manual_seed(0)
    norm = BatchInstanceNorm(shape[1], inplace=True)
    with torch.no_grad():
        norm.rho.uniform_(0, 1)
        norm.gamma.uniform_(0.5, 2)
    h = torch.randn(shape) * 2 + 0.7
    h0 = h.clone()
    with_grad = norm(h)  # grad enabled: out of place
    with torch.no_grad():
        inplace = norm(h.clone())
    torch.testing.assert_close(inplace, with_grad.detach(), atol=2e-5, rtol=1e-5)
    assert torch.equal(h, h0)  # the autograd path left its input alone
