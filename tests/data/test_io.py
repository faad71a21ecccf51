"""Tests for iscl.data.io: round trips, slice access, validation of bad inputs, atomic writes.

Every input file is generated here in tmp_path; no binary fixtures are checked in.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import struct

import numpy as np
import pytest
import tifffile
from PIL import Image

from iscl import atomic
from iscl.data import io as iio
from iscl.data.formats import tiff as tiff_format
from iscl.data.io import (
    SUPPORTED_SUFFIXES,
    ImageInfo,
    create_output_like,
    find_images,
    open_slices,
    probe,
    read_image,
    write_image,
)
from iscl.errors import ImageReadError, ImageWriteError, IsclError

try:  # optional dependency (iscl[dicom]); only the DICOM tests need it
    import pydicom
except ImportError:  # pragma: no cover
    pydicom = None

needs_pydicom = pytest.mark.skipif(pydicom is None, reason="pydicom not installed")
RNG = np.random.default_rng(0)


def _random(shape, dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return RNG.normal(size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)


def _leftovers(directory):
    """Temporary files a failed or aborted write must not leave behind."""
    return [p.name for p in directory.iterdir() if ".tmp-" in p.name]


# --------------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_tiff_roundtrip_2d(tmp_path, dtype):
    arr = _random((37, 53), dtype)
    out = write_image(tmp_path / "a.tif", arr)
    back, info = read_image(out)
    assert back.dtype == np.dtype(dtype) and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)
    assert (info.format, info.shape, info.n_slices, info.n_channels) == ("tiff", (37, 53), 1, 1)
    assert info.meta["bigtiff"] is False
    assert _leftovers(tmp_path) == []


def test_tiff_roundtrip_stack(tmp_path):
    arr = _random((3, 24, 31), np.uint16)
    write_image(tmp_path / "s.tiff", arr)
    back, info = read_image(tmp_path / "s.tiff")
    np.testing.assert_array_equal(back, arr)
    assert back.dtype == np.uint16 and info.shape == (3, 24, 31) and info.n_slices == 3 and info.is_stack
    assert probe(tmp_path / "s.tiff").shape == (3, 24, 31)


def test_bigtiff_when_like_was_bigtiff_and_above_threshold(tmp_path, monkeypatch):
    arr = _random((2, 16, 16), np.float32)
    src = tmp_path / "big.tif"
    tifffile.imwrite(src, arr, bigtiff=True, photometric="minisblack")
    back, info = read_image(src)
    assert info.meta["bigtiff"] is True
    write_image(tmp_path / "out.tif", back, like=info)
    with tifffile.TiffFile(tmp_path / "out.tif") as tf:
        assert tf.is_bigtiff
    np.testing.assert_array_equal(read_image(tmp_path / "out.tif")[0], arr)
    # The size rule (> 2 GiB), exercised with a lowered threshold so the test stays small.
    write_image(tmp_path / "small.tif", arr)
    monkeypatch.setattr(tiff_format, "BIGTIFF_THRESHOLD", arr.nbytes - 1)
    write_image(tmp_path / "large.tif", arr)
    with tifffile.TiffFile(tmp_path / "small.tif") as a, tifffile.TiffFile(tmp_path / "large.tif") as b:
        assert not a.is_bigtiff and b.is_bigtiff


@pytest.mark.parametrize("dtype, bits", [(np.uint8, 8), (np.uint16, 16)])
def test_png_roundtrip(tmp_path, dtype, bits):
    arr = _random((21, 34), dtype)
    write_image(tmp_path / "a.png", arr)
    back, info = read_image(tmp_path / "a.png")
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, arr)
    assert info.format == "png" and info.meta["bit_depth"] == bits
    with Image.open(tmp_path / "a.png") as im:  # really grayscale of that depth
        assert im.mode == ("L" if bits == 8 else "I;16")


@pytest.mark.parametrize("shape, dtype", [((19, 23), np.int16), ((4, 9, 11), np.float32)])
def test_npy_roundtrip(tmp_path, shape, dtype):
    arr = _random(shape, dtype)
    write_image(tmp_path / "a.npy", arr)
    back, info = read_image(tmp_path / "a.npy")
    assert back.dtype == np.dtype(dtype) and info.shape == shape
    np.testing.assert_array_equal(back, arr)


def test_big_endian_npy_is_returned_native(tmp_path):
    arr = _random((8, 8), np.float32)
    np.save(tmp_path / "be.npy", arr.astype(">f4"))
    back, _ = read_image(tmp_path / "be.npy")
    assert back.dtype == np.float32 and back.dtype.isnative
    np.testing.assert_array_equal(back, arr)


# --------------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def ct_dicom(tmp_path):
    """A small CT slice written by the test, with a non-trivial rescale (slope 2, intercept -1024)."""
    if pydicom is None:
        pytest.skip("pydicom not installed")
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.RescaleSlope = 2
    ds.RescaleIntercept = -1024
    path = tmp_path / "ct slice.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_read_gives_hounsfield_units(ct_dicom):
    raw = pydicom.dcmread(ct_dicom)
    hu, info = read_image(ct_dicom)
    assert hu.dtype == np.float32 and hu.shape == (128, 128)
    np.testing.assert_array_equal(hu, raw.pixel_array.astype(np.float32) * 2 - 1024)
    assert info.format == "dicom" and info.meta["stored_dtype"] == np.int16
    assert info.meta["dataset"].SOPInstanceUID == raw.SOPInstanceUID
    assert probe(ct_dicom).shape == (128, 128)


def test_dicom_roundtrip_keeps_tags_and_values(ct_dicom, tmp_path):
    raw = pydicom.dcmread(ct_dicom)
    hu, info = read_image(ct_dicom)
    out = write_image(tmp_path / "out.dcm", hu, like=info)
    new = pydicom.dcmread(out)
    assert new.pixel_array.dtype == np.int16
    np.testing.assert_array_equal(new.pixel_array, raw.pixel_array)
    np.testing.assert_array_equal(read_image(out)[0], hu)
    assert new.SOPInstanceUID != raw.SOPInstanceUID
    assert new.file_meta.MediaStorageSOPInstanceUID == new.SOPInstanceUID
    skip = {"SOPInstanceUID", "PixelData"}
    for elem in raw:
        if elem.keyword and elem.keyword not in skip:
            assert new[elem.tag].value == elem.value, elem.keyword


def test_dicom_write_inverts_rescale_rounds_and_clips(ct_dicom, tmp_path):
    hu, info = read_image(ct_dicom)
    edited = hu.copy()
    edited[0, 0] = 101.2  # -> (101.2 + 1024) / 2 = 562.6 -> 563
    edited[0, 1] = 1e6  # beyond int16 after the inverse rescale -> clipped
    edited[0, 2] = -1e6
    write_image(tmp_path / "e.dcm", edited, like=info)
    stored = pydicom.dcmread(tmp_path / "e.dcm").pixel_array
    assert stored[0, 0] == 563 and stored[0, 1] == 32767 and stored[0, 2] == -32768


def test_dicom_detected_by_magic_without_suffix(ct_dicom, tmp_path):
    plain = tmp_path / "IM0001"
    plain.write_bytes(ct_dicom.read_bytes())
    assert find_images([str(tmp_path)]) == [ct_dicom, plain]  # natural, case-insensitive order
    hu, info = read_image(plain)
    assert info.format == "dicom"
    out = write_image(tmp_path / "IM0001_denoised", hu, like=info)  # no suffix: format from like
    assert pydicom.dcmread(out).Rows == 128


@needs_pydicom
def test_dicom_write_needs_dicom_like(tmp_path):
    with pytest.raises(ImageWriteError, match="needs like="):
        write_image(tmp_path / "x.dcm", np.zeros((4, 4), np.float32))
    assert not (tmp_path / "x.dcm").exists()


# --------------------------------------------------------------------------------------------------
# Metadata carried over with like=
# --------------------------------------------------------------------------------------------------


def test_imagej_metadata_and_resolution_preserved(tmp_path):
    arr = _random((3, 16, 16), np.float32)
    tifffile.imwrite(
        tmp_path / "ij.tif",
        arr,
        imagej=True,
        resolution=(4.0, 4.0),
        metadata={"spacing": 0.5, "unit": "um", "axes": "ZYX", "Labels": ["a", "b", "c"]},
    )
    back, info = read_image(tmp_path / "ij.tif")
    assert info.meta["imagej_metadata"]["spacing"] == 0.5
    write_image(tmp_path / "out.tif", back * 2, like=info)
    with tifffile.TiffFile(tmp_path / "out.tif") as tf:
        assert tf.is_imagej and not tf.is_bigtiff
        md = tf.imagej_metadata
        assert md["spacing"] == 0.5 and md["unit"] == "um" and md["Labels"] == ["a", "b", "c"]
        assert md["slices"] == 3
        assert tf.pages[0].resolution == pytest.approx((4.0, 4.0))
        np.testing.assert_array_equal(tf.asarray(), arr * 2)


def test_ome_xml_preserved_with_new_uuid_and_filename(tmp_path):
    arr = _random((2, 16, 16), np.uint16)
    tifffile.imwrite(
        tmp_path / "in.ome.tif",
        arr,
        photometric="minisblack",
        metadata={"axes": "ZYX", "PhysicalSizeX": 0.25, "PhysicalSizeXUnit": "µm"},
    )
    back, info = read_image(tmp_path / "in.ome.tif")
    assert "PhysicalSizeX" in info.meta["ome_xml"]
    write_image(tmp_path / "out.ome.tif", back, like=info)
    with tifffile.TiffFile(tmp_path / "out.ome.tif") as tf:
        assert tf.is_ome
        xml = tf.ome_metadata
        np.testing.assert_array_equal(tf.series[0].asarray(), arr)
    assert 'PhysicalSizeX="0.25"' in xml and "µm" in xml
    assert 'FileName="in.ome.tif"' not in xml
    old_uuid = info.meta["ome_xml"].split('UUID="', 1)[1].split('"', 1)[0]
    assert old_uuid not in xml
    # Shape changed (one slice written): the OME-XML is regenerated, keeping the pixel size.
    write_image(tmp_path / "one.ome.tif", back[0], like=info)
    with tifffile.TiffFile(tmp_path / "one.ome.tif") as tf:
        assert tf.is_ome and 'PhysicalSizeX="0.25"' in tf.ome_metadata
        assert tf.series[0].shape == (16, 16)


def test_plain_description_and_compression_preserved(tmp_path):
    arr = _random((2, 16, 16), np.uint16)
    tifffile.imwrite(
        tmp_path / "d.tif",
        arr,
        photometric="minisblack",
        description="acquired by X",
        metadata=None,
        compression="zlib",
    )
    back, info = read_image(tmp_path / "d.tif")
    assert info.meta["description"] == "acquired by X"
    write_image(tmp_path / "o.tif", back, like=info)
    with tifffile.TiffFile(tmp_path / "o.tif") as tf:
        assert tf.pages[0].description == "acquired by X"
        assert tf.pages[0].compression == info.meta["compression"] != 1
        np.testing.assert_array_equal(tf.asarray(), arr)


# --------------------------------------------------------------------------------------------------
# open_slices
# --------------------------------------------------------------------------------------------------


def test_open_slices_memmaps_uncompressed_tiff(tmp_path):
    arr = _random((5, 12, 10), np.uint16)
    write_image(tmp_path / "s.tif", arr)
    full, _ = read_image(tmp_path / "s.tif")
    with open_slices(tmp_path / "s.tif") as s:
        assert s.is_memmap and isinstance(s._array, np.memmap)
        assert len(s) == 5 and s.shape == (5, 12, 10) and s.dtype == np.uint16
        for i in range(5):
            np.testing.assert_array_equal(s[i], full[i])
        np.testing.assert_array_equal(s[-1], full[4])
        assert [x.shape for x in s] == [(12, 10)] * 5
        with pytest.raises(IndexError):
            s[5]


def test_open_slices_page_by_page_for_compressed_tiff(tmp_path):
    arr = _random((4, 12, 10), np.float32)
    tifffile.imwrite(tmp_path / "c.tif", arr, photometric="minisblack", compression="zlib")
    with open_slices(tmp_path / "c.tif") as s:
        assert not s.is_memmap and s._reader is not None  # TIFF pages decoded on demand
        for i in (2, 0, 3, 1):
            np.testing.assert_array_equal(s[i], arr[i])


def test_open_slices_npy_and_channel(tmp_path):
    arr = _random((3, 8, 9), np.float32)
    np.save(tmp_path / "v.npy", arr)
    with open_slices(tmp_path / "v.npy") as s:
        assert s.is_memmap
        np.testing.assert_array_equal(s[1], arr[1])
    rgb = _random((2, 8, 9, 3), np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    with pytest.raises(ImageReadError, match="channel="):
        open_slices(tmp_path / "rgb.tif")
    with open_slices(tmp_path / "rgb.tif", channel=2) as s:
        assert s.shape == (2, 8, 9)
        np.testing.assert_array_equal(s[1], read_image(tmp_path / "rgb.tif", channel=2)[0][1])
        np.testing.assert_array_equal(s[1], rgb[1, ..., 2])


def test_open_slices_2d_has_one_slice(tmp_path):
    arr = _random((8, 9), np.uint8)
    write_image(tmp_path / "a.png", arr)
    with open_slices(tmp_path / "a.png") as s:
        assert len(s) == 1 and s.shape == (8, 9)
        np.testing.assert_array_equal(s[0], arr)


# --------------------------------------------------------------------------------------------------
# Bad inputs: every one an ImageReadError naming the file, on one line
# --------------------------------------------------------------------------------------------------


def _missing(d):
    return d / "missing.tif"


def _empty(d):
    (d / "empty.tif").write_bytes(b"")
    return d / "empty.tif"


def _text_as_tif(d):
    (d / "notes.tif").write_text("hello, I am not an image\n")
    return d / "notes.tif"


def _txt(d):
    (d / "notes.txt").write_text("hello")
    return d / "notes.txt"


def _png_named_tif(d):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(d / "actually_png.tif", format="PNG")
    return d / "actually_png.tif"


def _truncated_tiff(d):
    tifffile.imwrite(d / "whole.tif", _random((3, 32, 32), np.uint16), photometric="minisblack")
    data = (d / "whole.tif").read_bytes()
    (d / "cut.tif").write_bytes(data[: len(data) // 2])
    return d / "cut.tif"


def _tiff_header_only(d):
    tifffile.imwrite(d / "whole.tif", _random((8, 8), np.uint8), photometric="minisblack")
    (d / "header.tif").write_bytes((d / "whole.tif").read_bytes()[:10])
    return d / "header.tif"


def _corrupt_compressed_tiff(d):
    path = d / "bad_zlib.tif"
    tifffile.imwrite(path, _random((2, 32, 32), np.uint16), photometric="minisblack", compression="zlib")
    with tifffile.TiffFile(path) as tf:
        offset = tf.pages[1].dataoffsets[0]
    data = bytearray(path.read_bytes())
    data[offset : offset + 32] = b"\xff" * 32
    path.write_bytes(bytes(data))
    return path


def _huge_claim_tiff(d):
    """A 16x16 TIFF whose header is edited to claim 80000 x 50000 pixels (4 GB)."""
    path = d / "huge.tif"
    tifffile.imwrite(path, np.zeros((16, 16), np.uint8), photometric="minisblack")
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tf:
        tags = tf.pages[0].tags
        for code, value in ((256, 80000), (257, 50000), (278, 50000), (279, 4_000_000_000)):
            assert tags[code].dtype == 4  # LONG, patched in place
            data[tags[code].valueoffset : tags[code].valueoffset + 4] = struct.pack("<I", value)
    path.write_bytes(bytes(data))
    return path


def _dicom_without_pixels(d):
    if pydicom is None:
        pytest.skip("pydicom not installed")
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    ds.save_as(d / "nopix.dcm", enforce_file_format=True)
    return d / "nopix.dcm"


def _not_dicom(d):
    if pydicom is None:
        pytest.skip("pydicom not installed")
    (d / "fake.dcm").write_bytes(b"\x00" * 64 + b"definitely not DICOM")
    return d / "fake.dcm"


def _npy(name, arr, allow_pickle=False):
    def make(d):
        np.save(d / name, arr, allow_pickle=allow_pickle)
        return d / name

    return make


def _truncated_npy(d):
    np.save(d / "cut.npy", np.zeros((64, 64), np.float32))
    (d / "cut.npy").write_bytes((d / "cut.npy").read_bytes()[:500])
    return d / "cut.npy"


def _nan_tiff(d):
    arr = np.zeros((8, 8), np.float32)
    arr[0, :2] = np.nan
    arr[1, 0] = np.inf
    tifffile.imwrite(d / "nan.tif", arr, photometric="minisblack")
    return d / "nan.tif"


_nan_arr = np.ones((2, 5, 5), np.float64)
_nan_arr[1, 2, :3] = np.nan
_nan_arr[0, 0, 0] = -np.inf

BAD_INPUTS = {
    "missing": (_missing, "not found"),
    "empty": (_empty, "empty"),
    "text named .tif": (_text_as_tif, "not a valid TIFF"),
    "txt suffix": (_txt, "unsupported file type"),
    "png named .tif": (_png_named_tif, "content is PNG"),
    "truncated tiff": (_truncated_tiff, "truncated TIFF"),
    "tiff header only": (_tiff_header_only, "corrupt or truncated TIFF"),
    "corrupt compressed tiff": (_corrupt_compressed_tiff, "corrupt or truncated TIFF"),
    "huge claimed tiff": (_huge_claim_tiff, "truncated TIFF"),
    "dicom without pixels": (_dicom_without_pixels, "no pixel data"),
    "not dicom": (_not_dicom, "not a valid DICOM"),
    "1-d npy": (_npy("line.npy", np.zeros(10, np.float32)), "1 dimension"),
    "0-d npy": (_npy("scalar.npy", np.float32(3)), "0 dimension"),
    "4-d npy": (_npy("four.npy", np.zeros((2, 3, 4, 5), np.uint8)), "4-D data"),
    "5-d colour npy": (_npy("five.npy", np.zeros((2, 2, 4, 5, 3), np.uint8)), "5-D data"),
    "truncated npy": (_truncated_npy, "truncated .npy"),
    "nan tiff": (_nan_tiff, "2 NaN and 1 Inf"),
    "nan npy": (_npy("nan.npy", _nan_arr), "3 NaN and 1 Inf"),
    "bool npy": (_npy("mask.npy", np.zeros((4, 4), bool)), "unsupported pixel type bool"),
    "complex npy": (_npy("c.npy", np.zeros((4, 4), np.complex64)), "complex"),
    "object npy": (_npy("o.npy", np.empty((4, 4), object), allow_pickle=True), "object"),
}


@pytest.mark.parametrize("make, expected", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_inputs_raise_image_read_error(tmp_path, make, expected):
    path = make(tmp_path)
    with pytest.raises(ImageReadError) as exc_info:
        read_image(path)
    message = str(exc_info.value)
    assert path.name in message and expected in message
    assert "\n" not in message
    assert exc_info.value.path == path
    assert isinstance(exc_info.value, ValueError) and isinstance(exc_info.value, IsclError)


@pytest.mark.parametrize("name", ["truncated tiff", "empty", "dicom without pixels", "4-d npy", "bool npy"])
def test_probe_and_open_slices_reject_bad_headers(tmp_path, name):
    make, expected = BAD_INPUTS[name]
    path = make(tmp_path)
    for fn in (probe, open_slices):
        with pytest.raises(ImageReadError, match=expected):
            fn(path)


def test_huge_claimed_tiff_probe_reads_header_only(tmp_path):
    path = _huge_claim_tiff(tmp_path)
    with pytest.raises(ImageReadError, match="truncated TIFF"):
        probe(path)  # the claimed extent lies beyond the end of the file: no allocation happens


@pytest.mark.parametrize("suffix", [".png", ".tif", ".npy"])
def test_colour_needs_channel(tmp_path, suffix):
    rgb = _random((6, 7, 3), np.uint8)
    path = tmp_path / f"rgb{suffix}"
    if suffix == ".png":
        Image.fromarray(rgb).save(path)
    elif suffix == ".tif":
        tifffile.imwrite(path, rgb, photometric="rgb")
    else:
        np.save(path, rgb)
    info = probe(path)  # not an error at probe time
    assert info.n_channels == 3 and info.shape == (6, 7)
    with pytest.raises(ImageReadError, match=r"rgb\.\w+: is a colour image .* pass channel="):
        read_image(path)
    arr, info = read_image(path, channel=1)
    np.testing.assert_array_equal(arr, rgb[..., 1])
    assert info.meta["channel"] == 1
    with pytest.raises(ImageReadError, match="out of range"):
        read_image(path, channel=3)


def test_grayscale_accepts_channel_zero_only(tmp_path):
    write_image(tmp_path / "g.tif", np.ones((4, 4), np.uint8))
    assert read_image(tmp_path / "g.tif", channel=0)[0].shape == (4, 4)
    with pytest.raises(ImageReadError, match="only one channel"):
        read_image(tmp_path / "g.tif", channel=1)


def test_constant_image_is_fine(tmp_path):
    write_image(tmp_path / "c.tif", np.full((5, 5), 7, np.uint16))
    assert (read_image(tmp_path / "c.tif")[0] == 7).all()


# --------------------------------------------------------------------------------------------------
# Atomic writes, overwrite
# --------------------------------------------------------------------------------------------------


class _DiskFullFile:
    """A file object that accepts ``budget`` bytes, then fails like a full disk.

    It hides its file descriptor so that numpy/Pillow/tifffile go through ``write`` instead of
    writing to the descriptor directly.
    """

    def __init__(self, f, budget):
        self._f, self._budget = f, budget

    def fileno(self):
        raise io.UnsupportedOperation("fileno")

    def write(self, data):
        n = len(memoryview(data).cast("B"))
        if n > self._budget:
            self._f.write(bytes(memoryview(data).cast("B")[: self._budget]))
            self._budget = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._budget -= n
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)


@pytest.mark.parametrize("suffix", [".tif", ".png", ".npy"])
def test_disk_full_leaves_no_file(tmp_path, monkeypatch, suffix):
    real_open = atomic._open_temp
    monkeypatch.setattr(atomic, "_open_temp", lambda tmp: _DiskFullFile(real_open(tmp), budget=300))
    target = tmp_path / f"out{suffix}"
    with pytest.raises(ImageWriteError) as exc_info:
        write_image(target, _random((64, 64), np.uint16))
    err = exc_info.value
    assert err.errno == errno.ENOSPC and isinstance(err, OSError)
    assert str(target) in str(err) and "ENOSPC" in str(err)
    assert not target.exists() and os.listdir(tmp_path) == []


def test_failed_overwrite_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "keep.tif"
    old = _random((8, 8), np.uint8)
    write_image(target, old)

    def fsync_fails(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(iio.os, "fsync", fsync_fails)
    with pytest.raises(ImageWriteError, match="keep.tif: write failed: .*EIO"):
        write_image(target, _random((8, 8), np.uint8), overwrite=True)
    monkeypatch.undo()
    np.testing.assert_array_equal(read_image(target)[0], old)
    assert _leftovers(tmp_path) == []


def test_overwrite_refused_unless_asked(tmp_path):
    target = tmp_path / "o.npy"
    write_image(target, np.zeros((3, 3), np.float32))
    with pytest.raises(ImageWriteError, match=r"o\.npy: exists; pass --overwrite"):
        write_image(target, np.ones((3, 3), np.float32))
    assert read_image(target)[0].sum() == 0
    write_image(target, np.ones((3, 3), np.float32), overwrite=True)
    assert read_image(target)[0].sum() == 9
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "name, arr, expected",
    [
        ("f.png", np.zeros((4, 4), np.float32), "PNG stores only uint8 or uint16"),
        ("s.png", np.zeros((2, 4, 4), np.uint8), "PNG cannot hold a stack"),
        ("n.tif", np.full((4, 4), np.nan, np.float32), "16 NaN"),
        ("b.npy", np.zeros((4, 4), bool), "pixel type bool"),
        ("x.jpg", np.zeros((4, 4), np.uint8), "output format"),
        ("v.tif", np.zeros(4, np.uint8), "need (H, W) or (Z, H, W)"),
    ],
)
def test_write_rejects_unsupported_data(tmp_path, name, arr, expected):
    with pytest.raises(ImageWriteError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        write_image(tmp_path / name, arr)
    assert os.listdir(tmp_path) == []


def test_unicode_and_spaces_in_paths(tmp_path):
    folder = tmp_path / "my data ü"
    arr = _random((2, 6, 7), np.uint16)
    for name in ("échantillon 1.tif", "画像 2.npy"):
        write_image(folder / name, arr)  # creates the missing directory
        back, info = read_image(folder / name)
        np.testing.assert_array_equal(back, arr)
        assert info.path == folder / name
    write_image(folder / "ñ 3.png", arr[0])
    assert [p.name for p in find_images([str(folder)])] == ["échantillon 1.tif", "ñ 3.png", "画像 2.npy"]
    with pytest.raises(ImageReadError, match="échantillon 1.tif: file not found"):
        read_image(tmp_path / "échantillon 1.tif")


# --------------------------------------------------------------------------------------------------
# find_images
# --------------------------------------------------------------------------------------------------


def test_find_images(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for name in ("img10.tif", "img2.tif", "b.png", ".hidden.tif", "a.npy"):
        (d / name).write_bytes(b"x")
    (d / "notes.txt").write_text("x")
    (d / "sub").mkdir()
    (d / "sub" / "deep.tif").write_bytes(b"x")
    names = [p.name for p in find_images([str(d)])]
    assert names == ["a.npy", "b.png", "img2.tif", "img10.tif"]
    # glob, explicit file, duplicates removed, order kept
    got = find_images([str(d / "img*.tif"), str(d / "b.png"), str(d / "img2.tif")])
    assert [p.name for p in got] == ["img2.tif", "img10.tif", "b.png"]
    assert find_images(str(d / "sub")) == [d / "sub" / "deep.tif"]
    assert find_images([str(d / "**" / "*.tif")])[-1] == d / "sub" / "deep.tif"
    assert set(SUPPORTED_SUFFIXES) == {".tif", ".tiff", ".png", ".npy", ".dcm", ".mrc", ".mrcs", ".st", ".rec", ".ali",
                                       ".map", ".h5", ".hdf5", ".hdf", ".nii", ".nii.gz"}


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda d: d / "nope", "nope: file or directory not found"),
        (lambda d: (d / "empty_dir").mkdir() or d / "empty_dir", "empty_dir: directory contains no supported"),
        (lambda d: d / "*.tif", r"\*\.tif: no supported images match"),
        (lambda d: (d / "r.txt").write_text("x") and d / "r.txt", "r.txt: unsupported file type"),
    ],
)
def test_find_images_errors(tmp_path, make, expected):
    target = make(tmp_path)
    with pytest.raises(ImageReadError, match=expected):
        find_images([str(target)])


# --------------------------------------------------------------------------------------------------
# Slice-by-slice writer
# --------------------------------------------------------------------------------------------------


def test_stack_writer_tiff_any_order_with_like(tmp_path):
    src = _random((4, 10, 12), np.float32)
    tifffile.imwrite(tmp_path / "src.tif", src, imagej=True, metadata={"spacing": 2.0, "unit": "nm", "axes": "ZYX"})
    info = probe(tmp_path / "src.tif")
    target = tmp_path / "out.tif"
    with create_output_like(target, info.shape, np.float32, like=info) as w:
        assert len(w) == 4 and _leftovers(tmp_path)  # being written under a hidden temp name
        assert not target.exists()
        for i in (3, 1, 0, 2):
            w[i] = src[i] + 1
    back, out_info = read_image(target)
    np.testing.assert_array_equal(back, src + 1)
    assert out_info.meta["imagej_metadata"]["spacing"] == 2.0
    with open_slices(target) as s:  # the writer's output is memory-mappable
        assert s.is_memmap
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("name, dtype", [("v.npy", np.int16), ("p.png", np.uint16), ("t.tif", np.uint8)])
def test_stack_writer_formats(tmp_path, name, dtype):
    shape = (9, 11) if name.endswith(".png") else (3, 9, 11)
    data = _random(shape, dtype)
    w = create_output_like(tmp_path / name, shape, dtype)
    if data.ndim == 2:
        w[0] = data
    else:
        for i in range(shape[0]):
            w.write_slice(i, data[i])
    assert w.commit() == tmp_path / name
    np.testing.assert_array_equal(read_image(tmp_path / name)[0], data)


def test_stack_writer_dicom(ct_dicom, tmp_path):
    hu, info = read_image(ct_dicom)
    with create_output_like(tmp_path / "w.dcm", info.shape, np.float32, like=info) as w:
        w[0] = hu
    np.testing.assert_array_equal(read_image(tmp_path / "w.dcm")[0], hu)


def test_stack_writer_aborts_on_exception_and_incomplete(tmp_path):
    target = tmp_path / "o.tif"
    with pytest.raises(RuntimeError):
        with create_output_like(target, (3, 4, 4), np.uint16) as w:
            w[0] = np.ones((4, 4), np.uint16)
            raise RuntimeError("model crashed")
    assert not target.exists() and _leftovers(tmp_path) == []
    w = create_output_like(target, (3, 4, 4), np.uint16)
    w[0] = np.ones((4, 4), np.uint8)  # safe cast is fine
    with pytest.raises(TypeError):
        w[1] = np.ones((4, 4), np.float32)
    with pytest.raises(ImageWriteError, match="only 1 of 3 slices were written"):
        w.commit()
    assert not target.exists() and _leftovers(tmp_path) == []
    write_image(target, np.zeros((4, 4), np.uint8))
    with pytest.raises(ImageWriteError, match="exists; pass --overwrite"):
        create_output_like(target, (3, 4, 4), np.uint16)


def test_stack_writer_disk_full(tmp_path, monkeypatch):
    target = tmp_path / "big.tif"
    w = create_output_like(target, (3, 8, 8), np.float32)

    def pwrite_fails(fd, data, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(iio.os, "pwrite", pwrite_fails)
    with pytest.raises(ImageWriteError, match="big.tif: write failed: No space left") as exc_info:
        w[0] = np.zeros((8, 8), np.float32)
    assert exc_info.value.errno == errno.ENOSPC
    assert not target.exists() and _leftovers(tmp_path) == []


@pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="no posix_fallocate")
def test_stack_writer_reserves_space_up_front(tmp_path, monkeypatch):
    def fallocate_fails(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(iio.os, "posix_fallocate", fallocate_fails)
    with pytest.raises(ImageWriteError, match="No space left"):
        create_output_like(tmp_path / "v.npy", (100, 64, 64), np.float32)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def test_errors_are_one_line_and_picklable():
    err = ImageReadError("noisy/a.tif", "truncated TIFF (cannot read page 0:\nshort read)")
    assert str(err) == "noisy/a.tif: truncated TIFF (cannot read page 0: short read)"
    assert err.path == "noisy/a.tif"
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is ImageReadError and str(copy) == str(err) and copy.path == err.path
    werr = ImageWriteError("out/b.tif", "write failed", errno=errno.ENOSPC)
    assert isinstance(werr, OSError) and pickle.loads(pickle.dumps(werr)).errno == errno.ENOSPC
    assert str(IsclError("plain message")) == "plain message"


def test_image_info_repr_is_short(ct_dicom):
    info = probe(ct_dicom)
    assert isinstance(info, ImageInfo) and "dataset" not in repr(info)


def test_zarr_array_through_the_facade(tmp_path):
    zarr = pytest.importorskip("zarr")
    arr = _random((3, 8, 6), np.uint16)
    z = zarr.open_array(str(tmp_path / "v.zarr"), mode="w", shape=arr.shape, chunks=(1, 8, 6), dtype=arr.dtype)
    z[:] = arr
    info = probe(tmp_path / "v.zarr")
    assert info.format == "zarr" and info.shape == (3, 8, 6) and info.dtype == np.uint16 and info.n_slices == 3
    np.testing.assert_array_equal(read_image(tmp_path / "v.zarr")[0], arr)
    with open_slices(tmp_path / "v.zarr") as s:
        np.testing.assert_array_equal(s[-1], arr[2])
    with pytest.raises(ImageWriteError, match="cannot write Zarr"):
        write_image(tmp_path / "o.zarr", arr)


def test_every_format_is_registered_once_and_sniffed():
    from iscl.data import formats

    names = [f.name for f in formats.all_formats()]
    assert names == ["tiff", "png", "npy", "dicom", "zarr", "mrc", "hdf5", "nifti"]
    assert formats.by_suffix(".TIFF").name == "tiff" and formats.by_suffix(".jpg") is None
    assert formats.sniff(b"\x89PNG\r\n\x1a\n" + bytes(124)).name == "png"
    assert formats.sniff(b"II*\x00" + bytes(124) + b"DICM").name == "dicom"  # the DICM marker decides
    with pytest.raises(ValueError, match="already belongs to 'tiff'"):
        formats.register(formats.Format(name="other", title="Other", suffixes=(".tif",), probe=None, read=None))
