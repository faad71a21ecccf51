"""Padding and convolution layers with TensorFlow semantics, as the official ISCL networks use them.

PyTorch has no padding mode equal to NumPy/TF ``'symmetric'`` (edge pixel repeated) for widths above 1,
and its transposed-convolution padding convention differs from TF ``'same'``; both are written here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SymmetricPad2d",
    "symmetric_pad",
    "tf_same_pad",
    "Conv2dSame",
    "ConvTranspose2dSame",
    "truncated_normal_init_",
]


def symmetric_pad(h: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad the last two axes by ``pad`` pixels with NumPy's ``'symmetric'`` mode.

    ``'symmetric'`` mirrors *including* the edge pixel (``[b, a | a, b, c | c, b]``), unlike torch's
    ``'reflect'``. For ``pad == 1`` it equals ``'replicate'``.

    Parameters
    ----------
    h : Tensor, shape (N, C, H, W)
    pad : int, 0 <= pad <= min(H, W)

    Returns
    -------
    Tensor, shape (N, C, H + 2 pad, W + 2 pad)
    """
    if pad == 0:
        return h
    if pad == 1 and not torch.compiler.is_compiling():
        # the fastest eager kernel; compiled graphs take the generic path below, because inductor's
        # replication_pad2d_backward fails a stride assertion (torch 2.13, CPU)
        return F.pad(h, (1, 1, 1, 1), mode="replicate")
    if pad > h.shape[-1] or pad > h.shape[-2]:
        raise ValueError(f"symmetric padding of {pad} needs an input of at least {pad}x{pad}, got {tuple(h.shape)}")
    h = torch.cat([h[..., :pad].flip(-1), h, h[..., -pad:].flip(-1)], dim=-1)
    return torch.cat([h[..., :pad, :].flip(-2), h, h[..., -pad:, :].flip(-2)], dim=-2)


class SymmetricPad2d(nn.Module):
    """Module form of :func:`symmetric_pad`."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = int(pad)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return symmetric_pad(h, self.pad)

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


def tf_same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) zero padding that TF ``padding='same'`` uses for one axis of a convolution.

    TF puts the odd pixel *after*: a 4×4 stride-2 conv pads (1, 1) on even sizes but (1, 2) on odd ones,
    which torch's symmetric ``padding=`` cannot express.
    """
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TF ``padding='same'`` (zero padding, extra pixel after), any input size."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        top, bottom = tf_same_pad(h.shape[-2], k, s)
        left, right = tf_same_pad(h.shape[-1], k, s)
        if top == bottom and left == right:
            # symmetric padding can be fused into the convolution (faster than F.pad + conv)
            return F.conv2d(h, self.weight, self.bias, s, (top, left))
        return super().forward(F.pad(h, (left, right, top, bottom)))


class ConvTranspose2dSame(nn.ConvTranspose2d):
    """Transposed convolution with TF ``padding='same'``: output exactly ``stride`` × the input size.

    TF's ``Conv2DTranspose(k=3, strides=2, padding='same')`` equals torch ``ConvTranspose2d(k=3, s=2,
    padding=0)`` cropped to the first ``2H × 2W`` pixels. The usual ``padding=1, output_padding=1``
    gives the same size but is shifted by one pixel.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 2):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        height, width = h.shape[-2] * self.stride[0], h.shape[-1] * self.stride[1]
        k = self.kernel_size[0]
        # TF crops floor(total/2) at the start, where total = kernel - stride (for k >= s)
        start = max(k - self.stride[0], 0) // 2
        out = super().forward(h)
        return out[..., start : start + height, start : start + width]


def truncated_normal_init_(module: nn.Module, std: float = 0.05, generator: torch.Generator | None = None) -> nn.Module:
    """Initialise like the official code: conv weights ~ truncated normal(0, std, ±2 std), biases 0.

    ``generator`` makes the draw independent of torch's global RNG. A conv marked ``zero_init = True``
    (the output layer of a residual generator or of a zero-start noise extractor) still draws its
    weights, so every other layer gets the same values with or without the marker, and is then zeroed.
    BatchInstanceNorm parameters keep their own initial values (gamma 1, beta 0, rho 1).
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.trunc_normal_(m.weight, mean=0.0, std=std, a=-2 * std, b=2 * std, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
            if getattr(m, "zero_init", False):
                nn.init.zeros_(m.weight)
    return module
