"""Image file input/output for ``iscl train`` and ``iscl denoise``.

Formats
-------
* TIFF (``.tif``, ``.tiff``): 2-D images and 3-D stacks, classic and BigTIFF, plain, ImageJ and
  OME-TIFF, via :mod:`tifffile`. Uncompressed stacks can be read slice by slice through a memory map.
* PNG (``.png``): 8- and 16-bit grayscale, via Pillow.
* NumPy (``.npy``): any 2-D / 3-D integer or float array.
* DICOM (``.dcm``, or any file with the ``DICM`` marker at byte 128), via :mod:`pydicom` (optional
  dependency): pixels are returned in modality units (Hounsfield units for CT) as float32.

Conventions
-----------
* Arrays are ``(H, W)`` for a 2-D image and ``(Z, H, W)`` for a stack, in the file's own dtype (the
  byte order is made native). DICOM is the exception: float32 in modality units.
* Colour or multi-channel data must be reduced to one channel with ``channel=`` (0-based).
* Every problem with an input raises :class:`~iscl.errors.ImageReadError` and every problem with an
  output raises :class:`~iscl.errors.ImageWriteError`; both name the file and the problem on one line.
* Writes are atomic: data go to a hidden temporary file (``.<name>.tmp-<random>``) in the target
  directory, are fsync'ed, then renamed over the final name. A failed write leaves nothing under the
  final name; a hard kill can at most leave the hidden temporary file, which :func:`find_images`
  ignores.
"""

from __future__ import annotations

import copy
import errno as errno_mod
import glob
import logging
import math
import os
import re
import secrets
import shutil
import uuid
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from iscl.errors import ImageReadError, ImageWriteError

__all__ = [
    "SUPPORTED_SUFFIXES",
    "ImageInfo",
    "ImageSlices",
    "StackWriter",
    "create_output_like",
    "find_images",
    "is_supported",
    "open_slices",
    "probe",
    "read_image",
    "write_image",
]

PathLike = str | os.PathLike

#: File name suffixes recognised as images (lower case). DICOM files are also recognised by their
#: ``DICM`` marker at byte 128 whatever their name, since scanners often export files without suffix.
SUPPORTED_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".png", ".npy", ".dcm")

_SUFFIX_FORMAT = {".tif": "tiff", ".tiff": "tiff", ".png": "png", ".npy": "npy", ".dcm": "dicom"}
_FORMAT_SUFFIX = {"tiff": ".tif", "png": ".png", "npy": ".npy", "dicom": ".dcm"}
_FORMAT_NAME = {"tiff": "TIFF", "png": "PNG", "npy": "NumPy .npy", "dicom": "DICOM"}

_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both orders
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_NPY_MAGIC = b"\x93NUMPY"
_DICOM_MAGIC_OFFSET = 128

#: Above this many bytes of pixel data a TIFF is written as BigTIFF. The classic format can address
#: 4 GiB, but headers, metadata and alignment come on top, so switch early.
BIGTIFF_THRESHOLD = 2**31

_TIFF_COMPRESSIONS_KEPT = {8, 32946, 34925, 50000}  # deflate (both codes), lzma, zstd: lossless


# --------------------------------------------------------------------------------------------------
# ImageInfo
# --------------------------------------------------------------------------------------------------


@dataclass
class ImageInfo:
    """What is known about an image file from its header.

    Attributes
    ----------
    path : pathlib.Path
        The file, as given by the caller.
    format : {'tiff', 'png', 'npy', 'dicom'}
        Detected from the content (the name must agree, except for DICOM).
    shape : tuple of int
        Shape of the array that :func:`read_image` returns once a channel is chosen: ``(H, W)`` or
        ``(Z, H, W)``.
    dtype : numpy.dtype
        Dtype of that array (native byte order). ``float32`` for DICOM (modality units).
    n_slices : int
        1 for a 2-D image, ``Z`` for a stack.
    n_channels : int
        1 for grayscale; 3 or 4 for RGB(A); the channel count for multi-channel TIFF/PNG.
    meta : dict
        What is needed to write a result back "the same way" (used by :func:`write_image` through
        ``like=``). Always ``axes`` (stored layout: letters from ``YX``, ``Z``/``T``/..., channel
        ``S``/``C``) and, after :func:`read_image` with a channel, ``channel``. Per format:

        * TIFF: ``photometric`` (str), ``resolution`` ((x, y) floats or None), ``resolution_unit``
          (int or None), ``imagej_metadata`` (dict or None), ``ome_xml`` (str or None),
          ``description`` (any other ImageDescription, str or None), ``bigtiff`` (bool),
          ``compression`` (int TIFF code), ``predictor`` (int), ``byteorder`` ('<' or '>').
        * PNG: ``bit_depth`` (int), ``mode`` (Pillow mode), ``dpi`` ((x, y) or None).
        * NPY: ``fortran_order`` (bool).
        * DICOM: ``dataset`` (:class:`pydicom.dataset.Dataset`), ``stored_dtype`` (numpy dtype of
          the stored values, e.g. int16), ``bits_stored``, ``rescale_slope`` and
          ``rescale_intercept`` (float64 arrays, one value per frame), ``transfer_syntax`` (str).
    """

    path: Path
    format: str
    shape: tuple[int, ...]
    dtype: np.dtype
    n_slices: int
    n_channels: int = 1
    meta: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_stack(self) -> bool:
        """True for 3-D ``(Z, H, W)`` data."""
        return len(self.shape) == 3

    @property
    def nbytes(self) -> int:
        """Size in bytes of the array :func:`read_image` returns."""
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def _describe_exc(exc: BaseException) -> str:
    """One-line cause for an error message: the OS reason, or the library's own message."""
    if isinstance(exc, OSError) and exc.strerror:
        code = errno_mod.errorcode.get(exc.errno or -1)
        return f"{exc.strerror} [{code}]" if code else exc.strerror
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]  # KeyError's str() adds quotes
    return text


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # not on every platform
        return None


def _check_fits_in_memory(path: PathLike, nbytes: int) -> None:
    # A header can claim any size (corrupt or hostile files, or just a huge volume). Refuse up front
    # instead of letting numpy try a giant allocation that either fails late or gets the process
    # killed by the OOM killer.
    ram = _physical_memory()
    if ram is not None and nbytes > ram:
        raise ImageReadError(
            path,
            f"image needs {_gib(nbytes)} but this machine has {_gib(ram)} of RAM; "
            "read it slice by slice (open_slices) instead",
        )


def _check_dtype(path: PathLike, dtype: np.dtype) -> None:
    kinds = {
        "b": "boolean (1-bit)",
        "c": "complex",
        "O": "Python object",
        "V": "structured/void",
        "U": "text",
        "S": "bytes",
        "M": "datetime",
        "m": "timedelta",
    }
    if dtype.kind not in "uif":
        kind = kinds.get(dtype.kind, "non-numeric")
        raise ImageReadError(path, f"unsupported pixel type {dtype} ({kind}); need integer or floating-point pixels")


def _count_nonfinite(arr: np.ndarray) -> tuple[int, int]:
    """Return (number of NaN, number of ±Inf) in a float array, slice by slice to bound memory."""
    if arr.dtype.kind != "f":
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


def _nonfinite_problem(n_nan: int, n_inf: int, size: int) -> str:
    return f"contains {n_nan} NaN and {n_inf} Inf pixel values (of {size})"


def _check_finite(path: PathLike, arr: np.ndarray, where: str = "") -> None:
    n_nan, n_inf = _count_nonfinite(arr)
    if n_nan or n_inf:
        raise ImageReadError(path, f"{where}{_nonfinite_problem(n_nan, n_inf, arr.size)}; replace them before use")


def _native(arr: np.ndarray) -> np.ndarray:
    # torch and most numeric code want native byte order; the values do not change.
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _natural_key(name: str) -> tuple[Any, ...]:
    # "slice2" before "slice10": what users expect for numbered slices.
    parts = re.split(r"(\d+)", name.lower())
    return tuple((0, int(p), p) if p.isdigit() else (1, 0, p) for p in parts)


# --------------------------------------------------------------------------------------------------
# Layout: which stored axis is the channel and which is the slice axis
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    axes: str  # stored axes, one letter per dimension; ends with 'YX' possibly followed by 'S'
    stored_shape: tuple[int, ...]
    channel_axis: int | None
    slice_axis: int | None

    @property
    def n_channels(self) -> int:
        return 1 if self.channel_axis is None else self.stored_shape[self.channel_axis]

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape after choosing one channel: (H, W) or (Z, H, W)."""
        return tuple(n for i, n in enumerate(self.stored_shape) if i != self.channel_axis)

    def index(self, z: int | None, channel: int | None) -> tuple[Any, ...]:
        """Index into the stored array selecting slice ``z`` (or all) and ``channel`` (or all)."""
        idx: list[Any] = [slice(None)] * len(self.stored_shape)
        if self.slice_axis is not None and z is not None:
            idx[self.slice_axis] = z
        if self.channel_axis is not None and channel is not None:
            idx[self.channel_axis] = channel
        return tuple(idx)


def _make_layout(path: PathLike, shape: tuple[int, ...], axes: str) -> _Layout:
    """Validate a stored layout and locate its channel and slice axes."""
    shape = tuple(int(n) for n in shape)
    if len(shape) < 2:
        raise ImageReadError(
            path,
            f"has {len(shape)} dimension(s) (shape {shape}); need a 2-D image (H, W) or a 3-D stack (Z, H, W)",
        )
    channel_axes = [i for i, a in enumerate(axes) if a in "SC"]
    if len(channel_axes) > 1:
        raise ImageReadError(
            path, f"has several channel axes (axes {axes}, shape {shape}); this layout is not supported"
        )
    channel_axis = channel_axes[0] if channel_axes else None
    rest = [i for i in range(len(shape)) if i != channel_axis]
    if len(rest) > 3:
        raise ImageReadError(
            path,
            f"{len(rest)}-D data (axes {axes}, shape {shape}) is not supported; "
            "need a 2-D image (H, W) or a 3-D stack (Z, H, W)",
        )
    if len(rest) < 2:
        raise ImageReadError(path, f"has no 2-D image plane (axes {axes}, shape {shape})")
    slice_axis = rest[0] if len(rest) == 3 else None
    if any(shape[i] == 0 for i in rest):
        raise ImageReadError(path, f"is empty (shape {shape})")
    return _Layout(axes, shape, channel_axis, slice_axis)


def _array_axes(shape: tuple[int, ...]) -> str:
    """Axes for plain arrays (NPY, DICOM): a last axis of 3 or 4 is colour, by convention."""
    nd = len(shape)
    if nd == 3 and shape[-1] in (3, 4):
        return "YXS"
    if nd == 4 and shape[-1] in (3, 4):
        return "ZYXS"
    return {0: "", 1: "X", 2: "YX", 3: "ZYX"}.get(nd, "Q" * (nd - 2) + "YX")


def _check_channel(path: PathLike, layout: _Layout, channel: int | None) -> int | None:
    """Validate ``channel`` against the layout; return the index to take (None: no channel axis)."""
    n = layout.n_channels
    if layout.channel_axis is None:
        if channel not in (None, 0):
            raise ImageReadError(path, f"channel={channel} was given but the image has only one channel")
        return None
    if channel is None:
        kind = "a colour" if layout.axes[layout.channel_axis] == "S" and n in (3, 4) else "a multi-channel"
        raise ImageReadError(
            path,
            f"is {kind} image ({n} channels, shape {layout.stored_shape}); "
            f"pass channel= (0-based, 0..{n - 1}) to choose one",
        )
    if not isinstance(channel, (int, np.integer)) or isinstance(channel, bool) or not 0 <= channel < n:
        raise ImageReadError(path, f"channel={channel!r} is out of range; the image has {n} channels (0..{n - 1})")
    return int(channel)


def _take_channel(path: PathLike, arr: np.ndarray, layout: _Layout, channel: int | None) -> np.ndarray:
    c = _check_channel(path, layout, channel)
    if c is None:
        return arr
    # Copy so the (up to 4x larger) full colour array can be freed.
    return np.ascontiguousarray(arr[layout.index(None, c)])


# --------------------------------------------------------------------------------------------------
# Format detection
# --------------------------------------------------------------------------------------------------


def _stat_file(path: Path) -> int:
    """Return the file size; raise ImageReadError for missing, non-regular or empty files."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot access file ({_describe_exc(exc)})") from None
    if path.is_dir():
        raise ImageReadError(path, "is a directory, not an image file")
    if st.st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    return st.st_size


def _read_head(path: Path, n: int = 132) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as exc:
        raise ImageReadError(path, f"cannot open file ({_describe_exc(exc)})") from None


def _sniff(head: bytes) -> str | None:
    """Format from the first bytes of a file, or None."""
    # DICOM first: its 128-byte preamble may itself hold a TIFF header ("dual-personality" files,
    # e.g. pydicom's CT_small.dcm); the DICM marker decides.
    if head[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return "dicom"
    if head[:4] in _TIFF_MAGICS:
        return "tiff"
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_NPY_MAGIC):
        return "npy"
    return None


def _has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(_DICOM_MAGIC_OFFSET)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def is_supported(path: PathLike) -> bool:
    """Whether ``path`` looks like an image this module reads (by suffix, or DICOM by content).

    Cheap: at most 4 bytes are read, only for files whose suffix is not in ``SUPPORTED_SUFFIXES``.
    """
    p = Path(path)
    return p.suffix.lower() in _SUFFIX_FORMAT or (p.is_file() and _has_dicom_magic(p))


def _detect_format(path: Path) -> tuple[str, int]:
    """Return (format, file size) after checking that the name and the content agree."""
    size = _stat_file(path)
    head = _read_head(path)
    content = _sniff(head)
    suffix = path.suffix.lower()
    expected = _SUFFIX_FORMAT.get(suffix)
    if content == "dicom":
        return "dicom", size
    if expected is None:
        shown = f"'{path.suffix}'" if path.suffix else "(no suffix)"
        raise ImageReadError(
            path,
            f"unsupported file type {shown}; supported: {', '.join(SUPPORTED_SUFFIXES)} and DICOM files",
        )
    if expected == "dicom":
        # DICOM without the 128-byte preamble (old ACR-NEMA style) is still parseable by pydicom
        # when forced; _probe_dicom reports if it is not DICOM at all.
        return "dicom", size
    if content != expected:
        found = f"is {_FORMAT_NAME[content]}" if content else f"starts with {head[:8]!r}"
        raise ImageReadError(
            path,
            f"not a valid {_FORMAT_NAME[expected]} file (the name ends in {path.suffix} but the content {found})",
        )
    return expected, size


# --------------------------------------------------------------------------------------------------
# TIFF
# --------------------------------------------------------------------------------------------------


class _TiffLog(logging.Handler):
    """Collect tifffile's log records: it logs (rather than raises) some corruptions, e.g. an IFD
    offset past the end of the file, and then silently returns fewer pages."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.errors.append(record.getMessage())


@contextmanager
def _tiff_log() -> Iterator[_TiffLog]:
    logger = logging.getLogger("tifffile")
    handler = _TiffLog()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _tiff_corrupt(path: PathLike, exc_or_text: BaseException | str) -> ImageReadError:
    text = exc_or_text if isinstance(exc_or_text, str) else _describe_exc(exc_or_text)
    text = re.sub(r"<tifffile\.[^>]*>\s*", "", text)  # drop object reprs from tifffile's log lines
    return ImageReadError(path, f"corrupt or truncated TIFF ({text})")


def _open_tiff(path: Path):  # -> tuple[tifffile.TiffFile, series, _Layout, dict]
    """Open a TIFF, validate its first series and header extents. Caller closes the TiffFile."""
    import tifffile

    size = path.stat().st_size
    with _tiff_log() as log:
        try:
            tf = tifffile.TiffFile(path)
        except Exception as exc:
            raise _tiff_corrupt(path, exc) from None
        try:
            try:
                series_list = tf.series
            except Exception as exc:
                raise _tiff_corrupt(path, exc) from None
            if log.errors:
                raise _tiff_corrupt(path, log.errors[0])
            if not series_list:
                raise ImageReadError(path, "TIFF contains no images")
            series = series_list[0]
            layout = _make_layout(path, series.shape, series.axes)
            page = series.keyframe
            dtype = series.dtype
            if dtype is None:
                raise ImageReadError(path, "TIFF pixel type is not supported by tifffile")
            _check_dtype(path, np.dtype(dtype))
            _check_tiff_extent(path, tf, series, size)
            if page.compression != 1:
                try:
                    tifffile.TIFF.DECOMPRESSORS[page.compression]
                except KeyError:
                    name = getattr(page.compression, "name", str(page.compression))
                    raise ImageReadError(
                        path,
                        f"TIFF uses {name} compression, which needs the optional 'imagecodecs' package "
                        "(pip install imagecodecs) or an uncompressed copy of the file",
                    ) from None
            meta = _tiff_meta(tf, series)
        except BaseException:
            tf.close()
            raise
    return tf, series, layout, meta


def _check_tiff_extent(path: Path, tf: Any, series: Any, size: int) -> None:
    # A header can claim any amount of data. Checking that the claimed pixel data lie inside the file
    # is cheap (header only) and turns truncated files and absurd sizes into a clear error before
    # anything is allocated.
    expected = int(series.nbytes)
    if series.dataoffset is not None:  # contiguous, uncompressed: one extent for the whole series
        end = int(series.dataoffset) + expected
        if end > size:
            raise ImageReadError(
                path,
                f"truncated TIFF (pixel data should end at byte {end} but the file has {size} bytes)",
            )
        return
    for i, page in enumerate(series.pages):
        if page is None:
            continue
        offsets, counts = page.dataoffsets, page.databytecounts
        if not offsets:
            continue
        end = max(int(o) + int(c) for o, c in zip(offsets, counts, strict=False))
        if end > size:
            raise ImageReadError(
                path,
                f"truncated TIFF (page {i} data should end at byte {end} but the file has {size} bytes)",
            )
        keyframe = series.keyframe
        if keyframe.compression == 1 and keyframe.bitspersample % 8 == 0:
            if sum(int(c) for c in counts) < keyframe.nbytes:
                raise ImageReadError(
                    path,
                    f"corrupt TIFF (page {i} claims {keyframe.nbytes} bytes of pixels "
                    f"but stores {sum(int(c) for c in counts)})",
                )


def _tiff_meta(tf: Any, series: Any) -> dict[str, Any]:
    page = series.keyframe
    tags = page.tags
    resolution = None
    resolution_unit = None
    if 282 in tags and 283 in tags:  # XResolution, YResolution
        resolution = tuple(float(v) for v in page.resolution)
        unit = tags.valueof(296)  # ResolutionUnit
        resolution_unit = None if unit is None else int(unit)
    description = None
    if not (tf.is_imagej or tf.is_ome or tf.is_shaped):
        description = page.description or None
    predictor = tags.valueof(317)
    return {
        "axes": series.axes,
        "photometric": getattr(page.photometric, "name", str(page.photometric)).lower(),
        "resolution": resolution,
        "resolution_unit": resolution_unit,
        "imagej_metadata": dict(tf.imagej_metadata) if tf.is_imagej and tf.imagej_metadata else None,
        "ome_xml": tf.ome_metadata if tf.is_ome else None,
        "description": description,
        "bigtiff": bool(tf.is_bigtiff),
        "compression": int(page.compression),
        "predictor": 1 if predictor is None else int(predictor),
        "byteorder": tf.byteorder,
    }


def _probe_tiff(path: Path) -> ImageInfo:
    tf, series, layout, meta = _open_tiff(path)
    tf.close()
    return _info(path, "tiff", layout, np.dtype(series.dtype).newbyteorder("="), meta)


def _read_tiff(path: Path, channel: int | None) -> tuple[np.ndarray, ImageInfo]:
    tf, series, layout, meta = _open_tiff(path)
    with tf:
        info = _info(path, "tiff", layout, np.dtype(series.dtype).newbyteorder("="), meta)
        _check_channel(path, layout, channel)  # fail before reading a huge colour file
        _check_fits_in_memory(path, int(series.nbytes))
        with _tiff_log() as log:
            try:
                arr = series.asarray()
            except MemoryError:
                raise ImageReadError(path, f"not enough memory to read {_gib(int(series.nbytes))}") from None
            except Exception as exc:
                raise _tiff_corrupt(path, _tiff_read_reason(exc)) from None
            if log.errors:
                raise _tiff_corrupt(path, log.errors[0])
    if tuple(arr.shape) != layout.stored_shape:
        raise _tiff_corrupt(path, f"read shape {arr.shape} but the header says {layout.stored_shape}")
    arr = _native(arr)
    arr = _take_channel(path, arr, layout, channel)
    return arr, info


def _tiff_read_reason(exc: BaseException) -> str:
    reason = _describe_exc(exc)
    if "imagecodecs" in reason:
        reason += "; pip install imagecodecs"
    return f"cannot read pixel data: {reason}"


# --------------------------------------------------------------------------------------------------
# PNG
# --------------------------------------------------------------------------------------------------


@contextmanager
def _pil_open(path: Path) -> Iterator[Any]:
    from PIL import Image

    # Pillow refuses images above ~179 Mpixel as "decompression bombs". Large EM montages are
    # legitimately that big; _check_fits_in_memory is our guard instead.
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                im = Image.open(path, formats=["PNG"])
            except Exception as exc:
                raise ImageReadError(path, f"corrupt PNG ({_describe_exc(exc)})") from None
            with im:
                yield im
    finally:
        Image.MAX_IMAGE_PIXELS = old


# Pillow mode -> (converted mode, dtype, stored axes)
_PNG_MODES = {
    "1": ("L", np.uint8, "YX"),  # bilevel: read as 0/255 uint8
    "L": ("L", np.uint8, "YX"),
    "I;16": ("I;16", np.uint16, "YX"),
    "I;16B": ("I;16", np.uint16, "YX"),
    "I": ("I", np.uint16, "YX"),  # older Pillow opens 16-bit grayscale as 32-bit 'I'
    "LA": ("LA", np.uint8, "YXS"),
    "RGB": ("RGB", np.uint8, "YXS"),
    "RGBA": ("RGBA", np.uint8, "YXS"),
    "P": ("RGB", np.uint8, "YXS"),
    "PA": ("RGBA", np.uint8, "YXS"),
}


def _png_plan(path: Path, im: Any) -> tuple[str, np.dtype, _Layout, dict[str, Any]]:
    head = _read_head(path, 29)
    bit_depth, colour_type = head[24], head[25]  # from the IHDR chunk, which must come first
    if bit_depth == 16 and colour_type != 0:
        raise ImageReadError(
            path, "16-bit colour PNG is not supported (Pillow reduces it to 8 bits); convert it to TIFF"
        )
    mode = im.mode
    if mode == "P" and "transparency" in im.info:
        mode = "PA"
    if mode not in _PNG_MODES:
        raise ImageReadError(path, f"unsupported PNG pixel mode {im.mode!r}")
    target, dtype, axes = _PNG_MODES[mode]
    w, h = im.size
    n = {"LA": 2, "RGB": 3, "RGBA": 4}.get(target)
    shape = (h, w) if n is None else (h, w, n)
    layout = _make_layout(path, shape, axes)
    meta = {"axes": axes, "bit_depth": int(bit_depth), "mode": im.mode, "dpi": im.info.get("dpi")}
    return target, np.dtype(dtype), layout, meta


def _probe_png(path: Path) -> ImageInfo:
    with _pil_open(path) as im:
        _target, dtype, layout, meta = _png_plan(path, im)
    return _info(path, "png", layout, dtype, meta)


def _read_png(path: Path, channel: int | None) -> tuple[np.ndarray, ImageInfo]:
    with _pil_open(path) as im:
        target, dtype, layout, meta = _png_plan(path, im)
        _check_channel(path, layout, channel)
        try:
            im.load()
            if im.mode != target and target in ("L", "RGB", "RGBA"):
                im = im.convert(target)
            arr = np.asarray(im)
        except Exception as exc:
            raise ImageReadError(path, f"corrupt or truncated PNG ({_describe_exc(exc)})") from None
    arr = np.ascontiguousarray(arr.astype(dtype, copy=False))
    if arr.shape != layout.stored_shape:
        raise ImageReadError(path, f"corrupt PNG (decoded shape {arr.shape}, header says {layout.stored_shape})")
    return _take_channel(path, arr, layout, channel), _info(path, "png", layout, dtype, meta)


# --------------------------------------------------------------------------------------------------
# NPY
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------------

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


def _probe_dicom(path: Path) -> ImageInfo:
    # defer_size: large values (the pixel data) are not read, only located.
    ds = _dcmread(path, defer_size=4096)
    layout, meta = _dicom_plan(path, ds)
    return _info(path, "dicom", layout, np.dtype(np.float32), meta)


def _read_dicom(path: Path, channel: int | None) -> tuple[np.ndarray, ImageInfo]:
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


# --------------------------------------------------------------------------------------------------
# Public read API
# --------------------------------------------------------------------------------------------------


def _info(path: Path, fmt: str, layout: _Layout, dtype: np.dtype, meta: dict[str, Any]) -> ImageInfo:
    shape = layout.shape
    return ImageInfo(
        path=path,
        format=fmt,
        shape=shape,
        dtype=np.dtype(dtype),
        n_slices=shape[0] if len(shape) == 3 else 1,
        n_channels=layout.n_channels,
        meta=meta,
    )


def probe(path: PathLike) -> ImageInfo:
    """Describe an image file from its header, without reading pixel data.

    Parameters
    ----------
    path : str or os.PathLike
        An image file (see ``SUPPORTED_SUFFIXES``; DICOM is also recognised by content).

    Returns
    -------
    ImageInfo
        Format, per-channel shape ``(H, W)`` or ``(Z, H, W)``, dtype, slice and channel counts,
        and the metadata needed to write a result back the same way.

    Raises
    ------
    ImageReadError
        Missing or empty file, unsupported or mismatched format, corrupt or truncated header
        (including headers that claim more pixel data than the file holds), unsupported dtype
        (bool, complex, object, ...) or layout (fewer than 2 or more than 3 non-channel dimensions),
        DICOM without pixel data. Colour images are *not* an error here (see ``n_channels``).
    """
    p = Path(path)
    fmt, size = _detect_format(p)
    if fmt == "tiff":
        return _probe_tiff(p)
    if fmt == "png":
        return _probe_png(p)
    if fmt == "npy":
        return _probe_npy(p, size)
    return _probe_dicom(p)


def read_image(path: PathLike, channel: int | None = None) -> tuple[np.ndarray, ImageInfo]:
    """Read a whole image or stack into memory.

    Parameters
    ----------
    path : str or os.PathLike
        Image file.
    channel : int, optional
        0-based channel to take from colour (RGB/RGBA) or multi-channel data. Required for such
        data; for single-channel data only ``None`` or 0 are accepted.

    Returns
    -------
    array : numpy.ndarray
        Shape ``(H, W)`` or ``(Z, H, W)``, C-contiguous, native byte order, in the file's dtype
        (uint8, uint16, float32, ...). DICOM: float32 in modality units, i.e. Hounsfield units for
        CT: ``stored * RescaleSlope + RescaleIntercept``.
    info : ImageInfo
        As :func:`probe`, plus ``meta['channel']``; for DICOM ``meta['dataset']`` is the complete
        dataset.

    Raises
    ------
    ImageReadError
        Everything :func:`probe` raises, plus: colour/multi-channel data without ``channel=``,
        ``channel`` out of range, corrupt or truncated pixel data, NaN or Inf pixels (the message
        gives the counts), and data larger than the machine's RAM (use :func:`open_slices`).
        Constant images are not an error.
    """
    p = Path(path)
    fmt, size = _detect_format(p)
    if fmt == "tiff":
        arr, info = _read_tiff(p, channel)
    elif fmt == "png":
        arr, info = _read_png(p, channel)
    elif fmt == "npy":
        arr, info = _read_npy(p, size, channel)
    else:
        arr, info = _read_dicom(p, channel)
    _check_finite(p, arr)
    info.meta["channel"] = channel
    return arr, info


class ImageSlices:
    """Random access to the 2-D slices of an image file without reading it whole.

    Returned by :func:`open_slices`. Uncompressed contiguous TIFF stacks and ``.npy`` files are
    memory-mapped (only the slices you index are read from disk); other TIFFs are decoded page by
    page; PNG and DICOM (small by nature) are read once.

    Attributes
    ----------
    path : pathlib.Path
    info : ImageInfo
    shape : tuple of int
        ``(H, W)`` or ``(Z, H, W)``, as :func:`read_image` would return.
    dtype : numpy.dtype
        Dtype of every slice (native byte order; float32 for DICOM).
    n_slices : int
        ``len(self)``: Z for a stack, 1 for a 2-D image.
    is_memmap : bool
        True when slices come from a memory map of the file.

    Notes
    -----
    ``self[i]`` returns an independent, writable, C-contiguous ``(H, W)`` array (a copy of one
    slice), checked for NaN/Inf. Negative indices work. Close with :meth:`close` or use as a
    context manager.
    """

    def __init__(self, path: Path, info: ImageInfo, layout: _Layout, channel: int | None) -> None:
        self.path = path
        self.info = info
        self.shape = info.shape
        self.dtype = info.dtype
        self.n_slices = info.n_slices
        self._layout = layout
        self._channel = channel
        self._array: np.ndarray | None = None  # memmap or in-memory full array
        self._tiff: Any = None  # open TiffFile for page-by-page access
        self._series: Any = None
        self._page_grid: tuple[int, ...] = ()
        self._page_cache: tuple[int, np.ndarray] | None = None

    @property
    def is_memmap(self) -> bool:
        return isinstance(self._array, np.memmap)

    def __len__(self) -> int:
        return self.n_slices

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(self.n_slices):
            yield self[i]

    def __getitem__(self, i: int) -> np.ndarray:
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise TypeError(f"slice index must be an int, not {type(i).__name__}")
        if self._array is None and self._tiff is None:
            raise ValueError(f"{self.path}: slices are closed")
        n = self.n_slices
        if not -n <= i < n:
            raise IndexError(f"slice {i} out of range for {n} slice(s)")
        i = int(i) % n
        z = i if self._layout.slice_axis is not None else None
        if self._array is not None:
            out = self._array[self._layout.index(z, self._channel)]
        else:
            out = self._read_from_pages(z)
        out = np.ascontiguousarray(_native(np.array(out, copy=True)))
        _check_finite(self.path, out, where=f"slice {i} ")
        return out

    def _read_from_pages(self, z: int | None) -> np.ndarray:
        layout = self._layout
        full = list(layout.index(z, self._channel))
        n_grid = len(self._page_grid)
        grid_idx = full[:n_grid]
        page_no = int(np.ravel_multi_index(tuple(grid_idx), self._page_grid)) if n_grid else 0
        if self._page_cache is not None and self._page_cache[0] == page_no:
            data = self._page_cache[1]
        else:
            page = self._series.pages[page_no]
            with _tiff_log() as log:
                try:
                    data = page.asarray()
                except Exception as exc:
                    raise _tiff_corrupt(
                        self.path,
                        _tiff_read_reason(exc).replace("cannot read pixel data", f"cannot read page {page_no}"),
                    ) from None
                if log.errors:
                    raise _tiff_corrupt(self.path, f"cannot read page {page_no}: {log.errors[0]}")
            self._page_cache = (page_no, data)
        return data[tuple(full[n_grid:])]

    def close(self) -> None:
        """Release the file (memory map or open TIFF handle)."""
        if self._tiff is not None:
            self._tiff.close()
            self._tiff = None
        self._array = None
        self._page_cache = None

    def __enter__(self) -> ImageSlices:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        how = "memmap" if self.is_memmap else ("pages" if self._tiff is not None else "memory")
        return f"ImageSlices({str(self.path)!r}, shape={self.shape}, dtype={self.dtype}, via={how})"


def open_slices(path: PathLike, channel: int | None = None) -> ImageSlices:
    """Open an image for slice-by-slice access without loading it whole.

    Parameters
    ----------
    path : str or os.PathLike
        Image file; meant for large TIFF stacks and ``.npy`` volumes, works for every format.
    channel : int, optional
        As in :func:`read_image`.

    Returns
    -------
    ImageSlices
        ``len(s)`` slices; ``s[i]`` is an ``(H, W)`` array of ``s.dtype``; ``s.shape`` is the full
        shape ``(Z, H, W)`` (or ``(H, W)`` for a 2-D image, which has one slice).

    Raises
    ------
    ImageReadError
        As :func:`probe` at open time; corrupt pages and NaN/Inf values are reported when the slice
        is accessed.

    Notes
    -----
    TIFF series whose pixel data are uncompressed and contiguous (tifffile, ImageJ, most
    microscope software) are opened with :func:`tifffile.memmap`; otherwise each access decodes the
    page(s) holding that slice via ``TiffFile.pages`` (the last page is cached). ``.npy`` files use
    ``np.load(mmap_mode='r')``.
    """
    p = Path(path)
    fmt, size = _detect_format(p)
    if fmt == "tiff":
        return _open_tiff_slices(p, channel)
    if fmt == "npy":
        layout, dtype, meta = _open_npy(p, size)
        _check_channel(p, layout, channel)
        info = _info(p, "npy", layout, dtype.newbyteorder("="), meta)
        info.meta["channel"] = channel
        slices = ImageSlices(p, info, layout, channel)
        try:
            slices._array = np.load(p, mmap_mode="r", allow_pickle=False)
        except Exception as exc:
            raise ImageReadError(p, f"cannot read .npy data ({_describe_exc(exc)})") from None
        return slices
    # PNG and DICOM hold one image (or a modest multi-frame): read once, serve slices from memory.
    arr, info = read_image(p, channel)
    layout = _make_layout(p, arr.shape, "ZYX" if arr.ndim == 3 else "YX")
    slices = ImageSlices(p, info, layout, None)
    slices._array = arr
    return slices


def _open_tiff_slices(path: Path, channel: int | None) -> ImageSlices:
    import tifffile

    tf, series, layout, meta = _open_tiff(path)
    try:
        _check_channel(path, layout, channel)
        info = _info(path, "tiff", layout, np.dtype(series.dtype).newbyteorder("="), meta)
        info.meta["channel"] = channel
        slices = ImageSlices(path, info, layout, channel)
        mm = None
        if series.dataoffset is not None and series.keyframe.is_memmappable:
            try:
                mm = tifffile.memmap(path, series=0, mode="r")
            except Exception:  # e.g. mmap unsupported on this filesystem: fall back to pages
                mm = None
        if mm is not None and tuple(mm.shape) == layout.stored_shape:
            tf.close()
            slices._array = mm
            return slices
        page_shape = tuple(series.keyframe.shape)
        n_grid = len(layout.stored_shape) - len(page_shape)
        grid = layout.stored_shape[:n_grid]
        if n_grid < 0 or layout.stored_shape[n_grid:] != page_shape or math.prod(grid) != len(series.pages):
            # Unusual page structure (e.g. volumetric tiles): read the series once instead.
            tf.close()
            arr, _ = _read_tiff(path, None)
            slices._array = arr
            return slices
        slices._tiff, slices._series, slices._page_grid = tf, series, grid
        return slices
    except BaseException:
        tf.close()
        raise


# --------------------------------------------------------------------------------------------------
# Finding inputs
# --------------------------------------------------------------------------------------------------

_GLOB_CHARS = re.compile(r"[*?\[]")


def find_images(inputs: Iterable[PathLike] | PathLike) -> list[Path]:
    """Expand command-line inputs into a list of image files.

    Parameters
    ----------
    inputs : list of str or os.PathLike (a single one is accepted too)
        Files, directories and glob patterns (``*``, ``?``, ``[...]``, ``**`` recursive).
        Directories are listed non-recursively; only supported files are taken (by suffix, or DICOM
        by content), hidden files (``.name``) are skipped.

    Returns
    -------
    list of pathlib.Path
        In input order; files from one directory or pattern in natural order (``img2`` before
        ``img10``); duplicates removed.

    Raises
    ------
    ImageReadError
        A path that does not exist, a pattern that matches no image, a directory without images,
        or an explicitly named file of an unsupported type.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found: list[Path] = []
    seen: set[str] = set()

    def add(p: Path) -> None:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            found.append(p)

    for item in inputs:
        text = os.path.expanduser(os.fspath(item))
        p = Path(text)
        if p.is_dir():
            try:
                entries = [e for e in p.iterdir() if not e.name.startswith(".") and e.is_file()]
            except OSError as exc:
                raise ImageReadError(p, f"cannot list directory ({_describe_exc(exc)})") from None
            images = sorted((e for e in entries if is_supported(e)), key=lambda e: _natural_key(e.name))
            if not images:
                raise ImageReadError(
                    p, f"directory contains no supported images ({', '.join(SUPPORTED_SUFFIXES)} or DICOM)"
                )
            for e in images:
                add(e)
        elif p.exists():
            if not is_supported(p):
                raise ImageReadError(
                    p, f"unsupported file type '{p.suffix}'; supported: {', '.join(SUPPORTED_SUFFIXES)} and DICOM"
                )
            add(p)
        elif _GLOB_CHARS.search(text):
            matches = [Path(m) for m in glob.glob(text, recursive=True)]
            images = [m for m in matches if m.is_file() and is_supported(m)]
            if not images:
                raise ImageReadError(text, "no supported images match this pattern")
            for m in sorted(images, key=lambda m: _natural_key(str(m))):
                add(m)
        else:
            raise ImageReadError(p, "file or directory not found")
    return found


# --------------------------------------------------------------------------------------------------
# Atomic writing
# --------------------------------------------------------------------------------------------------


def _write_problem(exc: BaseException, path: Path) -> tuple[str, int | None]:
    """(problem text, errno) for a failed write of ``path``."""
    if isinstance(exc, ImageWriteError):
        return exc.problem, exc.errno
    code = exc.errno if isinstance(exc, OSError) else None
    reason = _describe_exc(exc)
    if isinstance(exc, OSError) and code is None:
        # numpy's tofile() (used by tifffile) reports a short write as "N requested and M written"
        # without errno; a full disk is by far the likeliest cause, so check and say so.
        try:
            free = shutil.disk_usage(path.parent).free
        except OSError:
            free = None
        if free is not None and free < 2**20:
            code = errno_mod.ENOSPC
            reason = f"{os.strerror(code)} [ENOSPC] ({reason}; {free} bytes free)"
    return f"write failed: {reason}; nothing was written", code


def _check_target(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise ImageWriteError(path, "is a directory")
    if not overwrite and os.path.lexists(path):
        raise ImageWriteError(path, "exists; pass --overwrite to replace it")


def _temp_path(path: Path) -> Path:
    # Same directory, so the final rename is atomic (same filesystem); hidden, so find_images and
    # users' globs do not pick it up.
    # The name is shortened so the temporary name stays within the usual 255-byte limit.
    return path.with_name(f".{path.name[:200]}.tmp-{secrets.token_hex(4)}")


def _open_temp(tmp: Path) -> IO[bytes]:
    """Create the temporary output file (exclusively; 0666 minus umask, like a normal file)."""
    return open(tmp, "x+b")  # noqa: SIM115 - closed by the caller


def _prepare_dir(path: Path) -> None:
    parent = path.parent
    if not parent.is_dir():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ImageWriteError(
                path, f"cannot create directory {parent} ({_describe_exc(exc)})", errno=exc.errno
            ) from None


def _fsync_dir(directory: Path) -> None:
    # Make the rename itself durable. Not possible everywhere (e.g. Windows); best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    """Move the finished temporary file to its final name, atomically."""
    if overwrite:
        os.replace(tmp, path)
        return
    # link() fails if the name exists, so a file that appeared since the first check is never
    # clobbered (os.replace would silently overwrite it).
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise ImageWriteError(path, "exists; pass --overwrite to replace it") from None
    except OSError:  # hard links unsupported here (FAT, some network filesystems)
        if os.path.lexists(path):
            raise ImageWriteError(path, "exists; pass --overwrite to replace it") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _remove_quietly(p: Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


@contextmanager
def _atomic_output(path: Path, overwrite: bool) -> Iterator[IO[bytes]]:
    """Yield a binary file to write; on success it replaces ``path`` atomically, on any failure it
    is deleted and :class:`ImageWriteError` naming ``path`` is raised."""
    _check_target(path, overwrite)
    _prepare_dir(path)
    tmp = _temp_path(path)
    try:
        f = _open_temp(tmp)
    except OSError as exc:
        raise ImageWriteError(path, f"cannot create file ({_describe_exc(exc)})", errno=exc.errno) from None
    try:
        try:
            yield f
            f.flush()
            os.fsync(f.fileno())
        finally:
            f.close()
        _publish(tmp, path, overwrite)
    except BaseException as exc:
        _remove_quietly(tmp)
        if not isinstance(exc, Exception):  # KeyboardInterrupt etc.: clean up, then let it through
            raise
        problem, code = _write_problem(exc, path)
        raise ImageWriteError(path, problem, errno=code) from exc
    _fsync_dir(path.parent)


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def _output_format(path: Path, like: ImageInfo | None) -> str:
    fmt = _SUFFIX_FORMAT.get(path.suffix.lower())
    if fmt is None and like is not None:
        fmt = like.format  # e.g. DICOM files named without suffix
    if fmt is None:
        raise ImageWriteError(
            path,
            f"cannot tell the output format from the suffix '{path.suffix}'; "
            f"use one of {', '.join(SUPPORTED_SUFFIXES)}",
        )
    return fmt


def _check_array_for_write(path: Path, array: Any, fmt: str) -> np.ndarray:
    arr = np.asarray(array)
    if arr.ndim not in (2, 3):
        raise ImageWriteError(path, f"cannot write an array of shape {arr.shape}; need (H, W) or (Z, H, W)")
    if arr.dtype.kind not in "uif":
        raise ImageWriteError(path, f"cannot write pixel type {arr.dtype}; need integer or floating-point data")
    if fmt == "png":
        if arr.ndim != 2:
            raise ImageWriteError(path, f"PNG cannot hold a stack (shape {arr.shape}); write .tif or .npy instead")
        if arr.dtype not in (np.uint8, np.uint16):
            raise ImageWriteError(
                path, f"PNG stores only uint8 or uint16 pixels, not {arr.dtype}; convert, or write .tif instead"
            )
    n_nan, n_inf = _count_nonfinite(arr)
    if n_nan or n_inf:
        # A file we would refuse to read back is not worth writing (and usually means a diverged model).
        raise ImageWriteError(path, f"refusing to write: the data {_nonfinite_problem(n_nan, n_inf, arr.size)}")
    return arr


def write_image(
    path: PathLike,
    array: np.ndarray,
    like: ImageInfo | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an image or stack atomically, in the format given by the path suffix.

    Parameters
    ----------
    path : str or os.PathLike
        Output file. The suffix picks the format (``.tif``/``.tiff``, ``.png``, ``.npy``,
        ``.dcm``); without a known suffix, ``like.format`` is used. Missing parent directories are
        created.
    array : numpy.ndarray
        ``(H, W)`` or ``(Z, H, W)``, integer or float, finite. The dtype is written exactly as given
        (no conversion), except for DICOM (see below). PNG takes only 2-D uint8/uint16.
    like : ImageInfo, optional
        The input this output corresponds to (from :func:`probe` / :func:`read_image`). When it has
        the same format as the output, its metadata are carried over:

        * TIFF: photometric (min-is-black/white), resolution, compression (deflate/LZMA/Zstd, when
          tifffile can encode it), ImageJ metadata (spacing, unit, labels, ...), OME-XML (verbatim
          with new UUIDs when shape and dtype are unchanged, otherwise regenerated with the physical
          pixel sizes), another ImageDescription, BigTIFF.
        * DICOM: required. ``like.meta['dataset']`` is copied; ``array`` is taken as modality units
          (HU) and converted back to stored values with the inverse rescale
          ``round((array - intercept) / slope)``, clipped to the range of the stored type
          (BitsStored, signed or not) and stored in the original dtype (e.g. int16). All other
          elements are kept except that a new SOPInstanceUID (and MediaStorageSOPInstanceUID) is
          generated, so the result is a distinct instance; Smallest/LargestImagePixelValue are
          updated if present; a compressed transfer syntax becomes Explicit VR Little Endian.
    overwrite : bool
        Replace an existing file. Otherwise an existing ``path`` is an error.

    Returns
    -------
    pathlib.Path
        The written path.

    Raises
    ------
    ImageWriteError
        Existing file without ``overwrite``, unsupported dtype/shape for the format, NaN/Inf values,
        DICOM without a DICOM ``like``, or any I/O failure (full disk, permissions, ...). Nothing is
        left under ``path`` in that case (an existing file is left untouched).

    Notes
    -----
    TIFF output is BigTIFF when the pixel data exceed 2 GiB or ``like`` was BigTIFF; ImageJ-style
    outputs stay classic TIFF as ImageJ expects (tifffile writes >4 GiB ImageJ data the way ImageJ
    does). The write goes to ``.<name>.tmp-<random>`` in the same directory, is fsync'ed and then
    renamed, so readers never see a partial file.
    """
    p = Path(path)
    fmt = _output_format(p, like)
    arr = _check_array_for_write(p, array, fmt)
    like_same = like if like is not None and like.format == fmt else None
    if fmt == "dicom":
        data = _dicom_encode(p, arr, like)  # validate and convert before touching the disk
        with _atomic_output(p, overwrite) as f:
            _write_dicom(f, data)
    elif fmt == "tiff":
        with _atomic_output(p, overwrite) as f:
            _write_tiff(f, p, arr, like_same)
    elif fmt == "png":
        with _atomic_output(p, overwrite) as f:
            _write_png(f, arr, like_same)
    else:
        with _atomic_output(p, overwrite) as f:
            np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
    return p


# ---- TIFF writing ----


def _ome_physical_sizes(xml: str) -> dict[str, Any]:
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    for el in root.iter():
        if el.tag.endswith("}Pixels") or el.tag == "Pixels":
            keys = [f"PhysicalSize{a}{u}" for a in "XYZ" for u in ("", "Unit")] + ["TimeIncrement"]
            out: dict[str, Any] = {}
            for k in keys:
                if k in el.attrib:
                    v = el.attrib[k]
                    try:
                        out[k] = v if k.endswith("Unit") else float(v)
                    except ValueError:
                        pass
            return out
    return {}


def _ome_xml_for(xml: str, final_name: str) -> str | None:
    """Original OME-XML made safe to reuse for a new single file, or None if it cannot be."""
    names = set(re.findall(r"<(?:\w+:)?UUID\b[^>]*\bFileName=\"([^\"]*)\"", xml))
    if len(names) > 1 or xml.count("<Image ") + len(re.findall(r"<\w+:Image ", xml)) > 1:
        return None  # multi-file or multi-image OME: cannot describe our one-image file
    new_uuid = f"urn:uuid:{uuid.uuid4()}"
    m = re.search(r"<(?:\w+:)?OME\b[^>]*\bUUID=\"([^\"]+)\"", xml)
    if m:
        xml = xml.replace(m.group(1), new_uuid)  # root attribute and TiffData/UUID text alike
    escaped = final_name.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    # The FileName must name this file: a reader following it to the input would read the wrong data.
    return re.sub(
        r"(<(?:\w+:)?UUID\b[^>]*\bFileName=\")[^\"]*(\")", lambda mm: mm.group(1) + escaped + mm.group(2), xml
    )


_IJ_DROP = {
    "ImageJ",
    "images",
    "channels",
    "slices",
    "frames",
    "hyperstack",
    "mode",
    "loop",
    "min",
    "max",
    "Ranges",
    "LUTs",
    "axes",
}  # derived from the data by tifffile, or stale after denoising


def _tiff_options(
    path: Path, shape: tuple[int, ...], dtype: np.dtype, like: ImageInfo | None, allow_compression: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (TiffWriter kwargs, TiffWriter.write kwargs) reproducing ``like`` where possible."""
    import tifffile

    meta = like.meta if like is not None else {}
    nbytes = math.prod(shape) * dtype.itemsize
    ndim = len(shape)
    kw: dict[str, Any] = {"photometric": "minisblack", "software": "iscl"}
    if meta.get("photometric") in ("minisblack", "miniswhite"):
        kw["photometric"] = meta["photometric"]
    if meta.get("resolution"):
        kw["resolution"] = tuple(meta["resolution"])
        if meta.get("resolution_unit") is not None:
            kw["resolutionunit"] = meta["resolution_unit"]
    if allow_compression and meta.get("compression") in _TIFF_COMPRESSIONS_KEPT:
        try:
            tifffile.TIFF.COMPRESSORS[meta["compression"]]
            kw["compression"] = meta["compression"]
            if meta.get("predictor") == 2 and dtype.kind in "iu":
                kw["predictor"] = 2
        except KeyError:  # encoder not available without imagecodecs: write uncompressed
            pass
    slice_letter = "Z"
    axes = str(meta.get("axes", ""))
    if ndim == 3 and like is not None and like.is_stack:
        letters = [a for a in axes if a not in "SCYX"]
        if letters and letters[0] == "T":
            slice_letter = "T"  # keep a time series a time series
    out_axes = (slice_letter if ndim == 3 else "") + "YX"
    writer: dict[str, Any] = {"bigtiff": nbytes > BIGTIFF_THRESHOLD or bool(meta.get("bigtiff")), "byteorder": "<"}
    ij = meta.get("imagej_metadata")
    if ij is not None and dtype.char in "BHhf":
        md = {k: v for k, v in ij.items() if k not in _IJ_DROP}
        labels = md.get("Labels")
        if labels is not None and (ndim != 3 or len(labels) != shape[0]):
            md.pop("Labels")
        md["axes"] = out_axes
        writer.update(imagej=True, bigtiff=bool(meta.get("bigtiff")))
        kw["metadata"] = md
        kw.pop("compression", None)  # ImageJ cannot read compressed TIFF
        kw.pop("predictor", None)
        return writer, kw
    ome = meta.get("ome_xml")
    if ome:
        same = (
            like is not None
            and like.n_channels == 1
            and tuple(like.shape) == tuple(shape)
            and np.dtype(like.dtype) == dtype
        )
        xml = _ome_xml_for(ome, path.name) if same else None
        if xml is not None:
            writer["ome"] = False
            kw.update(description=xml.encode("utf-8"), metadata=None)
        else:
            writer["ome"] = True
            kw["metadata"] = {"axes": out_axes, **_ome_physical_sizes(ome)}
        return writer, kw
    if path.name.lower().endswith((".ome.tif", ".ome.tiff")) and not meta.get("description"):
        writer["ome"] = True  # the name promises OME-TIFF: let tifffile describe the data
        kw["metadata"] = {"axes": out_axes}
        return writer, kw
    writer["ome"] = False
    if meta.get("description"):
        desc = meta["description"]
        kw.update(description=desc.encode("utf-8") if isinstance(desc, str) else desc, metadata=None)
    return writer, kw


def _write_tiff(f: IO[bytes], path: Path, arr: np.ndarray, like: ImageInfo | None) -> None:
    import tifffile

    writer_kw, write_kw = _tiff_options(path, arr.shape, arr.dtype, like, allow_compression=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e.g. "truncating ImageJ file" (>4 GiB, by design)
        with tifffile.TiffWriter(f, **writer_kw) as tw:
            tw.write(arr, **write_kw)


# ---- PNG writing ----


def _write_png(f: IO[bytes], arr: np.ndarray, like: ImageInfo | None) -> None:
    from PIL import Image

    arr = np.ascontiguousarray(arr)
    if arr.dtype == np.uint16:
        im = Image.fromarray(arr.astype("<u2", copy=False))  # mode I;16 -> 16-bit grayscale PNG
    else:
        im = Image.fromarray(arr)  # mode L -> 8-bit grayscale PNG
    kwargs: dict[str, Any] = {}
    dpi = like.meta.get("dpi") if like is not None else None
    if dpi:
        kwargs["dpi"] = tuple(float(d) for d in dpi)
    im.save(f, format="PNG", **kwargs)


# ---- DICOM writing ----


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


# --------------------------------------------------------------------------------------------------
# Slice-by-slice writing
# --------------------------------------------------------------------------------------------------


class StackWriter:
    """Write an output image slice by slice, then publish it atomically.

    Create with :func:`create_output_like`. Assign every slice (``w[i] = img`` or
    ``w.write_slice(i, img)``, any order), then :meth:`commit` renames the finished temporary file to
    its final name; :meth:`abort` deletes it. As a context manager it commits on normal exit and
    aborts on an exception.

    For TIFF and ``.npy`` the data go straight to disk with positional writes into a pre-allocated
    temporary file, so a huge volume never has to fit in memory and a full disk is reported as an
    :class:`ImageWriteError` (a memory map would crash with SIGBUS instead). PNG and DICOM outputs
    are buffered in memory and written by :func:`write_image` at commit.

    Attributes
    ----------
    path : pathlib.Path
        Final output path.
    shape : tuple of int
        ``(H, W)`` or ``(Z, H, W)``.
    dtype : numpy.dtype
        Dtype of the output; slices of another dtype are cast if that is safe
        (``np.can_cast(..., 'safe')``), otherwise a ``TypeError`` is raised.
    n_slices : int
        ``len(self)``.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype, overwrite: bool) -> None:
        self.path = path
        self.shape = shape
        self.dtype = dtype
        self.n_slices = shape[0] if len(shape) == 3 else 1
        self.overwrite = overwrite
        self._written = np.zeros(self.n_slices, dtype=bool)
        self._done = False

    def __len__(self) -> int:
        return self.n_slices

    def _check_slice(self, i: int, image: Any) -> tuple[int, np.ndarray]:
        if self._done:
            raise ValueError(f"{self.path}: writer is already committed or aborted")
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise TypeError(f"slice index must be an int, not {type(i).__name__}")
        if not -self.n_slices <= i < self.n_slices:
            raise IndexError(f"slice {i} out of range for {self.n_slices} slice(s)")
        img = np.asarray(image)
        if img.shape != self.shape[-2:]:
            raise ValueError(f"slice shape {img.shape} does not match the output's {self.shape[-2:]}")
        if img.dtype != self.dtype:
            if not np.can_cast(img.dtype, self.dtype, "safe"):
                raise TypeError(f"cannot store {img.dtype} slices in a {self.dtype} output without loss")
            img = img.astype(self.dtype)
        n_nan, n_inf = _count_nonfinite(img)
        if n_nan or n_inf:
            raise ImageWriteError(
                self.path, f"slice {int(i)} {_nonfinite_problem(n_nan, n_inf, img.size)}; refusing to write it"
            )
        return int(i) % self.n_slices, img

    def write_slice(self, i: int, image: np.ndarray) -> None:
        """Store ``image`` (shape ``(H, W)``) as slice ``i`` (0 for a 2-D output)."""
        i, img = self._check_slice(i, image)
        self._store(i, img)
        self._written[i] = True

    __setitem__ = write_slice

    def _store(self, i: int, img: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def commit(self) -> Path:
        """Finish the file and move it to :attr:`path` atomically. All slices must have been written."""
        if self._done:
            raise ValueError(f"{self.path}: writer is already committed or aborted")
        missing = int(self.n_slices - np.count_nonzero(self._written))
        if missing:
            self.abort()
            raise ImageWriteError(
                self.path, f"only {self.n_slices - missing} of {self.n_slices} slices were written; nothing was saved"
            )
        self._done = True
        self._finish()
        return self.path

    def _finish(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def abort(self) -> None:
        """Discard everything written so far; nothing appears under :attr:`path`. Idempotent."""
        self._done = True
        self._discard()

    def _discard(self) -> None:
        pass

    def __enter__(self) -> StackWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._done:
            self.commit()

    def __del__(self) -> None:
        # A writer dropped without commit/abort must not leave its temporary file behind.
        try:
            if not self._done:
                self.abort()
        except Exception:
            pass


class _DiskStackWriter(StackWriter):
    """TIFF / NPY: header written up front, slices written with pwrite at their offsets."""

    def __init__(
        self, path: Path, shape: tuple[int, ...], dtype: np.dtype, overwrite: bool, fmt: str, like: ImageInfo | None
    ) -> None:
        super().__init__(path, shape, dtype, overwrite)
        self._file_dtype = dtype.newbyteorder("<")  # both headers below declare little-endian data
        self._slice_bytes = math.prod(shape[-2:]) * dtype.itemsize
        self._f: IO[bytes] | None = None
        self._tmp: Path | None = None
        try:
            _check_target(path, overwrite)
            _prepare_dir(path)
            self._tmp = _temp_path(path)
            self._f = _open_temp(self._tmp)
            if fmt == "tiff":
                self._offset = self._create_tiff(self._f, like)
            else:
                self._offset = self._create_npy(self._f)
            self._f.flush()
            self._preallocate()
        except BaseException as exc:
            self._done = True
            self._close_and_remove()
            if isinstance(exc, ImageWriteError) or not isinstance(exc, Exception):
                raise
            problem, code = _write_problem(exc, path)
            raise ImageWriteError(path, problem, errno=code) from exc

    def _create_tiff(self, f: IO[bytes], like: ImageInfo | None) -> int:
        import tifffile

        writer_kw, write_kw = _tiff_options(self.path, self.shape, self.dtype, like, allow_compression=False)
        writer_kw["byteorder"] = "<"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            with tifffile.TiffWriter(f, **writer_kw) as tw:
                result = tw.write(shape=self.shape, dtype=self._file_dtype, returnoffset=True, **write_kw)
        if result is None:
            raise ImageWriteError(self.path, "tifffile could not lay out the TIFF contiguously")
        return int(result[0])

    def _create_npy(self, f: IO[bytes]) -> int:
        header = {
            "descr": np.lib.format.dtype_to_descr(self._file_dtype),
            "fortran_order": False,
            "shape": tuple(self.shape),
        }
        try:
            np.lib.format.write_array_header_1_0(f, header)
        except ValueError:  # header longer than 64 KiB (absurdly many dims): needs format 2.0
            f.seek(0)
            f.truncate()
            np.lib.format.write_array_header_2_0(f, header)
        offset = f.tell()
        f.truncate(offset + self._slice_bytes * self.n_slices)
        return offset

    def _preallocate(self) -> None:
        # Reserve the disk space now so a full disk fails in seconds, not after hours of denoising.
        total = self._slice_bytes * self.n_slices
        if not hasattr(os, "posix_fallocate") or total == 0:
            return
        try:
            os.posix_fallocate(self._f.fileno(), self._offset, total)
        except OSError as exc:
            if exc.errno in (errno_mod.ENOSPC, errno_mod.EFBIG, errno_mod.EDQUOT):
                raise
            # EOPNOTSUPP/EINVAL/...: this filesystem cannot preallocate; errors surface at pwrite.

    def _store(self, i: int, img: np.ndarray) -> None:
        data = np.ascontiguousarray(img, dtype=self._file_dtype).tobytes()
        pos = self._offset + i * self._slice_bytes
        try:
            view = memoryview(data)
            while view:
                n = os.pwrite(self._f.fileno(), view, pos)
                view, pos = view[n:], pos + n
        except OSError as exc:
            self.abort()
            problem, code = _write_problem(exc, self.path)
            raise ImageWriteError(self.path, problem, errno=code) from exc

    def _finish(self) -> None:
        try:
            f = self._f
            self._f = None
            try:
                os.fsync(f.fileno())
            finally:
                f.close()
            _publish(self._tmp, self.path, self.overwrite)
        except BaseException as exc:
            _remove_quietly(self._tmp)
            if not isinstance(exc, Exception):
                raise
            problem, code = _write_problem(exc, self.path)
            raise ImageWriteError(self.path, problem, errno=code) from exc
        _fsync_dir(self.path.parent)

    def _close_and_remove(self) -> None:
        if self._f is not None:
            try:
                self._f.close()
            except OSError:
                pass
            self._f = None
        if self._tmp is not None:
            _remove_quietly(self._tmp)

    def _discard(self) -> None:
        self._close_and_remove()


class _MemoryStackWriter(StackWriter):
    """PNG / DICOM: formats written whole; the slices are collected in memory."""

    def __init__(
        self, path: Path, shape: tuple[int, ...], dtype: np.dtype, overwrite: bool, like: ImageInfo | None
    ) -> None:
        super().__init__(path, shape, dtype, overwrite)
        self._like = like
        self._buffer: np.ndarray | None = None
        self._done = True  # until the checks below pass
        _check_target(path, overwrite)  # fail now rather than after all the work
        self._buffer = np.zeros(shape, dtype=dtype)
        self._done = False

    def _store(self, i: int, img: np.ndarray) -> None:
        if self._buffer.ndim == 3:
            self._buffer[i] = img
        else:
            self._buffer[...] = img

    def _finish(self) -> None:
        buffer, self._buffer = self._buffer, None
        write_image(self.path, buffer, like=self._like, overwrite=self.overwrite)

    def _discard(self) -> None:
        self._buffer = None


def create_output_like(
    path: PathLike,
    shape: tuple[int, ...],
    dtype: Any,
    like: ImageInfo | None = None,
    overwrite: bool = False,
) -> StackWriter:
    """Start writing an output image slice by slice (for volumes too large to hold in memory).

    Parameters
    ----------
    path : str or os.PathLike
        Final output path; the format follows the suffix (or ``like.format``), as in
        :func:`write_image`.
    shape : tuple of int
        ``(H, W)`` or ``(Z, H, W)``.
    dtype : numpy dtype-like
        Output dtype (for DICOM: the dtype of the HU slices you pass, e.g. float32; conversion to
        stored values happens at commit as in :func:`write_image`).
    like : ImageInfo, optional
        Source whose metadata to reproduce (see :func:`write_image`; TIFF output from this writer is
        always uncompressed so slices can be written in any order).
    overwrite : bool
        Allow replacing an existing file (checked now and again at commit).

    Returns
    -------
    StackWriter
        Assign slices, then ``commit()``; or use ``with create_output_like(...) as w:``.

    Raises
    ------
    ImageWriteError
        Existing output without ``overwrite``, unsupported shape/dtype for the format, not enough
        disk space (when the filesystem can preallocate), or any I/O error.

    Examples
    --------
    >>> with create_output_like("out.tif", (z, h, w), np.float32, like=info) as w:  # doctest: +SKIP
    ...     for i in range(z):
    ...         w[i] = denoise(src[i])
    """
    p = Path(path)
    shape = tuple(int(n) for n in shape)
    dt = np.dtype(dtype).newbyteorder("=")
    fmt = _output_format(p, like)
    if len(shape) not in (2, 3):
        raise ImageWriteError(p, f"cannot write an array of shape {shape}; need (H, W) or (Z, H, W)")
    if fmt == "png" and (len(shape) != 2 or dt not in (np.uint8, np.uint16)):
        raise ImageWriteError(p, f"PNG holds only 2-D uint8/uint16 images, not shape {shape} {dt}")
    if dt.kind not in "uif":
        raise ImageWriteError(p, f"cannot write pixel type {dt}; need integer or floating-point data")
    if any(n <= 0 for n in shape):
        raise ImageWriteError(p, f"cannot write an empty image (shape {shape})")
    if fmt in ("tiff", "npy"):
        like_same = like if like is not None and like.format == fmt else None
        return _DiskStackWriter(p, shape, dt, overwrite, fmt, like_same)
    if fmt == "dicom" and (like is None or like.format != "dicom"):
        raise ImageWriteError(p, "writing DICOM needs like= the ImageInfo of the source DICOM file")
    return _MemoryStackWriter(p, shape, dt, overwrite, like)
