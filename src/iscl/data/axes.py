"""Planes of a (Z, H, W) volume along z, y, x or all three (``--axis``): names, checks and slab plans.

Pure NumPy; :meth:`iscl.api.Denoiser.denoise_volume` and ``iscl train --axis`` use it.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

__all__ = ["Axis", "AXES", "SLAB_NAMES", "volume_axes", "volume_axis_problem", "plan_slabs", "slab", "plane",
           "mean_as", "plane_bytes"]

Axis = Literal["z", "y", "x", "all"]

#: the orientations a (Z, H, W) volume can be denoised (or trained) along
AXES: tuple[str, ...] = ("z", "y", "x", "all")
_AXIS_DIMS = {"z": (0,), "y": (1,), "x": (2,), "all": (0, 1, 2)}
_PLANE_NAMES = {0: "(H, W) slices", 1: "(Z, W) planes", 2: "(Z, H) planes"}
SLAB_NAMES = {0: "slices", 1: "rows", 2: "columns"}


def volume_axes(axis: str) -> tuple[int, ...]:
    """The volume dimensions whose planes ``axis`` takes: ``z`` → (0,) (the (H, W) slices, one per Z),
    ``y`` → (1,) (the (Z, W) planes, one per row), ``x`` → (2,) (the (Z, H) planes, one per column), ``all``
    → (0, 1, 2). Raises ``ValueError`` for another name."""
    try:
        return _AXIS_DIMS[axis]
    except (KeyError, TypeError):
        raise ValueError(f"--axis must be one of {', '.join(AXES)}; got {axis!r}") from None


def volume_axis_problem(shape: tuple[int, ...], axis: str) -> str | None:
    """Why a (Z, H, W) volume (or an (H, W) image) of ``shape`` cannot be denoised along ``axis``, or None.

    ``z`` takes 2-D images too; ``y``/``x``/``all`` need a volume whose planes in those orientations are
    at least 4x4 pixels (the networks' smallest input).
    """
    dims = volume_axes(axis)
    if len(shape) != 3:
        return None if axis == "z" else (f"--axis {axis} needs a (Z, H, W) volume; this is a 2-D image of "
                                         f"{shape[-2]}x{shape[-1]} pixels (use --axis z)")
    for d in dims:
        ph, pw = (shape[i] for i in range(3) if i != d)
        if min(ph, pw) < 4:
            return (f"--axis {axis}: the {_PLANE_NAMES[d]} of this {shape[0]}x{shape[1]}x{shape[2]} volume are "
                    f"{ph}x{pw} pixels, too small for the networks (at least 4x4)")
    return None


def plan_slabs(n: int, chunk: int, bytes_per_plane: int, memory_budget: int | None) -> list[tuple[int, int]]:
    """Ranges ``[a, b)`` of planes along one axis holding at most ``memory_budget`` bytes (None: one range);
    whole chunks of ``chunk`` planes when one chunk fits (so a chunk is read and written once per axis)."""
    if memory_budget is None:
        return [(0, n)]
    depth = max(1, memory_budget // max(1, bytes_per_plane))
    if chunk and depth >= chunk:
        depth -= depth % chunk
    return [(a, min(a + depth, n)) for a in range(0, n, depth)]


def slab(d: int, a: int, b: int) -> tuple[slice, ...]:
    idx = [slice(None)] * 3
    idx[d] = slice(a, b)
    return tuple(idx)


def plane(d: int, i: int) -> tuple[Any, ...]:
    idx: list[Any] = [slice(None)] * 3
    idx[d] = i
    return tuple(idx)


def mean_as(total: np.ndarray, n: int, dtype: np.dtype) -> np.ndarray:
    """``total / n`` in ``dtype``: integers rounded to nearest and clipped to the dtype's range, as
    :meth:`~iscl.data.normalize.Normalizer.inverse` converts."""
    mean = total / n
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(mean), info.min, info.max).astype(dtype)
    return mean.astype(dtype)


def plane_bytes(shape: tuple[int, ...], d: int, per_pixel: int) -> int:
    """Bytes of one plane across dimension ``d`` of a volume of ``shape``, at ``per_pixel`` bytes a pixel."""
    return math.prod(shape) // shape[d] * per_pixel
