"""Writing shared by every format: atomic output with one-line :class:`~iscl.errors.ImageWriteError`
messages, and the slice-by-slice :class:`StackWriter` (in place on disk for formats with a
``stack_header``, buffered in memory for the others).
"""

from __future__ import annotations

import errno as errno_mod
import math
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from iscl import atomic
from iscl.errors import ImageWriteError

from . import Format
from ._common import ImageInfo, _count_nonfinite, _describe_exc, _nonfinite_problem

EXISTS = "exists; pass --overwrite to replace it"


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
        raise ImageWriteError(path, EXISTS)

def _prepare_dir(path: Path) -> None:
    parent = path.parent
    if not parent.is_dir():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ImageWriteError(
                path, f"cannot create directory {parent} ({_describe_exc(exc)})", errno=exc.errno
            ) from None


@contextmanager
def _atomic_output(path: Path, overwrite: bool) -> Iterator[IO[bytes]]:
    """Yield a binary file to write; on success it replaces ``path`` atomically (see :mod:`iscl.atomic`),
    on any failure it is deleted and :class:`ImageWriteError` naming ``path`` is raised."""
    _check_target(path, overwrite)
    _prepare_dir(path)
    try:
        af = atomic.AtomicFile(path, overwrite=overwrite)
    except OSError as exc:
        raise ImageWriteError(path, f"cannot create file ({_describe_exc(exc)})", errno=exc.errno) from None
    try:
        with af:  # commits on normal exit, removes the temporary file on an exception
            yield af.file
    except atomic.AlreadyExistsError:  # another writer published this name first
        raise ImageWriteError(path, EXISTS) from None
    except Exception as exc:
        problem, code = _write_problem(exc, path)
        raise ImageWriteError(path, problem, errno=code) from exc


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
    are buffered in memory and written by :func:`~iscl.data.io.write_image` at commit.

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
    """Formats with a ``stack_header`` (TIFF, NPY): header written up front, slices written with pwrite
    at their offsets into an :class:`iscl.atomic.AtomicFile`."""

    def __init__(
        self, path: Path, shape: tuple[int, ...], dtype: np.dtype, overwrite: bool, fmt: Format, like: ImageInfo | None
    ) -> None:
        super().__init__(path, shape, dtype, overwrite)
        self._file_dtype = dtype.newbyteorder("<")  # the headers declare little-endian data
        self._slice_bytes = math.prod(shape[-2:]) * dtype.itemsize
        self._af: atomic.AtomicFile | None = None
        try:
            _check_target(path, overwrite)
            _prepare_dir(path)
            self._af = atomic.AtomicFile(path, overwrite=overwrite)
            self._offset = fmt.stack_header(self._af.file, path, self.shape, self._file_dtype, like)
            self._af.file.flush()
            self._preallocate()
        except BaseException as exc:
            self._done = True
            self._discard()
            if isinstance(exc, ImageWriteError) or not isinstance(exc, Exception):
                raise
            problem, code = _write_problem(exc, path)
            raise ImageWriteError(path, problem, errno=code) from exc

    def _preallocate(self) -> None:
        # Reserve the disk space now so a full disk fails in seconds, not after hours of denoising.
        total = self._slice_bytes * self.n_slices
        if not hasattr(os, "posix_fallocate") or total == 0:
            return
        try:
            os.posix_fallocate(self._af.file.fileno(), self._offset, total)
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
                n = os.pwrite(self._af.file.fileno(), view, pos)
                view, pos = view[n:], pos + n
        except OSError as exc:
            self.abort()
            problem, code = _write_problem(exc, self.path)
            raise ImageWriteError(self.path, problem, errno=code) from exc

    def _finish(self) -> None:
        af, self._af = self._af, None
        try:
            af.commit()
        except atomic.AlreadyExistsError:  # another writer published this name first
            raise ImageWriteError(self.path, EXISTS) from None
        except Exception as exc:
            problem, code = _write_problem(exc, self.path)
            raise ImageWriteError(self.path, problem, errno=code) from exc

    def _discard(self) -> None:
        af, self._af = self._af, None
        if af is not None:
            af.abort()


class _MemoryStackWriter(StackWriter):
    """Formats written whole (PNG, DICOM): the slices are collected in memory, written at commit."""

    def __init__(
        self, path: Path, shape: tuple[int, ...], dtype: np.dtype, overwrite: bool, like: ImageInfo | None,
        write_whole: Callable[..., Path],
    ) -> None:
        super().__init__(path, shape, dtype, overwrite)
        self._like = like
        self._write_whole = write_whole  # iscl.data.io.write_image
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
        self._write_whole(self.path, buffer, like=self._like, overwrite=self.overwrite)

    def _discard(self) -> None:
        self._buffer = None
