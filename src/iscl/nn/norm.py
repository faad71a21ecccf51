"""Batch-instance normalization (BIN; Nam & Kim, NeurIPS 2018) as the official ISCL code computes it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

__all__ = ["BatchInstanceNorm", "clamp_rho_", "statistics_override"]


class BatchInstanceNorm(nn.Module):
    """Per-channel mix of batch and instance normalization with a learned weight ``rho``.

    ``out = (rho * b + (1 - rho) * i) * gamma + beta`` where ``b`` is normalized with the statistics
    over (N, H, W) and ``i`` with those over (H, W) of each sample. There are **no running
    statistics**: like the original, the current batch's statistics are used in training and in
    prediction alike (so with one image per batch, prediction normalizes by that image's own
    statistics). ``rho`` must be kept in [0, 1]: call :func:`clamp_rho_` after each optimizer step.

    The variance is computed as means plus the law of total variance (much faster on CPU than
    ``torch.var_mean`` over (N, H, W)), and the affine map is folded **around the instance mean**: on
    1×1 maps the instance variance is 0 and ``1/sqrt(eps)`` is ~3162, so folding around zero would
    leave fp32 cancellation noise of ~2e-4·|h|; the centred form stays at ~1e-5.

    With ``inplace=True`` and gradients disabled (prediction), the input tensor is normalized in
    place: on large images each new full-size tensor costs a fresh ``mmap`` and page faults (glibc
    returns blocks over 32 MB to the OS), which made the element-wise work cost as much as the convs.
    The networks set it because their BIN inputs are always fresh convolution outputs.

    Shape: (N, C, H, W) → (N, C, H, W), float32.
    """

    def __init__(self, channels: int, eps: float = 1e-7, inplace: bool = False):
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.inplace = inplace
        # set by statistics_override(): a callable (layer, h) -> output replacing the normalization
        self.override: Callable[[BatchInstanceNorm, torch.Tensor], torch.Tensor] | None = None
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.rho = nn.Parameter(torch.ones(channels))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.override is not None:
            return self.override(self, h)
        if self.inplace and not torch.is_grad_enabled() and h.dtype == torch.float32:
            return self._forward_inplace(h)
        stats_dtype = torch.float32 if h.dtype in (torch.float16, torch.bfloat16) else h.dtype
        hs = h.to(stats_dtype)
        m_i = hs.mean(dim=(2, 3), keepdim=True)  # (N, C, 1, 1) instance means
        centred = hs - m_i
        v_i = centred.square().mean(dim=(2, 3), keepdim=True)  # biased instance variances
        # batch statistics from the instance ones (law of total variance), then the centred fold
        scale, shift = self._coefficients(m_i, v_i)
        return torch.addcmul(shift, centred, scale).to(h.dtype)

    def _coefficients(self, m_i: torch.Tensor, v_i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), each (N, C, 1, 1), of ``out = scale * (h - m_i) + shift``."""
        m_b = m_i.mean(dim=0, keepdim=True)
        dm = m_i - m_b
        v_b = v_i.mean(dim=0, keepdim=True) + dm.square().mean(dim=0, keepdim=True)
        rb = torch.rsqrt(v_b + self.eps)
        ri = torch.rsqrt(v_i + self.eps)
        rho = self.rho.view(1, -1, 1, 1)
        gamma = self.gamma.view(1, -1, 1, 1)
        return gamma * (rho * rb + (1 - rho) * ri), self.beta.view(1, -1, 1, 1) + gamma * rho * rb * dm

    def _forward_inplace(self, h: torch.Tensor) -> torch.Tensor:
        # same arithmetic as forward(), but every full-size operation overwrites h
        m_i = h.mean(dim=(2, 3), keepdim=True)
        h.sub_(m_i)
        v_i = torch.linalg.vector_norm(h, 2, dim=(2, 3), keepdim=True).square_().div_(h.shape[2] * h.shape[3])
        scale, shift = self._coefficients(m_i, v_i)
        return h.mul_(scale).add_(shift)

    def extra_repr(self) -> str:
        return f"{self.channels}, eps={self.eps}, inplace={self.inplace}"


@torch.no_grad()
def clamp_rho_(module: nn.Module) -> None:
    """Clip every BatchInstanceNorm's ``rho`` to [0, 1] in place (the official Keras constraint)."""
    for m in module.modules():
        if isinstance(m, BatchInstanceNorm):
            m.rho.clamp_(0.0, 1.0)


@contextlib.contextmanager
def statistics_override(
    module: nn.Module, fn: Callable[[BatchInstanceNorm, torch.Tensor], torch.Tensor]
) -> Iterator[list[BatchInstanceNorm]]:
    """Route every BatchInstanceNorm of ``module`` through ``fn(layer, h)`` inside the block.

    Used by tiled prediction to normalize tiles with whole-image statistics. Yields the layers in
    forward order.
    """
    layers = [m for m in module.modules() if isinstance(m, BatchInstanceNorm)]
    for m in layers:
        m.override = fn
    try:
        yield layers
    finally:
        for m in layers:
            m.override = None
