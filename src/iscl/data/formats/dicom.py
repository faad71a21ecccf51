"""DICOM (``.dcm``, or any file with the ``DICM`` marker at byte 128), via :mod:`pydicom` (optional).

Pixels are returned in modality units (Hounsfield units for CT) as float32 and written back through the
inverse rescale into a copy of the source dataset (``like=`` is required to write).
"""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path
from typing import IO, Any

import numpy as np

from iscl.errors import ImageReadError, ImageWriteError

from . import Format, register
from ._common import (
    ImageInfo,
    PathLike,
    _check_channel,
    _check_dtype,
    _check_finite,
    _check_fits_in_memory,
    _describe_exc,
    _info,
    _Layout,
    _make_layout,
    _take_channel,
)

_DICOM_MAGIC_OFFSET = 128

_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _pydicom(path: PathLike) -> Any:
    try:
        import pydicom
    except ImportError:
        raise ImageReadError(
            path, "reading DICOM needs the optional 'pydicom' package (pip install 'iscl[dicom]')"
        ) from None
    return pydicom


def _dicom_rescale(ds: Any, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame (slope, intercept) of the modality rescale, (1, 0) when absent."""

    def pair(item: Any) -> tuple[float, float] | None:
        if item is None or ("RescaleSlope" not in item and "RescaleIntercept" not in item):
            return None
        slope = item.get("RescaleSlope", 1.0)
        intercept = item.get("RescaleIntercept", 0.0)
        return float(1.0 if slope in (None, "") else slope), float(0.0 if intercept in (None, "") else intercept)

    def transform(group: Any) -> Any:
        seq = group.get("PixelValueTransformationSequence") if group is not None else None
        return seq[0] if seq else None

    found = pair(ds)
    if found is None:  # enhanced multi-frame objects keep it in functional groups
        shared = ds.get("SharedFunctionalGroupsSequence")
        found = pair(transform(shared[0])) if shared else None
    if found is None:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        if per_frame and len(per_frame) == n_frames:
            pairs = [pair(transform(item)) or (1.0, 0.0) for item in per_frame]
            return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    slope, intercept = found or (1.0, 0.0)
    return np.full(n_frames, slope), np.full(n_frames, intercept)


def _dicom_stored_dtype(ds: Any) -> np.dtype | None:
    bits = int(ds.get("BitsAllocated", 0) or 0)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    if bits in (8, 16, 32):
        return np.dtype(f"{'i' if signed else 'u'}{bits // 8}")
    return None


def _dicom_plan(path: Path, ds: Any) -> tuple[_Layout, dict[str, Any]]:
    if not any(tag in ds for tag in _PIXEL_TAGS):
        raise ImageReadError(path, "DICOM file has no pixel data (no PixelData element)")
    if "ModalityLUTSequence" in ds:
        raise ImageReadError(path, "DICOM uses a Modality LUT Sequence (non-linear rescale), which is not supported")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageReadError(path, f"DICOM image header is incomplete ({_describe_exc(exc)})") from None
    shape: tuple[int, ...] = (rows, cols)
    axes = "YX"
    if frames > 1:
        shape, axes = (frames, *shape), "Z" + axes
    if samples > 1:
        shape, axes = (*shape, samples), axes + "S"
    layout = _make_layout(path, shape, axes)
    stored = _dicom_stored_dtype(ds)
    if "PixelData" in ds and stored is None:
        raise ImageReadError(path, f"unsupported DICOM BitsAllocated={ds.get('BitsAllocated')}")
    slope, intercept = _dicom_rescale(ds, frames)
    file_meta = getattr(ds, "file_meta", None)
    meta = {
        "axes": axes,
        "dataset": ds,
        "stored_dtype": stored,
        "bits_stored": int(ds.get("BitsStored", 0) or (stored.itemsize * 8 if stored else 0)),
        "rescale_slope": slope,
        "rescale_intercept": intercept,
        "transfer_syntax": str(file_meta.get("TransferSyntaxUID", "")) if file_meta is not None else "",
        "photometric": str(ds.get("PhotometricInterpretation", "")),
    }
    return layout, meta


def _dcmread(path: Path, **kwargs: Any) -> Any:
    pydicom = _pydicom(path)
    force = not _has_dicom_magic(path)  # files without preamble: let pydicom try
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on benign deviations; errors still raise
            ds = pydicom.dcmread(path, force=force, **kwargs)
    except Exception as exc:
        raise ImageReadError(path, f"not a valid DICOM file ({_describe_exc(exc)})") from None
    # A forced read parses almost any bytes into a few junk elements; demand real image elements.
    if force and not any(k in ds for k in ("SOPClassUID", "Rows", "StudyInstanceUID", *_PIXEL_TAGS)):
        raise ImageReadError(path, "not a valid DICOM file (no 'DICM' marker and no DICOM image elements)")
    return ds


def _probe_dicom(path: Path, size: int) -> ImageInfo:
    # defer_size: large values (the pixel data) are not read, only located.
    ds = _dcmread(path, defer_size=4096)
    layout, meta = _dicom_plan(path, ds)
    return _info(path, "dicom", layout, np.dtype(np.float32), meta)


def _read_dicom(path: Path, size: int, channel: int | None) -> tuple[np.ndarray, ImageInfo]:
    ds = _dcmread(path)
    layout, meta = _dicom_plan(path, ds)
    _check_channel(path, layout, channel)
    _check_fits_in_memory(path, math.prod(layout.stored_shape) * 4)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stored = ds.pixel_array
    except Exception as exc:
        reason = _describe_exc(exc)
        ts = meta["transfer_syntax"]
        raise ImageReadError(path, f"cannot decode DICOM pixel data (transfer syntax {ts}): {reason}") from None
    if tuple(stored.shape) != layout.stored_shape:
        raise ImageReadError(path, f"DICOM pixel data have shape {stored.shape}, header says {layout.stored_shape}")
    _check_dtype(path, stored.dtype)
    stored = _take_channel(path, stored, layout, channel)
    # Hounsfield units (or the modality's units): HU = stored * slope + intercept, per frame.
    hu = stored.astype(np.float32)
    slope, intercept = meta["rescale_slope"], meta["rescale_intercept"]
    if hu.ndim == 3 and len(slope) == hu.shape[0]:
        hu *= slope.astype(np.float32)[:, None, None]
        hu += intercept.astype(np.float32)[:, None, None]
    else:
        hu *= np.float32(slope[0])
        hu += np.float32(intercept[0])
    _check_finite(path, hu)
    return hu, _info(path, "dicom", layout, np.dtype(np.float32), meta)

def _dicom_encode(path: Path, arr: np.ndarray, like: ImageInfo | None) -> Any:
    """Build the output Dataset (not yet written): HU -> stored values, new pixel data and UID."""
    if like is None or like.format != "dicom" or "dataset" not in like.meta:
        raise ImageWriteError(path, "writing DICOM needs like= the ImageInfo of the source DICOM file")
    try:
        _pydicom(path)
    except ImageReadError as exc:
        raise ImageWriteError(path, exc.problem) from None
    meta = like.meta
    if like.n_channels != 1:
        raise ImageWriteError(path, "cannot write one channel back into a colour DICOM")
    if tuple(arr.shape) != tuple(like.shape):
        raise ImageWriteError(path, f"array shape {arr.shape} differs from the source DICOM {like.shape}")
    stored_dtype = meta.get("stored_dtype")
    if stored_dtype is None or stored_dtype.itemsize > 2:
        raise ImageWriteError(path, f"cannot write DICOM pixel data of type {stored_dtype}")
    ds = copy.deepcopy(meta["dataset"])
    for tag in ("FloatPixelData", "DoubleFloatPixelData"):
        if tag in ds:
            raise ImageWriteError(path, f"cannot write DICOM with {tag}")
    ts = meta.get("transfer_syntax")
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is not None and ts:
        from pydicom.uid import UID

        if not UID(ts).is_little_endian:
            raise ImageWriteError(path, f"cannot write big-endian DICOM (transfer syntax {ts})")
    bits_stored = int(meta.get("bits_stored") or stored_dtype.itemsize * 8)
    if stored_dtype.kind == "i":
        lo, hi = -(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1
    else:
        lo, hi = 0, 2**bits_stored - 1
    slope = np.asarray(meta["rescale_slope"], dtype=np.float64)
    intercept = np.asarray(meta["rescale_intercept"], dtype=np.float64)
    if arr.ndim == 3:
        slope, intercept = slope[:, None, None], intercept[:, None, None]
    else:
        slope, intercept = slope[0], intercept[0]
    values = np.rint((arr.astype(np.float64) - intercept) / slope)
    stored = np.clip(values, lo, hi).astype(stored_dtype)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        photometric = "MONOCHROME2"
    try:
        ds.set_pixel_data(stored, photometric, bits_stored, generate_instance_uid=True)
    except Exception as exc:
        raise ImageWriteError(path, f"cannot encode DICOM pixel data ({_describe_exc(exc)})") from None
    if stored.size:
        if "SmallestImagePixelValue" in ds:
            ds.SmallestImagePixelValue = int(stored.min())
        if "LargestImagePixelValue" in ds:
            ds.LargestImagePixelValue = int(stored.max())
    return ds


def _write_dicom(f: IO[bytes], ds: Any) -> None:
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pydicom.dcmwrite(f, ds, enforce_file_format=True)



def _has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(_DICOM_MAGIC_OFFSET)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _check_write(path: Path, shape: tuple[int, ...], dtype: np.dtype, like: ImageInfo | None,
                 streaming: bool) -> None:
    # Only a source DICOM can give the header; say so before any work is done.
    if streaming and (like is None or like.format != "dicom"):
        raise ImageWriteError(path, "writing DICOM needs like= the ImageInfo of the source DICOM file")


def _encode(path: Path, arr: np.ndarray, like: ImageInfo | None) -> Any:
    ds = _dicom_encode(path, arr, like)
    return lambda f: _write_dicom(f, ds)


FORMAT = register(
    Format(
        name="dicom",
        title="DICOM",
        suffixes=(".dcm",),
        probe=_probe_dicom,
        read=_read_dicom,
        sniff=lambda head: head[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM",
        trust_content=True,
        trust_suffix=True,
        check_write=_check_write,
        encode=_encode,
    )
)
