"""Chunked volumes: denoise a Zarr array block by block within a memory budget, optionally on Dask.

A volume of tens of gigabytes never has to fit in memory. It is cut along Z into *blocks* that are
whole Zarr chunks deep (so two blocks never share a chunk and can be written concurrently), as many
chunks deep as fit in ``memory_budget`` bytes of pixel data (input block + output block + the
normalized float32 slice). Each slice of a block is denoised on its own, exactly as
:meth:`iscl.api.Denoiser.predict` does it for a single image (BIN uses that slice's statistics), so the
result is identical to slice-by-slice denoising whatever the block size or the number of workers.

Blocks run in this process, one after the other, or as tasks on a Dask cluster (``scheduler``: a
number of local worker processes, or the address of a running ``dask.distributed`` scheduler). Workers
read the input store and write the output store by path, so on a cluster both must live on a file
system every worker sees. The output is written to a hidden ``.NAME.partial-*`` store next to the
destination and renamed into place only when every block is done: a failed run leaves no store that
looks complete.

An OME-Zarr image (a group with OME-NGFF ``multiscales`` metadata, see :mod:`iscl.data.formats.zarr`)
is denoised through its full-resolution level and written as an OME-Zarr group of the same NGFF version
and Zarr format: the same axes and level-0 ``coordinateTransformations``, level 0 the denoised array (same
shape, chunks, dtype), and with ``pyramid=N`` N more levels, each the 2x2 mean in y and x of the level
above (z kept; scale doubled in y and x, translation moved to the new pixel centres). The levels are
computed after level 0, from the written level, one block of whole chunks at a time within the same
memory budget, in this process (even when level 0 ran on Dask: averaging is cheap next to denoising).
The whole group is written to the hidden store and renamed into place when every level is done.

``axis="y"``, ``"x"`` or ``"all"`` denoises the (Z, W) planes (one per row), the (Z, H) planes (one per
column), or all three orientations averaged, through :meth:`iscl.api.Denoiser.denoise_volume` in this
process (not on Dask). Such a plane crosses every Z chunk, so the volume is read in *slabs*: rows (or
columns) across all Z, as many as fit in the memory budget, whole chunks of rows when one chunk's slab
fits (otherwise fewer rows, and a chunk is decoded once per slab that crosses it). For ``all`` the three
orientations are summed, unrounded, in a hidden float Zarr store next to the output (``.NAME.sum-*``,
chunked like the input, removed at the end): z slabs, then + y slabs, then + x slabs, and a last pass
writes the mean in Z blocks. Disk use is then about the input's size again (float32; float64 for 32-bit
integer or float64 data) on top of the output.

Zarr and Dask are optional (``pip install 'iscl[zarr]'`` / ``'iscl[dask]'``); we use their own
APIs — nothing here reimplements chunk storage or task scheduling. The 2x2 mean is
:func:`skimage.measure.block_reduce` (scikit-image is a core dependency).
"""

from __future__ import annotations

import copy
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from iscl import atomic
from iscl.data.axes import volume_axes, volume_axis_problem
from iscl.data.finite import count_nonfinite, nonfinite_problem
from iscl.data.formats import zarr as zarr_format
from iscl.errors import ImageReadError, ImageWriteError, IsclError

__all__ = ["is_zarr", "open_volume", "plan_blocks", "denoise_zarr", "VolumeReport", "DEFAULT_MEMORY_BUDGET",
           "parse_bytes", "check_pyramid", "downsample_level"]

#: bytes of pixel data held at once per worker when no budget is given
DEFAULT_MEMORY_BUDGET = 1 << 30


def parse_bytes(text: str | int) -> int:
    """``"512M"``, ``"2G"``, ``"1.5GiB"``, ``"1000000"`` → bytes (binary units: M = 2**20)."""
    if isinstance(text, int):
        return text
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise ValueError(f"cannot read {text!r} as a size; use e.g. 512M or 2G") from None
    if not value > 0:
        raise ValueError(f"memory budget must be positive; got {text!r}")
    return int(value)


def is_zarr(path: str | os.PathLike) -> bool:
    """True for a Zarr v2/v3 array or group directory (``*.zarr``, or one holding Zarr metadata)."""
    return zarr_format.is_zarr(path)


def _zarr():
    return zarr_format.zarr_module()


def open_volume(path: str | os.PathLike) -> zarr_format.Planes:
    """Open a Zarr array, or an OME-Zarr image's full-resolution level, read-only: (Z, H, W) or (H, W)
    (:class:`~iscl.data.formats.zarr.Planes`, leading size-1 t/c axes dropped), real dtype. Raises
    ``ImageReadError``.

    Opening and checking the array is the Zarr format's job (:mod:`iscl.data.formats.zarr`); on top,
    slices must be large enough for the networks.
    """
    node = zarr_format.open_array(path)
    if min(node.shape[-2:]) < 4:
        raise ImageReadError(Path(path), f"slices of {node.shape[-2]}x{node.shape[-1]} pixels are too small "
                                         "(at least 4x4)")
    return node


def plan_blocks(shape: tuple[int, ...], z_chunk: int, bytes_per_slice: int,
                memory_budget: int) -> list[tuple[int, int]]:
    """Z ranges ``[z0, z1)``: aligned to ``z_chunk``, as many chunks deep as ``memory_budget`` allows.

    At least one chunk per block even when one chunk exceeds the budget (a chunk is the smallest unit
    Zarr reads and writes; store huge slices with a Z chunk of 1).
    """
    n = shape[0]
    chunks_per_block = max(1, memory_budget // max(1, z_chunk * bytes_per_slice))
    depth = z_chunk * chunks_per_block
    return [(z0, min(z0 + depth, n)) for z0 in range(0, n, depth)]


@dataclass
class VolumeReport:
    """What :func:`denoise_zarr` did (``pyramid``: the levels written after level 0)."""

    source: Path
    output: Path
    shape: tuple[int, ...]
    blocks: int
    block_depth: int  # slices per Z block (0 for axis y/x/all, whose blocks are slabs of planes)
    workers: int
    seconds: float
    pyramid: int = 0


_WORKER_MODELS: dict[str, Any] = {}  # per process: checkpoint path -> Denoiser


def _resolve_model(model: Any) -> Any:
    """A Denoiser as given, or the checkpoint at a path, loaded once per (worker) process (on CPU)."""
    if not isinstance(model, str):
        return model
    if model not in _WORKER_MODELS:
        from iscl.api import load

        _WORKER_MODELS[model] = load(model)
    return _WORKER_MODELS[model]


def _predict_slice(model: Any, image: np.ndarray, src: str, z: int, options: dict[str, Any]) -> np.ndarray:
    """One 2-D slice through ``model.predict`` with ``options`` (output, tile, ..., precision)."""
    n_nan, n_inf = count_nonfinite(image)
    if n_nan or n_inf:
        raise ImageReadError(src, f"slice {z} {nonfinite_problem(n_nan, n_inf, image.size)}")
    kw = dict(options)
    output = kw.pop("output")
    return model.predict(image, outputs=(output,), **kw)[output]


def _denoise_block(model: Any, src: str, tmp: str, z0: int, z1: int, options: dict[str, Any],
                   threads: int | None = None, lead: int = 0) -> tuple[int, int]:
    """Denoise slices ``[z0, z1)`` of the array at ``src`` into the array at ``tmp`` (a Dask task);
    ``lead``: leading size-1 axes of both arrays (OME-Zarr t, c)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    model = _resolve_model(model)
    source = zarr_format.open_planes(src, lead)
    target = zarr_format.open_planes(tmp, lead, "r+")
    block = np.asarray(source[z0:z1])
    out = np.empty(block.shape, dtype=target.dtype)
    for i in range(block.shape[0]):
        out[i] = _predict_slice(model, block[i], src, z0 + i, options)
    target[z0:z1] = out
    return z0, z1


def denoise_zarr(model: Any, src: str | os.PathLike, dst: str | os.PathLike, *, output: str = "denoised",
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, tile: int | None = None, overlap: int = 32,
                 stats_tiles: int = 16, precision: str | None = None, scheduler: str | int | None = None,
                 threads_per_worker: int = 1, overwrite: bool = False, pyramid: int = 0,
                 on_block: Callable[[int, int], None] | None = None, axis: str = "z") -> VolumeReport:
    """Denoise the Zarr array (or OME-Zarr image) ``src`` into a new one at ``dst``, block by block.

    Parameters
    ----------
    model : a :class:`~iscl.api.Denoiser`, or the path of a checkpoint (each Dask worker loads it once).
    src : Zarr array, (Z, H, W) or (H, W), any real dtype; or an OME-Zarr image group whose first
        multiscale's level 0 has axes (y, x) or (z, y, x), optionally after t and c of size 1. Not changed.
    dst : new Zarr array with ``src``'s shape, chunks, attributes and dtype (``output="noise"``:
        float32); for an OME-Zarr ``src`` a new OME-Zarr group (same NGFF version, Zarr format, axes and
        level-0 transformations; level 0 the denoised array). Refused when it exists unless ``overwrite``.
    memory_budget : bytes of pixel data per worker; sets the block depth (see :func:`plan_blocks`), of
        level 0 and of every pyramid level.
    tile, overlap, stats_tiles, precision : per-slice prediction, as in :meth:`Denoiser.predict`.
    scheduler : ``None`` (blocks run here, in order), an int N (a local Dask cluster of N worker
        processes) or a ``dask.distributed`` scheduler address (``tcp://host:8786``).
    threads_per_worker : torch threads per Dask worker.
    pyramid : OME-Zarr only: levels to add after level 0, each the 2x2 mean in y and x of the one above
        (see :func:`downsample_level`); an error for a plain Zarr array (:func:`check_pyramid`).
    on_block : progress callback ``(done, total)`` over the blocks of level 0.
    axis : ``z`` (the (H, W) slices, in Z blocks as above), or ``y``/``x``/``all``: the (Z, W) / (Z, H) planes
        or all three orientations averaged, by :meth:`iscl.api.Denoiser.denoise_volume` in this process (no
        ``scheduler``) within ``memory_budget``: slabs of whole chunks (rows across all Z for ``y``, columns
        for ``x``; fewer rows than a chunk when one chunk's slab exceeds the budget, then a chunk is read once
        per slab), and for ``all`` a float sum in a hidden Zarr store next to ``dst``, removed at the end.
    """
    volume_axes(axis)
    src_p, dst_p = Path(src), Path(dst)
    source = open_volume(src_p)
    check_pyramid(source, pyramid, src_p)
    problem = volume_axis_problem(tuple(source.shape), axis)
    if problem is not None:
        raise ImageReadError(src_p, problem)
    if axis != "z" and scheduler is not None:
        raise ValueError(f"{src_p}: --scheduler spreads z blocks over Dask workers; --axis {axis} runs in this "
                         "process (leave out --scheduler)")
    if dst_p.exists() and not overwrite:
        raise ImageWriteError(dst_p, "exists; pass --overwrite to replace it")
    if dst_p.resolve() == src_p.resolve():
        raise ImageWriteError(dst_p, "is the input itself; choose another --out")
    vol_shape = tuple(source.shape) if source.ndim == 3 else (1, *source.shape)
    out_dtype = np.dtype(np.float32) if output == "noise" else np.dtype(source.dtype)
    z_chunk = int(source.chunks[0]) if source.ndim == 3 else 1
    h, w = vol_shape[1:]
    bytes_per_slice = h * w * (np.dtype(source.dtype).itemsize + out_dtype.itemsize + 4)
    blocks = plan_blocks(vol_shape, z_chunk, bytes_per_slice, memory_budget)
    options = dict(output=output, tile=tile, overlap=overlap, stats_tiles=stats_tiles, precision=precision)
    about = {"source": str(src_p), "output": output}

    tmp = atomic.temp_path(dst_p, "partial")
    try:
        dst_p.parent.mkdir(parents=True, exist_ok=True)
        level0 = _create_output(tmp, source, out_dtype, about)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ImageWriteError(dst_p, f"cannot create the output store ({exc.strerror or exc})") from None

    t0 = time.perf_counter()
    workers = 1
    n_blocks, depth = len(blocks), blocks[0][1] - blocks[0][0]  # axis y/x/all: slabs of planes, not Z blocks
    try:
        if axis != "z":
            n_blocks = _denoise_planes(model, source, src_p, level0, dst_p, axis, options, memory_budget, on_block)
        elif source.ndim == 2:  # one image: no blocks to spread
            target = zarr_format.open_planes(level0, source.lead, "r+")
            target[...] = _predict_slice(_resolve_model(model), np.asarray(source[...]), str(src_p), 0, options)
            if on_block is not None:
                on_block(1, 1)
        elif scheduler is None:
            for i, (z0, z1) in enumerate(blocks):
                _denoise_block(model, str(source.path), str(level0), z0, z1, options, None, source.lead)
                if on_block is not None:
                    on_block(i + 1, len(blocks))
        else:
            workers = _run_on_dask(model, str(source.path), str(level0), blocks, options, scheduler,
                                   threads_per_worker, on_block, dst_p, source.lead)
        if source.ome is not None:
            _finish_ome(tmp, source, pyramid, memory_budget, about)
        _publish(tmp, dst_p, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return VolumeReport(src_p, dst_p, tuple(source.shape), n_blocks, depth if axis == "z" else 0, workers,
                        time.perf_counter() - t0, pyramid)


def _denoise_planes(model: Any, source: zarr_format.Planes, src: Path, level0: Path, dst: Path, axis: str,
                    options: dict[str, Any], memory_budget: int, on_block: Callable[[int, int], None] | None) -> int:
    """Denoise ``source`` along ``axis`` (y, x, all) into the array at ``level0``; returns the number of slabs."""
    target = zarr_format.open_planes(level0, source.lead, "r+")
    sum_store = atomic.temp_path(dst, "sum")
    slabs = []

    def scratch(shape: tuple[int, ...], dtype: np.dtype) -> Any:
        # the sum of the orientations, chunked like the volume; on disk: it is as large as the volume or larger
        return _zarr().open_array(str(sum_store), mode="w", shape=shape, chunks=source.chunks, dtype=dtype)

    def progress(done: int, total: int) -> None:
        slabs.append(done)
        if on_block is not None:
            on_block(done, total)

    try:
        _resolve_model(model).denoise_volume(source, axis=axis, out=target, scratch=scratch,
                                             memory_budget=memory_budget, chunks=source.chunks, on_block=progress,
                                             **options)
    except IsclError:
        raise
    except ValueError as exc:  # NaN/Inf in a slab: name the store
        raise ImageReadError(src, str(exc)) from None
    finally:
        shutil.rmtree(sum_store, ignore_errors=True)
    return len(slabs)


# -------------------------------------------------------------------------------------- OME-Zarr output
def check_pyramid(source: zarr_format.Planes, pyramid: int, path: str | os.PathLike) -> None:
    """Refuse ``pyramid`` levels that cannot be written for ``source`` (from :func:`open_volume`), in one line.

    Levels need an OME-Zarr input (a plain array is written as one array), at most as many as halve
    the image down to 1x1, and a level-0 scale given inline (not in a file).
    """
    if pyramid < 0:
        raise ValueError(f"--pyramid must be 0 or more; got {pyramid}")
    if not pyramid:
        return
    if source.ome is None:
        raise IsclError(path, "--pyramid writes OME-Zarr levels, but this is a plain Zarr array (no OME-NGFF "
                              "multiscales metadata) and is written as one array")
    h, w = source.shape[-2:]
    most = 0
    while max(h, w) > 1:
        h, w, most = -(-h // 2), -(-w // 2), most + 1
    if pyramid > most:
        raise IsclError(path, f"--pyramid {pyramid}: a {source.shape[-2]}x{source.shape[-1]} image reaches 1x1 "
                              f"after {most} levels; ask for at most {most}")
    _level_transforms(source.ome, len(source.ome.names), 1)  # a scale stored in a file: refused before any work


def _half(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the next pyramid level: y and x halved (rounded up), other axes kept."""
    return (*shape[:-2], -(-shape[-2] // 2), -(-shape[-1] // 2))


def _level_name(level0: str, i: int) -> str:
    """Path of pyramid level ``i``: ``0`` → ``1``, ``s0`` → ``s1``; otherwise ``NAME_i``."""
    m = re.fullmatch(r"(.*?)(\d+)", level0)
    return f"{m[1]}{int(m[2]) + i}" if m else f"{level0}_{i}"


def _level_transforms(ome: zarr_format.OmeImage, ndim: int, i: int) -> list[dict[str, Any]]:
    """``coordinateTransformations`` of pyramid level ``i``: level 0's scale times 2**i in y and x, and a
    translation to the new pixel centres (a level-i pixel covers 2**i level-0 pixels per side, so its centre
    sits (2**i - 1) / 2 level-0 pixels further along)."""
    if i == 0:
        return copy.deepcopy(ome.transforms)
    values = {"scale": [1.0] * ndim, "translation": [0.0] * ndim}
    for t in ome.transforms:
        kind = t.get("type") if isinstance(t, dict) else None
        if kind in values:
            if not isinstance(t.get(kind), list) or len(t[kind]) != ndim:
                raise IsclError(ome.group, f"--pyramid needs the level-0 {kind} inline, one value per axis; "
                                           f"got {t}")
            values[kind] = list(t[kind])
    factor = [1] * (ndim - 2) + [2**i] * 2
    scale = [s * f for s, f in zip(values["scale"], factor)]
    translation = [t + s * (f - 1) / 2 for t, s, f in zip(values["translation"], values["scale"], factor)]
    return [{"type": "scale", "scale": scale}, {"type": "translation", "translation": translation}]


def _create_level(group: Any, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: np.dtype,
                  source: zarr_format.Planes) -> Any:
    kwargs: dict[str, Any] = {}
    if group.metadata.zarr_format == 3:  # NGFF 0.5: dimension_names MUST match the axes' names
        kwargs["dimension_names"] = list(getattr(source.metadata, "dimension_names", None) or source.ome.names)
    return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, **kwargs)


def _create_output(tmp: Path, source: zarr_format.Planes, dtype: np.dtype, about: dict[str, str]) -> Path:
    """Create the hidden output store: an array like ``source``, or an OME-Zarr group holding level 0 (its
    metadata is written by :func:`_finish_ome`). Returns the path of the array to denoise into."""
    zarr = _zarr()
    kwargs: dict[str, Any] = {}
    fmt = getattr(getattr(source, "metadata", None), "zarr_format", None)
    if fmt is not None:
        kwargs["zarr_format"] = fmt
    stored_shape, stored_chunks = tuple(source.array.shape), tuple(source.array.chunks)
    if source.ome is None:
        target = zarr.open_array(str(tmp), mode="w", shape=stored_shape, chunks=stored_chunks, dtype=dtype, **kwargs)
        target.attrs.update({**dict(source.attrs), "iscl": about})
        return tmp
    group = zarr.open_group(str(tmp), mode="w", **kwargs)
    level0 = _create_level(group, source.ome.dataset, stored_shape, stored_chunks, dtype, source)
    level0.attrs.update(dict(source.attrs))
    return tmp / source.ome.dataset


def _finish_ome(tmp: Path, source: zarr_format.Planes, pyramid: int, memory_budget: int,
                about: dict[str, str]) -> None:
    """Add ``pyramid`` levels to the OME-Zarr group at ``tmp`` (level 0 written), then its NGFF metadata."""
    ome = source.ome
    group = _zarr().open_group(str(tmp), mode="r+")
    ndim, lead = len(ome.names), source.lead
    paths = [ome.dataset]
    for i in range(1, pyramid + 1):
        above = zarr_format.open_planes(tmp / paths[-1], lead)
        shape = (*source.array.shape[:lead], *_half(above.shape))
        chunks = tuple(min(c, n) for c, n in zip(source.array.chunks, shape))
        paths.append(_level_name(ome.dataset, i))
        _create_level(group, paths[-1], shape, chunks, above.dtype, source)
        downsample_level(tmp / paths[-2], tmp / paths[-1], lead=lead, memory_budget=memory_budget)

    ms = {k: v for k, v in copy.deepcopy(ome.multiscale).items() if k not in ("datasets", "type", "metadata")}
    # the input's own "type"/"metadata" described how ITS levels were made; ours are described below
    ms["datasets"] = [{"path": p, "coordinateTransformations": _level_transforms(ome, ndim, i)}
                      for i, p in enumerate(paths)]
    if pyramid:
        import skimage

        block = [1] * (ndim - 2) + [2, 2]
        ms["type"] = "mean"
        ms["metadata"] = {
            "description": "each level is the mean of 2x2 pixels (y, x) of the level above; a pixel on an odd "
                           "edge is the mean of the pixels it covers",
            "method": "skimage.measure.block_reduce", "version": skimage.__version__,
            "kwargs": {"block_size": block, "func": "numpy.nanmean", "cval": "nan"},
        }
    attrs = copy.deepcopy(ome.attrs)
    if ome.nested:
        attrs["ome"]["multiscales"] = [ms]  # the other entries name datasets this group does not hold
    else:
        attrs["multiscales"] = [ms]
    attrs["iscl"] = about
    group.attrs.update(attrs)


def _mean_2x2(block: np.ndarray) -> np.ndarray:
    """float64 ``(..., H, W)`` → ``(..., ceil(H/2), ceil(W/2))``: the mean of each 2x2 pixel square."""
    from skimage.measure import block_reduce

    # NaN padding with nanmean: a pixel on an odd edge is the mean of the 1 or 2 pixels it covers
    # (skimage.transform.downscale_local_mean pads with zeros, which would darken that edge)
    return block_reduce(block, (1,) * (block.ndim - 2) + (2, 2), func=np.nanmean, cval=np.nan)


def _to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float64 means → ``dtype``: integers rounded to nearest (ties to even) and clipped to the type's range."""
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def downsample_level(src: str | os.PathLike, dst: str | os.PathLike, *, lead: int = 0,
                     memory_budget: int = DEFAULT_MEMORY_BUDGET) -> int:
    """Fill the Zarr array ``dst`` with the 2x2 mean in y and x of the Zarr array ``src``, block by block.

    Parameters
    ----------
    src : Zarr array (``lead`` size-1 axes, then (Z, H, W) or (H, W)), any real dtype.
    dst : existing Zarr array, shape (Z, ceil(H/2), ceil(W/2)) or (ceil(H/2), ceil(W/2)) after the same
        leading axes; its dtype is kept (integers: the mean rounded to nearest).
    lead : leading size-1 axes (OME-Zarr t, c) of both arrays.
    memory_budget : bytes of pixel data at once; blocks run along the first axis of ``dst`` (Z, or H for
        a 2-D image), whole chunks of ``dst`` deep, over the matching (twice as deep in H) rows of ``src``.

    Returns
    -------
    int : the number of blocks.
    """
    source = zarr_format.open_planes(src, lead)
    target = zarr_format.open_planes(dst, lead, "r+")
    if target.shape != _half(source.shape):
        raise ValueError(f"{dst}: shape {target.shape} is not {_half(source.shape)}, half of {src}'s in y and x")
    rows = 1 if source.ndim == 3 else 2  # source rows per target row along the block axis
    # per target row: the source rows as read, then float64 copies (the cast, block_reduce's padding,
    # nanmean's NaN-free copy, its masks), and the float64 mean cast to the target dtype. Measured: a 256 MiB
    # float32 level, 512x512 slices in 4-slice chunks (one chunk per block), grew peak RSS by 35-37 MiB.
    bytes_per_row = (rows * math.prod(source.shape[1:]) * (source.dtype.itemsize + 4 * 8)
                     + math.prod(target.shape[1:]) * (8 + target.dtype.itemsize))
    blocks = plan_blocks(target.shape, target.chunks[0], bytes_per_row, memory_budget)
    for t0, t1 in blocks:
        block = np.asarray(source[t0 * rows:min(t1 * rows, source.shape[0])], dtype=np.float64)
        target[t0:t1] = _to_dtype(_mean_2x2(block), target.dtype)
    return len(blocks)


def _run_on_dask(model: Any, src: str, tmp: str, blocks: list[tuple[int, int]], options: dict[str, Any],
                 scheduler: str | int, threads: int, on_block: Callable[[int, int], None] | None,
                 dst: Path, lead: int = 0) -> int:
    try:
        from dask.distributed import Client, LocalCluster, as_completed, wait
        from distributed import KilledWorker
        from distributed.client import FutureCancelledError
        from distributed.comm import CommClosedError
    except ImportError:
        raise ImportError("--scheduler needs dask.distributed: pip install 'iscl[dask]'") from None
    cluster = None
    if isinstance(scheduler, int) or str(scheduler).isdigit():
        cluster = LocalCluster(n_workers=int(scheduler), threads_per_worker=1, processes=True,
                               dashboard_address=":0")
        client = Client(cluster)
    else:
        client = Client(str(scheduler))
    try:
        workers = len(client.scheduler_info().get("workers", {})) or 1
        payload = model if isinstance(model, str) else client.scatter(_portable(model), broadcast=True)
        futures = {client.submit(_denoise_block, payload, src, tmp, z0, z1, options, threads, lead,
                                 pure=False): (z0, z1)
                   for z0, z1 in blocks}
        try:
            for i, fut in enumerate(as_completed(list(futures))):
                try:
                    fut.result()  # re-raises a worker's error here
                except (KilledWorker, CommClosedError, FutureCancelledError) as exc:
                    # the cluster lost the block (dask gives up after its allowed-failures retries): the
                    # caller removes the partial store; the user gets one line, not dask's traceback
                    z0, z1 = futures[fut]
                    raise ImageWriteError(dst, f"a Dask worker died while denoising slices {z0}-{z1 - 1} "
                                               f"({type(exc).__name__}); nothing was written") from exc
                if on_block is not None:
                    on_block(i + 1, len(blocks))
        except BaseException:
            # blocks still running elsewhere would write into the store after the caller removed it,
            # leaving a partial store behind. Cancelling does not stop a running task (dask discards
            # its result only), so let every block end, then let the caller remove the store.
            try:
                wait(list(futures), timeout=600)
            except Exception:  # noqa: BLE001 - the original error is the one to report
                pass
            raise
        return workers
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _portable(model: Any) -> Any:
    """The Denoiser without its training state (only the prediction networks travel to workers)."""
    from iscl.api import Denoiser

    return Denoiser(model.config, model.normalizer, model.F_swa, model.F_raw, model.H, model.info, model.device)


def _publish(tmp: Path, dst: Path, overwrite: bool) -> None:
    """Rename the finished store into place (replacing ``dst`` only with ``overwrite``)."""
    try:
        # Zarr does not fsync its chunks and a volume has many: fsync'ing each would dominate the run.
        atomic.publish_dir(tmp, dst, overwrite=overwrite, fsync_files=False)
    except atomic.AlreadyExistsError:  # another run published the same store first
        raise ImageWriteError(dst, "appeared while denoising; pass --overwrite to replace it") from None
