"""The ISCL discriminators D_X (noisy domain) and D_Y (clean domain): a PatchGAN-like critic."""

from __future__ import annotations

import torch
from torch import nn

from iscl.nn.layers import Conv2dSame, truncated_normal_init_
from iscl.nn.norm import BatchInstanceNorm

__all__ = ["PatchDiscriminator"]

LEAKY_SLOPE = 0.2


class PatchDiscriminator(nn.Module):
    """PatchGAN critic (official ``Discriminator(32)``: 2,790,177 parameters).

    Four 4×4 stride-2 TF-'same' convs (width, 2w, 4w, 8w; BIN from the second on), a 4×4 valid conv
    to 16w with BIN, then a 1×1 conv to one logit per patch. All activations leaky ReLU 0.2.

    Shape: (N, 1, H, W) → (N, 1, ceil(H/16) - 3, ceil(W/16) - 3) unbounded logits
    (64×64 → 1×1; 96×128 → 3×5). Inputs need H, W ≥ 49.
    """

    def __init__(self, width: int = 32, in_channels: int = 1):
        super().__init__()
        w = width
        layers: list[nn.Module] = [Conv2dSame(in_channels, w, 4, 2), nn.LeakyReLU(LEAKY_SLOPE, inplace=True)]
        for cin, cout in ((w, 2 * w), (2 * w, 4 * w), (4 * w, 8 * w)):
            layers += [Conv2dSame(cin, cout, 4, 2), BatchInstanceNorm(cout, inplace=True),
                       nn.LeakyReLU(LEAKY_SLOPE, inplace=True)]
        layers += [nn.Conv2d(8 * w, 16 * w, 4), BatchInstanceNorm(16 * w, inplace=True),
                   nn.LeakyReLU(LEAKY_SLOPE, inplace=True)]
        layers.append(nn.Conv2d(16 * w, 1, 1))
        self.body = nn.Sequential(*layers)
        truncated_normal_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
