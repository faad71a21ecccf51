"""Invertible intensity mappings between an image's own units and the networks' [-1, 1] range.

A normalizer is fitted once on the training images, stored in the checkpoint's ``config.json`` and
reused unchanged by ``denoise``, so prediction sees exactly the mapping training saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["Normalizer", "NormalizationConfig", "fit_normalizer", "dtype_range"]


class NormalizationConfig(BaseModel):
    """How to choose the intensity window ``[low, high]`` that maps to [-1, 1].

    mode
        ``auto``: 8-bit data uses the fixed 0–255 window (the paper's ``x/255*2-1``), anything else the
        percentile window. ``fixed``: ``low``/``high`` as given. ``percentile``: the ``percentiles``
        of all training pixels (clean and noisy pools together), robust to hot pixels.
        ``ct-window``: a Hounsfield window given by ``center``/``width`` (for DICOM CT in HU).
    headroom
        Widens the window by ``headroom * (high - low)`` on each side: 0.05 maps ``[low, high]`` to
        [-0.91, 0.91]. Data clipped at the window's ends (air in a CT display window, saturated EM) then
        sit inside the range of F's tanh instead of at its asymptote.
    """

    model_config = ConfigDict(extra="forbid")

    mode: Literal["auto", "fixed", "percentile", "ct-window"] = "auto"
    low: float | None = None
    high: float | None = None
    percentiles: tuple[float, float] = (0.1, 99.9)
    center: float = 40.0
    width: float = 400.0
    headroom: float = Field(
        0.0, ge=0.0, le=1.0, description="widen the chosen window by this fraction of its width on each side, so "
        "that its ends map inside (-1, 1) where the generators' tanh can reach them (0: the paper's mapping)")

    @model_validator(mode="after")
    def _check(self) -> NormalizationConfig:
        if self.mode == "fixed" and (self.low is None or self.high is None or not self.high > self.low):
            raise ValueError(f"fixed normalization needs low < high; got low={self.low}, high={self.high}")
        lo, hi = self.percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100; got {self.percentiles}")
        if self.width <= 0:
            raise ValueError(f"ct-window width must be positive; got {self.width}")
        return self


class Normalizer(BaseModel):
    """A fitted linear map ``v ↦ 2 (v - low) / (high - low) - 1`` and its exact inverse.

    Values outside ``[low, high]`` are *not* clipped on the way in (the networks see slightly
    out-of-range values); the inverse clips to ``output_range`` (usually the input dtype's range).
    """

    model_config = ConfigDict(extra="forbid")

    low: float
    high: float
    source: str = Field(default="fixed", description="how low/high were chosen (for the record)")

    @model_validator(mode="after")
    def _check(self) -> Normalizer:
        if not (np.isfinite(self.low) and np.isfinite(self.high) and self.high > self.low):
            raise ValueError(f"normalizer needs finite low < high; got low={self.low}, high={self.high}")
        return self

    def forward(self, image: np.ndarray) -> np.ndarray:
        """Map an array in the image's units to float32 with [low, high] → [-1, 1]."""
        a = np.asarray(image)
        scale = 2.0 / (self.high - self.low)
        out = a.astype(_work_dtype(a.dtype))  # float32 work for ≤16-bit data: no 8-byte copy of a huge image
        out -= self.low
        out *= scale
        out -= 1.0
        return out.astype(np.float32, copy=False)

    def inverse(self, values: np.ndarray, dtype: np.dtype | type | None = None) -> np.ndarray:
        """Map [-1, 1] values back to the image's units.

        For integer ``dtype`` the result is rounded and clipped to that dtype's range; for float
        dtypes it is cast. ``dtype=None`` returns float32.
        """
        v = np.asarray(values)
        work = np.float64 if dtype is not None and _work_dtype(np.dtype(dtype)) == np.float64 else np.float32
        out = v.astype(work)
        out += 1.0
        out *= 0.5 * (self.high - self.low)
        out += self.low
        if dtype is None:
            return out.astype(np.float32)
        dtype = np.dtype(dtype)
        if np.issubdtype(dtype, np.integer):
            lo, hi = dtype_range(dtype)
            return np.clip(np.rint(out), lo, hi).astype(dtype)
        return out.astype(dtype)


def _work_dtype(dtype: np.dtype) -> type:
    """float32 is exact enough for 8/16-bit and float32 images (integers up to 2**24 are exact);
    wider types keep float64."""
    if dtype.itemsize <= 2 or dtype == np.float32:
        return np.float32
    return np.float64


def dtype_range(dtype: np.dtype | type) -> tuple[float, float]:
    """(min, max) representable by an integer dtype, e.g. (0, 255) for uint8."""
    info = np.iinfo(np.dtype(dtype))
    return float(info.min), float(info.max)


def fit_normalizer(images: Sequence[np.ndarray], config: NormalizationConfig | None = None,
                   max_samples: int = 2_000_000, seed: int = 0) -> Normalizer:
    """Choose the intensity window from training images (see :class:`NormalizationConfig`), with its headroom.

    Parameters
    ----------
    images : sequence of arrays, any shape and real dtype, in the images' own units.
    config : the rule (default ``auto``, no headroom).
    max_samples : percentiles are computed on at most this many pixels drawn evenly from every image
        (exact for small sets; keeps memory flat for large ones).
    """
    config = config or NormalizationConfig()
    fitted = _fit_window(images, config, max_samples, seed)
    if config.headroom == 0:
        return fitted
    pad = config.headroom * (fitted.high - fitted.low)
    return Normalizer(low=fitted.low - pad, high=fitted.high + pad,
                      source=f"{fitted.source}, widened by {config.headroom:g} of its width on each side")


def _fit_window(images: Sequence[np.ndarray], config: NormalizationConfig, max_samples: int,
                seed: int) -> Normalizer:
    """The window of ``config``'s rule, before headroom."""
    if not images:
        raise ValueError("fit_normalizer: no images given")
    mode = config.mode
    if mode == "auto":
        mode = "fixed-uint8" if all(np.asarray(im).dtype == np.uint8 for im in images) else "percentile"
    if mode == "fixed-uint8":
        return Normalizer(low=0.0, high=255.0, source="uint8 range 0-255 (paper)")
    if mode == "fixed":
        return Normalizer(low=float(config.low), high=float(config.high), source="fixed")
    if mode == "ct-window":
        half = config.width / 2.0
        return Normalizer(low=config.center - half, high=config.center + half,
                          source=f"CT window center {config.center} HU, width {config.width} HU")
    rng = np.random.default_rng(seed)
    per_image = max(1, max_samples // len(images))
    samples = []
    for im in images:
        flat = np.asarray(im).reshape(-1)
        if flat.size > per_image:
            flat = flat[rng.choice(flat.size, per_image, replace=False)]
        samples.append(flat.astype(np.float64))
    pooled = np.concatenate(samples)
    low, high = np.percentile(pooled, config.percentiles)
    if not high > low:  # constant data: fall back to a unit window around the value
        low, high = float(low) - 0.5, float(low) + 0.5
    return Normalizer(low=float(low), high=float(high),
                      source=f"percentiles {config.percentiles[0]}-{config.percentiles[1]} of training pixels")
