"""Denoising (and training) a volume along z, y, x or all three orientations (``--axis``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import iscl
from iscl import volumes
from iscl.api import _as_slices
from iscl.cli import app
from iscl.data import io
from iscl.data.axes import volume_axis_problem
from iscl.errors import ImageReadError
from iscl.jobs import denoise_files

RNG = np.random.default_rng(5)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny trained run whose window is [0, 60000], the range of the test volumes (the shared tiny run's
    [0, 1] window would clip every uint16 voxel to one value and hide which plane went where)."""
    from iscl.config import Config, NetworkConfig, TrainConfig
    from synthetic import shapes_image, structured_noise

    rng = np.random.default_rng(3)
    clean = [shapes_image(rng) * 60000 for _ in range(3)]
    noisy = [structured_noise(shapes_image(rng), rng) * 60000 for _ in range(3)]
    config = Config(network=NetworkConfig(generator_width=4, generator_res_blocks=1, extractor_width=4,
                                          extractor_layers=3, discriminator_width=4),
                    train=TrainConfig(steps=2, batch_size=2), normalization={"mode": "fixed", "low": 0, "high": 60000})
    path = tmp_path_factory.mktemp("axis-run") / "run"
    iscl.train(clean, noisy, config, run_dir=path, progress=False, tensorboard=False)
    return path


@pytest.fixture(scope="module")
def model(tiny_run):
    return iscl.load(tiny_run)


def _vol(shape=(6, 20, 24), dtype=np.float32) -> np.ndarray:
    """Random voxels on [0, 60000]."""
    v = RNG.random(shape, dtype=np.float32) * 60000
    return v.astype(np.uint16) if dtype == np.uint16 else v


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _mean_as(total: np.ndarray, dtype) -> np.ndarray:
    mean = total / 3
    if np.dtype(dtype).kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(mean), info.min, info.max).astype(dtype)
    return mean.astype(dtype)


# ------------------------------------------------------------------------------------------------ the API
def test_axis_z_is_slice_by_slice(model):
    vol = _vol(dtype=np.uint16)
    np.testing.assert_array_equal(model.denoise_volume(vol, axis="z"), model.denoise(vol))


@pytest.mark.parametrize("budget", [None, 3000])  # 3000 bytes: slabs of a few planes
def test_axis_y_and_x_denoise_each_plane_alone(model, budget):
    vol = _vol(dtype=np.uint16)
    y = model.denoise_volume(vol, axis="y", memory_budget=budget)
    x = model.denoise_volume(vol, axis="x", memory_budget=budget)
    assert y.dtype == x.dtype == np.uint16 and y.shape == x.shape == vol.shape
    np.testing.assert_array_equal(y, np.stack([model.denoise(vol[:, h, :]) for h in range(vol.shape[1])], axis=1))
    np.testing.assert_array_equal(x, np.stack([model.denoise(vol[:, :, w]) for w in range(vol.shape[2])], axis=2))
    assert not np.array_equal(y, x)


@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_axis_all_is_the_mean_of_the_three(model, dtype):
    vol = _vol(dtype=dtype)
    # each orientation unrounded (from the float32 planes), summed z + y + x, rounded once
    parts = [model.denoise_volume(vol.astype(np.float32), axis=a) for a in ("z", "y", "x")]
    expected = _mean_as((parts[0] + parts[1]) + parts[2], dtype)
    got = model.denoise_volume(vol, axis="all")
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(model.denoise_volume(vol, axis="all", memory_budget=2000), expected)


def test_volume_axis_problems_are_one_line():
    assert volume_axis_problem((3, 40, 40), "z") is None
    assert volume_axis_problem((40, 40), "z") is None
    assert "the (Z, W) planes of this 3x40x40 volume are 3x40 pixels" in volume_axis_problem((3, 40, 40), "y")
    assert "the (Z, H) planes of this 3x40x40 volume are 3x40 pixels" in volume_axis_problem((3, 40, 40), "x")
    assert "the (H, W) slices of this 8x40x3 volume are 40x3 pixels" in volume_axis_problem((8, 40, 3), "all")
    assert "needs a (Z, H, W) volume" in volume_axis_problem((40, 40), "x")
    with pytest.raises(ValueError, match="--axis must be one of z, y, x, all; got 'w'"):
        volume_axis_problem((8, 8, 8), "w")


def test_training_planes_along_each_axis():
    vol = _vol((5, 7, 9))
    assert [a.shape for a in _as_slices(vol, "v")] == [(7, 9)] * 5
    assert [a.shape for a in _as_slices(vol, "v", "y")] == [(5, 9)] * 7
    assert [a.shape for a in _as_slices(vol, "v", "x")] == [(5, 7)] * 9
    planes = _as_slices([vol, vol[0]], "v", "all")
    assert len(planes) == 5 + 7 + 9 + 1
    np.testing.assert_array_equal(planes[5 + 2], vol[:, 2, :])
    np.testing.assert_array_equal(planes[5 + 7 + 3], vol[:, :, 3])


# ---------------------------------------------------------------------------------------------- files, CLI
def test_cli_axis_z_is_todays_output(tiny_run, tmp_path):
    import tifffile

    vol = _vol(dtype=np.uint16)
    tifffile.imwrite(tmp_path / "v.tif", vol)
    assert _invoke("denoise", tiny_run, tmp_path / "v.tif", "--out", tmp_path / "a.tif", "--quiet").exit_code == 0
    r = _invoke("denoise", tiny_run, tmp_path / "v.tif", "--out", tmp_path / "b.tif", "--axis", "z", "--quiet")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "a.tif").read_bytes() == (tmp_path / "b.tif").read_bytes()


def _write(fmt: str, path: Path, vol: np.ndarray) -> Path:
    if fmt == "tiff":
        import tifffile

        tifffile.imwrite(path, vol, imagej=True, resolution=(2.0, 2.0),
                         metadata={"axes": "ZYX", "spacing": 3.0, "unit": "um"})
    elif fmt == "mrc":
        import mrcfile

        with mrcfile.new(path) as m:
            m.set_data(vol)
            m.voxel_size = (0.5, 0.5, 3.0)
            m.add_label("axis test")
    elif fmt == "hdf5":
        import h5py

        with h5py.File(path, "w") as f:
            f.create_dataset("raw", data=vol).attrs["element_size_um"] = [3.0, 0.5, 0.5]
    elif fmt == "nifti":
        import nibabel

        nibabel.save(nibabel.Nifti1Image(vol.transpose(2, 1, 0), np.diag([0.5, 0.5, 3.0, 1.0])), path)
    return path


def _metadata(fmt: str, path: Path):
    if fmt == "tiff":
        import tifffile

        with tifffile.TiffFile(path) as t:
            return t.imagej_metadata["spacing"], t.imagej_metadata["unit"], t.pages[0].resolution
    if fmt == "mrc":
        import mrcfile

        with mrcfile.open(path) as m:
            return int(m.header.mode), tuple(m.voxel_size.item()), m.header.label[0].strip()
    if fmt == "hdf5":
        import h5py

        with h5py.File(path, "r") as f:
            return list(f["raw"].attrs["element_size_um"])
    import nibabel

    return nibabel.load(path).affine.tolist()


@pytest.mark.parametrize(("fmt", "name", "dtype"), [("tiff", "v.tif", np.uint16), ("mrc", "v.mrc", np.int16),
                                                    ("hdf5", "v.h5", np.float32), ("nifti", "v.nii", np.float32)])
@pytest.mark.parametrize("axis", ["y", "all"])
def test_cli_axis_keeps_shape_dtype_and_metadata(model, tiny_run, tmp_path, fmt, name, dtype, axis):
    pytest.importorskip({"tiff": "tifffile", "mrc": "mrcfile", "hdf5": "h5py", "nifti": "nibabel"}[fmt])
    vol = _vol(dtype=np.uint16) if dtype == np.uint16 else _vol()
    if dtype == np.int16:
        vol = (_vol(dtype=np.uint16) // 2).astype(np.int16)
    src = _write(fmt, tmp_path / name, vol)
    out = tmp_path / "out" / name
    r = _invoke("denoise", tiny_run, src, "--out", out, "--axis", axis, "--quiet")
    assert r.exit_code == 0, r.output
    got, info = io.read_image(out)
    assert got.shape == vol.shape and got.dtype == dtype
    np.testing.assert_array_equal(got, model.denoise_volume(io.read_image(src)[0], axis=axis))
    assert _metadata(fmt, out) == _metadata(fmt, src)
    assert sorted(p.name for p in out.parent.iterdir()) == [name]  # no scratch left


def test_a_file_larger_than_the_budget_goes_through_disk_scratch(model, tmp_path):
    import tifffile

    vol = _vol((8, 20, 24), np.uint16)
    tifffile.imwrite(tmp_path / "v.tif", vol)
    rep = denoise_files(model, [tmp_path / "v.tif"], tmp_path / "out", axis="all", memory_budget=4000,
                        progress=False)
    assert [d.name for _, d in rep.written] == ["v.tif"]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "v.tif"), model.denoise_volume(vol, axis="all"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["v.tif"]  # the scratch folder is gone


def test_zarr_axis_all_within_a_small_budget_equals_in_memory(model, tmp_path):
    zarr = pytest.importorskip("zarr")
    vol = _vol((8, 20, 24), np.uint16)
    arr = zarr.open_array(str(tmp_path / "v.zarr"), mode="w", shape=vol.shape, chunks=(2, 10, 12), dtype="uint16")
    arr[:] = vol
    arr.attrs["voxel_size_nm"] = [30, 4, 4]
    # 20x24 px * (2 + 4 + 4 + 4) bytes: ~6.7 kB per z slice; a 5 kB budget cuts every orientation into slabs
    rep = volumes.denoise_zarr(model, tmp_path / "v.zarr", tmp_path / "o.zarr", memory_budget=5000, axis="all")
    assert rep.blocks > 8
    out = zarr.open_array(str(tmp_path / "o.zarr"), mode="r")
    assert out.shape == vol.shape and out.dtype == np.uint16 and out.chunks == (2, 10, 12)
    assert out.attrs["voxel_size_nm"] == [30, 4, 4]
    np.testing.assert_array_equal(np.asarray(out[:]), model.denoise_volume(vol, axis="all"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.zarr", "v.zarr"]  # no sum store, no partial store
    with pytest.raises(ValueError, match="--scheduler spreads z blocks over Dask workers; --axis y runs in this"):
        volumes.denoise_zarr(model, tmp_path / "v.zarr", tmp_path / "p.zarr", axis="y", scheduler=2)
    assert not (tmp_path / "p.zarr").exists()


def test_cli_zarr_axis_y(model, tiny_run, tmp_path):
    zarr = pytest.importorskip("zarr")
    vol = _vol()
    zarr.open_array(str(tmp_path / "v.zarr"), mode="w", shape=vol.shape, chunks=(3, 20, 24), dtype="float32")[:] = vol
    r = _invoke("denoise", tiny_run, tmp_path / "v.zarr", "--out", tmp_path / "o.zarr", "--axis", "y",
                "--memory-budget", "4k", "--quiet")
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "o.zarr"), mode="r")[:],
                                  model.denoise_volume(vol, axis="y"))


@pytest.mark.parametrize(("shape", "axis", "message"), [
    ((6, 20, 24), "diagonal", "--axis must be one of z, y, x, all; got 'diagonal'"),
    ((3, 20, 24), "y", "v.tif: --axis y: the (Z, W) planes of this 3x20x24 volume are 3x24 pixels, too small"),
    ((3, 20, 24), "all", "v.tif: --axis all: the (Z, W) planes of this 3x20x24 volume are 3x24 pixels"),
    ((20, 24), "x", "v.tif: --axis x needs a (Z, H, W) volume; this is a 2-D image of 20x24 pixels"),
])
def test_cli_bad_axis_or_thin_volume_is_one_line_and_writes_nothing(tiny_run, tmp_path, shape, axis, message):
    import tifffile

    # minisblack: tifffile would take a (3, H, W) array for a planar RGB image
    tifffile.imwrite(tmp_path / "v.tif", _vol(shape) if len(shape) == 3 else _vol((1, *shape))[0],
                     photometric="minisblack")
    r = _invoke("denoise", tiny_run, tmp_path / "v.tif", "--out", tmp_path / "out", "--axis", axis, "--quiet")
    assert r.exit_code == 1
    errors = [ln for ln in r.output.splitlines() if ln.startswith("iscl: error:")]
    assert len(errors) == 1 and message in errors[0], r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "out").exists()


def test_zarr_thin_volume_is_refused_before_writing(model, tmp_path):
    zarr = pytest.importorskip("zarr")
    zarr.open_array(str(tmp_path / "v.zarr"), mode="w", shape=(3, 20, 24), chunks=(3, 20, 24), dtype="f4")[:] = 0
    with pytest.raises(ImageReadError, match=r"v\.zarr: --axis x: the \(Z, H\) planes .* 3x20 pixels"):
        volumes.denoise_zarr(model, tmp_path / "v.zarr", tmp_path / "o.zarr", axis="x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.zarr"]


# ---------------------------------------------------------------------------------------------- training
def test_cli_train_axis_all_is_stored_in_the_config(tmp_path):
    import tifffile

    from synthetic import shapes_image

    rng = np.random.default_rng(0)
    # 64 slices of 64x64: every orientation holds one 64x64 patch grid
    clean = np.stack([shapes_image(rng) for _ in range(64)])
    tifffile.imwrite(tmp_path / "clean.tif", clean)
    tifffile.imwrite(tmp_path / "noisy.tif", (clean[::-1] + rng.normal(0, 0.1, clean.shape)).astype(np.float32))
    from iscl.config import NetworkConfig, preset

    cfg = preset("fast")
    cfg.network = NetworkConfig(generator_width=4, generator_res_blocks=1, extractor_width=4,
                                            extractor_layers=3, discriminator_width=4)
    cfg.train.steps, cfg.train.batch_size = 1, 2
    cfg.train.time_budget = None
    (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
    r = _invoke("train", "--clean", tmp_path / "clean.tif", "--noisy", tmp_path / "noisy.tif", "--out",
                tmp_path / "run", "--config", tmp_path / "cfg.json", "--axis", "all", "--quiet", "--no-tensorboard")
    assert r.exit_code == 0, r.output
    assert iscl.load(tmp_path / "run").config.train.axis == "all"
