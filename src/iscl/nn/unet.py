"""The U-Net of Noise2Void (Krull, Buchholz & Jug, CVPR 2019), as CSBDeep's ``common_unet`` builds it.

n2v trains ``common_unet(n_depth=2, n_filter_base=32, kern_size=3, n_conv_per_depth=2, batch_norm=True,
last_activation="linear", residual=False)``. With depth ``d`` and first width ``w`` the layers are

* down, level ``i = 0 … d-1``: two 3×3 convs with ``w·2^i`` maps (conv → batch norm → ReLU), kept as
  the skip connection, then a 2×2 max-pool;
* bottom: a 3×3 conv with ``w·2^d`` maps, then one with ``w·2^(d-1)``;
* up, level ``i = d-1 … 0``: 2× nearest-neighbour upsampling, concatenation with skip ``i``, a 3×3
  conv with ``w·2^i`` maps, then one with ``w·2^max(0, i-1)``;
* head: a 1×1 conv to the output channels, linear (no activation).

For depth 2 and width 32: 32-32 | 64-64 | 128-64 | 64-32 | 32-32 | 1.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["UNet"]


def _conv_bn_relu(c_in: int, c_out: int, kernel_size: int, batch_norm: bool) -> nn.Sequential:
    # the bias is redundant in front of a batch norm (its mean subtraction cancels it)
    conv = nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=not batch_norm)
    layers: list[nn.Module] = [conv, nn.BatchNorm2d(c_out)] if batch_norm else [conv]
    return nn.Sequential(*layers, nn.ReLU(inplace=True))


class UNet(nn.Module):
    """CSBDeep/n2v U-Net: two convs per level, max-pool down, upsample + concatenate up, linear 1×1 head.

    Parameters
    ----------
    depth : int
        Number of 2×2 max-pools (n2v ``unet_n_depth``, default 2); inputs need sides divisible by
        ``2**depth`` (:attr:`multiple`).
    width : int
        Feature maps at the first level (n2v ``unet_n_first``, default 32); level ``i`` has ``width·2^i``.
    kernel_size : int
        Odd side of the convolution kernels (3, as in the n2v 2-D examples and CAREamics).
    in_channels, out_channels : int
        Channels of the input and of the prediction.
    batch_norm : bool
        Batch normalisation after every 3×3 conv (n2v default).
    residual : bool
        Add the input to the output (n2v ``unet_residual``, default False; needs equal channel counts).
    generator : torch.Generator, optional
        Seeds the initialisation (Glorot-uniform weights as in Keras/n2v, zero biases), so that the
        same generator state gives the same network.

    Notes
    -----
    Input ``(B, in_channels, H, W)`` float32 in any units (n2v feeds standardised data); output
    ``(B, out_channels, H, W)`` in the same units.
    """

    def __init__(self, depth: int = 2, width: int = 32, kernel_size: int = 3, in_channels: int = 1,
                 out_channels: int = 1, batch_norm: bool = True, residual: bool = False,
                 generator: torch.Generator | None = None):
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"depth and width must be >= 1, got {depth} and {width}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        if residual and in_channels != out_channels:
            raise ValueError(f"a residual U-Net needs in_channels == out_channels, got {in_channels}, {out_channels}")
        self.depth, self.width, self.residual = int(depth), int(width), bool(residual)

        def block(c_in: int, c_mid: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(_conv_bn_relu(c_in, c_mid, kernel_size, batch_norm),
                                 _conv_bn_relu(c_mid, c_out, kernel_size, batch_norm))

        self.down = nn.ModuleList()
        c = in_channels
        for i in range(depth):
            self.down.append(block(c, width * 2**i, width * 2**i))
            c = width * 2**i
        self.bottom = block(c, width * 2**depth, width * 2 ** (depth - 1))
        self.up = nn.ModuleList()
        for i in reversed(range(depth)):
            # what arrives from below has width·2^i maps, as does skip i
            self.up.append(block(2 * width * 2**i, width * 2**i, width * 2 ** max(0, i - 1)))
        self.head = nn.Conv2d(width, out_channels, 1)
        self.reset_parameters(generator)

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this (``2**depth``)."""
        return 2**self.depth

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Glorot-uniform conv weights and zero biases (Keras' defaults, which n2v keeps); unit batch norms."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight, generator=generator)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise ValueError(f"UNet of depth {self.depth}: input sides must be multiples of {self.multiple}, "
                             f"got {h}x{w} (pad the input first)")
        skips = []
        y = x
        for block in self.down:
            y = block(y)
            skips.append(y)
            y = F.max_pool2d(y, 2)
        y = self.bottom(y)
        for block, skip in zip(self.up, reversed(skips)):
            y = block(torch.cat([F.interpolate(y, scale_factor=2, mode="nearest"), skip], dim=1))
        y = self.head(y)
        return y + x if self.residual else y
