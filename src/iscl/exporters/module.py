"""The prediction module that every export format stores: F, H and the blend on one whole image.

:class:`IsclPredictor` computes exactly what :meth:`iscl.api.Denoiser.predict` computes for one image
without tiling or test-time augmentation: ``clip(γ F(x) + (1-γ)(x - H(x)), -1, 1)``
(:func:`iscl.engine.iscl.blend`, the one place the formula lives), in the networks' [-1, 1] range.

It is also the architecture of the BioImage Model Zoo package's ``pytorch_state_dict`` weights,
imported by consumers as ``from iscl.exporters.module import IsclPredictor``; keep its name, its
keyword arguments and its state-dict keys (``F.*``, ``H.*``) stable.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as nnf
from torch import nn

from iscl.config import NetworkConfig
from iscl.engine.iscl import blend
from iscl.nn.build import make_extractor, make_generator

__all__ = ["IsclPredictor", "MIN_SIDE"]

#: the smallest image side the generator accepts (two stride-2 stages; as Denoiser.predict)
MIN_SIDE = 4


class IsclPredictor(nn.Module):
    """ISCL's denoised output for images already mapped to [-1, 1].

    Parameters
    ----------
    network : the :class:`~iscl.config.NetworkConfig` (or its JSON dict) of the run: widths, depths,
        residual generator, zero-start extractor head.
    gamma : blend weight γ of F's output (0: the bypass x - H(x) only; 1: F only).

    Shape: (1, 1, H, W) float32 on [-1, 1] → (1, 1, H, W) float32 on [-1, 1]; H, W ≥ 4, any size.
    Batch 1: BatchInstanceNorm normalizes by the statistics of the batch it is given, so a batch of
    several images (or tiles) would change every image's result.

    Notes
    -----
    Sides that are not multiples of 4 are mirror-extended before F, exactly as
    :class:`~iscl.nn.generator.Generator` does itself, but without a Python branch on the size:
    always pad by 3 and crop to the next multiple of 4. Traced (TorchScript) and exported (ONNX)
    graphs record the shape arithmetic, so they work at any size, not only the traced one; F then
    always sees a multiple of 4 and its own padding branch is never taken.
    """

    def __init__(self, network: NetworkConfig | dict[str, Any] | None = None, gamma: float = 0.5):
        super().__init__()
        net = network if isinstance(network, NetworkConfig) else NetworkConfig.model_validate(network or {})
        if not 0.0 <= float(gamma) <= 1.0:
            raise ValueError(f"gamma must be in [0, 1]; got {gamma}")
        self.F = make_generator(net)
        self.H = make_extractor(net)
        self.gamma = float(gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        # reflect-pad by 3 then crop = the generator's reflect pad by (-side) % 4 (valid for sides >= 4)
        padded = nnf.pad(x, (0, 3, 0, 3), mode="reflect")[..., : (height + 3) // 4 * 4, : (width + 3) // 4 * 4]
        f = self.F(padded)[..., :height, :width]
        return blend(f, x - self.H(x), self.gamma)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma:g}"
