"""What every format module shares: :class:`ImageInfo`, the stored-layout logic (channel and slice
axes), the checks on dtypes, sizes and NaN/Inf, and :class:`ImageSlices`.

Only :mod:`numpy` and :mod:`iscl.errors`; no format library is imported here.
"""

from __future__ import annotations

import errno as errno_mod
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from iscl.data.finite import count_nonfinite, nonfinite_problem
from iscl.errors import ImageReadError

PathLike = str | os.PathLike

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
    format : {'tiff', 'png', 'npy', 'dicom', 'zarr', 'mrc', 'hdf5', 'nifti'}
        The registered format's name (:mod:`iscl.data.formats`), detected from the content (the name
        must agree, except for DICOM; Zarr is a directory).
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
        * Zarr: ``chunks`` (tuple), ``zarr_format`` (2, 3 or None), ``attrs`` (dict).
        * MRC: ``mode`` (int, 0/1/2/6/12), ``voxel_size`` and ``origin`` ((x, y, z) floats, Å),
          ``labels`` (list of str), ``space_group`` (int), ``exttyp`` (str), ``byteorder`` ('<' or
          '>'), ``header`` (the 1024 header bytes) and ``extended_header`` (bytes), which a result
          written ``like`` it starts from.
        * HDF5: ``dataset`` (str, its absolute path in the file), ``attrs`` (dict: the dataset's
          attributes, references into the file left out), ``chunks`` (tuple or None), ``compression``
          (str or None), ``compression_opts``, ``shuffle`` and ``fletcher32`` (bool).
        * NIfTI: ``header`` (the nibabel Nifti1Header/Nifti2Header as stored), ``affine`` ((4, 4)
          float64, the header's best affine, voxel (i, j, k) = (W, H, Z) to world), ``stored_dtype``
          (numpy dtype in the file), ``scl_slope`` and ``scl_inter`` (float, or None when the values
          are not scaled), ``compressed`` (bool, ``.nii.gz``).
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


# one implementation for readers, writers, the API and the volume jobs (iscl.data.finite)
_count_nonfinite = count_nonfinite
_nonfinite_problem = nonfinite_problem


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
# Files and ImageInfo construction
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


def _same_format(like: ImageInfo | None, fmt: str) -> ImageInfo | None:
    """``like`` when it describes a file of format ``fmt`` (its metadata then carry over), else None."""
    return like if like is not None and like.format == fmt else None


# --------------------------------------------------------------------------------------------------
# Slice access
# --------------------------------------------------------------------------------------------------


class SliceReader:
    """A format's way to read part of its stored array without loading it whole (see ImageSlices)."""

    def __call__(self, index: tuple[Any, ...]) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


class ImageSlices:
    """Random access to the 2-D slices of an image file without reading it whole.

    Returned by :func:`iscl.data.io.open_slices`. Uncompressed contiguous TIFF stacks and ``.npy``
    files are memory-mapped (only the slices you index are read from disk); other TIFFs are decoded
    page by page, Zarr arrays chunk by chunk; PNG and DICOM (small by nature) are read once.

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
        # A format's own slice reader (e.g. TIFF page by page): called with the full stored-array index,
        # closed with the slices. Used when there is no array to index.
        self._reader: SliceReader | None = None

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
        if self._array is None and self._reader is None:
            raise ValueError(f"{self.path}: slices are closed")
        n = self.n_slices
        if not -n <= i < n:
            raise IndexError(f"slice {i} out of range for {n} slice(s)")
        i = int(i) % n
        z = i if self._layout.slice_axis is not None else None
        if self._array is not None:
            out = self._array[self._layout.index(z, self._channel)]
        else:
            out = self._reader(self._layout.index(z, self._channel))
        out = np.ascontiguousarray(_native(np.array(out, copy=True)))
        _check_finite(self.path, out, where=f"slice {i} ")
        return out

    def close(self) -> None:
        """Release the file (memory map or the format's open handle)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._array = None

    def __enter__(self) -> ImageSlices:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        how = "memmap" if self.is_memmap else ("pages" if self._reader is not None else "memory")
        return f"ImageSlices({str(self.path)!r}, shape={self.shape}, dtype={self.dtype}, via={how})"

