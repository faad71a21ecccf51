"""Atomic publication of files and directories: write under a hidden temporary name, then rename.

Every writer in iscl goes through here, so all outputs get the same guarantees:

* Readers never see a partial result: data go to a hidden sibling (``.<name>.tmp-<random>``, same
  directory, hence same filesystem, so the final rename is atomic), are fsync'ed, then renamed; the
  directory is fsync'ed afterwards so the rename itself survives a power cut.
* A failure (exception, full disk, KeyboardInterrupt) removes the temporary file; nothing appears under
  the final name and an existing file is left untouched.
* Without ``overwrite``, publishing is *create-if-absent*: files are published with ``os.link`` (fails
  with ``EEXIST`` if the name exists), so two processes racing for one name cannot silently replace each
  other's output; the loser gets :class:`AlreadyExistsError`. Where hard links are unsupported (FAT,
  some network filesystems) a checked ``os.replace`` is the fallback.
* Directories are renamed whole; replacing one (``overwrite``) moves the old one aside to
  ``.<name>.old-<random>`` first, because ``rename`` cannot replace a non-empty directory.
  :func:`recover_dir` puts such a copy back after a crash between the two renames.

Leaf module: standard library only, no iscl imports.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = [
    "AlreadyExistsError",
    "AtomicFile",
    "atomic_dir",
    "atomic_file",
    "fsync_dir",
    "publish_dir",
    "publish_file",
    "recover_dir",
    "temp_path",
    "write_bytes",
    "write_text",
]

PathLike = str | os.PathLike


class AlreadyExistsError(FileExistsError):
    """The final name exists (or appeared while writing) and ``overwrite`` was not given."""

    def __init__(self, path: PathLike) -> None:
        super().__init__(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(path))


def temp_path(path: PathLike, tag: str = "tmp") -> Path:
    """Hidden sibling of ``path``: ``.<name>.<tag>-<8 hex>``.

    Hidden, so globs and :func:`iscl.data.io.find_images` skip it; the name is cut to 200 characters so
    the result stays within the usual 255-byte limit.
    """
    p = Path(path)
    return p.with_name(f".{p.name[:200]}.{tag}-{secrets.token_hex(4)}")


def fsync_dir(directory: PathLike) -> None:
    """Make renames in ``directory`` durable. Best effort: not possible everywhere (e.g. Windows)."""
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


def _fsync_path(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _remove_quietly(p: Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def publish_file(tmp: PathLike, path: PathLike, *, overwrite: bool) -> None:
    """Rename the finished file ``tmp`` to ``path``; without ``overwrite`` only if ``path`` is absent.

    Raises :class:`AlreadyExistsError` (``tmp`` is then left for the caller to remove).
    """
    tmp, path = Path(tmp), Path(path)
    if overwrite:
        os.replace(tmp, path)
        return
    # link() fails if the name exists, atomically: a file that appeared since any earlier check (another
    # process writing the same output) is never clobbered, as os.replace would.
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise AlreadyExistsError(path) from None
    except OSError:
        # Hard links unsupported here (EPERM, ENOTSUP, ... on FAT, some network filesystems): a checked
        # rename; a race can still slip between check and rename. A real I/O problem fails again below.
        if os.path.lexists(path):
            raise AlreadyExistsError(path) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _open_temp(tmp: Path) -> IO[bytes]:
    """Create the temporary file exclusively (mode 0666 minus umask, like a normal file)."""
    return open(tmp, "x+b")  # noqa: SIM115 - closed by AtomicFile


class AtomicFile:
    """A file written under a temporary name and published by :meth:`commit`, or removed by :meth:`abort`.

    For writers that cannot use a ``with`` block (e.g. a stack written slice by slice over a long run).
    ``file`` is the open binary handle (``x+b``); ``tmp`` its path. Missing parent directories are
    created. A context manager: commits on normal exit, aborts on an exception.
    """

    def __init__(self, path: PathLike, *, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temp_path(self.path)
        self.file: IO[bytes] | None = _open_temp(self.tmp)

    def commit(self) -> Path:
        """fsync, close, publish (see :func:`publish_file`), fsync the directory. On failure the
        temporary file is removed and the error propagates."""
        f, self.file = self.file, None
        if f is None:
            raise ValueError(f"{self.path}: already committed or aborted")
        try:
            try:
                f.flush()
                os.fsync(f.fileno())
            finally:
                f.close()
            publish_file(self.tmp, self.path, overwrite=self.overwrite)
        except BaseException:
            _remove_quietly(self.tmp)
            raise
        fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        """Close and delete the temporary file. Idempotent."""
        f, self.file = self.file, None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass
            _remove_quietly(self.tmp)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()
        elif self.file is not None:
            self.commit()


@contextmanager
def atomic_file(path: PathLike, *, overwrite: bool = True) -> Iterator[IO[bytes]]:
    """Yield a binary file; on normal exit it becomes ``path`` atomically and durably, on any
    exception it is deleted and ``path`` is untouched.

    Without ``overwrite`` an existing ``path`` (even one that appears while writing) raises
    :class:`AlreadyExistsError` at publication.
    """
    with AtomicFile(path, overwrite=overwrite) as af:
        yield af.file


def write_bytes(path: PathLike, data: bytes, *, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_file`)."""
    with atomic_file(path, overwrite=overwrite) as f:
        f.write(data)
    return Path(path)


def write_text(path: PathLike, text: str, *, overwrite: bool = True, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_file`)."""
    return write_bytes(path, text.encode(encoding), overwrite=overwrite)


def publish_dir(tmp: PathLike, final: PathLike, *, overwrite: bool, fsync_files: bool = True) -> None:
    """Rename the finished directory ``tmp`` to ``final``.

    ``fsync_files``: fsync every file under ``tmp`` first (off for stores of many chunks whose writer
    flushes them itself). Without ``overwrite`` an existing ``final`` raises
    :class:`AlreadyExistsError`; rename refuses a non-empty target, so two racing publishers of
    non-empty directories cannot replace each other. With it, ``final`` is moved to
    ``.<name>.old-<random>``, ``tmp`` renamed into place, then the old copy deleted; a crash between
    the renames leaves the old copy for :func:`recover_dir`.
    """
    tmp, final = Path(tmp), Path(final)
    if fsync_files:
        for root, _dirs, files in os.walk(tmp):
            for name in files:
                _fsync_path(Path(root) / name)
    if os.path.lexists(final):
        if not overwrite:
            raise AlreadyExistsError(final)
        old = temp_path(final, "old")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        try:
            os.rename(tmp, final)
        except OSError as exc:  # appeared since the check: another writer won
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise AlreadyExistsError(final) from None
            raise
    fsync_dir(final.parent)


def recover_dir(final: PathLike) -> bool:
    """Put back ``.<name>.old-*`` left by a crash inside :func:`publish_dir`; True if one was restored."""
    final = Path(final)
    if os.path.lexists(final) or not final.parent.is_dir():
        return False
    olds = sorted(final.parent.glob(f".{final.name[:200]}.old-*"))
    if not olds:
        return False
    os.replace(olds[-1], final)
    return True


@contextmanager
def atomic_dir(final: PathLike, *, overwrite: bool = False, tag: str = "tmp",
               fsync_files: bool = True) -> Iterator[Path]:
    """Yield a new hidden sibling directory to fill; on normal exit it is published as ``final`` (see
    :func:`publish_dir`), on any exception it is deleted and ``final`` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final, tag)
    tmp.mkdir()
    try:
        yield tmp
        publish_dir(tmp, final, overwrite=overwrite, fsync_files=fsync_files)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
