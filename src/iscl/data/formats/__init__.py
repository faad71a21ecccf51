"""The image formats :mod:`iscl.data.io` reads and writes: one module each, behind a small registry.

A format is a :class:`Format` record of functions, registered once at import. :mod:`iscl.data.io`
finds formats by suffix (:func:`by_suffix`) or by content (:func:`sniff`) and never names one: a new
format is a new module here that calls :func:`register`, plus its name in the import list at the
bottom of this file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from ._common import ImageInfo, ImageSlices

__all__ = ["Format", "HEAD_BYTES", "all_formats", "by_name", "by_suffix", "file_suffixes", "register", "sniff",
           "detect_directory"]

#: bytes read from the start of a file for :attr:`Format.sniff` (DICOM's marker sits at 128..131)
HEAD_BYTES = 132

Writer = Callable[[IO[bytes]], None]


@dataclass(frozen=True)
class Format:
    """One image format: how to recognise, describe, read and write it.

    Paths are :class:`pathlib.Path`; ``size`` is the file size in bytes (0 for a directory format);
    ``channel`` is the 0-based channel to take (None: the data must have one channel).

    Attributes
    ----------
    name : str
        Short name, stored in :attr:`ImageInfo.format` (``'tiff'``).
    title : str
        Name for messages (``'TIFF'``).
    suffixes : tuple of str
        Lower-case file name suffixes (``('.tif', '.tiff')``).
    probe : (path, size) -> ImageInfo
        Header only, no pixel data.
    read : (path, size, channel) -> (array, ImageInfo)
        Whole image ``(H, W)`` or ``(Z, H, W)`` in memory (the caller checks NaN/Inf).
    sniff : (head bytes) -> bool, optional
        True when the first :data:`HEAD_BYTES` bytes are this format's.
    trust_content : bool
        A positive ``sniff`` decides whatever the suffix, and a file without a known suffix is still
        this format (DICOM: scanners export files without suffix; the marker is unambiguous).
    trust_suffix : bool
        The suffix alone decides even if ``sniff`` disagrees; ``probe`` reports a wrong content
        (DICOM without its 128-byte preamble).
    open_slices : (path, size, channel) -> ImageSlices, optional
        Slice access without reading everything; None: the image is read once and served from memory.
    check_write : (path, shape, dtype, like, streaming) -> None, optional
        Raise :class:`~iscl.errors.ImageWriteError` for shapes/dtypes the format cannot store;
        ``streaming`` is True for :func:`~iscl.data.io.create_output_like`.
    encode : (path, array, like) -> writer, optional
        Validate and convert ``array`` before the disk is touched; ``writer(f)`` then writes the file
        to a binary handle. None: the format cannot be written by ``write_image``.
    stack_header : (f, path, shape, file_dtype, like) -> int, optional
        Write a header for uncompressed little-endian pixels and return the byte offset where slice 0
        starts; slices are then written in place. None: stacks are buffered and written whole.
    directory : bool
        Stored as a directory (Zarr), recognised by ``detect_dir`` instead of suffix/content.
    detect_dir : (path) -> bool, optional
    open_array : (path) -> array-like, optional
        Directory formats: the stored array, opened read-only for chunked access.
    inner_paths : bool
        The file holds several arrays, addressed as ``file<suffix>:/inner/path`` (HDF5 datasets); every
        function above then receives the whole address as ``path`` (see :func:`iscl.data.io.split_address`).
    open_writer : (path, shape, dtype, like, overwrite) -> StackWriter, optional
        A format's own slice-by-slice writer (HDF5 writes chunks through its library); takes precedence
        over ``stack_header`` in :func:`~iscl.data.io.create_output_like`.
    """

    name: str
    title: str
    suffixes: tuple[str, ...]
    probe: Callable[[Path, int], ImageInfo]
    read: Callable[[Path, int, int | None], tuple[np.ndarray, ImageInfo]]
    sniff: Callable[[bytes], bool] | None = None
    trust_content: bool = False
    trust_suffix: bool = False
    open_slices: Callable[[Path, int, int | None], ImageSlices] | None = None
    check_write: Callable[[Path, tuple[int, ...], np.dtype, ImageInfo | None, bool], None] | None = None
    encode: Callable[[Path, np.ndarray, ImageInfo | None], Writer] | None = None
    stack_header: Callable[[IO[bytes], Path, tuple[int, ...], np.dtype, ImageInfo | None], int] | None = None
    directory: bool = False
    detect_dir: Callable[[Path], bool] | None = None
    open_array: Callable[[Path], Any] | None = None
    inner_paths: bool = False
    open_writer: Callable[[Path, tuple[int, ...], np.dtype, ImageInfo | None, bool], Any] | None = None


_FORMATS: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    """Add ``fmt`` to the registry (a suffix may belong to one format only)."""
    taken = {s: f.name for f in _FORMATS.values() for s in f.suffixes if f.name != fmt.name}
    clash = [s for s in fmt.suffixes if s in taken]
    if clash:
        raise ValueError(f"format {fmt.name!r}: suffix {clash[0]} already belongs to {taken[clash[0]]!r}")
    _FORMATS[fmt.name] = fmt
    return fmt


def all_formats() -> tuple[Format, ...]:
    """Registered formats, in registration order."""
    return tuple(_FORMATS.values())


def by_name(name: str) -> Format:
    return _FORMATS[name]


def by_suffix(suffix: str) -> Format | None:
    """The format owning ``suffix`` (any case), or None."""
    s = suffix.lower()
    return next((f for f in _FORMATS.values() if s in f.suffixes), None)


def file_suffixes() -> tuple[str, ...]:
    """Suffixes of the single-file formats, in registration order."""
    return tuple(s for f in _FORMATS.values() if not f.directory for s in f.suffixes)


def sniff(head: bytes, *, trusted_only: bool = False) -> Format | None:
    """The format whose magic bytes start ``head``, or None."""
    # Content-trusted formats first: DICOM's 128-byte preamble may itself hold a TIFF header
    # ("dual-personality" files, e.g. pydicom's CT_small.dcm); the DICM marker decides.
    ordered = sorted(_FORMATS.values(), key=lambda f: not f.trust_content)
    for f in ordered:
        if trusted_only and not f.trust_content:
            break
        if f.sniff is not None and f.sniff(head):
            return f
    return None


def detect_directory(path: Path) -> Format | None:
    """The directory format stored at ``path`` (e.g. a Zarr array), or None."""
    return next((f for f in _FORMATS.values() if f.directory and f.detect_dir and f.detect_dir(path)), None)


# Registration order is the order of SUPPORTED_SUFFIXES and of messages listing them.
from . import tiff, png, npy, dicom, zarr, mrc, hdf5, nifti  # noqa: E402, F401, I001
