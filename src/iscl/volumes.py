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

Zarr and Dask are optional (``pip install 'iscl[zarr]'`` / ``'iscl[dask]'``); we use their own
APIs — nothing here reimplements chunk storage or task scheduling.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from iscl import atomic
from iscl.data.finite import count_nonfinite, nonfinite_problem
from iscl.data.formats import zarr as zarr_format
from iscl.errors import ImageReadError, ImageWriteError

__all__ = ["is_zarr", "open_volume", "plan_blocks", "denoise_zarr", "VolumeReport", "DEFAULT_MEMORY_BUDGET",
           "parse_bytes"]

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


def open_volume(path: str | os.PathLike) -> Any:
    """Open a Zarr array read-only: (Z, H, W) or (H, W), real dtype. Raises ``ImageReadError``.

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
    """What :func:`denoise_zarr` did."""

    source: Path
    output: Path
    shape: tuple[int, ...]
    blocks: int
    block_depth: int
    workers: int
    seconds: float


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
                   threads: int | None = None) -> tuple[int, int]:
    """Denoise slices ``[z0, z1)`` of the array at ``src`` into the array at ``tmp`` (a Dask task)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    model = _resolve_model(model)
    zarr = _zarr()
    source = zarr.open_array(src, mode="r")
    target = zarr.open_array(tmp, mode="r+")
    block = np.asarray(source[z0:z1])
    out = np.empty(block.shape, dtype=target.dtype)
    for i in range(block.shape[0]):
        out[i] = _predict_slice(model, block[i], src, z0 + i, options)
    target[z0:z1] = out
    return z0, z1


def denoise_zarr(model: Any, src: str | os.PathLike, dst: str | os.PathLike, *, output: str = "denoised",
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, tile: int | None = None, overlap: int = 32,
                 stats_tiles: int = 16, precision: str | None = None, scheduler: str | int | None = None,
                 threads_per_worker: int = 1, overwrite: bool = False,
                 on_block: Callable[[int, int], None] | None = None) -> VolumeReport:
    """Denoise the Zarr array ``src`` into a new Zarr array ``dst``, block by block.

    Parameters
    ----------
    model : a :class:`~iscl.api.Denoiser`, or the path of a checkpoint (each Dask worker loads it once).
    src : Zarr array, (Z, H, W) or (H, W), any real dtype; not changed.
    dst : new Zarr array with ``src``'s shape, chunks, attributes and dtype (``output="noise"``:
        float32). Refused when it exists unless ``overwrite``.
    memory_budget : bytes of pixel data per worker; sets the block depth (see :func:`plan_blocks`).
    tile, overlap, stats_tiles, precision : per-slice prediction, as in :meth:`Denoiser.predict`.
    scheduler : ``None`` (blocks run here, in order), an int N (a local Dask cluster of N worker
        processes) or a ``dask.distributed`` scheduler address (``tcp://host:8786``).
    threads_per_worker : torch threads per Dask worker.
    on_block : progress callback ``(done, total)``.
    """
    zarr = _zarr()
    src_p, dst_p = Path(src), Path(dst)
    source = open_volume(src_p)
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

    tmp = atomic.temp_path(dst_p, "partial")
    try:
        dst_p.parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {}
        fmt = getattr(getattr(source, "metadata", None), "zarr_format", None)
        if fmt is not None:
            kwargs["zarr_format"] = fmt
        target = zarr.open_array(str(tmp), mode="w", shape=source.shape, chunks=source.chunks, dtype=out_dtype,
                                 **kwargs)
        target.attrs.update({**dict(source.attrs), "iscl": {"source": str(src_p), "output": output}})
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ImageWriteError(dst_p, f"cannot create the output store ({exc.strerror or exc})") from None

    t0 = time.perf_counter()
    workers = 1
    try:
        if source.ndim == 2:  # one image: no blocks to spread
            target[...] = _predict_slice(_resolve_model(model), np.asarray(source[...]), str(src_p), 0, options)
            if on_block is not None:
                on_block(1, 1)
        elif scheduler is None:
            for i, (z0, z1) in enumerate(blocks):
                _denoise_block(model, str(src_p), str(tmp), z0, z1, options)
                if on_block is not None:
                    on_block(i + 1, len(blocks))
        else:
            workers = _run_on_dask(model, str(src_p), str(tmp), blocks, options, scheduler, threads_per_worker,
                                   on_block, dst_p)
        _publish(tmp, dst_p, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return VolumeReport(src_p, dst_p, tuple(source.shape), len(blocks), blocks[0][1] - blocks[0][0], workers,
                        time.perf_counter() - t0)


def _run_on_dask(model: Any, src: str, tmp: str, blocks: list[tuple[int, int]], options: dict[str, Any],
                 scheduler: str | int, threads: int, on_block: Callable[[int, int], None] | None,
                 dst: Path) -> int:
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
        futures = {client.submit(_denoise_block, payload, src, tmp, z0, z1, options, threads, pure=False): (z0, z1)
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
