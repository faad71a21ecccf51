"""NIfTI-1 and NIfTI-2 (``.nii``, ``.nii.gz``), via :mod:`nibabel` (optional: ``pip install 'iscl[nifti]'``).

Axes
    NIfTI indexes voxels ``(i, j, k)`` along ``(x, y, z)``, ``i`` fastest on disk. iscl's ``(Z, H, W)``
    is ``(k, j, i)``: slice ``z`` is the plane ``data[:, :, z]`` transposed (rows along y, columns along
    x), so a 3-D volume is denoised slice by slice along z, and a 2-D image ``(x, y)`` is ``(H, W) =
    (y, x)``. This is the file's own byte order read in C order (the same array as SimpleITK's
    ``GetArrayFromImage``), so slices are contiguous on disk and the transposition costs no copy.
    The affine is not touched: it maps ``(i, j, k)`` as before.

Values
    Without scaling (``scl_slope`` 0, NaN or 1 and ``scl_inter`` 0 or NaN) the stored values, in the
    stored dtype. With scaling, ``stored * scl_slope + scl_inter`` (what ``nibabel``'s ``get_fdata``
    gives, e.g. Hounsfield units), as float32 when the stored type is an integer of at most 16 bits
    (the round trip below is then exact), float64 otherwise.

Writing
    With a NIfTI ``like=``, its header as read from disk is copied (affine through qform/sform, pixdim,
    units, descrip, intent, cal_min/cal_max, extensions, byte order, NIfTI-1 or -2) and only the shape
    and, for unscaled data, the dtype are set. Scaled data are stored back through the inverse scaling
    in the stored dtype (rounded and clipped for integers) under the same slope and intercept, so
    reading a file and writing it back gives the same header and stored values. Without a NIfTI
    ``like=``: a NIfTI-1 header with an identity affine. ``.nii.gz`` outputs are gzip-compressed.
    Outputs are written whole (NIfTI volumes fit in memory; gzip cannot be written out of order).
"""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np

from iscl.errors import ImageReadError, ImageWriteError

from . import Format, register
from ._common import (
    ImageInfo,
    ImageSlices,
    SliceReader,
    _check_channel,
    _check_dtype,
    _check_fits_in_memory,
    _describe_exc,
    _info,
    _make_layout,
    _native,
    _same_format,
)

SUFFIXES = (".nii", ".nii.gz")
_NIFTI2_MAGIC = b"n+2\x00\r\n\x1a\n"
# bits per voxel of each NIfTI datatype code: a header's datatype and bitpix must agree
_BITPIX = {2: 8, 4: 16, 8: 32, 16: 32, 32: 64, 64: 64, 128: 24, 256: 8, 512: 16, 768: 32, 1024: 64, 1280: 64,
           1536: 128, 1792: 128, 2048: 256, 2304: 32}
#: scaled values are float32 when |scl_inter / scl_slope| stays below this (float32 then keeps every
#: 16-bit stored value apart: the inverse scaling recovers it exactly), else float64
_FLOAT32_EXACT = 2**20


def _nib() -> Any:
    try:
        import nibabel
    except ImportError:
        raise ImportError("NIfTI files need the nibabel package: pip install 'iscl[nifti]'") from None
    return nibabel


def _sniff(head: bytes) -> bool:
    """An uncompressed NIfTI-1 or -2 header (``.nii.gz`` starts with gzip's bytes: the name decides)."""
    for order in "<>":
        (size,) = struct.unpack(order + "i", head[:4]) if len(head) >= 4 else (0,)
        if size == 540:
            return head[4:12] == _NIFTI2_MAGIC
        if size == 348 and len(head) >= 74:
            (dim0,) = struct.unpack(order + "h", head[40:42])
            datatype, bitpix = struct.unpack(order + "hh", head[70:74])
            return 1 <= dim0 <= 7 and _BITPIX.get(datatype) == bitpix
    return False


def _compressed(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def _read_header(path: Path) -> Any:
    """The header as stored (nibabel's loaded images reset scl_slope/inter and vox_offset)."""
    nib = _nib()
    from nibabel.openers import Opener

    try:
        with Opener(str(path)) as f:
            first = f.read(4)
            sizes = {int.from_bytes(first, "little"), int.from_bytes(first, "big")} if len(first) == 4 else set()
            if 348 in sizes:
                header_class = nib.Nifti1Header
            elif 540 in sizes:
                header_class = nib.Nifti2Header
            else:
                found = int.from_bytes(first.ljust(4, b"\0"), "little")
                raise ImageReadError(path, f"not a NIfTI file (its header size field is {found}, not 348 or 540)")
            f.seek(0)
            hdr = header_class.from_fileobj(f)
    except ImageReadError:
        raise
    except Exception as exc:  # gzip, struct and nibabel's header checks all raise their own types
        raise ImageReadError(path, f"not a valid NIfTI file ({_describe_exc(exc)})") from None
    if not hdr.is_single:
        raise ImageReadError(path, "is the header of a NIfTI pair (.hdr/.img); convert it to a single .nii file")
    return hdr


def _float_dtype(stored: np.dtype, slope: float, inter: float) -> np.dtype:
    exact32 = stored.kind in "iu" and stored.itemsize <= 2 and abs(inter / slope) < _FLOAT32_EXACT
    return np.dtype(np.float32 if exact32 else np.float64)


def _plan(path: Path, size: int) -> tuple[tuple[Any, ...], Any, ImageInfo]:
    """(ArrayProxy spec of the stored values, layout, info) after every header-level check."""
    hdr = _read_header(path)
    shape = tuple(int(n) for n in hdr.get_data_shape())
    if len(shape) > 3:
        raise ImageReadError(
            path, f"{len(shape)}-D NIfTI (shape {shape}, axes x y z t ...) is not supported; "
            "need 2-D (x, y) or 3-D (x, y, z)",
        )
    stored = np.dtype(hdr.get_data_dtype())
    _check_dtype(path, stored)
    try:
        slope, inter = hdr.get_slope_inter()
    except Exception as exc:
        raise ImageReadError(path, f"invalid NIfTI scaling ({_describe_exc(exc)})") from None
    scaled = slope is not None and (slope != 1 or inter != 0)
    axes = "ZYX" if len(shape) == 3 else "YX"
    layout = _make_layout(path, shape[::-1], axes)  # (x, y[, z]) -> ([Z,] H, W)
    offset = int(hdr.get_data_offset())
    end = offset + math.prod(shape) * stored.itemsize
    if not _compressed(path) and end > size:
        raise ImageReadError(path, f"truncated NIfTI (data should end at byte {end} but the file has {size} bytes)")
    dtype = _float_dtype(stored, slope, inter) if scaled else stored.newbyteorder("=")
    meta = {
        "axes": axes,
        "header": hdr,
        "affine": hdr.get_best_affine(),
        "stored_dtype": stored.newbyteorder("="),
        "scl_slope": float(slope) if scaled else None,
        "scl_inter": float(inter) if scaled else None,
        "compressed": _compressed(path),
    }
    return (shape, stored, offset), layout, _info(path, "nifti", layout, dtype, meta)


def _proxy(path: Path, spec: tuple[Any, ...], keep_file_open: bool) -> Any:
    # Unscaled on purpose: the scaling is ours (dtype rules above), not nibabel's float64.
    from nibabel.arrayproxy import ArrayProxy

    return ArrayProxy(str(path), spec, mmap=False, keep_file_open=keep_file_open)


def _to_values(raw: np.ndarray, info: ImageInfo) -> np.ndarray:
    """Stored ``(x, y[, z])`` values -> ``([Z,] H, W)`` array of ``info.dtype``."""
    arr = raw.T  # the transpose of a Fortran-order array is C-contiguous: no copy
    slope = info.meta["scl_slope"]
    if slope is not None:
        return (arr.astype(np.float64) * slope + info.meta["scl_inter"]).astype(info.dtype)
    return np.ascontiguousarray(_native(arr))


def _probe(path: Path, size: int) -> ImageInfo:
    return _plan(path, size)[2]


def _read(path: Path, size: int, channel: int | None) -> tuple[np.ndarray, ImageInfo]:
    spec, layout, info = _plan(path, size)
    _check_channel(path, layout, channel)
    _check_fits_in_memory(path, max(info.nbytes, math.prod(spec[0]) * spec[1].itemsize))
    try:
        raw = np.asarray(_proxy(path, spec, keep_file_open=False))
    except Exception as exc:  # EOFError (gzip), OSError "Expected N bytes", zlib.error, ...
        raise ImageReadError(path, f"corrupt or truncated NIfTI (cannot read the data: {_describe_exc(exc)})") from None
    return _to_values(raw, info), info


class _ProxyReader(SliceReader):
    """Read one z plane through an unscaled ArrayProxy (a kept-open handle: gzip seeks only forward)."""

    def __init__(self, path: Path, proxy: Any, info: ImageInfo) -> None:
        self.path, self._proxy, self._info = path, proxy, info

    def __call__(self, index: tuple[Any, ...]) -> np.ndarray:
        try:
            raw = np.asarray(self._proxy[index[::-1]])  # (z, :, :) -> (:, :, z)
        except Exception as exc:
            where = f"slice {index[0]}" if len(index) == 3 else "the image"
            raise ImageReadError(
                self.path, f"corrupt or truncated NIfTI (cannot read {where}: {_describe_exc(exc)})"
            ) from None
        return _to_values(raw, self._info)

    def close(self) -> None:
        self._proxy = None  # the proxy closes the file it kept open when it is collected


def _open_slices(path: Path, size: int, channel: int | None) -> ImageSlices:
    spec, layout, info = _plan(path, size)
    _check_channel(path, layout, channel)
    info.meta["channel"] = channel
    slices = ImageSlices(path, info, layout, channel)
    slices._reader = _ProxyReader(path, _proxy(path, spec, keep_file_open=True), info)
    return slices


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def _new_header() -> Any:
    nib = _nib()
    # nibabel's own default for an image with an identity affine (sform 'aligned', magic n+1)
    return nib.Nifti1Image(np.zeros((1, 1), np.uint8), np.eye(4)).header.copy()


def _check_write(path: Path, shape: tuple[int, ...], dtype: np.dtype, like: ImageInfo | None,
                 streaming: bool) -> None:
    like = _same_format(like, "nifti")
    if like is not None and like.meta["scl_slope"] is not None:
        return  # stored in the source's dtype through its scaling
    try:
        _new_header().set_data_dtype(dtype)
    except Exception:  # nibabel's HeaderDataError: no NIfTI code for this dtype
        raise ImageWriteError(
            path, f"NIfTI cannot store {np.dtype(dtype)} pixels; use (u)int8/16/32/64, float32 or float64"
        ) from None


def _stored(arr: np.ndarray, like: ImageInfo) -> np.ndarray:
    """Values -> the source's stored dtype through its inverse scaling (rounded, clipped for integers)."""
    stored = like.meta["stored_dtype"]
    data = (arr.astype(np.float64) - like.meta["scl_inter"]) / like.meta["scl_slope"]
    if stored.kind in "iu":
        limits = np.iinfo(stored)
        data = np.clip(np.rint(data), limits.min, limits.max)
    return data.astype(stored)


def _encode(path: Path, arr: np.ndarray, like: ImageInfo | None) -> Any:
    from nibabel.openers import Opener

    like = _same_format(like, "nifti")
    if like is not None and like.meta["scl_slope"] is not None:
        arr = _stored(arr, like)
    try:
        hdr = like.meta["header"].copy() if like is not None else _new_header()
        # only what differs: set_data_shape also resets pixdim beyond the new number of dimensions
        if np.dtype(hdr.get_data_dtype()).newbyteorder("=") != arr.dtype:
            hdr.set_data_dtype(arr.dtype)
        if tuple(hdr.get_data_shape()) != arr.shape[::-1]:
            hdr.set_data_shape(arr.shape[::-1])
    except Exception as exc:  # e.g. a side over 32767 in a NIfTI-1 header
        raise ImageWriteError(path, f"cannot describe this image in a NIfTI header ({_describe_exc(exc)})") from None
    data = arr.T  # ([Z,] H, W) -> (x, y[, z]), Fortran-contiguous: written in the file's order without a copy

    def write(f: Any) -> None:
        if not _compressed(path):
            _write_nifti(f, hdr, data)
            return
        with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=Opener.default_compresslevel, mtime=0) as gz:
            _write_nifti(gz, hdr, data)

    return write


def _write_nifti(f: Any, hdr: Any, data: np.ndarray) -> None:
    from nibabel.volumeutils import array_to_file

    hdr.write_to(f)  # header and extensions; sets vox_offset when it was 0
    # in the header's byte order (a big-endian source stays big-endian)
    array_to_file(data, f, hdr.get_data_dtype(), offset=hdr.get_data_offset(), order="F")


FORMAT = register(
    Format(
        name="nifti",
        title="NIfTI",
        suffixes=SUFFIXES,
        probe=_probe,
        read=_read,
        sniff=_sniff,
        trust_suffix=True,  # .nii.gz starts with gzip's magic; the header checks in _read_header decide
        open_slices=_open_slices,
        check_write=_check_write,
        encode=_encode,
    )
)
