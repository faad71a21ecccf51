"""MRC through iscl's file interface (src/iscl/data/formats/mrc.py): modes, header kept "like" the input,
statistics, slice-by-slice reading and writing, the CLI, and bad inputs.

Input files are written here with mrcfile itself (an independent writer) and checked back with it.
"""

from __future__ import annotations

import io
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from iscl.data import formats
from iscl.data.formats import mrc as mrc_format
from iscl.data.io import create_output_like, open_slices, probe, read_image, write_image
from iscl.errors import ImageReadError, ImageWriteError

mrcfile = pytest.importorskip("mrcfile")

RNG = np.random.default_rng(0)
MODES = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16, 12: np.float16}
VOXEL, ORIGIN, LABEL = (1.25, 1.5, 2.0), (10.0, -20.0, 30.5), "SerialEM: tilt series 42"


def _random(shape, dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return RNG.normal(100, 20, size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)


def _write_mrc(path: Path, data: np.ndarray, *, stack: bool = True, ext: bytes = b"") -> Path:
    """An MRC file as mrcfile writes it, with voxel size, origin, a label and an extended header."""
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data)
        if data.ndim == 3 and stack:
            m.set_image_stack()
        m.voxel_size = VOXEL
        m.header.origin = ORIGIN
        m.add_label(LABEL)
        if ext:
            m.set_extended_header(np.frombuffer(ext, "V1"))
            m.header.exttyp = b"SERI"
    return path


def _header_stats(path: Path) -> tuple[float, float, float, float]:
    with mrcfile.open(path, header_only=True) as m:
        h = m.header
        return float(h.dmin), float(h.dmax), float(h.dmean), float(h.rms)


def _numpy_stats(a: np.ndarray) -> tuple[float, float, float, float]:
    a = a.astype(np.float64)
    return float(a.min()), float(a.max()), float(a.mean()), float(a.std())


def _assert_header_kept(path: Path, *, mode: int, shape, ext: bytes = b"") -> None:
    with mrcfile.open(path, permissive=False) as m:  # strict: a valid MRC2014 file
        assert int(m.header.mode) == mode and m.data.shape == shape
        assert tuple(float(v) for v in m.voxel_size.tolist()) == VOXEL
        assert tuple(float(m.header.origin[a]) for a in "xyz") == ORIGIN
        assert LABEL in m.get_labels()
        assert m.extended_header.tobytes() == ext
    if mode != 12:  # mrcfile.validate recomputes the rms in float16, which overflows to inf
        assert mrcfile.validate(str(path), print_file=io.StringIO())


def _leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if ".tmp-" in p.name]


# --------------------------------------------------------------------------------------------------
# Round trips through read_image / write_image
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(24, 40), (3, 24, 40)], ids=["2d", "3d"])
@pytest.mark.parametrize("mode", MODES)
def test_round_trip_keeps_mode_shape_voxel_origin_labels_and_updates_stats(tmp_path, monkeypatch, mode, shape):
    data = _random(shape, MODES[mode])
    src = _write_mrc(tmp_path / "in.mrc", data, ext=b"tilt" * 8)
    arr, info = read_image(src)
    assert (info.format, info.shape, arr.dtype, info.n_slices) == ("mrc", shape, np.dtype(MODES[mode]),
                                                                  shape[0] if len(shape) == 3 else 1)
    np.testing.assert_array_equal(arr, data)
    assert info.meta["mode"] == mode and info.meta["voxel_size"] == VOXEL and info.meta["origin"] == ORIGIN
    assert LABEL in info.meta["labels"]

    result = (arr[::-1] if arr.ndim == 2 else arr[:, ::-1]).copy()  # new pixels, same shape and dtype
    monkeypatch.setattr(mrc_format, "_STATS_CHUNK", 100)  # whole-image statistics in several chunks
    out = write_image(tmp_path / "out.mrc", result, like=info)
    _assert_header_kept(out, mode=mode, shape=shape, ext=b"tilt" * 8)
    back, _ = read_image(out)
    np.testing.assert_array_equal(back, result)
    # the statistics are those of the new pixels, not copied from the input
    np.testing.assert_allclose(_header_stats(out), _numpy_stats(result), rtol=1e-6, atol=1e-3)
    assert _leftovers(tmp_path) == []


def test_write_without_like_gives_a_valid_file_of_each_mode(tmp_path):
    for mode, dtype in MODES.items():
        data = _random((2, 8, 12), dtype)
        out = write_image(tmp_path / f"m{mode}.mrc", data)
        with mrcfile.open(out) as m:
            assert int(m.header.mode) == mode
            np.testing.assert_array_equal(m.data, data)
        assert mode == 12 or mrcfile.validate(str(out), print_file=io.StringIO())  # float16: see above


def test_a_changed_voxel_size_or_label_in_meta_is_written(tmp_path):
    _, info = read_image(_write_mrc(tmp_path / "in.mrc", _random((8, 8), np.float32)))
    info.meta["voxel_size"] = (3.0, 3.0, 3.0)
    info.meta["labels"] = ["iscl: denoised"]
    out = write_image(tmp_path / "out.mrc", np.zeros((8, 8), np.float32), like=info)
    with mrcfile.open(out) as m:
        assert m.voxel_size.tolist() == (3.0, 3.0, 3.0) and m.get_labels() == ["iscl: denoised"]


def test_unsigned_bytes_follow_the_imod_flag(tmp_path):
    """IMOD marks mode-0 bytes unsigned by its stamp without the 'signed' flag: read as uint8."""
    data = RNG.integers(0, 256, size=(2, 8, 8), dtype=np.uint8)
    out = write_image(tmp_path / "u8.mrc", data)
    raw = out.read_bytes()
    assert struct.unpack_from("<i", raw, 12)[0] == 0  # mode 0
    stamp, flags = struct.unpack_from("<2i", raw, 152)
    assert stamp == 1146047817 and not flags & 1
    arr, info = read_image(out)
    assert arr.dtype == np.uint8 and arr.max() > 127
    np.testing.assert_array_equal(arr, data)
    with mrcfile.open(out) as m:  # same bytes, which mrcfile (MRC2014) reads as signed
        np.testing.assert_array_equal(m.data.view(np.uint8), data)
    # the same header with the signed flag set: int8
    signed = bytearray(raw)
    struct.pack_into("<i", signed, 156, flags | 1)
    (tmp_path / "s8.mrc").write_bytes(bytes(signed))
    assert read_image(tmp_path / "s8.mrc")[0].dtype == np.int8


def test_big_endian_input_is_read_natively_and_written_little_endian(tmp_path):
    data = _random((2, 16, 12), np.int16)
    src = _write_mrc(tmp_path / "be.mrc", data.astype(">i2"))
    arr, info = read_image(src)
    assert info.meta["byteorder"] == ">" and arr.dtype == np.dtype("=i2")
    np.testing.assert_array_equal(arr, data)
    out = write_image(tmp_path / "le.mrc", arr, like=info)
    with mrcfile.open(out) as m:
        assert m.header.mode.dtype.byteorder in "<=" and m.voxel_size.tolist() == VOXEL
        np.testing.assert_array_equal(m.data, data)


# --------------------------------------------------------------------------------------------------
# Slice by slice: memory map in, in-place writes out
# --------------------------------------------------------------------------------------------------


def test_open_slices_memory_maps_and_stack_writer_keeps_the_header(tmp_path):
    data = _random((4, 16, 20), np.uint16)
    src = _write_mrc(tmp_path / "vol.rec", data, stack=False, ext=b"e" * 32)
    with open_slices(src) as s:
        assert s.is_memmap and s.shape == (4, 16, 20) and s.dtype == np.uint16
        np.testing.assert_array_equal(s[-1], data[-1])
        with create_output_like(tmp_path / "out.rec", s.shape, s.dtype, like=s.info) as w:
            for i in (3, 1, 0, 2):  # any order
                w[i] = s[i]
            assert list((tmp_path).glob(".out.rec.tmp-*")), "written under a hidden temporary name"
    _assert_header_kept(tmp_path / "out.rec", mode=6, shape=(4, 16, 20), ext=b"e" * 32)
    with mrcfile.open(tmp_path / "out.rec") as m:
        np.testing.assert_array_equal(m.data, data)
        assert m.is_volume() and not m.is_image_stack()
    dmin, dmax, dmean, rms = _header_stats(tmp_path / "out.rec")
    if getattr(formats.by_name("mrc"), "open_writer", None) is not None:  # MRC's own writer finishes the header
        np.testing.assert_allclose((dmin, dmax, dmean, rms), _numpy_stats(data), rtol=1e-6)
    else:  # statistics are marked undetermined (MRC2014: dmax < dmin, rms < 0), never stale
        assert dmax < dmin and rms < 0
    assert _leftovers(tmp_path) == []


def test_slices_are_read_section_by_section_where_mmap_fails(tmp_path, monkeypatch):
    data = _random((3, 8, 10), np.int16)
    src = _write_mrc(tmp_path / "a.mrc", data)

    class NoMap(np.memmap):
        def __new__(cls, *args, **kwargs):
            raise OSError(19, "No such device")

    monkeypatch.setattr(np, "memmap", NoMap)
    with open_slices(src) as s:
        assert not s.is_memmap and "pages" in repr(s)
        for z in (2, 0, -2):
            np.testing.assert_array_equal(s[z], data[z])


def test_finish_stack_puts_the_statistics_of_the_written_pixels(tmp_path, monkeypatch):
    data = _random((3, 10, 14), np.float32)
    monkeypatch.setattr(mrc_format, "_STATS_CHUNK", 50)  # many chunks, one of them partial
    w = create_output_like(tmp_path / "s.mrc", data.shape, np.float32)
    for i in range(3):
        w[i] = data[i]
    mrc_format._finish_stack(w._af.file, w.path, w.shape, w._file_dtype, w._offset)
    w.commit()
    np.testing.assert_allclose(_header_stats(tmp_path / "s.mrc"), _numpy_stats(data), rtol=1e-6)
    assert mrcfile.validate(str(tmp_path / "s.mrc"), print_file=io.StringIO())


@pytest.mark.skipif("open_writer" not in formats.Format.__dataclass_fields__, reason="registry without open_writer")
def test_a_failure_while_finishing_the_header_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(mrc_format, "_finish_stack", fail)
    w = create_output_like(tmp_path / "s.mrc", (2, 4, 4), np.float32)
    w[0] = w[1] = np.ones((4, 4), np.float32)
    with pytest.raises(ImageWriteError, match=r"s.mrc: write failed: Input/output error .*nothing was written"):
        w.commit()
    assert list(tmp_path.iterdir()) == []


def test_stats_keep_their_digits_far_from_zero():
    data = 30000.0 + RNG.normal(0, 0.01, size=10_000)
    lo, hi, mean, rms = mrc_format._stats(np.array_split(data, 7))
    assert (lo, hi) == (data.min(), data.max())
    np.testing.assert_allclose((mean, rms), (data.mean(), data.std()), rtol=1e-9)


# --------------------------------------------------------------------------------------------------
# Bad inputs and refusals
# --------------------------------------------------------------------------------------------------


def _truncated(d: Path) -> Path:
    p = _write_mrc(d / "truncated.mrc", _random((3, 16, 16), np.int16))
    p.write_bytes(p.read_bytes()[:-100])
    return p


def _complex(d: Path) -> Path:
    with mrcfile.new(d / "complex.mrc") as m:
        m.set_data(np.zeros((8, 8), np.complex64))  # mode 4
    return d / "complex.mrc"


def _packed(d: Path) -> Path:
    p = _write_mrc(d / "packed.mrc", np.zeros((8, 8), np.int8))
    raw = bytearray(p.read_bytes())
    struct.pack_into("<i", raw, 12, 101)
    p.write_bytes(bytes(raw))
    return p


def _text(d: Path) -> Path:
    p = d / "notes.mrc"
    p.write_bytes(b"this is not a micrograph, just some notes\n" * 40)
    return p


def _tiff(d: Path) -> Path:
    import tifffile

    p = d / "really-a-tiff.mrc"
    tifffile.imwrite(p, np.zeros((64, 64), np.uint16))
    return p


def _short(d: Path) -> Path:
    p = d / "short.mrc"
    p.write_bytes(_write_mrc(d / "x.mrc", np.zeros((4, 4), np.int8)).read_bytes()[:500])
    return p


BAD = {
    "truncated": (_truncated, "truncated MRC file (the header says the pixel data end at byte"),
    "mode 4": (_complex, "unsupported MRC mode 4 (complex float32)"),
    "mode 101": (_packed, "unsupported MRC mode 101 (packed 4-bit)"),
    "text named .mrc": (_text, "not an MRC file"),
    "tiff named .mrc": (_tiff, "not an MRC file (the name ends in .mrc but the content is TIFF)"),
    "shorter than a header": (_short, "fewer than an MRC header's 1024"),
}


@pytest.mark.parametrize("make, expected", BAD.values(), ids=BAD.keys())
def test_bad_inputs_give_one_line_errors(tmp_path, make, expected):
    path = make(tmp_path)
    for fn in (probe, read_image, open_slices):
        with pytest.raises(ImageReadError) as exc_info:
            fn(path)
        message = str(exc_info.value)
        assert message.startswith(f"{path}: ") and expected in message and "\n" not in message


def test_unsupported_dtype_is_refused_before_writing(tmp_path):
    for fn in (lambda p: write_image(p, np.zeros((4, 4))),
               lambda p: create_output_like(p, (2, 4, 4), np.int32)):
        with pytest.raises(ImageWriteError, match="MRC cannot store (float64|int32) pixels"):
            fn(tmp_path / "x.mrc")
    assert list(tmp_path.iterdir()) == []


def test_missing_mrcfile_names_the_extra(tmp_path, monkeypatch):
    src = _write_mrc(tmp_path / "a.mrc", np.zeros((4, 4), np.float32))
    monkeypatch.setitem(sys.modules, "mrcfile", None)  # import mrcfile now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'iscl\[mrc\]'") as exc_info:
        probe(src)
    assert isinstance(exc_info.value, ImageReadError) and str(exc_info.value).startswith(str(src))


def test_registered_by_suffix_and_recognised_by_content(tmp_path):
    for suffix in (".mrc", ".MRCS", ".st", ".rec", ".ali", ".map"):
        assert formats.by_suffix(suffix).name == "mrc"
    src = _write_mrc(tmp_path / "a.mrc", np.zeros((4, 4), np.float32))
    assert formats.sniff(src.read_bytes()[:formats.HEAD_BYTES]).name == "mrc"
    (tmp_path / "a.tif").write_bytes(src.read_bytes())
    with pytest.raises(ImageReadError, match="content is MRC"):
        read_image(tmp_path / "a.tif")


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def _invoke(*args):
    from iscl.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_denoises_an_mrc_stack_like_its_slices_alone(tiny_run, tmp_path):
    stack = RNG.random((3, 40, 48)).astype(np.float32)
    (tmp_path / "in").mkdir()
    src = _write_mrc(tmp_path / "in" / "tilt.st", stack)
    alone = _write_mrc(tmp_path / "in" / "slice1.mrc", stack[1])
    for f in (src, alone):
        r = _invoke("denoise", tiny_run, f, "--out", tmp_path / "out" / f.name, "--quiet")
        assert r.exit_code == 0, r.output
    out_stack, info = read_image(tmp_path / "out" / "tilt.st")
    out_alone, _ = read_image(tmp_path / "out" / "slice1.mrc")
    assert info.format == "mrc" and out_stack.shape == stack.shape and out_stack.dtype == np.float32
    assert not np.array_equal(out_stack, stack)  # it did something
    np.testing.assert_array_equal(out_stack[1], out_alone)  # a slice of a stack = that slice alone
    _assert_header_kept(tmp_path / "out" / "tilt.st", mode=2, shape=(3, 40, 48))
    stats = _header_stats(tmp_path / "out" / "tilt.st")
    if getattr(formats.by_name("mrc"), "open_writer", None) is not None:
        np.testing.assert_allclose(stats, _numpy_stats(out_stack), rtol=1e-6)
    else:
        assert stats[1] < stats[0] and stats[3] < 0  # undetermined


def test_cli_keeps_the_mode_and_refuses_to_overwrite(tiny_run, tmp_path):
    src = _write_mrc(tmp_path / "in.mrc", RNG.integers(0, 1000, (2, 32, 32), dtype=np.int16))
    out = tmp_path / "out.mrc"
    assert _invoke("denoise", tiny_run, src, "--out", out, "--quiet").exit_code == 0
    _assert_header_kept(out, mode=1, shape=(2, 32, 32))
    before = out.read_bytes()
    r = _invoke("denoise", tiny_run, src, "--out", out, "--quiet")
    assert r.exit_code == 1 and f"iscl: error: {out}: exists; pass --overwrite to replace it" in r.output
    assert out.read_bytes() == before
    out.write_bytes(b"old")
    assert _invoke("denoise", tiny_run, src, "--out", out, "--overwrite", "--quiet").exit_code == 0
    assert read_image(out)[0].shape == (2, 32, 32)


@pytest.mark.parametrize("make", [_truncated, _complex, _text], ids=["truncated", "mode 4", "not mrc"])
def test_cli_bad_input_exits_non_zero_and_writes_nothing(tiny_run, tmp_path, make):
    (tmp_path / "in").mkdir()
    src = make(tmp_path / "in")
    r = _invoke("denoise", tiny_run, src, "--out", tmp_path / "out", "--quiet")
    assert r.exit_code != 0
    errors = [ln for ln in r.output.splitlines() if ln.startswith("iscl: error:")]
    assert len(errors) == 1 and src.name in errors[0] and "Traceback" not in r.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
