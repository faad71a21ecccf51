"""The ISCL noise extractor H: a DnCNN-like plain CNN that predicts the noise of a noisy image."""

from __future__ import annotations

import torch
from torch import nn

from iscl.nn.layers import truncated_normal_init_
from iscl.nn.norm import BatchInstanceNorm

__all__ = ["NoiseExtractor"]

LEAKY_SLOPE = 0.2


class NoiseExtractor(nn.Module):
    """Noise extractor H (official ``Extractor(32)``, 20 conv layers: 168,801 parameters).

    conv 3×3 1→width + lrelu; ``n_layers - 2`` × [conv 3×3, BIN, lrelu]; conv 3×3 width→1, linear.
    All convs use zero 'same' padding, so any input size works.

    Shape: (N, 1, H, W) on [-1, 1] → (N, 1, H, W) noise map in the same units, not clipped
    (``x - H(x)`` is the bypass estimate of the clean image).

    ``zero_head=True`` (not in the official model) starts the last conv at zero: H(x) = 0 and the
    bypass ``x - H(x)`` is the identity at the start of training.

    ``dilations`` (not in the official model): one dilation per middle layer (``n_layers - 2`` of them),
    as in IRCNN (Zhang et al., CVPR 2017): the same weights and FLOPs, a receptive field of
    ``3 + 2 * sum(dilations) + 2`` pixels instead of ``2 n_layers + 1``. Empty: all 1 (official).
    """

    def __init__(self, width: int = 32, n_layers: int = 20, in_channels: int = 1, zero_head: bool = False,
                 dilations: tuple[int, ...] | list[int] = ()):
        super().__init__()
        if n_layers < 2:
            raise ValueError(f"NoiseExtractor needs n_layers >= 2, got {n_layers}")
        dilations = tuple(dilations) or (1,) * (n_layers - 2)
        if len(dilations) != n_layers - 2 or min(dilations, default=1) < 1:
            raise ValueError(f"NoiseExtractor with {n_layers} layers needs {n_layers - 2} dilations >= 1 (one per "
                             f"middle layer), got {list(dilations)}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE, inplace=True)]
        for d in dilations:
            layers += [nn.Conv2d(width, width, 3, padding=d, dilation=d), BatchInstanceNorm(width, inplace=True),
                       nn.LeakyReLU(LEAKY_SLOPE, inplace=True)]
        head = nn.Conv2d(width, in_channels, 3, padding=1)
        head.zero_init = zero_head  # truncated_normal_init_ zeroes it
        layers.append(head)
        self.body = nn.Sequential(*layers)
        truncated_normal_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
