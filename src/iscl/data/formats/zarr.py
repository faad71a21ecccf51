"""Zarr (``*.zarr`` directories, v2 and v3): a chunked array read through the :mod:`zarr` package (optional).

This module only recognises, opens and reads arrays; planning blocks over a volume and writing the
denoised store (optionally on Dask) is :mod:`iscl.volumes`' job.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from iscl.errors import ImageReadError

from . import Format, register
from ._common import (
    ImageInfo,
    ImageSlices,
    _check_channel,
    _check_fits_in_memory,
    _info,
    _make_layout,
)

_METADATA_FILES = (".zarray", "zarr.json", ".zgroup")


def is_zarr(path: str | os.PathLike) -> bool:
    """True for a Zarr v2/v3 array or group directory (``*.zarr``, or one holding Zarr metadata)."""
    p = Path(path)
    return p.is_dir() and (p.suffix == ".zarr" or any((p / n).exists() for n in _METADATA_FILES))


def zarr_module() -> Any:
    """The :mod:`zarr` package, or an ImportError that says how to install it."""
    try:
        import zarr
    except ImportError:
        raise ImportError("Zarr volumes need the zarr package: pip install 'iscl[zarr]'") from None
    return zarr


def open_array(path: str | os.PathLike) -> Any:
    """Open a Zarr array read-only: ``(Z, H, W)`` or ``(H, W)``, real dtype. Raises ``ImageReadError``."""
    zarr = zarr_module()
    p = Path(path)
    try:
        node = zarr.open(str(p), mode="r")
    except Exception as exc:  # zarr raises several types for a missing/corrupt store
        raise ImageReadError(p, f"cannot open as Zarr ({type(exc).__name__}: {exc})") from None
    if not hasattr(node, "shape"):  # a group: name the arrays so the user can pick one
        names = sorted(k for k, v in node.arrays())
        hint = f"; denoise one of its arrays, e.g. {p / names[0]}" if names else " with no arrays"
        raise ImageReadError(p, f"is a Zarr group, not an array{hint}")
    if node.ndim not in (2, 3):
        raise ImageReadError(p, f"Zarr array of shape {node.shape}: expected (H, W) or (Z, H, W)")
    if np.dtype(node.dtype).kind not in "uif":
        raise ImageReadError(p, f"Zarr array of dtype {node.dtype}: expected integer or floating-point pixels")
    return node


def _plan(path: Path) -> tuple[Any, Any, ImageInfo]:
    node = open_array(path)
    axes = "ZYX" if node.ndim == 3 else "YX"
    layout = _make_layout(path, tuple(node.shape), axes)
    fmt = getattr(getattr(node, "metadata", None), "zarr_format", None)
    meta = {"axes": axes, "chunks": tuple(node.chunks), "zarr_format": fmt, "attrs": dict(node.attrs)}
    return node, layout, _info(path, "zarr", layout, np.dtype(node.dtype).newbyteorder("="), meta)


def _probe(path: Path, size: int) -> ImageInfo:
    return _plan(path)[2]


def _read(path: Path, size: int, channel: int | None) -> tuple[np.ndarray, ImageInfo]:
    node, layout, info = _plan(path)
    _check_channel(path, layout, channel)
    _check_fits_in_memory(path, math.prod(layout.stored_shape) * info.dtype.itemsize)
    try:
        arr = np.ascontiguousarray(np.asarray(node[...]))
    except Exception as exc:
        raise ImageReadError(path, f"cannot read Zarr chunks ({type(exc).__name__}: {exc})") from None
    return arr.astype(arr.dtype.newbyteorder("="), copy=False), info


def _open_slices(path: Path, size: int, channel: int | None) -> ImageSlices:
    node, layout, info = _plan(path)
    _check_channel(path, layout, channel)
    info.meta["channel"] = channel
    slices = ImageSlices(path, info, layout, channel)
    slices._array = node  # zarr arrays index like numpy and read only the chunks touched
    return slices


FORMAT = register(
    Format(
        name="zarr",
        title="Zarr",
        suffixes=(".zarr",),
        probe=_probe,
        read=_read,
        open_slices=_open_slices,
        directory=True,
        detect_dir=is_zarr,
        open_array=open_array,
    )
)
