"""HDF5 (``.h5``, ``.hdf5``, ``.hdf``), via :mod:`h5py` (optional: ``pip install 'iscl[hdf5]'``).

An HDF5 file holds many arrays, so an image is one dataset, addressed as ``file.h5:/group/dataset``
(:func:`iscl.data.io.split_address`); a plain ``file.h5`` stands for its only 2-D or 3-D dataset and is
refused, with the datasets listed, when there are several. Datasets are ``(H, W)`` or ``(Z, H, W)``.

Reading: slices come straight from the dataset (h5py reads only the chunks a slice touches), so a
volume is never loaded whole by :func:`~iscl.data.io.open_slices`.

Writing: a new file holding one dataset (the address's, else the source's path, else ``/data``),
one ``(1, H, W)`` slice per chunk (fewer rows for slices over 1 GiB), in the given dtype, with the
source dataset's attributes and its lossless filters (gzip, lzf, shuffle, fletcher32). Slices are
written as they come into a hidden temporary file that is renamed when complete
(:mod:`iscl.atomic`); an existing file is replaced whole, and only with ``overwrite``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from iscl import atomic
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
from ._writing import EXISTS, StackWriter, _check_target, _prepare_dir, _write_problem

SUFFIXES = (".h5", ".hdf5", ".hdf")
_MAGIC = b"\x89HDF\r\n\x1a\n"
_HDF4_MAGIC = b"\x0e\x03\x13\x01"
#: dataset path of an output whose address names none and whose source is not HDF5
DEFAULT_DATASET = "/data"
#: chunks above this many bytes are split into row bands (HDF5 refuses chunks of 4 GiB or more)
MAX_CHUNK_BYTES = 2**30
_LISTED = 10  # datasets named in a message
# The same split as iscl.data.io.split_address (which the formats cannot import): the first ':' after
# a name ending in an HDF5 suffix.
_ADDRESS = re.compile(r"^(.*?\.(?:h5|hdf5|hdf)):(.*)$", re.IGNORECASE | re.DOTALL)


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise ImportError("HDF5 files need the h5py package: pip install 'iscl[hdf5]'") from None
    return h5py


def _split(path: Path) -> tuple[Path, str | None]:
    """``file.h5:/a/b`` -> (file.h5, '/a/b'); ``file.h5`` and ``file.h5:/`` -> (file.h5, None)."""
    m = _ADDRESS.match(str(path))
    if m is None:
        return Path(path), None
    inner = "/" + m.group(2).strip("/")
    return Path(m.group(1)), (None if inner == "/" else inner)


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def _describe(ds: Any) -> str:
    return f"{ds.name} ({'x'.join(str(n) for n in ds.shape)} {ds.dtype})"


def _datasets(h5: Any, limit: int) -> tuple[list[Any], list[Any], bool]:
    """(all datasets, the image-like ones (2-D/3-D, numeric), whether the walk stopped at ``limit``)."""
    h5py = _h5py()
    found: list[Any] = []
    images: list[Any] = []

    def visit(name: str, obj: Any) -> bool | None:
        if isinstance(obj, h5py.Dataset):
            found.append(obj)
            if obj.shape is not None and len(obj.shape) in (2, 3) and obj.dtype.kind in "uif":
                images.append(obj)
        return True if len(found) > limit else None  # a non-None value stops the walk

    stopped = bool(h5.visititems(visit))
    return found, images, stopped


def _listing(datasets: list[Any], stopped: bool) -> str:
    if not datasets:
        return "the file holds no datasets"
    shown = ", ".join(_describe(d) for d in datasets[:_LISTED])
    more = " and more" if stopped or len(datasets) > _LISTED else ""
    return f"datasets: {shown}{more}"


def _open_file(path: Path) -> Any:
    """Open the file of ``path`` read-only; one-line errors for a non-HDF5, corrupt or truncated file."""
    h5py = _h5py()
    file, _ = _split(path)
    try:
        return h5py.File(file, "r")
    except OSError as exc:
        if not h5py.is_hdf5(file):
            if _head(file) == _HDF4_MAGIC:
                raise ImageReadError(path, "is an HDF4 file; h5py reads HDF5 only (convert it with h4toh5)") from None
            raise ImageReadError(
                path, f"not a valid HDF5 file (the name ends in {file.suffix} but the content has no HDF5 signature)"
            ) from None
        raise ImageReadError(path, f"corrupt or truncated HDF5 file ({_describe_exc(exc)})") from None


def _head(file: Path) -> bytes:
    try:
        with open(file, "rb") as f:
            return f.read(4)
    except OSError:
        return b""


def _find_dataset(path: Path, h5: Any) -> Any:
    """The dataset ``path`` addresses, or the file's only image-like dataset."""
    h5py = _h5py()
    file, name = _split(path)
    if name is None:
        found, images, stopped = _datasets(h5, 10_000)
        if len(images) == 1 and not stopped:
            return images[0]
        if not images:
            raise ImageReadError(path, f"holds no 2-D or 3-D numeric dataset; {_listing(found, stopped)}")
        raise ImageReadError(
            path,
            f"holds several 2-D/3-D datasets; name one as {file}:/path/to/dataset "
            f"({_listing(images, stopped)})",
        )
    try:
        obj = h5.get(name)
    except Exception as exc:  # a broken link or a corrupt object header
        raise ImageReadError(path, f"cannot open {name} ({_describe_exc(exc)})") from None
    if isinstance(obj, h5py.Dataset):
        return obj
    found, _, stopped = _datasets(h5, _LISTED)
    what = f"{name} is a group, not a dataset" if isinstance(obj, h5py.Group) else f"no dataset {name} in {file}"
    raise ImageReadError(path, f"{what}; {_listing(found, stopped)}")


def _is_reference(dtype: np.dtype) -> bool:
    h5py = _h5py()
    base = h5py.check_vlen_dtype(dtype)
    return bool(h5py.check_ref_dtype(base if isinstance(base, np.dtype) else dtype))


def _attrs(ds: Any) -> dict[str, Any]:
    """The dataset's attributes that can be copied to another file."""
    out = {}
    for key in ds.attrs:
        try:
            if _is_reference(ds.attrs.get_id(key).dtype):  # they point into this file (e.g. dimension scales)
                continue
            out[key] = ds.attrs[key]
        except (OSError, TypeError):  # a type h5py cannot read: it could not be written back either
            continue
    return out


def _open(path: Path) -> tuple[Any, Any, Any, ImageInfo]:
    """(open h5py.File, dataset, layout, info); the caller closes the file."""
    h5 = _open_file(path)
    try:
        ds = _find_dataset(path, h5)
        if ds.shape is None or len(ds.shape) not in (2, 3):
            shape = None if ds.shape is None else tuple(ds.shape)
            raise ImageReadError(
                path, f"dataset {ds.name} has shape {shape}; need a 2-D image (H, W) or a 3-D stack (Z, H, W)"
            )
        _check_dtype(path, np.dtype(ds.dtype))
        axes = "ZYX" if len(ds.shape) == 3 else "YX"
        layout = _make_layout(path, tuple(ds.shape), axes)
        meta = {
            "axes": axes,
            "dataset": ds.name,
            "attrs": _attrs(ds),
            "chunks": ds.chunks,
            "compression": ds.compression,
            "compression_opts": ds.compression_opts,
            "shuffle": bool(ds.shuffle),
            "fletcher32": bool(ds.fletcher32),
        }
        info = _info(path, "hdf5", layout, np.dtype(ds.dtype).newbyteorder("="), meta)
    except BaseException:
        h5.close()
        raise
    return h5, ds, layout, info


def _probe(path: Path, size: int) -> ImageInfo:
    h5, _, _, info = _open(path)
    h5.close()
    return info


def _read(path: Path, size: int, channel: int | None) -> tuple[np.ndarray, ImageInfo]:
    h5, ds, layout, info = _open(path)
    with h5:
        _check_channel(path, layout, channel)
        _check_fits_in_memory(path, info.nbytes)
        try:
            arr = ds[()]
        except Exception as exc:
            raise ImageReadError(path, f"cannot read dataset {ds.name} ({_describe_exc(exc)})") from None
    return np.ascontiguousarray(_native(arr)), info


class _DatasetReader(SliceReader):
    """Index the open dataset: h5py reads only the chunks the slice touches."""

    def __init__(self, path: Path, h5: Any, ds: Any) -> None:
        self.path, self._h5, self._ds = path, h5, ds

    def __call__(self, index: tuple[Any, ...]) -> np.ndarray:
        try:
            return self._ds[index]
        except Exception as exc:
            where = f"slice {index[0]}" if len(index) == 3 else "the image"
            raise ImageReadError(self.path, f"cannot read {where} of {self._ds.name} ({_describe_exc(exc)})") from None

    def close(self) -> None:
        self._h5.close()


def _open_slices(path: Path, size: int, channel: int | None) -> ImageSlices:
    h5, ds, layout, info = _open(path)
    try:
        _check_channel(path, layout, channel)
    except BaseException:
        h5.close()
        raise
    info.meta["channel"] = channel
    slices = ImageSlices(path, info, layout, channel)
    slices._reader = _DatasetReader(path, h5, ds)
    return slices


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def _target(path: Path, like: ImageInfo | None) -> tuple[Path, str]:
    """(file, dataset path) of an output: the address's, else the source dataset's, else ``/data``."""
    file, name = _split(path)
    if name is None:
        name = like.meta.get("dataset") if like is not None else None
    return file, name or DEFAULT_DATASET


def _chunks(shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, ...]:
    h, w = shape[-2:]
    rows = max(1, min(h, MAX_CHUNK_BYTES // max(1, w * dtype.itemsize)))
    return (1, rows, w) if len(shape) == 3 else (rows, w)


def _create_dataset(h5: Any, name: str, shape: tuple[int, ...], dtype: np.dtype, like: ImageInfo | None) -> Any:
    """Create the output dataset in the open file ``h5``: chunked, the source's lossless filters and attributes."""
    h5py = _h5py()
    meta = like.meta if like is not None else {}
    options: dict[str, Any] = {"chunks": _chunks(shape, dtype)}
    compression = meta.get("compression")
    available = {"gzip": h5py.h5z.FILTER_DEFLATE, "lzf": h5py.h5z.FILTER_LZF}
    if compression in available and h5py.h5z.filter_avail(available[compression]):
        options["compression"] = compression
        if compression == "gzip":
            options["compression_opts"] = meta.get("compression_opts")
    options["shuffle"] = bool(meta.get("shuffle")) and "compression" in options
    options["fletcher32"] = bool(meta.get("fletcher32"))
    ds = h5.create_dataset(name, shape=shape, dtype=dtype, **options)
    for key, value in meta.get("attrs", {}).items():
        ds.attrs[key] = value
    return ds


def _encode(path: Path, arr: np.ndarray, like: ImageInfo | None) -> Any:
    h5py = _h5py()
    like = _same_format(like, "hdf5")
    _, name = _target(path, like)

    def write(f: Any) -> None:
        with h5py.File(f, "w") as h5:
            _create_dataset(h5, name, arr.shape, arr.dtype, like)[...] = arr

    return write


class _Hdf5StackWriter(StackWriter):
    """Slices written into the chunks of a new HDF5 file under a temporary name, renamed at commit."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype, overwrite: bool,
                 like: ImageInfo | None) -> None:
        super().__init__(path, shape, dtype, overwrite)
        self._done = True  # until the file is open: nothing to abort
        self._af: atomic.AtomicFile | None = None
        self._h5: Any = None
        h5py = _h5py()
        like = _same_format(like, "hdf5")
        file, name = _target(path, like)
        _check_target(file, overwrite)
        _prepare_dir(file)
        try:
            self._af = atomic.AtomicFile(file, overwrite=overwrite)
            self._h5 = h5py.File(self._af.tmp, "w")  # h5py opens the hidden file by name; the AtomicFile publishes it
            self._ds = _create_dataset(self._h5, name, shape, dtype, like)
        except Exception as exc:
            self._discard()
            problem, code = _write_problem(exc, file)
            raise ImageWriteError(path, problem, errno=code) from exc
        except BaseException:
            self._discard()
            raise
        self._done = False

    def _store(self, i: int, img: np.ndarray) -> None:
        try:
            if len(self.shape) == 3:
                self._ds[i] = img
            else:
                self._ds[...] = img
        except Exception as exc:
            self.abort()
            problem, code = _write_problem(exc, self.path)
            raise ImageWriteError(self.path, problem, errno=code) from exc

    def _finish(self) -> None:
        h5, self._h5 = self._h5, None
        af, self._af = self._af, None
        try:
            h5.close()  # writes the remaining chunks and the file's metadata
            af.commit()  # fsync, publish without replacing unless overwrite, fsync the directory
        except atomic.AlreadyExistsError:  # another writer published this name first
            raise ImageWriteError(af.path, EXISTS) from None
        except Exception as exc:
            af.abort()
            problem, code = _write_problem(exc, self.path)
            raise ImageWriteError(self.path, problem, errno=code) from exc

    def _discard(self) -> None:
        h5, self._h5 = self._h5, None
        af, self._af = self._af, None
        if h5 is not None:
            try:
                h5.close()
            except Exception:  # the file is deleted next; a failed close cannot matter
                pass
        if af is not None:
            af.abort()


def _open_writer(path: Path, shape: tuple[int, ...], dtype: np.dtype, like: ImageInfo | None,
                 overwrite: bool) -> StackWriter:
    return _Hdf5StackWriter(path, shape, dtype, overwrite, like)


FORMAT = register(
    Format(
        name="hdf5",
        title="HDF5",
        suffixes=SUFFIXES,
        probe=_probe,
        read=_read,
        sniff=lambda head: head.startswith(_MAGIC),
        # a user block can move the signature to byte 512, 1024, ...: the name decides, _open_file checks
        trust_suffix=True,
        open_slices=_open_slices,
        encode=_encode,
        inner_paths=True,
        open_writer=_open_writer,
    )
)
