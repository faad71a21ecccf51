"""File-level jobs behind the CLI: train from image files, denoise files of any size.

Everything here is plain Python over :mod:`iscl.api` and :mod:`iscl.data.io`, so it can be used and
tested without the command line.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from iscl.api import Denoiser
from iscl.api import train as train_arrays
from iscl.config import Config
from iscl.data import io
from iscl.data.axes import volume_axes, volume_axis_problem
from iscl.errors import ImageReadError, ImageWriteError, IsclError

__all__ = ["read_images", "train_files", "denoise_files", "DenoiseReport", "AUTO_TILE_PIXELS", "DEFAULT_TILE"]

#: images with more pixels than this are denoised in tiles unless a tile size is given
AUTO_TILE_PIXELS = 2048 * 2048
DEFAULT_TILE = 512


def read_images(inputs: Sequence[str | os.PathLike], *, channel: int | None = None,
                stacks: bool = False) -> list[np.ndarray]:
    """Read every image named by ``inputs`` (files, directories, globs) as 2-D arrays.

    Stacks contribute one array per slice (``stacks=True``: one (Z, H, W) array, whose planes
    :func:`iscl.api.train` takes along ``config.train.axis``). Raises
    :class:`~iscl.errors.ImageReadError` naming the first bad file.
    """
    images: list[np.ndarray] = []
    for path in io.find_images(list(inputs)):
        arr, _ = io.read_image(path, channel=channel)
        images.extend([arr] if arr.ndim == 2 or stacks else list(arr))
    return images


def train_files(clean: Sequence[str | os.PathLike], noisy: Sequence[str | os.PathLike], config: Config,
                run_dir: str | os.PathLike, *, device: str = "cpu", resume: bool = False, progress: bool = True,
                val_clean: Sequence[str | os.PathLike] | None = None,
                val_noisy: Sequence[str | os.PathLike] | None = None, channel: int | None = None,
                overwrite: bool = False, tensorboard: bool | None = None,
                tensorboard_every: int | None = None) -> Denoiser:
    """Train ISCL from image files and write ``run_dir`` (checkpoint, ``log.jsonl``, ``loss.png``, and
    ``tb/`` with ``tensorboard``: see :func:`iscl.api.train`).

    Refuses a ``run_dir`` that already holds a run unless ``resume`` or ``overwrite`` is given.
    """
    from iscl.training.plots import plot_losses
    from iscl.training.runlog import LOG_FILE
    from iscl.training.tensorboard import TB_DIR
    from iscl.training.trainer import CHECKPOINT_DIR

    run = Path(run_dir)
    if run.exists() and any(run.iterdir()) and not (resume or overwrite):
        raise IsclError(run, "already holds a run; pass --resume to continue it or --overwrite to start over")
    if resume and not (run / CHECKPOINT_DIR).exists():
        raise IsclError(run, "nothing to resume (no checkpoint/ here)")
    stacks = config.train.axis != "z"  # the planes of other orientations need the whole stack
    clean_images = read_images(clean, channel=channel, stacks=stacks)
    noisy_images = read_images(noisy, channel=channel, stacks=stacks)
    validation = None
    if (val_clean is None) != (val_noisy is None):
        raise ValueError("validation needs both --val-clean and --val-noisy")
    if val_clean is not None and val_noisy is not None:
        validation = (read_images(val_clean, channel=channel), read_images(val_noisy, channel=channel))
    if overwrite and not resume and run.exists():
        for name in (LOG_FILE, "loss.png"):
            (run / name).unlink(missing_ok=True)
        shutil.rmtree(run / TB_DIR, ignore_errors=True)  # the old run's curves would mix with the new one's
    model = train_arrays(clean_images, noisy_images, config, run_dir=run, device=device, resume=resume,
                         progress=progress, validation=validation, tensorboard=tensorboard,
                         tensorboard_every=tensorboard_every)
    if model.trainer is None or model.trainer.dist.is_main:
        plot_losses(run / LOG_FILE, run / "loss.png")
    return model


@dataclass
class DenoiseReport:
    """What :func:`denoise_files` did: written outputs and per-input errors (with ``keep_going``)."""

    written: list[tuple[Path, Path]] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def _output_paths(inputs: list[Path], out: Path, save_noise_map: bool) -> list[tuple[Path, Path | None]]:
    # HDF5 addresses (file.h5:/dataset): names and suffixes are the file's
    out_file = io.split_address(out)[0]
    single_file = len(inputs) == 1 and out_file.suffix != "" and not out_file.is_dir()
    result = []
    seen: dict[Path, Path] = {}
    for src in inputs:
        dst = out if single_file else out / io.split_address(src)[0].name
        if dst in seen:
            raise IsclError(src, f"same output name as {seen[dst]} ({dst}); denoise them into different --out folders")
        seen[dst] = src
        dst_file = io.split_address(dst)[0]
        noise = dst_file.with_name(f"{dst_file.stem}_noise.tif") if save_noise_map else None
        result.append((dst, noise))
    return result


def denoise_files(model: Denoiser, inputs: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                  tile: int | None = None, overlap: int = 32, stats_tiles: int = 16, output: str = "denoised",
                  save_noise_map: bool = False, overwrite: bool = False, keep_going: bool = False,
                  channel: int | None = None, progress: bool = True, memory_budget: int | None = None,
                  scheduler: str | int | None = None, threads_per_worker: int = 1, pyramid: int = 0,
                  axis: str = "z", log: Callable[[str], None] | None = None) -> DenoiseReport:
    """Denoise files, directories or globs into ``out`` (a folder, or a file for a single input).

    Each output has the input's format, shape, dtype and metadata (DICOM: header kept, new pixel data).
    Stacks are processed slice by slice. ``tile=None``: whole images up to ``AUTO_TILE_PIXELS``, tiles
    of ``DEFAULT_TILE`` above; ``tile=0``: always whole images.

    Before anything is written, every input is probed and every output name checked: without
    ``keep_going`` the first problem raises and nothing is written; with it, bad inputs are reported
    in :attr:`DenoiseReport.failed` and the rest are processed. Outputs appear atomically.

    Zarr arrays (``*.zarr`` stores) are denoised block by block into Zarr arrays of the same name in
    ``out`` (or into ``out`` itself for one input named ``*.zarr``) by :func:`iscl.volumes.denoise_zarr`,
    within ``memory_budget`` bytes of pixel data, optionally spread over a Dask ``scheduler``. An OME-Zarr
    image (a group with ``multiscales`` metadata) becomes an OME-Zarr group, with ``pyramid`` more levels
    (each halved in y and x); ``pyramid`` with any other input is an error before anything is written.

    ``axis``: ``z`` denoises the (H, W) slices of a stack (the default, as above); ``y``/``x`` the (Z, W)
    or (Z, H) planes, ``all`` all three orientations averaged (:meth:`iscl.api.Denoiser.denoise_volume`).
    Inputs must then be (Z, H, W) stacks whose planes are at least 4x4 pixels; a file is read whole when
    input, output (and the sum for ``all``) fit in ``memory_budget``, otherwise copied into hidden
    disk-backed scratch arrays next to the output (removed afterwards) and denoised slab by slab within it.
    """
    from iscl import volumes

    volume_axes(axis)  # a bad name fails before anything is read

    volume_inputs = [Path(p) for p in inputs if volumes.is_zarr(p)]
    inputs = [p for p in inputs if not volumes.is_zarr(p)]
    report = DenoiseReport()
    if scheduler is not None and inputs:
        raise ValueError(f"{inputs[0]}: --scheduler spreads Zarr volumes over Dask workers; image files are "
                         "denoised in this process (leave out --scheduler, or convert the stack to Zarr)")
    if pyramid and inputs:
        raise IsclError(inputs[0], "--pyramid writes OME-Zarr levels; only OME-Zarr inputs get them (this "
                                   "output is not Zarr)")
    paths = io.find_images(list(inputs)) if inputs else []
    out_path = Path(out)
    targets = _output_paths(paths, out_path, save_noise_map)
    jobs = []
    for src, (dst, noise_dst) in zip(paths, targets):
        try:
            info = io.probe(src)
            if min(info.shape[-2:]) < 4:
                raise ImageReadError(src, f"image of {info.shape[-2]}x{info.shape[-1]} pixels is too small "
                                          "(the networks need at least 4x4)")
            if channel is None and info.n_channels > 1:
                raise ImageReadError(src, f"is a colour image ({info.n_channels} channels); pass --channel")
            problem = volume_axis_problem(info.shape, axis)
            if problem is not None:
                raise ImageReadError(src, problem)
            for target in (dst, noise_dst):
                if target is not None and io.split_address(target)[0].exists() and not overwrite:
                    raise ImageWriteError(target, "exists; pass --overwrite to replace it")
            # an output file replaces the whole file: never the input's, whichever dataset it names
            if io.split_address(dst)[0].resolve() == io.split_address(src)[0].resolve():
                raise ImageWriteError(dst, "is the input itself; choose another --out")
            jobs.append((src, dst, noise_dst, info))
        except (IsclError, ValueError, OSError) as exc:
            if not keep_going:
                raise
            report.failed.append((src, str(exc)))
    if volume_inputs and save_noise_map:
        raise ValueError(f"{volume_inputs[0]}: --save-noise-map is for image files; Zarr volumes write one output")
    if axis != "z" and save_noise_map:
        raise ValueError(f"--save-noise-map writes H's noise map of z slices; leave it out with --axis {axis}")
    if volume_inputs:  # after every file input was checked above: a bad file stops before anything is written
        _denoise_volumes(model, volume_inputs, Path(out), single=not inputs and len(volume_inputs) == 1,
                         output=output, tile=tile, overlap=overlap, stats_tiles=stats_tiles, overwrite=overwrite,
                         keep_going=keep_going, progress=progress, memory_budget=memory_budget, scheduler=scheduler,
                         threads_per_worker=threads_per_worker, pyramid=pyramid, axis=axis, report=report, log=log)
    outputs = (output, "noise") if save_noise_map else (output,)
    bar = tqdm(jobs, disable=not progress, unit="file", desc="denoise", dynamic_ncols=True)
    for src, dst, noise_dst, _ in bar:
        if axis == "z":  # slice by slice, streamed: unchanged
            job = partial(_denoise_one, model, src, dst, noise_dst, outputs, tile, overlap, stats_tiles, overwrite,
                          channel, progress)
        else:
            job = partial(_denoise_one_volume, model, src, dst, output, axis, tile, overlap, stats_tiles, overwrite,
                          channel, progress, memory_budget or volumes.DEFAULT_MEMORY_BUDGET)
        _run_job(report, keep_going, log, src, dst, job)
    return report


def _run_job(report: DenoiseReport, keep_going: bool, log: Callable[[str], None] | None, src: Path, dst: Path,
             job: Callable[[], None]) -> None:
    """Run one input's job; record it as written, or (with ``keep_going``) as failed instead of raising."""
    try:
        job()
    except (IsclError, ValueError, OSError) as exc:
        if not keep_going:
            raise
        report.failed.append((src, str(exc)))
        return
    report.written.append((src, dst))
    if log is not None:
        log(f"{src} -> {dst}")


def _denoise_volumes(model: Denoiser, sources: list[Path], out: Path, *, single: bool, output: str,
                     tile: int | None, overlap: int, stats_tiles: int, overwrite: bool, keep_going: bool,
                     progress: bool, memory_budget: int | None, scheduler: str | int | None,
                     threads_per_worker: int, pyramid: int, report: DenoiseReport,
                     log: Callable[[str], None] | None, axis: str = "z") -> None:
    from iscl import volumes

    targets = [out if single and out.suffix == ".zarr" else out / src.name for src in sources]
    checked = []
    for src, dst in zip(sources, targets):  # check everything before writing anything
        try:
            source = volumes.open_volume(src)
            volumes.check_pyramid(source, pyramid, src)
            problem = volume_axis_problem(source.shape, axis)
            if problem is not None:
                raise ImageReadError(src, problem)
            if axis != "z" and scheduler is not None:
                raise ValueError(f"{src}: --scheduler spreads z blocks over Dask workers; --axis {axis} runs in this "
                                 "process (leave out --scheduler)")
            if dst.exists() and not overwrite:
                raise ImageWriteError(dst, "exists; pass --overwrite to replace it")
            checked.append((src, dst))
        except (IsclError, ValueError, OSError) as exc:
            if not keep_going:
                raise
            report.failed.append((src, str(exc)))
    def job(src: Path, dst: Path) -> None:
        with tqdm(total=0, disable=not progress, unit="block", desc=src.name, dynamic_ncols=True) as bar:
            def on_block(done: int, total: int) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()

            tile_size = _auto_tile_volume(tile, volumes.open_volume(src).shape, axis)
            volumes.denoise_zarr(model, src, dst, output=output, tile=tile_size, overlap=overlap,
                                 stats_tiles=stats_tiles, overwrite=overwrite, scheduler=scheduler,
                                 threads_per_worker=threads_per_worker, on_block=on_block, pyramid=pyramid,
                                 memory_budget=memory_budget or volumes.DEFAULT_MEMORY_BUDGET, axis=axis)

    for src, dst in checked:
        _run_job(report, keep_going, log, src, dst, partial(job, src, dst))


def auto_tile(tile: int | None, h: int, w: int) -> int | None:
    """The tile side for (h, w) slices: ``None`` = automatic by size, 0 = whole images."""
    if tile is None:
        return DEFAULT_TILE if h * w > AUTO_TILE_PIXELS else None
    return tile or None


def _auto_tile_volume(tile: int | None, shape: tuple[int, ...], axis: str) -> int | None:
    """One tile side for every plane ``axis`` takes from a volume of ``shape``: by its largest plane."""
    if len(shape) != 3:
        return auto_tile(tile, *shape[-2:])
    planes = [[n for i, n in enumerate(shape) if i != d] for d in volume_axes(axis)]
    return auto_tile(tile, *max(planes, key=lambda p: p[0] * p[1]))


def _denoise_one(model: Denoiser, src: Path, dst: Path, noise_dst: Path | None, outputs: tuple[str, ...],
                 tile: int | None, overlap: int, stats_tiles: int, overwrite: bool, channel: int | None,
                 progress: bool) -> None:
    with io.open_slices(src, channel=channel) as slices:
        h, w = slices.shape[-2:]
        tile_size = auto_tile(tile, h, w)
        info = io.probe(src)
        writer = io.create_output_like(dst, tuple(slices.shape), slices.dtype, like=info, overwrite=overwrite)
        noise_writer = (io.create_output_like(noise_dst, tuple(slices.shape), np.float32, overwrite=overwrite)
                        if noise_dst is not None else None)
        try:
            with tqdm(total=0, disable=not progress or tile_size is None, unit="tile", leave=False,
                      desc=src.name) as tbar:
                def on_tile(done: int, total: int) -> None:
                    tbar.total = total
                    tbar.n = done
                    tbar.refresh()

                for z in range(len(slices)):
                    image = slices[z]
                    res = model.predict(image, outputs=outputs, tile=tile_size, overlap=overlap,
                                        stats_tiles=stats_tiles, on_tile=on_tile)
                    writer.write_slice(z, res[outputs[0]])
                    if noise_writer is not None:
                        noise_writer.write_slice(z, res["noise"])
            writer.commit()
            if noise_writer is not None:
                noise_writer.commit()
        except BaseException:
            writer.abort()
            if noise_writer is not None:
                noise_writer.abort()
            raise


def _denoise_one_volume(model: Denoiser, src: Path, dst: Path, output: str, axis: str, tile: int | None,
                        overlap: int, stats_tiles: int, overwrite: bool, channel: int | None, progress: bool,
                        memory_budget: int) -> None:
    """A (Z, H, W) file denoised along ``axis`` (y, x, all) by :meth:`Denoiser.denoise_volume`; written slice by
    slice like the z path. In memory when input, output and the sum fit in ``memory_budget``; otherwise the input
    is copied slice by slice into a hidden scratch folder next to ``dst`` (NumPy memory maps: file-backed pages
    the kernel can write out and drop) and denoised slab by slab within the budget."""
    from iscl import atomic

    info = io.probe(src)
    with io.open_slices(src, channel=channel) as slices:
        shape, dtype = tuple(slices.shape), np.dtype(slices.dtype)
        out_dtype = np.dtype(np.float32) if output == "noise" else dtype
        voxels = int(np.prod(shape))
        needed = voxels * (dtype.itemsize + out_dtype.itemsize + (8 if axis == "all" else 0))
        writer = io.create_output_like(dst, shape, out_dtype, like=info, overwrite=overwrite)
        scratch_dir = None
        try:
            scratch: Callable[[tuple[int, ...], np.dtype], np.ndarray] | None = None
            if needed <= memory_budget:
                volume, out = np.empty(shape, dtype), None
            else:
                scratch_dir = atomic.temp_path(io.split_address(dst)[0], "scratch")
                scratch_dir.mkdir(parents=True)
                volume = np.lib.format.open_memmap(scratch_dir / "input.npy", "w+", dtype, shape)
                out = np.lib.format.open_memmap(scratch_dir / "output.npy", "w+", out_dtype, shape)
                sum_path = scratch_dir / "sum.npy"

                def scratch(shape_: tuple[int, ...], dtype_: np.dtype) -> np.ndarray:
                    return np.lib.format.open_memmap(sum_path, "w+", dtype_, shape_)
            for z in range(shape[0]):
                volume[z] = slices[z]
            with tqdm(total=0, disable=not progress, unit="slab", leave=False, desc=src.name) as bar:
                def on_block(done: int, total: int) -> None:
                    bar.total = total
                    bar.n = done
                    bar.refresh()

                result = model.denoise_volume(volume, axis=axis, output=output,
                                              tile=_auto_tile_volume(tile, shape, axis), overlap=overlap,
                                              stats_tiles=stats_tiles, out=out, scratch=scratch,
                                              memory_budget=memory_budget, on_block=on_block)
            for z in range(shape[0]):
                writer.write_slice(z, result[z])
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        finally:
            if scratch_dir is not None:
                shutil.rmtree(scratch_dir, ignore_errors=True)
