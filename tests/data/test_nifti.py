"""NIfTI through iscl.data.io and the CLI: the (x, y, z) -> (Z, H, W) mapping, exact round trips that keep
the header (affine, pixdim, descrip, extensions, scaling), 4-D and truncated files refused. Every file is
made here with nibabel."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import iscl
from iscl.cli import app
from iscl.data.io import create_output_like, find_images, open_slices, probe, read_image, write_image
from iscl.errors import ImageReadError, ImageWriteError

nib = pytest.importorskip("nibabel")
RNG = np.random.default_rng(0)
AFFINE = np.array([[0.0, -0.5, 0.0, 12.0], [0.75, 0.0, 0.0, -30.0], [0.0, 0.0, 2.5, 4.0], [0, 0, 0, 1]])


def _random(shape, dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return RNG.random(shape).astype(dtype)
    info = np.iinfo(dtype)
    return RNG.integers(max(info.min, -3000), min(info.max, 3000), size=shape, endpoint=True, dtype=dtype)


def _make(path: Path, xyz: np.ndarray, *, slope=None, inter=None, header_class=None, big_endian=False) -> Path:
    """A NIfTI file holding ``xyz`` as its stored values (x, y[, z]), with a rotated affine and header fields."""
    image_class = nib.Nifti2Image if header_class == "nifti2" else nib.Nifti1Image
    img = image_class(xyz, AFFINE)
    hdr = img.header.as_byteswapped(">") if big_endian else img.header
    hdr["descrip"] = b"iscl test volume"
    hdr["intent_name"] = b"test"
    hdr.set_xyzt_units("mm", "sec")
    hdr["cal_min"], hdr["cal_max"] = 0, 255
    hdr.extensions.append(nib.nifti1.Nifti1Extension("comment", b"acquired by a test"))
    if slope is not None:  # nibabel's save rescales in-memory data: write header and stored values as they are
        hdr.set_slope_inter(slope, inter)
    hdr.set_data_dtype(xyz.dtype)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wb") as f:
        hdr.write_to(f)
        nib.volumeutils.array_to_file(xyz, f, hdr.get_data_dtype(), offset=hdr.get_data_offset(), order="F")
    return path


def _stored(path: Path) -> tuple[np.ndarray, object]:
    """The stored values and the header exactly as on disk."""
    from nibabel.openers import Opener

    img = nib.load(path)
    with Opener(str(path)) as f:
        hdr = img.header_class.from_fileobj(f)
    return np.asarray(img.dataobj.get_unscaled()), hdr


def _leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if ".tmp-" in p.name]


# --------------------------------------------------------------------------------------------------
# Axes and values
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz"])
def test_axes_slice_z_is_the_xy_plane_transposed(tmp_path, name):
    xyz = _random((20, 12, 3), np.int16)  # x, y, z all different
    src = _make(tmp_path / name, xyz)
    arr, info = read_image(src)
    assert info.format == "nifti" and info.shape == (3, 12, 20) and info.n_slices == 3  # (Z, H, W) = (z, y, x)
    for z in range(3):
        np.testing.assert_array_equal(arr[z], xyz[:, :, z].T)
    assert arr.flags.c_contiguous and arr.dtype == np.int16
    # the affine maps voxel (i, j, k) = (W, H, Z) index, unchanged
    np.testing.assert_allclose(info.meta["affine"], AFFINE, atol=1e-6)
    with open_slices(src) as s:
        assert len(s) == 3 and "via=pages" in repr(s)
        np.testing.assert_array_equal(s[2], xyz[:, :, 2].T)
        np.testing.assert_array_equal(s[0], xyz[:, :, 0].T)
    two_d = read_image(_make(tmp_path / f"2d-{name}", xyz[:, :, 0]))[0]
    assert two_d.shape == (12, 20)
    np.testing.assert_array_equal(two_d, xyz[:, :, 0].T)


def test_scaled_values_are_physical_float32_and_exact_on_the_way_back(tmp_path):
    raw = _random((16, 10, 2), np.int16)
    src = _make(tmp_path / "ct.nii.gz", raw, slope=0.5, inter=-1024.0)
    arr, info = read_image(src)
    assert arr.dtype == np.float32 and info.meta["scl_slope"] == 0.5 and info.meta["scl_inter"] == -1024
    np.testing.assert_array_equal(arr, (raw * 0.5 - 1024).transpose(2, 1, 0).astype(np.float32))
    write_image(tmp_path / "out.nii.gz", arr, like=info)
    back_raw, back_hdr = _stored(tmp_path / "out.nii.gz")
    np.testing.assert_array_equal(back_raw, raw)  # the same stored int16 values
    assert back_raw.dtype == np.int16 and back_hdr.get_slope_inter() == (0.5, -1024.0)
    np.testing.assert_array_equal(read_image(tmp_path / "out.nii.gz")[0], arr)
    # new values go through the inverse scaling: rounded to the stored grid, clipped to int16
    new = arr.copy()
    new[0, 0, :3] = [-1024.26, 1e9, -1e9]
    write_image(tmp_path / "new.nii", new, like=info)
    assert _stored(tmp_path / "new.nii")[0][:3, 0, 0].tolist() == [-1, 32767, -32768]
    # a wide stored type is scaled to float64, so its round trip stays exact too
    wide = _make(tmp_path / "wide.nii", raw.astype(np.int32) * 1000, slope=1e-3, inter=5.0)
    warr, winfo = read_image(wide)
    assert warr.dtype == np.float64
    write_image(tmp_path / "wide-out.nii", warr, like=winfo)
    np.testing.assert_array_equal(_stored(tmp_path / "wide-out.nii")[0], raw.astype(np.int32) * 1000)


# --------------------------------------------------------------------------------------------------
# Round trips: header and stored values identical
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "dtype", "options"),
    [
        ((24, 18), np.uint8, {}),
        ((24, 18, 3), np.int16, {}),
        ((24, 18, 3), np.float32, {"big_endian": True}),
        ((24, 18, 2), np.int16, {"slope": 2.0, "inter": -1024.0}),
        ((24, 18, 2), np.uint16, {"header_class": "nifti2"}),
    ],
)
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_round_trip_keeps_header_affine_and_values(tmp_path, shape, dtype, options, suffix):
    xyz = _random(shape, dtype)
    src = _make(tmp_path / f"in{suffix}", xyz, **options)
    arr, info = read_image(src)
    write_image(tmp_path / f"out{suffix}", arr, like=info)
    with create_output_like(tmp_path / f"streamed{suffix}", arr.shape, arr.dtype, like=info) as w:
        for z in range(len(w)):
            w[z] = arr[z] if arr.ndim == 3 else arr
    src_raw, src_hdr = _stored(src)
    for out in (tmp_path / f"out{suffix}", tmp_path / f"streamed{suffix}"):
        raw, hdr = _stored(out)
        np.testing.assert_array_equal(raw, src_raw)
        assert raw.dtype == src_raw.dtype and raw.shape == shape
        assert hdr.binaryblock == src_hdr.binaryblock  # every header field: affine, pixdim, descrip, units, ...
        assert [e.get_content() for e in hdr.extensions] == [b"acquired by a test"]
        img = nib.load(out)
        np.testing.assert_array_equal(img.affine, nib.load(src).affine)
        assert img.header["descrip"] == b"iscl test volume" and img.header.get_zooms() == src_hdr.get_zooms()
        back, back_info = read_image(out)
        np.testing.assert_array_equal(back, arr)
        assert back.dtype == arr.dtype and back_info.shape == info.shape
    assert _leftovers(tmp_path) == []


def test_written_without_a_nifti_source(tmp_path):
    arr = _random((2, 7, 9), np.float32)
    write_image(tmp_path / "a.nii.gz", arr)
    img = nib.load(tmp_path / "a.nii.gz")
    assert img.shape == (9, 7, 2) and img.get_data_dtype() == np.float32
    np.testing.assert_array_equal(img.affine, np.eye(4))
    np.testing.assert_array_equal(read_image(tmp_path / "a.nii.gz")[0], arr)
    with pytest.raises(ImageWriteError, match=r"b\.nii: NIfTI cannot store float16 pixels"):
        write_image(tmp_path / "b.nii", arr.astype(np.float16))
    with pytest.raises(ImageWriteError, match=r"a\.nii\.gz: exists; pass --overwrite"):
        write_image(tmp_path / "a.nii.gz", arr)
    assert sorted(os.listdir(tmp_path)) == ["a.nii.gz"]
    assert find_images([tmp_path]) == [tmp_path / "a.nii.gz"]


# --------------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------------


def _bad_inputs(d: Path) -> dict[str, Path]:
    d.mkdir(exist_ok=True)
    good = _make(d / "good.nii", _random((32, 32, 3), np.int16))
    (d / "truncated.nii").write_bytes(good.read_bytes()[:2000])
    _make(d / "full.nii.gz", _random((32, 32, 3), np.int16))
    (d / "truncated.nii.gz").write_bytes((d / "full.nii.gz").read_bytes()[:-300])
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 2), np.float32), np.eye(4)), d / "four.nii.gz")
    (d / "fake.nii").write_text("not a nifti file, just text" * 20)
    (d / "fake.nii.gz").write_bytes(b"not gzip either" * 40)
    return {name: d / f"{name.replace('_gz', '')}{'.nii.gz' if name.endswith('_gz') else '.nii'}"
            for name in ("truncated", "truncated_gz", "four_gz", "fake", "fake_gz")}


EXPECTED = {
    "truncated": r"truncated\.nii: truncated NIfTI \(data should end at byte 6528 but the file has 2000 bytes\)",
    "truncated_gz": r"truncated\.nii\.gz: corrupt or truncated NIfTI \(cannot read",
    "four_gz": r"four\.nii\.gz: 4-D NIfTI \(shape \(8, 8, 4, 2\), axes x y z t \.\.\.\) is not supported",
    "fake": r"fake\.nii: not a NIfTI file \(its header size field is \d+, not 348 or 540\)",
    "fake_gz": r"fake\.nii\.gz: not a valid NIfTI file \(Not a gzipped file",
}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_bad_inputs_are_one_line_image_read_errors(tmp_path, case):
    path = _bad_inputs(tmp_path)[case]
    with pytest.raises(ImageReadError, match=EXPECTED[case]) as exc_info:
        read_image(path)
    assert "\n" not in str(exc_info.value)
    if case == "truncated_gz":  # the header is intact: found out when the slices are read
        probe(path)
        with open_slices(path) as s, pytest.raises(ImageReadError, match=EXPECTED[case]):
            [s[z] for z in range(len(s))]


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


def test_cli_denoises_slice_by_slice_along_z_and_refuses_to_overwrite(tiny_run, tmp_path):
    # stored uint8-range int16 scaled to [0, 1]: the tiny run's fixed normalization range
    raw = (RNG.random((64, 64, 3)) * 255).astype(np.int16)
    vol = _make(tmp_path / "vol.nii.gz", raw, slope=1 / 255, inter=0.0)
    one = _make(tmp_path / "one.nii.gz", raw[:, :, 1], slope=1 / 255, inter=0.0)
    out = tmp_path / "out.nii.gz"
    r = _denoise(tiny_run, vol, "--out", out)
    assert r.exit_code == 0, r.output
    den_raw, den_hdr = _stored(out)
    assert den_raw.shape == raw.shape and den_raw.dtype == np.int16 and not np.array_equal(den_raw, raw)
    assert den_hdr.binaryblock == _stored(vol)[1].binaryblock
    r = _denoise(tiny_run, one, "--out", tmp_path / "one-out.nii.gz")
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(den_raw[:, :, 1], _stored(tmp_path / "one-out.nii.gz")[0])  # z slice alone
    values = read_image(out)[0]
    np.testing.assert_array_equal(values[1], read_image(tmp_path / "one-out.nii.gz")[0])
    model = iscl.load(tiny_run)
    np.testing.assert_array_equal(values[1], read_image(write_image(
        tmp_path / "direct.nii.gz", model.denoise(read_image(one)[0]), like=probe(one)))[0])
    before = out.read_bytes()
    r = _denoise(tiny_run, vol, "--out", out)
    assert r.exit_code == 1 and "out.nii.gz: exists; pass --overwrite" in _error_line(r)
    assert out.read_bytes() == before
    assert _denoise(tiny_run, vol, "--out", out, "--overwrite").exit_code == 0
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("case", ["truncated", "truncated_gz", "four_gz"])
def test_cli_bad_input_one_line_error_nothing_written(tiny_run, tmp_path, case):
    path = _bad_inputs(tmp_path / "in")[case]
    out = tmp_path / "out"
    r = _denoise(tiny_run, path, "--out", out)
    assert r.exit_code == 1
    assert path.name in _error_line(r)
    assert not out.exists() or os.listdir(out) == []
