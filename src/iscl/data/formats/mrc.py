"""MRC (``.mrc .mrcs .st .rec .ali .map``): the electron-microscopy format of SerialEM, IMOD, RELION and
friends, through :mod:`mrcfile` (optional dependency, ``pip install 'iscl[mrc]'``).

An MRC file is a 1024-byte header, an optional extended header (``nsymbt`` bytes) and the raw pixels,
section after section. So, as for TIFF stacks and ``.npy``, slices are read from a memory map and
written in place: denoising a tomogram never needs it whole in memory.

* Modes 0 (int8), 1 (int16), 2 (float32), 6 (uint16) and 12 (float16) are read and written; the other
  modes (3/4 complex, 16 RGB, 101 packed 4-bit) are refused. Mode 0 holds *unsigned* bytes (uint8)
  when an IMOD header says so (IMOD stamp without its "signed bytes" flag), and uint8 arrays are
  written that way (IMOD reads them as unsigned; mrcfile, following MRC2014, as int8); otherwise
  mode 0 is int8.
* A 2-D image is ``(H, W)`` (one section, space group 0); stacks, tilt series, volumes and volume
  stacks are ``(Z, H, W)`` (``nz`` sections).
* Writing "like" an MRC input starts from the input's own header: voxel size (cell and sampling),
  origin, ``nxstart``..., space group, labels, the IMOD fields and the extended header (per-section
  tilt angles, ...) are kept; mode, sizes, byte order and the statistics ``dmin dmax dmean rms``
  are set for the new data. Output is always little-endian: from a big-endian input only the
  standard MRC2014 fields (and FEI/CCP4 extended headers) are carried over, since iscl cannot swap
  the bytes of fields it does not know.
* Slice-by-slice output (:func:`~iscl.data.io.create_output_like`, used by ``iscl denoise``) gets its
  statistics from one more pass over the written pixels, in bounded chunks, before it is published.
"""

from __future__ import annotations

import math
import os
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from iscl._version import __version__
from iscl.errors import ImageReadError, ImageWriteError

from . import Format, register
from ._common import (
    ImageInfo,
    ImageSlices,
    SliceReader,
    _check_channel,
    _check_fits_in_memory,
    _describe_exc,
    _info,
    _Layout,
    _make_layout,
    _native,
    _same_format,
    _take_channel,
)
from ._writing import _DiskStackWriter, _write_problem

SUFFIXES = (".mrc", ".mrcs", ".st", ".rec", ".ali", ".map")

#: MRC mode -> the dtype iscl reads it as (mode 0 may instead be uint8, see module docstring)
MODES = {0: np.dtype(np.int8), 1: np.dtype(np.int16), 2: np.dtype(np.float32), 6: np.dtype(np.uint16),
         12: np.dtype(np.float16)}
_MODE_NAMES = {3: "complex int16", 4: "complex float32", 16: "RGB colour", 101: "packed 4-bit"}
_WRITABLE = (np.dtype(np.uint8), *MODES.values())
_SUPPORTED = "modes 0 (int8/uint8), 1 (int16), 2 (float32), 6 (uint16) and 12 (float16)"

HEADER_BYTES = 1024
# Byte offsets in the 1024-byte header (MRC2014; IMOD's fields live in its "extra" space).
_STATS_OFFSETS = {"dmin": 76, "dmax": 80, "dmean": 84, "rms": 216}
_IMOD_STAMP_AT, _NINT_NREAL_AT = 152, 128  # imodFlags is the int32 right after the stamp
_IMOD_STAMP = 1146047817  # "IMOD": the header follows IMOD's conventions, imodFlags is valid
_IMOD_SIGNED_BYTES = 1  # imodFlags bit: mode-0 bytes are signed
# Extended headers whose layout does not follow the file's byte order (FEI: fixed, CCP4: text);
# others (SerialEM, Agard) cannot be carried into a file of the other byte order.
_ORDER_FREE_EXTTYPES = (b"FEI1", b"FEI2", b"CCP4")
_STATS_CHUNK = 1 << 20  # elements per read when computing statistics of a finished file (~20 MiB transient)


class MrcfileMissing(ImageReadError, ImportError):
    """:mod:`mrcfile` is not installed (an ImportError, and a one-line error naming the file)."""


def _mrcfile(path: Path | str) -> Any:
    try:
        import mrcfile
        import mrcfile.mrcinterpreter  # noqa: F401 - used for headers
    except ImportError:
        raise MrcfileMissing(path, "MRC files need the optional 'mrcfile' package: pip install 'iscl[mrc]'") from None
    return mrcfile


# --------------------------------------------------------------------------------------------------
# Reading the header
# --------------------------------------------------------------------------------------------------


def _ints(head: bytes, at: int, n: int, order: str) -> tuple[int, ...]:
    return struct.unpack_from(f"{order}{n}i", head, at)


def _plausible(head: bytes, order: str) -> bool:
    """Sizes, mode and axis order look like an MRC header in byte order ``order``."""
    nx, ny, nz, mode = _ints(head, 0, 4, order)
    axes = _ints(head, 64, 3, order)
    nsymbt = _ints(head, 92, 1, order)[0]
    return (min(nx, ny, nz) >= 1 and 0 <= mode < 1 << 16 and nsymbt >= 0
            and (sorted(axes) == [1, 2, 3] or axes == (0, 0, 0)))


def _sniff(head: bytes) -> bool:
    """MRC has no magic at the start: the first 132 bytes must read as a plausible header."""
    return len(head) >= 96 and (_plausible(head, "<") or _plausible(head, ">"))


def _byte_order(mrcfile: Any, raw: bytes) -> str:
    """'<' or '>': the machine stamp's, unless the mode only makes sense the other way round (some
    writers leave the stamp empty or wrong; mrcfile's permissive reader makes the same correction)."""
    stamp = np.frombuffer(raw, np.uint8, 4, 212)
    try:
        order = mrcfile.utils.byte_order_from_machine_stamp(stamp)
    except ValueError:
        order = "<"
    order = {"=": "<" if np.little_endian else ">"}.get(order, order)
    other = ">" if order == "<" else "<"
    if not 0 <= _ints(raw, 12, 1, order)[0] < 1 << 16 and 0 <= _ints(raw, 12, 1, other)[0] < 1 << 16:
        order = other
    return order


def _header_array(mrcfile: Any, raw: bytes, order: str) -> np.recarray:
    """The header as mrcfile's record array (a writable copy), in byte order ``order``."""
    dtype = mrcfile.dtypes.HEADER_DTYPE.newbyteorder(order)
    return np.frombuffer(raw, dtype).reshape(()).copy().view(np.recarray)


def _signed_bytes(hdr: np.recarray, raw: bytes, order: str) -> bool:
    """Whether mode-0 pixels are signed: IMOD's flag when the IMOD stamp is there (IMOD has written
    both); otherwise signed (MRC2014), unless the header's own range is only possible for unsigned
    bytes (IMOD guesses from the range too)."""
    stamp, flags = _ints(raw, _IMOD_STAMP_AT, 2, order)
    if stamp == _IMOD_STAMP:
        return bool(flags & _IMOD_SIGNED_BYTES)
    return not (0 <= float(hdr.dmin) and 128 <= float(hdr.dmax) <= 255)


@dataclass
class _Mrc:
    """What the header says: where the pixels are, their dtype and shape, and ImageInfo.meta."""

    layout: _Layout
    file_dtype: np.dtype  # with the file's byte order
    offset: int  # where section 0 starts
    meta: dict[str, Any]

    @property
    def dtype(self) -> np.dtype:
        return self.file_dtype.newbyteorder("=")


def _header_meta(mrcfile: Any, hdr: np.recarray) -> dict[str, Any]:
    """The user-facing fields of a header: voxel size (Å), origin (Å), labels, space group."""
    cell = [float(hdr.cella[a]) for a in "xyz"]
    grid = [int(hdr.mx), int(hdr.my), int(hdr.mz)]
    nlabl = min(max(int(hdr.nlabl), 0), 10)
    return {
        "voxel_size": tuple(c / m if m else 0.0 for c, m in zip(cell, grid, strict=True)),
        "origin": tuple(float(hdr.origin[a]) for a in "xyz"),
        "labels": [mrcfile.utils.printable_string_from_bytes(b) for b in hdr.label[:nlabl]],
        "space_group": int(hdr.ispg),
    }


def _not_mrc(path: Path, head: bytes, why: str) -> ImageReadError:
    from . import HEAD_BYTES, sniff

    other = sniff(head[:HEAD_BYTES])
    what = f"the content is {other.title}" if other is not None and other.name != "mrc" else why
    return ImageReadError(path, f"not an MRC file (the name ends in {path.suffix} but {what})")


def _open_mrc(path: Path, size: int) -> _Mrc:
    """Read and check the header (no pixel data). Raises ImageReadError with the reason."""
    mrcfile = _mrcfile(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
            if len(raw) < HEADER_BYTES:
                raise _not_mrc(path, raw, f"it has {len(raw)} bytes, fewer than an MRC header's {HEADER_BYTES}")
            if raw[:2] in (b"\x1f\x8b", b"BZ") and raw[208:211] != b"MAP":
                raise ImageReadError(path, "compressed MRC (gzip/bzip2) is not supported; decompress it first")
            order = _byte_order(mrcfile, raw)
            if raw[208:211] != b"MAP" and not _plausible(raw, order):
                raise _not_mrc(path, raw, "there is no 'MAP ' marker at byte 208 and the header is not MRC's")
            hdr = _header_array(mrcfile, raw, order)
            nx, ny, nz, mode, nsymbt = (int(hdr.nx), int(hdr.ny), int(hdr.nz), int(hdr.mode), int(hdr.nsymbt))
            if min(nx, ny, nz) < 1 or nsymbt < 0:
                raise ImageReadError(path, f"corrupt MRC header (nx={nx}, ny={ny}, nz={nz}, nsymbt={nsymbt})")
            if mode not in MODES:
                kind = f" ({_MODE_NAMES[mode]})" if mode in _MODE_NAMES else ""
                raise ImageReadError(path, f"unsupported MRC mode {mode}{kind}; iscl reads {_SUPPORTED}")
            offset = HEADER_BYTES + nsymbt
            dtype = MODES[mode]
            if mode == 0 and not _signed_bytes(hdr, raw, order):
                dtype = np.dtype(np.uint8)
            end = offset + nx * ny * nz * dtype.itemsize
            if end > size:
                raise ImageReadError(
                    path, f"truncated MRC file (the header says the pixel data end at byte {end}, "
                          f"the file has {size} bytes)")
            ext = f.read(nsymbt)
    except OSError as exc:
        raise ImageReadError(path, f"cannot read MRC header ({_describe_exc(exc)})") from None
    # nz == 1 with space group 0 is a single image (as mrcfile reads it); a volume stack's volumes
    # are laid end to end: (nz, ny, nx) sections either way.
    shape = (ny, nx) if nz == 1 and int(hdr.ispg) == 0 else (nz, ny, nx)
    layout = _make_layout(path, shape, "ZYX" if len(shape) == 3 else "YX")
    meta = {
        "axes": layout.axes,
        "mode": mode,
        "byteorder": order,
        "header": raw,
        "extended_header": ext,
        "exttyp": bytes(hdr.exttyp).decode("ascii", "replace"),
        **_header_meta(mrcfile, hdr),
    }
    return _Mrc(layout, dtype.newbyteorder(order), offset, meta)


# --------------------------------------------------------------------------------------------------
# Reading pixels
# --------------------------------------------------------------------------------------------------


def _probe(path: Path, size: int) -> ImageInfo:
    m = _open_mrc(path, size)
    return _info(path, "mrc", m.layout, m.dtype, m.meta)


def _read(path: Path, size: int, channel: int | None) -> tuple[np.ndarray, ImageInfo]:
    m = _open_mrc(path, size)
    _check_channel(path, m.layout, channel)
    count = math.prod(m.layout.stored_shape)
    _check_fits_in_memory(path, count * m.file_dtype.itemsize)
    try:
        arr = np.fromfile(path, dtype=m.file_dtype, count=count, offset=m.offset)
    except (OSError, ValueError) as exc:
        raise ImageReadError(path, f"cannot read MRC pixel data ({_describe_exc(exc)})") from None
    if arr.size != count:  # the file shrank since the header was checked
        raise ImageReadError(path, f"truncated MRC file (read {arr.size} of {count} pixels)")
    arr = _native(arr.reshape(m.layout.stored_shape))
    return _take_channel(path, arr, m.layout, channel), _info(path, "mrc", m.layout, arr.dtype, m.meta)


class _SectionReader(SliceReader):
    """Reads one section with pread: for filesystems that cannot memory-map."""

    def __init__(self, path: Path, m: _Mrc) -> None:
        self._path, self._m = path, m
        self._fd: int | None = os.open(path, os.O_RDONLY)

    def __call__(self, index: tuple[Any, ...]) -> np.ndarray:
        shape = self._m.layout.stored_shape
        z = index[0] if len(shape) == 3 else 0
        n = shape[-1] * shape[-2] * self._m.file_dtype.itemsize
        data = os.pread(self._fd, n, self._m.offset + int(z) * n)
        if len(data) != n:
            raise ImageReadError(self._path, f"truncated MRC file (section {z} is incomplete)")
        return np.frombuffer(data, self._m.file_dtype).reshape(shape[-2:])

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _open_slices(path: Path, size: int, channel: int | None) -> ImageSlices:
    m = _open_mrc(path, size)
    _check_channel(path, m.layout, channel)
    info = _info(path, "mrc", m.layout, m.dtype, m.meta)
    info.meta["channel"] = channel
    slices = ImageSlices(path, info, m.layout, channel)
    try:
        # np.memmap rather than mrcfile.mmap: the header is already checked above (size, mode,
        # unsigned bytes), and a bare map holds no open file object.
        slices._array = np.memmap(path, dtype=m.file_dtype, mode="r", offset=m.offset, shape=m.layout.stored_shape)
    except (OSError, ValueError):  # e.g. a filesystem without mmap: read section by section
        try:
            slices._reader = _SectionReader(path, m)
        except OSError as exc:
            raise ImageReadError(path, f"cannot open MRC file ({_describe_exc(exc)})") from None
    return slices


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def _check_write(path: Path, shape: tuple[int, ...], dtype: np.dtype, like: ImageInfo | None,
                 streaming: bool) -> None:
    if np.dtype(dtype).newbyteorder("=") not in _WRITABLE:
        raise ImageWriteError(
            path, f"MRC cannot store {np.dtype(dtype)} pixels; it stores int8, uint8, int16, uint16, float16 and "
                  "float32 (convert first, e.g. array.astype(np.float32))")
    if any(n > np.iinfo(np.int32).max for n in shape):
        raise ImageWriteError(path, f"shape {shape} is too large for an MRC header (at most 2**31 - 1 per axis)")


def _stats(chunks: Iterable[np.ndarray]) -> tuple[float, float, float, float]:
    """(min, max, mean, rms deviation from the mean) over all chunks, accumulated in float64.

    Chunk means and squared deviations are merged pairwise (Chan et al.), so the rms of, say, uint16
    data around 30000 keeps its digits, unlike the textbook E[x^2] - E[x]^2.
    """
    n, mean, m2, lo, hi = 0, 0.0, 0.0, math.inf, -math.inf
    for chunk in chunks:
        c = np.asarray(chunk, dtype=np.float64).ravel()
        if c.size == 0:
            continue
        k, cmean = c.size, float(c.mean())
        cm2 = float(np.square(c - cmean).sum())
        delta = cmean - mean
        mean += delta * k / (n + k)
        m2 += cm2 + delta * delta * n * k / (n + k)
        n += k
        lo, hi = min(lo, float(c.min())), max(hi, float(c.max()))
    if n == 0:
        return 0.0, -1.0, -2.0, -1.0  # mrcfile's "undetermined"
    return lo, hi, mean, math.sqrt(m2 / n)


def _set_stats(header: bytearray, stats: tuple[float, float, float, float] | None) -> None:
    """Write dmin, dmax, dmean, rms into a little-endian header; None: mark them undetermined."""
    values = (0.0, -1.0, -2.0, -1.0) if stats is None else stats  # MRC2014: dmax < dmin, rms < 0 = unknown
    for name, value in zip(("dmin", "dmax", "dmean", "rms"), values, strict=True):
        struct.pack_into("<f", header, _STATS_OFFSETS[name], value)


def _header_bytes(path: Path, shape: tuple[int, ...], dtype: np.dtype, like: ImageInfo | None,
                  stats: tuple[float, float, float, float] | None) -> bytes:
    """A little-endian MRC header (+ extended header) for pixels of ``shape`` and ``dtype``.

    ``like`` (an MRC ImageInfo) supplies the starting header, see the module docstring; without it the
    header is mrcfile's default (space group 0 for 2-D, 1, a volume, for 3-D; voxel size 0).
    """
    mrcfile = _mrcfile(path)
    meta = like.meta if like is not None else {}
    obj = mrcfile.mrcinterpreter.MrcInterpreter()  # header logic only: no stream is attached
    obj._create_default_attributes()
    obj.header.label[0] = f"iscl {__version__}: created {time.strftime('%Y-%m-%d %H:%M:%S')}"[:80]
    base_raw: bytes | None = meta.get("header")
    base, order = None, "<"
    if base_raw is not None:
        order = meta.get("byteorder", "<")
        base = _header_array(mrcfile, base_raw, order)
        obj._header = base.copy()
    # uint8 is stored as mode-0 bytes (flagged unsigned below); mrcfile would widen it to mode 6
    stored = np.dtype(np.int8) if dtype == np.uint8 else np.dtype(dtype)
    obj._set_new_data(np.broadcast_to(np.zeros((), stored.newbyteorder("<")), shape))  # shape/dtype only
    obj.update_header_from_data()  # mode, nx..mz, space group for 2-D, byte order, machine stamp
    hdr = obj.header
    nz = shape[0] if len(shape) == 3 else 1
    same_shape = like is not None and tuple(like.shape) == tuple(shape)
    ext = b""
    if base is not None:
        if same_shape:  # keep the sampling exactly (sub-volumes, volume stacks' mz)
            for f in ("mx", "my", "mz"):
                hdr[f] = base[f]
            hdr.cella = base.cella
        if int(base.nz) == nz:  # per-section entries (SerialEM tilt angles, FEI) still match
            ext = bytes(meta.get("extended_header", b""))
            if order == ">" and bytes(base.exttyp) not in _ORDER_FREE_EXTTYPES:
                ext = b""
        if order == ">":  # mrcfile swapped the standard fields; IMOD's and others' raw bytes are unknown
            hdr.extra1 = b"\0" * 8
            hdr.extra2 = b"\0" * 84
        # meta fields a caller changed win over the raw header
        current = _header_meta(mrcfile, base)
        if tuple(meta.get("origin", current["origin"])) != current["origin"]:
            hdr.origin = tuple(meta["origin"])
        if list(meta.get("labels", current["labels"])) != current["labels"]:
            labels = list(meta["labels"])[:10]
            hdr.label = [s.encode("ascii", "replace")[:80] for s in labels] + [b""] * (10 - len(labels))
            hdr.nlabl = len(labels)
        voxel = tuple(meta.get("voxel_size", current["voxel_size"]))
        if voxel != current["voxel_size"] or not same_shape:
            hdr.cella = tuple(float(v) * int(hdr[m]) for v, m in zip(voxel, ("mx", "my", "mz"), strict=True))
    if not ext:
        hdr.exttyp = b""
    hdr.nsymbt = len(ext)
    out = bytearray(hdr.tobytes())
    _set_stats(out, stats)
    # IMOD's stamp and flags, re-encoded little-endian; unsigned bytes need the stamp to say so
    stamp, flags = _ints(base_raw, _IMOD_STAMP_AT, 2, order) if base_raw is not None else (0, 0)
    if stamp == _IMOD_STAMP and order == ">":
        struct.pack_into("<2h", out, _NINT_NREAL_AT, *struct.unpack_from(">2h", base_raw, _NINT_NREAL_AT))
    if dtype == np.uint8:
        stamp, flags = _IMOD_STAMP, flags & ~_IMOD_SIGNED_BYTES
    elif dtype == np.int8:
        flags |= _IMOD_SIGNED_BYTES
    if stamp == _IMOD_STAMP:
        struct.pack_into("<2i", out, _IMOD_STAMP_AT, stamp, flags)
    return bytes(out) + ext


def _encode(path: Path, arr: np.ndarray, like: ImageInfo | None) -> Any:
    _check_write(path, arr.shape, arr.dtype, like, False)
    data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    flat = data.reshape(-1)  # statistics in chunks: no float64 copy of the whole image
    chunks = (flat[i : i + _STATS_CHUNK] for i in range(0, flat.size, _STATS_CHUNK))
    header = _header_bytes(path, arr.shape, arr.dtype, _same_format(like, "mrc"), _stats(chunks))

    def write(f: IO[bytes]) -> None:
        f.write(header)
        f.write(memoryview(data).cast("B"))

    return write


def _stack_header(f: IO[bytes], path: Path, shape: tuple[int, ...], file_dtype: np.dtype,
                  like: ImageInfo | None) -> int:
    """Write the header (statistics undetermined until :func:`_finish_stack`), size the file and
    return where section 0 starts."""
    dtype = np.dtype(file_dtype).newbyteorder("=")
    header = _header_bytes(path, shape, dtype, _same_format(like, "mrc"), None)
    f.write(header)
    f.truncate(len(header) + math.prod(shape) * dtype.itemsize)
    return len(header)


def _finish_stack(f: IO[bytes], path: Path, shape: tuple[int, ...], file_dtype: np.dtype, offset: int) -> None:
    """Once every slice is on disk: read the pixels back in chunks and put their statistics in the
    header (dmin, dmax, dmean, rms), with memory bounded by the chunk, not the volume."""
    f.flush()
    fd = f.fileno()
    itemsize = np.dtype(file_dtype).itemsize
    total = math.prod(shape)

    def chunks() -> Iterable[np.ndarray]:
        for start in range(0, total, _STATS_CHUNK):
            n = min(_STATS_CHUNK, total - start) * itemsize
            data = os.pread(fd, n, offset + start * itemsize)
            if len(data) != n:
                raise OSError(f"short read of the written pixels at element {start}")
            yield np.frombuffer(data, file_dtype)

    header = bytearray(os.pread(fd, HEADER_BYTES, 0))
    _set_stats(header, _stats(chunks()))
    os.pwrite(fd, bytes(header), 0)


class _MrcStackWriter(_DiskStackWriter):
    """The in-place stack writer (header from :func:`_stack_header`, slices written at their offsets)
    that puts the statistics of the written pixels in the header before the file is published."""

    def _finish(self) -> None:
        try:
            _finish_stack(self._af.file, self.path, self.shape, self._file_dtype, self._offset)
        except BaseException as exc:
            self._discard()
            if not isinstance(exc, Exception):
                raise
            problem, code = _write_problem(exc, self.path)
            raise ImageWriteError(self.path, problem, errno=code) from exc
        super()._finish()


def _open_writer(path: Path, shape: tuple[int, ...], dtype: np.dtype, like: ImageInfo | None,
                 overwrite: bool) -> _MrcStackWriter:
    return _MrcStackWriter(path, shape, dtype, overwrite, FORMAT, like)


FORMAT = register(
    Format(
        name="mrc",
        title="MRC",
        suffixes=SUFFIXES,
        probe=_probe,
        read=_read,
        sniff=_sniff,
        trust_suffix=True,  # no magic at the start of the file: the header checks in _open_mrc decide
        open_slices=_open_slices,
        check_write=_check_write,
        encode=_encode,
        stack_header=_stack_header,
        open_writer=_open_writer,  # the in-place writer, plus header statistics before publishing
    )
)
