"""HDF5 through iscl.data.io and the CLI: ``file.h5:/dataset`` addresses, round trips with attributes and
filters, slice streaming, chunked atomic writes, bad inputs. Every file is made here with h5py."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import iscl
from iscl.cli import app
from iscl.data.io import create_output_like, find_images, open_slices, probe, read_image, split_address, write_image
from iscl.errors import ImageReadError, ImageWriteError

h5py = pytest.importorskip("h5py")
RNG = np.random.default_rng(0)


def _random(shape, dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return RNG.random(shape).astype(dtype)
    return RNG.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True, dtype=dtype)


def _make(path: Path, datasets: dict[str, np.ndarray], **options) -> Path:
    """An HDF5 file with these datasets; each gets EM-style attributes."""
    with h5py.File(path, "w") as f:
        for name, data in datasets.items():
            ds = f.create_dataset(name, data=data, **options)
            ds.attrs["resolution"] = np.array([30.0, 4.0, 4.0], np.float32)
            ds.attrs["unit"] = "nm"
            ds.attrs["fixed"] = np.bytes_(b"abc")
            ds.attrs["count"] = np.int64(7)
            ds.attrs["points_to_the_file"] = f["/"].ref  # a reference: cannot be copied to another file
    return path


def _leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if ".tmp-" in p.name]


def _attrs(path: Path, name: str) -> dict:
    with h5py.File(path, "r") as f:
        return dict(f[name].attrs)


# --------------------------------------------------------------------------------------------------
# Addresses
# --------------------------------------------------------------------------------------------------


def test_split_address():
    assert split_address("em/vol.h5:/raw/data") == (Path("em/vol.h5"), "/raw/data")
    assert split_address("em/vol.HDF5:raw/data/") == (Path("em/vol.HDF5"), "/raw/data")
    assert split_address("vol.h5:") == (Path("vol.h5"), "/")
    assert split_address("vol.h5") == (Path("vol.h5"), None)
    assert split_address("a:b/vol.tif") == (Path("a:b/vol.tif"), None)  # only HDF5 names take an inner path
    assert split_address("C:/data/vol.tif") == (Path("C:/data/vol.tif"), None)


def test_plain_file_with_one_dataset_is_that_dataset(tmp_path):
    data = _random((3, 20, 24), np.uint16)
    src = _make(tmp_path / "one.h5", {"/group/vol": data, "/meta/tiny": np.zeros(5)})  # 1-D does not count
    for address in (src, f"{src}:", f"{src}:/group/vol", f"{src}:group/vol"):
        arr, info = read_image(address)
        np.testing.assert_array_equal(arr, data)
        assert info.format == "hdf5" and info.meta["dataset"] == "/group/vol" and info.shape == (3, 20, 24)
    assert find_images([f"{src}:/group/vol", tmp_path]) == [Path(f"{src}:/group/vol"), src]


def test_several_missing_or_group_are_one_line_errors_listing_datasets(tmp_path):
    src = _make(tmp_path / "two.h5", {"/raw": _random((2, 8, 8), np.uint8), "/seg/labels": _random((8, 8), np.uint8)})
    listing = r"/raw \(2x8x8 uint8\), /seg/labels \(8x8 uint8\)"
    cases = {
        str(src): rf"two\.h5: holds several 2-D/3-D datasets; name one as .*two\.h5:/path/to/dataset "
                  rf"\(datasets: {listing}",
        f"{src}:/nope": rf"two\.h5:/nope: no dataset /nope in .*two\.h5; datasets: {listing}",
        f"{src}:/seg": rf"two\.h5:/seg: /seg is a group, not a dataset; datasets: {listing}",
    }
    for address, expected in cases.items():
        for fn in (probe, read_image, open_slices):
            with pytest.raises(ImageReadError, match=expected) as exc_info:
                fn(address)
            assert "\n" not in str(exc_info.value)
    with pytest.raises(ImageReadError, match="file not found"):
        find_images([f"{tmp_path / 'absent.h5'}:/raw"])


# --------------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "dtype"), [((21, 30), np.uint8), ((3, 16, 20), np.uint16), ((2, 9, 7), np.float32)])
def test_round_trip_keeps_shape_dtype_attributes_and_filters(tmp_path, shape, dtype):
    data = _random(shape, dtype)
    src = _make(tmp_path / "in.h5", {"/em/raw": data}, compression="gzip", compression_opts=3, shuffle=True)
    arr, info = read_image(f"{src}:/em/raw")
    np.testing.assert_array_equal(arr, data)
    assert arr.dtype == dtype and info.meta["compression"] == "gzip" and info.meta["shuffle"]
    assert "points_to_the_file" not in info.meta["attrs"]

    # whole image; the dataset path comes from the source when the output names none
    out = write_image(tmp_path / "out.h5", arr, like=info)
    # slice by slice, into a dataset the output address names
    with create_output_like(f"{tmp_path / 'streamed.h5'}:/den", shape, dtype, like=info) as w:
        for z in range(len(w)):
            w[z] = arr[z] if len(shape) == 3 else arr
    for path, name in ((out, "/em/raw"), (tmp_path / "streamed.h5", "/den")):
        back, back_info = read_image(f"{path}:{name}")
        np.testing.assert_array_equal(back, data)
        assert back.dtype == dtype and back_info.shape == shape
        with h5py.File(path, "r") as f:
            ds = f[name]
            assert ds.chunks == ((1, *shape[1:]) if len(shape) == 3 else shape)  # one slice per chunk
            assert (ds.compression, ds.compression_opts, ds.shuffle) == ("gzip", 3, True)
            assert list(f.keys()) == [name.strip("/").split("/")[0]]  # only the output dataset
        attrs = _attrs(path, name)
        assert set(attrs) == {"resolution", "unit", "fixed", "count"}
        np.testing.assert_array_equal(attrs["resolution"], [30, 4, 4])
        assert attrs["resolution"].dtype == np.float32 and attrs["unit"] == "nm"
        assert attrs["fixed"] == b"abc" and attrs["count"] == 7
    assert _leftovers(tmp_path) == []


def test_other_sources_write_to_data_and_big_endian_is_native(tmp_path):
    data = _random((2, 6, 5), np.float32)
    write_image(tmp_path / "a.h5", data)  # no like=: dataset /data, no attributes
    assert _attrs(tmp_path / "a.h5", "/data") == {}
    np.testing.assert_array_equal(read_image(tmp_path / "a.h5:/data")[0], data)
    with h5py.File(tmp_path / "be.h5", "w") as f:
        f["x"] = data.astype(">f4")
    back, info = read_image(tmp_path / "be.h5")
    assert back.dtype == np.float32 and back.dtype.isnative and info.dtype.isnative
    np.testing.assert_array_equal(back, data)


def test_open_slices_reads_one_slice_at_a_time(tmp_path, monkeypatch):
    data = _random((4, 10, 12), np.uint16)
    src = _make(tmp_path / "v.h5", {"/v": data}, chunks=(1, 10, 12))
    reads = []
    real = h5py.Dataset.__getitem__
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda self, idx: reads.append(idx) or real(self, idx))
    with open_slices(f"{src}:/v") as s:
        assert len(s) == 4 and s.shape == (4, 10, 12) and "via=pages" in repr(s)
        assert reads == []  # opening reads no pixels
        np.testing.assert_array_equal(s[2], data[2])
        np.testing.assert_array_equal(s[-1], data[3])
        assert [idx[0] for idx in reads] == [2, 3]  # h5py was asked for single slices
    with pytest.raises(ValueError, match="closed"):
        s[0]


# --------------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------------


def test_writer_is_atomic_and_refuses_to_overwrite(tmp_path):
    target = tmp_path / "o.h5"
    w = create_output_like(f"{target}:/x", (3, 4, 4), np.uint16)
    w[0] = np.ones((4, 4), np.uint16)
    assert not target.exists() and len(_leftovers(tmp_path)) == 1  # written under a hidden name
    with pytest.raises(ImageWriteError, match="only 1 of 3 slices were written"):
        w.commit()
    assert os.listdir(tmp_path) == []
    with pytest.raises(RuntimeError):
        with create_output_like(target, (2, 4, 4), np.float32) as w:
            w[0] = np.zeros((4, 4), np.float32)
            raise RuntimeError("model crashed")
    assert os.listdir(tmp_path) == []
    write_image(target, np.zeros((4, 4), np.uint8))
    before = target.read_bytes()
    with pytest.raises(ImageWriteError, match=r"o\.h5: exists; pass --overwrite"):
        create_output_like(f"{target}:/other", (4, 4), np.uint8)  # the file is replaced whole: refused
    with pytest.raises(ImageWriteError, match=r"o\.h5: exists; pass --overwrite"):
        write_image(target, np.ones((4, 4), np.uint8))
    assert target.read_bytes() == before
    write_image(target, np.ones((4, 4), np.uint8), overwrite=True)
    assert read_image(target)[0].sum() == 16 and _leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------------


def _bad_inputs(d: Path) -> dict[str, str]:
    d.mkdir(exist_ok=True)
    good = _make(d / "good.h5", {"/raw": _random((2, 32, 32), np.uint16)})
    (d / "truncated.h5").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (d / "fake.h5").write_text("not hdf5 at all")
    (d / "old.hdf").write_bytes(b"\x0e\x03\x13\x01" + bytes(200))
    with h5py.File(d / "four.h5", "w") as f:
        f["t"] = np.zeros((2, 2, 8, 8), np.float32)
    return {
        "truncated": str(d / "truncated.h5"),
        "missing_dataset": f"{good}:/absent",
        "not_hdf5": str(d / "fake.h5"),
        "hdf4": str(d / "old.hdf"),
        "four_d": str(d / "four.h5:/t"),
    }


EXPECTED = {
    "truncated": r"truncated\.h5: corrupt or truncated HDF5 file \(.*truncated file",
    "missing_dataset": r"good\.h5:/absent: no dataset /absent",
    "not_hdf5": r"fake\.h5: not a valid HDF5 file \(the name ends in \.h5 but the content has no HDF5 signature\)",
    "hdf4": r"old\.hdf: is an HDF4 file",
    "four_d": r"four\.h5:/t: dataset /t has shape \(2, 2, 8, 8\); need a 2-D image",
}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_bad_inputs_are_one_line_image_read_errors(tmp_path, case):
    address = _bad_inputs(tmp_path)[case]
    with pytest.raises(ImageReadError, match=EXPECTED[case]) as exc_info:
        probe(address)
    assert "\n" not in str(exc_info.value)


# --------------------------------------------------------------------------------------------------
# Through the command line
# --------------------------------------------------------------------------------------------------

runner = CliRunner()


def _denoise(*args) -> object:
    return runner.invoke(app, ["denoise", *[str(a) for a in args], "--quiet"])


def _error_line(result) -> str:
    text = (result.stderr if hasattr(result, "stderr") else result.output).strip()
    assert "Traceback" not in text
    lines = [ln for ln in text.splitlines() if ln.startswith("iscl: error:")]
    assert len(lines) == 1, text
    return lines[0]


def test_cli_denoises_a_dataset_slice_by_slice_and_refuses_to_overwrite(tiny_run, tmp_path):
    vol = (RNG.random((3, 64, 64)) * 255).astype(np.uint8)
    src = _make(tmp_path / "in.h5", {"/raw/vol": vol, "/raw/one": vol[1]})
    out = tmp_path / "out.h5"
    r = _denoise(tiny_run, f"{src}:/raw/vol", "--out", out)
    assert r.exit_code == 0, r.output
    den, info = read_image(out)  # the input's dataset path, its attributes
    assert info.meta["dataset"] == "/raw/vol" and den.shape == vol.shape and den.dtype == np.uint8
    assert info.meta["attrs"]["unit"] == "nm" and not np.array_equal(den, vol)
    # slice 1 of the stack equals slice 1 denoised alone (from its own 2-D dataset, into a named dataset)
    r = _denoise(tiny_run, f"{src}:/raw/one", "--out", f"{tmp_path / 'one.h5'}:/den/one")
    assert r.exit_code == 0, r.output
    alone = read_image(f"{tmp_path / 'one.h5'}:/den/one")[0]
    np.testing.assert_array_equal(den[1], alone)
    np.testing.assert_array_equal(alone, iscl.load(tiny_run).denoise(vol[1]))
    # an existing output is kept without --overwrite, replaced with it
    before = out.read_bytes()
    r = _denoise(tiny_run, f"{src}:/raw/vol", "--out", out)
    assert r.exit_code == 1 and "out.h5: exists; pass --overwrite" in _error_line(r)
    assert out.read_bytes() == before
    assert _denoise(tiny_run, f"{src}:/raw/vol", "--out", out, "--overwrite").exit_code == 0
    # another dataset of the input file is still the input file: never replaced
    r = _denoise(tiny_run, f"{src}:/raw/vol", "--out", f"{src}:/den", "--overwrite")
    assert r.exit_code == 1 and "is the input itself" in _error_line(r)
    # into a folder: the file's name, the dataset's path
    r = _denoise(tiny_run, f"{src}:/raw/vol", "--out", tmp_path / "folder", "--save-noise-map")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "folder").iterdir()) == ["in.h5", "in_noise.tif"]
    np.testing.assert_array_equal(read_image(f"{tmp_path / 'folder' / 'in.h5'}:/raw/vol")[0], den)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("case", ["truncated", "missing_dataset", "not_hdf5"])
def test_cli_bad_input_one_line_error_nothing_written(tiny_run, tmp_path, case):
    address = _bad_inputs(tmp_path / "in")[case]
    out = tmp_path / "out"
    r = _denoise(tiny_run, address, "--out", out)
    assert r.exit_code == 1
    line = _error_line(r)
    assert Path(split_address(address)[0]).name in line
    assert not out.exists()
