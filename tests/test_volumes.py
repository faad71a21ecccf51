"""Chunked volumes: Zarr block planning, block-by-block denoising (here and on Dask), memory, failures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import iscl
from iscl import volumes
from iscl.errors import ImageReadError, ImageWriteError

zarr = pytest.importorskip("zarr")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tiny_run) -> Path:
    """The shared tiny trained run (conftest.tiny_run)."""
    return tiny_run


def _volume(path: Path, shape=(7, 40, 36), chunks=(2, 40, 36), dtype="uint16", seed=0):
    rng = np.random.default_rng(seed)
    data = (rng.random(shape) * 60000).astype(dtype) if dtype == "uint16" else rng.random(shape, dtype=np.float32)
    arr = zarr.open_array(str(path), mode="w", shape=shape, chunks=chunks, dtype=dtype)
    arr[:] = data
    arr.attrs["voxel_size_nm"] = [30, 4, 4]
    return data


def _slice_by_slice(model, data: np.ndarray) -> np.ndarray:
    return np.stack([model.predict(s)["denoised"] for s in data])


def test_plan_blocks_are_chunk_aligned_and_fit_the_budget():
    # 10 slices, z-chunk 3, 100 bytes per slice: a 650-byte budget holds 2 chunks (600 bytes)
    assert volumes.plan_blocks((10, 5, 5), 3, 100, 650) == [(0, 6), (6, 10)]
    # a budget smaller than one chunk still makes progress, one chunk at a time
    assert volumes.plan_blocks((10, 5, 5), 3, 100, 10) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert volumes.plan_blocks((4, 5, 5), 1, 100, 10**9) == [(0, 4)]


def test_parse_bytes():
    assert volumes.parse_bytes("512M") == 512 * 2**20
    assert volumes.parse_bytes("2GiB") == 2 * 2**30
    assert volumes.parse_bytes("1.5k") == 1536
    assert volumes.parse_bytes("1000") == 1000
    for bad in ("lots", "-1G", "0"):
        with pytest.raises(ValueError):
            volumes.parse_bytes(bad)


def test_zarr_volume_equals_slice_by_slice(model_dir, tmp_path):
    model = iscl.load(model_dir)
    src, dst = tmp_path / "vol.zarr", tmp_path / "out.zarr"
    data = _volume(src)
    seen = []
    # 40*36*(2+2+4) bytes per slice: a 30 kB budget gives blocks of one 2-slice chunk
    rep = volumes.denoise_zarr(model, src, dst, memory_budget=30_000, on_block=lambda d, t: seen.append((d, t)))
    assert rep.blocks == 4 and rep.block_depth == 2 and seen[-1] == (4, 4)
    out = zarr.open_array(str(dst), mode="r")
    assert out.shape == data.shape and out.dtype == np.uint16 and out.chunks == (2, 40, 36)
    assert out.attrs["voxel_size_nm"] == [30, 4, 4] and out.attrs["iscl"]["output"] == "denoised"
    np.testing.assert_array_equal(np.asarray(out[:]), _slice_by_slice(model, data))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr", "vol.zarr"]  # no partial store left


def test_zarr_on_dask_workers_equals_here(model_dir, tmp_path):
    pytest.importorskip("dask.distributed")
    model = iscl.load(model_dir)
    src = tmp_path / "vol.zarr"
    data = _volume(src, dtype="float32")
    volumes.denoise_zarr(model, src, tmp_path / "here.zarr", memory_budget=1)
    # two worker processes, the model passed as a checkpoint path (each worker loads it once)
    rep = volumes.denoise_zarr(str(model_dir), src, tmp_path / "dask.zarr", memory_budget=1, scheduler=2)
    assert rep.workers == 2 and rep.blocks == 4
    here = np.asarray(zarr.open_array(str(tmp_path / "here.zarr"), mode="r")[:])
    np.testing.assert_array_equal(np.asarray(zarr.open_array(str(tmp_path / "dask.zarr"), mode="r")[:]), here)
    np.testing.assert_allclose(here, _slice_by_slice(model, data), atol=0, rtol=0)


def test_zarr_2d_array(model_dir, tmp_path):
    model = iscl.load(model_dir)
    img = (np.random.default_rng(1).random((50, 44)) * 255).astype(np.uint8)
    arr = zarr.open_array(str(tmp_path / "img.zarr"), mode="w", shape=img.shape, chunks=(16, 16), dtype="uint8")
    arr[:] = img
    volumes.denoise_zarr(model, tmp_path / "img.zarr", tmp_path / "o.zarr")
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "o.zarr"), mode="r")[:], model.denoise(img))


def test_zarr_refusals_leave_nothing(model_dir, tmp_path):
    model = iscl.load(model_dir)
    src = tmp_path / "vol.zarr"
    _volume(src, dtype="float32")
    dst = tmp_path / "out.zarr"
    dst.mkdir()
    with pytest.raises(ImageWriteError, match="exists; pass --overwrite"):
        volumes.denoise_zarr(model, src, dst)
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("0", shape=(2, 8, 8), dtype="f4")
    with pytest.raises(ImageReadError, match=r"Zarr group, not an array; denoise one of its arrays, e.g. .*g\.zarr/0"):
        volumes.denoise_zarr(model, tmp_path / "g.zarr", tmp_path / "x.zarr")
    # a NaN in slice 5 fails the run after earlier blocks were written: no output store remains
    arr = zarr.open_array(str(src), mode="r+")
    arr[5, 3, 3] = np.nan
    with pytest.raises(ImageReadError, match="slice 5 contains 1 NaN and 0 Inf pixel values"):
        volumes.denoise_zarr(model, src, tmp_path / "nan.zarr", memory_budget=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.zarr", "out.zarr", "vol.zarr"]


def test_cli_denoises_a_zarr_volume(model_dir, tmp_path):
    from typer.testing import CliRunner

    from iscl.cli import app

    data = _volume(tmp_path / "vol.zarr")
    r = CliRunner().invoke(app, ["denoise", str(model_dir), str(tmp_path / "vol.zarr"), "--out",
                                 str(tmp_path / "den.zarr"), "--memory-budget", "20k", "--quiet"])
    assert r.exit_code == 0, r.output
    out = np.asarray(zarr.open_array(str(tmp_path / "den.zarr"), mode="r")[:])
    np.testing.assert_array_equal(out, _slice_by_slice(iscl.load(model_dir), data))
    r = CliRunner().invoke(app, ["denoise", str(model_dir), str(tmp_path / "vol.zarr"), "--out",
                                 str(tmp_path / "den.zarr"), "--quiet"])
    assert r.exit_code == 1 and "den.zarr: exists; pass --overwrite to replace it" in r.output


@pytest.mark.parametrize("fmt", ["tiff", "zarr"])
def test_stack_larger_than_budget_streams_with_small_peak_memory(model_dir, tmp_path, fmt):
    """A 64 MiB stack with a 4 MiB budget: peak memory growth is measured in a fresh process
    (benchmarks/volume_memory.py) and the output equals slice-by-slice denoising exactly."""
    cmd = [sys.executable, str(REPO / "benchmarks" / "volume_memory.py"), "--format", fmt, "--slices", "256",
           "--size", "256", "--chunk", "4", "--budget", "4M", "--model", str(model_dir), "--check", "--json",
           "--workdir", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={"OMP_NUM_THREADS": "2",
                                                                                "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-2000:]
    rep = json.loads(res.stdout.strip().splitlines()[-1])
    assert rep["stack_mib"] == 64.0
    assert rep["max_abs_diff_vs_slice_by_slice"] == 0.0
    # measured: 1.1 MiB (TIFF, memory-mapped) and 5.2 MiB (Zarr) for the 64 MiB stack
    assert rep["anon_growth_mib"] < rep["stack_mib"] / 5, rep


def test_scheduler_with_image_files_is_refused(model_dir, tmp_path):
    from iscl.jobs import denoise_files

    path = tmp_path / "a.npy"
    np.save(path, np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match=r"a\.npy: --scheduler spreads Zarr volumes over Dask workers"):
        denoise_files(iscl.load(model_dir), [path], tmp_path / "out", scheduler=2, progress=False)
    assert not (tmp_path / "out").exists()




@pytest.mark.slow
@pytest.mark.parametrize("allowed_failures", [
    pytest.param(3, id="rescheduled"),  # dask's default: the lost blocks run again on a surviving worker
    pytest.param(0, id="not-rescheduled"),  # the lost block fails the job: the one-line error
])
def test_a_dask_worker_killed_mid_volume(model_dir, tmp_path, allowed_failures):
    """A worker process of the cluster dies (SIGKILL) after the first block is done, while it runs another:
    `iscl denoise RUN vol.zarr --out out.zarr --scheduler ADDR` either finishes on the surviving worker with
    the exact slice-by-slice result, or fails with the one-line error; either way no store is left that looks
    complete but is not, and no partial store is left behind. ``allowed_failures`` (dask's
    ``distributed.scheduler.allowed-failures``) decides which: 3 reschedules the lost blocks, 0 fails them."""
    import os
    import signal
    import threading
    import time

    import dask
    from typer.testing import CliRunner

    from iscl.cli import app

    distributed = pytest.importorskip("distributed")
    src, dst = tmp_path / "vol.zarr", tmp_path / "out.zarr"
    data = _volume(src, shape=(12, 96, 96), chunks=(1, 96, 96), dtype="float32")  # 12 one-slice blocks
    expected = _slice_by_slice(iscl.load(model_dir), data)

    with dask.config.set({"distributed.scheduler.allowed-failures": allowed_failures}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    watcher = distributed.Client(cluster)
    killed: list[tuple[str, int, int]] = []  # (worker, pid, blocks done when it was killed)
    failure: list[BaseException] = []
    stop = threading.Event()

    def tasks(dask_scheduler=None):  # runs on the scheduler
        return {str(k): (ts.state, ts.processing_on.address if ts.processing_on else None)
                for k, ts in dask_scheduler.tasks.items() if "denoise_block" in str(k)}

    def kill_one_worker_mid_block():
        try:
            pids = watcher.run(os.getpid)
            while not stop.is_set():
                states = watcher.run_on_scheduler(tasks)
                done = sum(s == "memory" for s, _ in states.values())
                busy = [w for s, w in states.values() if s == "processing" and w in pids]
                if done >= 1 and busy:
                    os.kill(pids[busy[0]], signal.SIGKILL)
                    killed.append((busy[0], pids[busy[0]], done))
                    return
                time.sleep(0.005)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failure.append(exc)

    killer = threading.Thread(target=kill_one_worker_mid_block, daemon=True)
    try:
        killer.start()
        r = CliRunner().invoke(app, ["denoise", str(model_dir), str(src), "--out", str(dst), "--scheduler",
                                     cluster.scheduler_address, "--memory-budget", "1", "--tile", "0", "--quiet"])
    finally:
        stop.set()
        killer.join(30)
        watcher.close()
        cluster.close()
    assert not failure, failure
    assert killed, "the job ended before a worker could be killed mid-block"
    assert 1 <= killed[0][2] < 12
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert (r.exit_code == 0) == (allowed_failures > 0), (r.output, r.exception)
    if r.exit_code == 0:  # rescheduled on the surviving worker: the complete, exact result
        np.testing.assert_array_equal(np.asarray(zarr.open_array(str(dst), mode="r")[:]), expected)
        assert leftovers == ["out.zarr", "vol.zarr"]  # no partial store left
    else:  # the one-line error, and nothing that looks like an output
        assert leftovers == ["vol.zarr"], leftovers
        assert r.exit_code == 1 and "Traceback" not in r.output, r.output
        errors = [ln for ln in r.output.splitlines() if ln.startswith("iscl: error:")]
        assert len(errors) == 1 and "a Dask worker died while denoising slices" in errors[0], r.output
