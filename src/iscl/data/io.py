"""Image file input/output for ``iscl train`` and ``iscl denoise``.

Formats
-------
* TIFF (``.tif``, ``.tiff``): 2-D images and 3-D stacks, classic and BigTIFF, plain, ImageJ and
  OME-TIFF, via :mod:`tifffile`. Uncompressed stacks can be read slice by slice through a memory map.
* PNG (``.png``): 8- and 16-bit grayscale, via Pillow.
* NumPy (``.npy``): any 2-D / 3-D integer or float array.
* DICOM (``.dcm``, or any file with the ``DICM`` marker at byte 128), via :mod:`pydicom` (optional
  dependency): pixels are returned in modality units (Hounsfield units for CT) as float32.
* Zarr (``*.zarr`` directories, read only), via :mod:`zarr` (optional dependency); large volumes are
  denoised by :mod:`iscl.volumes`.
* HDF5 (``.h5``, ``.hdf5``, ``.hdf``), via :mod:`h5py` (optional): one dataset, addressed as
  ``file.h5:/group/dataset`` (see :func:`split_address`); a file with one 2-D/3-D dataset also by its name.
* NIfTI (``.nii``, ``.nii.gz``), via :mod:`nibabel` (optional): 2-D and 3-D images, slices along z.

Each format is one module of :mod:`iscl.data.formats` behind a small registry; this module is the
public facade and dispatches through it (it never names a format).

Conventions
-----------
* Arrays are ``(H, W)`` for a 2-D image and ``(Z, H, W)`` for a stack, in the file's own dtype (the
  byte order is made native). DICOM is the exception: float32 in modality units.
* Colour or multi-channel data must be reduced to one channel with ``channel=`` (0-based).
* Every problem with an input raises :class:`~iscl.errors.ImageReadError` and every problem with an
  output raises :class:`~iscl.errors.ImageWriteError`; both name the file and the problem on one line.
* Writes are atomic (:mod:`iscl.atomic`): data go to a hidden temporary file
  (``.<name>.tmp-<random>``) in the target directory, are fsync'ed, then renamed over the final name.
  A failed write leaves nothing under the final name; a hard kill can at most leave the hidden
  temporary file, which :func:`find_images` ignores. Without ``overwrite`` the final name is claimed
  create-if-absent, so of two processes writing one output exactly one succeeds.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from iscl.errors import ImageReadError, ImageWriteError

from . import formats
from .formats import Format
from .formats._common import (
    ImageInfo,
    ImageSlices,
    _check_finite,
    _count_nonfinite,
    _describe_exc,
    _make_layout,
    _natural_key,
    _nonfinite_problem,
    _read_head,
    _stat_file,
)
from .formats._writing import StackWriter, _atomic_output, _DiskStackWriter, _MemoryStackWriter
from .formats.tiff import BIGTIFF_THRESHOLD

__all__ = [
    "BIGTIFF_THRESHOLD",
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
    "split_address",
    "write_image",
]

PathLike = str | os.PathLike

#: File name suffixes recognised as images (lower case). DICOM files are also recognised by their
#: ``DICM`` marker at byte 128 whatever their name, since scanners often export files without suffix.
SUPPORTED_SUFFIXES: tuple[str, ...] = formats.file_suffixes()

#: Formats recognised by content whatever the name, for messages ("DICOM").
_BY_CONTENT = " / ".join(f.title for f in formats.all_formats() if f.trust_content)


def _suffix(path: Path) -> str:
    """The registered suffix ``path``'s name ends with, the longest (``.nii.gz`` whole), else its last suffix."""
    name = path.name.lower()
    known = [s for f in formats.all_formats() for s in f.suffixes if name.endswith(s) and name != s]
    return max(known, key=len) if known else path.suffix


def split_address(path: PathLike) -> tuple[Path, str | None]:
    """Split ``file.h5:/group/dataset`` into the file and the path inside it.

    Only for formats that hold several arrays (``Format.inner_paths``): the first ``:`` after a name
    ending in such a format's suffix starts the inner path (``file.h5:`` alone gives ``'/'``). Any other
    path is ``(Path(path), None)``.

    >>> split_address("em/vol.h5:/raw/data")
    (PosixPath('em/vol.h5'), '/raw/data')
    """
    text = os.fspath(path)
    for m in re.finditer(":", text):
        fmt = formats.by_suffix(_suffix(Path(text[: m.start()])))
        if fmt is not None and fmt.inner_paths:
            return Path(text[: m.start()]), "/" + text[m.end():].strip("/")
    return Path(text), None


# --------------------------------------------------------------------------------------------------
# Format detection
# --------------------------------------------------------------------------------------------------


def is_supported(path: PathLike) -> bool:
    """Whether ``path`` looks like an image this module reads (by suffix, or DICOM by content).

    Cheap: at most a few bytes are read, only for files whose suffix is not in ``SUPPORTED_SUFFIXES``.
    """
    p = split_address(path)[0]
    if _suffix(p).lower() in SUPPORTED_SUFFIXES:
        return True
    if not p.is_file():
        return False
    try:
        head = _read_head(p, formats.HEAD_BYTES)
    except ImageReadError:
        return False
    return formats.sniff(head, trusted_only=True) is not None


def _detect_format(address: Path) -> tuple[Format, int]:
    """Return (format, file size) after checking that the name and the content agree."""
    path = split_address(address)[0]  # the file; the format's functions get the whole address
    if path.is_dir():
        found = formats.detect_directory(path)
        if found is not None:
            return found, 0
    size = _stat_file(path)
    head = _read_head(path, formats.HEAD_BYTES)
    content = formats.sniff(head)
    expected = formats.by_suffix(_suffix(path))
    if expected is not None and expected.directory:
        expected = None
    if content is not None and content.trust_content:
        return content, size
    if expected is None:
        shown = f"'{path.suffix}'" if path.suffix else "(no suffix)"
        raise ImageReadError(
            path,
            f"unsupported file type {shown}; supported: {', '.join(SUPPORTED_SUFFIXES)} and {_BY_CONTENT} files",
        )
    if expected.trust_suffix:
        # e.g. DICOM without the 128-byte preamble (old ACR-NEMA style) is still parseable by pydicom
        # when forced; the format's probe reports if it is not DICOM at all.
        return expected, size
    if content is not expected:
        found = f"is {content.title}" if content else f"starts with {head[:8]!r}"
        raise ImageReadError(
            path,
            f"not a valid {expected.title} file (the name ends in {path.suffix} but the content {found})",
        )
    return expected, size


# --------------------------------------------------------------------------------------------------
# Public read API
# --------------------------------------------------------------------------------------------------


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
    return fmt.probe(p, size)


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
    arr, info = fmt.read(p, size, channel)
    _check_finite(p, arr)
    info.meta["channel"] = channel
    return arr, info


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
    if fmt.open_slices is not None:
        return fmt.open_slices(p, size, channel)
    # Formats holding one image (or a modest multi-frame) are read once; slices come from memory.
    arr, info = read_image(p, channel)
    layout = _make_layout(p, arr.shape, "ZYX" if arr.ndim == 3 else "YX")
    slices = ImageSlices(p, info, layout, None)
    slices._array = arr
    return slices


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
        file, inner = split_address(text)
        if inner is not None:  # file.h5:/dataset: the file must exist, the dataset is checked on reading
            if not file.is_file():
                raise ImageReadError(file, "file not found")
            add(p)
        elif p.is_dir():
            try:
                entries = [e for e in p.iterdir() if not e.name.startswith(".") and e.is_file()]
            except OSError as exc:
                raise ImageReadError(p, f"cannot list directory ({_describe_exc(exc)})") from None
            images = sorted((e for e in entries if is_supported(e)), key=lambda e: _natural_key(e.name))
            if not images:
                raise ImageReadError(
                    p, f"directory contains no supported images ({', '.join(SUPPORTED_SUFFIXES)} or {_BY_CONTENT})"
                )
            for e in images:
                add(e)
        elif p.exists():
            if not is_supported(p):
                supported = f"{', '.join(SUPPORTED_SUFFIXES)} and {_BY_CONTENT}"
                raise ImageReadError(p, f"unsupported file type '{p.suffix}'; supported: {supported}")
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
# Writing
# --------------------------------------------------------------------------------------------------


def _output_format(path: Path, like: ImageInfo | None) -> Format:
    fmt = formats.by_suffix(_suffix(split_address(path)[0]))
    if fmt is None and like is not None:
        fmt = formats.by_name(like.format)  # e.g. DICOM files named without suffix
    if fmt is None:
        raise ImageWriteError(
            path,
            f"cannot tell the output format from the suffix '{path.suffix}'; "
            f"use one of {', '.join(SUPPORTED_SUFFIXES)}",
        )
    if fmt.encode is None:
        raise ImageWriteError(path, f"cannot write {fmt.title} here; use one of {', '.join(SUPPORTED_SUFFIXES)}")
    return fmt


def _check_array_for_write(path: Path, array: Any, fmt: Format) -> np.ndarray:
    arr = np.asarray(array)
    if arr.ndim not in (2, 3):
        raise ImageWriteError(path, f"cannot write an array of shape {arr.shape}; need (H, W) or (Z, H, W)")
    if arr.dtype.kind not in "uif":
        raise ImageWriteError(path, f"cannot write pixel type {arr.dtype}; need integer or floating-point data")
    if fmt.check_write is not None:
        fmt.check_write(path, tuple(arr.shape), arr.dtype, None, False)
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
        * HDF5: the dataset path (unless the output address names one), the dataset's attributes
          and lossless filters; the output file holds that one dataset, one slice per chunk.
        * NIfTI: the header as stored (affine, pixdim, descrip, extensions, ...); scaled sources
          are stored back through their inverse scaling in the stored dtype.
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
    write = fmt.encode(p, arr, like)  # validate and convert before touching the disk
    with _atomic_output(split_address(p)[0], overwrite) as f:
        write(f)
    return p


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
    if fmt.check_write is not None:  # the format's own limits (PNG: 2-D uint8/16; DICOM: needs like=)
        fmt.check_write(p, shape, dt, like, True)
    if dt.kind not in "uif":
        raise ImageWriteError(p, f"cannot write pixel type {dt}; need integer or floating-point data")
    if any(n <= 0 for n in shape):
        raise ImageWriteError(p, f"cannot write an empty image (shape {shape})")
    if fmt.open_writer is not None:  # written through the format's library (HDF5 chunks)
        return fmt.open_writer(p, shape, dt, like, overwrite)
    if fmt.stack_header is not None:
        return _DiskStackWriter(p, shape, dt, overwrite, fmt, like)
    return _MemoryStackWriter(p, shape, dt, overwrite, like, write_image)
