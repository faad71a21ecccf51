"""NaN/Inf checks of images, shared by the file readers/writers, the API and the volume jobs."""

from __future__ import annotations

import numpy as np

__all__ = ["count_nonfinite", "nonfinite_problem", "require_finite"]


def count_nonfinite(arr: np.ndarray) -> tuple[int, int]:
    """(number of NaN, number of ±Inf) in an array (0, 0 for integer data); (Z, H, W) is counted slice by
    slice so that the boolean masks stay one slice in size."""
    if arr.dtype.kind not in "fc":
        return 0, 0
    n_nan = n_inf = 0
    blocks = arr if arr.ndim == 3 else (arr,)
    for block in blocks:
        finite = np.isfinite(block)
        if not finite.all():
            nan = int(np.count_nonzero(np.isnan(block)))
            n_nan += nan
            n_inf += int(block.size - np.count_nonzero(finite)) - nan
    return n_nan, n_inf


def nonfinite_problem(n_nan: int, n_inf: int, size: int) -> str:
    """The words of every NaN/Inf message: ``contains 3 NaN and 1 Inf pixel values (of 4096)``."""
    return f"contains {n_nan} NaN and {n_inf} Inf pixel values (of {size})"


def require_finite(arr: np.ndarray, what: str) -> None:
    """Raise ``ValueError("<what>: contains ...; fix or mask them first")`` if ``arr`` has NaN or Inf."""
    n_nan, n_inf = count_nonfinite(arr)
    if n_nan or n_inf:
        raise ValueError(f"{what}: {nonfinite_problem(n_nan, n_inf, arr.size)}; fix or mask them first")
