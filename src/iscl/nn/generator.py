"""The ISCL generators F (noisy → clean) and G (clean → noisy): a ResNet-style encoder-decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from iscl.nn.layers import ConvTranspose2dSame, SymmetricPad2d, symmetric_pad, truncated_normal_init_
from iscl.nn.norm import BatchInstanceNorm

__all__ = ["Generator", "ResidualBlock"]

LEAKY_SLOPE = 0.2


class _ConvNormAct(nn.Sequential):
    """[symmetric pad] → conv (valid) → BIN → [leaky ReLU]."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, pad: int, act: bool = True):
        layers: list[nn.Module] = []
        if pad:
            layers.append(SymmetricPad2d(pad))
        layers += [nn.Conv2d(cin, cout, kernel, stride=stride), BatchInstanceNorm(cout, inplace=True)]
        if act:
            layers.append(nn.LeakyReLU(LEAKY_SLOPE, inplace=True))
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """``h + [pad 1, conv 3×3, BIN, lrelu, pad 1, conv 3×3, BIN](h)`` (no activation after the sum)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            _ConvNormAct(channels, channels, 3, 1, 1, act=True),
            _ConvNormAct(channels, channels, 3, 1, 1, act=False),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return h + self.body(h)
        return self.body(h).add_(h)  # prediction: no new full-size tensor


class Generator(nn.Module):
    """Image-to-image generator of ISCL (official ``Generator(1, 32, 3)``: 1,148,225 parameters).

    Two stride-2 downsamplings, ``n_res`` residual blocks at 1/4 resolution, two TF-'same' transposed
    convolutions back up, and a 7×7 output conv with ``tanh``.

    With ``residual=True`` (not in the official model) the network predicts a correction instead:
    ``out = x + head(h)``, no ``tanh``, and the head starts at zero, so the generator starts as the
    identity. A denoiser then starts from the noisy input, not from a random image, and does not have
    to learn the identity through the 4× encoder-decoder (slow with few training steps).

    Parameters
    ----------
    out_channels : int
        Output channels (1 for grey images).
    width : int
        Channels of the first layer; 2× and 4× that in the downsampled layers.
    n_res : int
        Number of residual blocks.
    residual : bool
        ``x + head(h)`` with a zero-initialised head instead of ``tanh(head(h))`` (needs
        ``out_channels == in_channels``).
    noise_channels : int
        Not in the official model: channels of standard normal noise z, drawn anew at every call, that are
        concatenated to the input and to the head's input. G(y, z) can then draw noise (z filtered by the
        head, modulated through the encoder) instead of having to make "noise" a fixed function of y. The
        draws come from the generator's own RNG (:meth:`reseed`), never from torch's global one.

    Shape: (N, 1, H, W) → (N, out_channels, H, W), input on [-1, 1], output on (-1, 1) (residual:
    unbounded, starting equal to the input). H and W of any size ≥ 4: sides that are not multiples
    of 4 are padded symmetrically and cropped back.
    """

    def __init__(self, out_channels: int = 1, width: int = 32, n_res: int = 3, in_channels: int = 1,
                 residual: bool = False, noise_channels: int = 0):
        super().__init__()
        if residual and out_channels != in_channels:
            raise ValueError(f"a residual generator needs out_channels == in_channels, got {out_channels} "
                             f"and {in_channels}")
        if noise_channels < 0:
            raise ValueError(f"noise_channels must be >= 0, got {noise_channels}")
        self.residual = residual
        self.noise_channels = noise_channels
        self._noise_rng: torch.Generator | None = None
        self._noise_seed = 0
        w = width
        self.encoder = nn.Sequential(
            _ConvNormAct(in_channels + noise_channels, w, 7, 1, 3),
            _ConvNormAct(w, 2 * w, 4, 2, 1),
            _ConvNormAct(2 * w, 4 * w, 4, 2, 1),
        )
        self.blocks = nn.Sequential(*[ResidualBlock(4 * w) for _ in range(n_res)])
        self.decoder = nn.Sequential(
            ConvTranspose2dSame(4 * w, 2 * w, 3, 2),
            BatchInstanceNorm(2 * w, inplace=True),
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
            ConvTranspose2dSame(2 * w, w, 3, 2),
            BatchInstanceNorm(w, inplace=True),
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
        )
        self.head = nn.Conv2d(w + noise_channels, out_channels, 7)
        self.head.zero_init = residual  # truncated_normal_init_ zeroes it: the identity at the start
        truncated_normal_init_(self)

    def forward(self, x: torch.Tensor, draw: bool = True) -> torch.Tensor:
        """``draw=False`` feeds z = 0 instead of a random draw (generators with ``noise_channels`` only)."""
        height, width = x.shape[-2:]
        ph, pw = (-height) % 4, (-width) % 4
        if ph or pw:
            # mirror-extend to a multiple of 4 (the two stride-2 stages need it), crop back at the end
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(height, width) > max(ph, pw) else "replicate")
        if self.noise_channels:
            z = self._draw(x) if draw else x.new_zeros((x.shape[0], self.noise_channels, *x.shape[2:]))
            h = self.decoder(self.blocks(self.encoder(torch.cat([x, z], 1))))
            h = torch.cat([h, z.to(h.dtype)], 1)
        else:
            h = self.decoder(self.blocks(self.encoder(x)))
        out = self.head(symmetric_pad(h, 3))
        if not self.residual:
            out = torch.tanh(out)
        elif torch.is_grad_enabled() or out.dtype != x.dtype:  # (autocast: keep the identity in fp32)
            out = x + out
        else:
            out = out.add_(x)  # prediction: no new full-size tensor
        return out[..., :height, :width]

    def reseed(self, seed: int) -> None:
        """Restart the noise draws from ``seed`` (the trainer reseeds every step, so resuming is exact)."""
        self._noise_seed = int(seed)
        self._noise_rng = None

    def _draw(self, x: torch.Tensor) -> torch.Tensor:
        rng = self._noise_rng
        if rng is None or rng.device != x.device:
            rng = self._noise_rng = torch.Generator(device=x.device).manual_seed(self._noise_seed)
        n, _, h, w = x.shape
        return torch.randn((n, self.noise_channels, h, w), generator=rng, device=x.device, dtype=torch.float32)

    def extra_repr(self) -> str:
        parts = ["residual=True"] * self.residual
        if self.noise_channels:
            parts.append(f"noise_channels={self.noise_channels}")
        return ", ".join(parts)
