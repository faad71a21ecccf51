"""NumPy ``.npy``: any 2-D / 3-D integer or float array; memory-mapped for slice access."""

from __future__ import annotations

import math
from pathlib import Path
from typing import IO, Any

import numpy as np

from iscl.errors import ImageReadError

from . import Format, register
from ._common import (
    ImageInfo,
    ImageSlices,
    _array_axes,
    _check_channel,
    _check_dtype,
    _check_fits_in_memory,
    _describe_exc,
    _info,
    _Layout,
    _make_layout,
    _native,
    _take_channel,
)

_NPY_MAGIC = b"\x93NUMPY"


def _npy_header(path: Path) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(f)
            else:  # 3.0 (utf-8 field names): only the private reader handles it
                shape, fortran, dtype = fmt._read_array_header(f, version)
            offset = f.tell()
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(path, f"corrupt .npy header ({_describe_exc(exc)})") from None
    return tuple(shape), bool(fortran), np.dtype(dtype), offset


def _open_npy(path: Path, size: int) -> tuple[_Layout, np.dtype, dict[str, Any]]:
    shape, fortran, dtype, offset = _npy_header(path)
    _check_dtype(path, dtype)
    layout = _make_layout(path, shape, _array_axes(shape))
    end = offset + math.prod(shape) * dtype.itemsize
    if end > size:
        raise ImageReadError(path, f"truncated .npy file (data should end at byte {end}, file has {size} bytes)")
    return layout, dtype, {"axes": layout.axes, "fortran_order": fortran}


def _probe_npy(path: Path, size: int) -> ImageInfo:
    layout, dtype, meta = _open_npy(path, size)
    return _info(path, "npy", layout, dtype.newbyteorder("="), meta)


def _read_npy(path: Path, size: int, channel: int | None) -> tuple[np.ndarray, ImageInfo]:
    layout, dtype, meta = _open_npy(path, size)
    _check_channel(path, layout, channel)
    _check_fits_in_memory(path, math.prod(layout.stored_shape) * dtype.itemsize)
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ImageReadError(path, f"cannot read .npy data ({_describe_exc(exc)})") from None
    arr = np.ascontiguousarray(_native(arr))
    return _take_channel(path, arr, layout, channel), _info(path, "npy", layout, arr.dtype, meta)


def _open_npy_slices(path: Path, size: int, channel: int | None) -> ImageSlices:
    layout, dtype, meta = _open_npy(path, size)
    _check_channel(path, layout, channel)
    info = _info(path, "npy", layout, dtype.newbyteorder("="), meta)
    info.meta["channel"] = channel
    slices = ImageSlices(path, info, layout, channel)
    try:
        slices._array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise ImageReadError(path, f"cannot read .npy data ({_describe_exc(exc)})") from None
    return slices


def _encode(path: Path, arr: np.ndarray, like: ImageInfo | None) -> Any:
    return lambda f: np.save(f, np.ascontiguousarray(arr), allow_pickle=False)


def _stack_header(f: IO[bytes], path: Path, shape: tuple[int, ...], file_dtype: np.dtype,
                  like: ImageInfo | None) -> int:
    """Write the .npy header and size the file; return where slice 0's pixels start."""
    header = {
        "descr": np.lib.format.dtype_to_descr(file_dtype),
        "fortran_order": False,
        "shape": tuple(shape),
    }
    try:
        np.lib.format.write_array_header_1_0(f, header)
    except ValueError:  # header longer than 64 KiB (absurdly many dims): needs format 2.0
        f.seek(0)
        f.truncate()
        np.lib.format.write_array_header_2_0(f, header)
    offset = f.tell()
    f.truncate(offset + math.prod(shape) * file_dtype.itemsize)
    return offset


FORMAT = register(
    Format(
        name="npy",
        title="NumPy .npy",
        suffixes=(".npy",),
        probe=_probe_npy,
        read=_read_npy,
        sniff=lambda head: head.startswith(_NPY_MAGIC),
        open_slices=_open_npy_slices,
        encode=_encode,
        stack_header=_stack_header,
    )
)
