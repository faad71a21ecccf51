"""OME-Zarr images: read level 0 of the first multiscale, write an OME-Zarr group (NGFF 0.4 on Zarr v2, 0.5 on
Zarr v3) with the same axes and scale, optional mean pyramid levels computed block by block, nothing left on failure,
one-line errors for bad groups."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import iscl
from iscl import volumes
from iscl.data import io
from iscl.errors import ImageReadError, IsclError

zarr = pytest.importorskip("zarr")

SCALE = [30.0, 4.0, 4.0]  # z, y, x in nanometres
VERSIONS = [pytest.param(2, "0.4", id="ngff0.4-zarr2"), pytest.param(3, "0.5", id="ngff0.5-zarr3")]


@pytest.fixture(scope="module")
def model(tiny_run):
    return iscl.load(tiny_run)


def _axes(names: str) -> list[dict]:
    kinds = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
    return [{"name": n, "type": kinds[n], **({"unit": "nanometer"} if kinds[n] == "space" else {})} for n in names]


def _ome_group(path: Path, data: np.ndarray, *, zarr_format: int = 2, axes: str = "zyx", chunks=None,
               scale=None, dataset: str = "0", write_dataset: bool = True) -> dict:
    """An OME-Zarr image as other tools write it: the group's multiscales metadata and level 0 (plus a noisy
    level 1, which iscl does not read)."""
    scale = scale if scale is not None else [1.0] * (data.ndim - 3) + SCALE[-min(3, data.ndim):]
    ms = {"name": "sample", "axes": _axes(axes), "datasets": [
        {"path": dataset, "coordinateTransformations": [{"type": "scale", "scale": scale},
                                                        {"type": "translation", "translation": [0.0] * data.ndim}]},
        {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [s * 2 for s in scale]}]},
    ], "type": "gaussian"}
    omero = {"channels": [{"label": "em", "color": "FFFFFF", "active": True,
                           "window": {"start": 0.0, "end": 1.0, "min": 0.0, "max": 1.0}}]}
    if zarr_format == 2:
        attrs = {"multiscales": [{"version": "0.4", **ms}], "omero": omero}
    else:
        attrs = {"ome": {"version": "0.5", "multiscales": [ms], "omero": omero}}
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    group.attrs.update(attrs)
    kw = {"dimension_names": list(axes)} if zarr_format == 3 else {}
    if write_dataset:
        group.create_array(dataset, shape=data.shape, chunks=chunks or data.shape, dtype=data.dtype, **kw)[...] = data
    group.create_array("1", shape=data.shape, chunks=data.shape, dtype=data.dtype, **kw)
    return attrs


def _ome(attrs: dict) -> dict:
    """Where the OME metadata sit: under "ome" in NGFF 0.5, at the top in 0.4."""
    return attrs["ome"] if "ome" in attrs else attrs


def _multiscale(attrs: dict) -> dict:
    return _ome(attrs)["multiscales"][0]


def _mean_2x2(a: np.ndarray) -> np.ndarray:
    """The expected next level, written out pixel by pixel: the mean of the (up to) 2x2 pixels each covers."""
    h, w = a.shape[-2:]
    out = np.empty((*a.shape[:-2], math.ceil(h / 2), math.ceil(w / 2)))
    for i in range(out.shape[-2]):
        for j in range(out.shape[-1]):
            out[..., i, j] = a[..., 2 * i:2 * i + 2, 2 * j:2 * j + 2].astype(np.float64).mean(axis=(-2, -1))
    return np.rint(out).astype(a.dtype) if a.dtype.kind in "ui" else out.astype(a.dtype)


def _listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


@pytest.mark.parametrize("zarr_format, version", VERSIONS)
def test_ome_zarr_in_ome_zarr_out_with_a_pyramid(model, tmp_path, monkeypatch, zarr_format, version):
    data = (np.random.default_rng(0).random((5, 40, 36)) * 60000).astype(np.uint16)
    src, dst = tmp_path / "in.ome.zarr", tmp_path / "out.ome.zarr"
    attrs_in = _ome_group(src, data, zarr_format=zarr_format, chunks=(2, 20, 18))
    blocks = []  # the pyramid's blocks, as read from the level above
    real_mean = volumes._mean_2x2
    monkeypatch.setattr(volumes, "_mean_2x2", lambda b: blocks.append(b.shape) or real_mean(b))

    # 40*36*(2+2+4) bytes per slice: a 25 kB budget denoises one 2-slice chunk at a time; the pyramid's
    # blocks are then one 2-slice chunk too (the least a block holds)
    rep = volumes.denoise_zarr(model, src, dst, memory_budget=25_000, pyramid=2)
    assert rep.blocks == 3 and rep.pyramid == 2
    assert _listing(tmp_path) == ["in.ome.zarr", "out.ome.zarr"]  # the hidden store was renamed into place

    out = zarr.open_group(str(dst), mode="r")
    assert out.metadata.zarr_format == zarr_format
    attrs = dict(out.attrs)
    ms, ms_in = _multiscale(attrs), _multiscale(attrs_in)
    assert (attrs["ome"]["version"] if zarr_format == 3 else ms["version"]) == version
    assert ms["axes"] == ms_in["axes"] and ms["name"] == "sample" and _ome(attrs)["omero"] == _ome(attrs_in)["omero"]
    assert attrs["iscl"]["output"] == "denoised"
    assert [d["path"] for d in ms["datasets"]] == ["0", "1", "2"]
    assert ms["datasets"][0]["coordinateTransformations"] == ms_in["datasets"][0]["coordinateTransformations"]
    # scale doubled in y and x per level; the translation moves to the centre of the pixels averaged
    assert ms["datasets"][1]["coordinateTransformations"] == [
        {"type": "scale", "scale": [30.0, 8.0, 8.0]}, {"type": "translation", "translation": [0.0, 2.0, 2.0]}]
    assert ms["datasets"][2]["coordinateTransformations"] == [
        {"type": "scale", "scale": [30.0, 16.0, 16.0]}, {"type": "translation", "translation": [0.0, 6.0, 6.0]}]
    assert ms["type"] == "mean" and ms["metadata"]["method"] == "skimage.measure.block_reduce"

    # level 0: what denoising the level-0 array as a plain Zarr array gives, same shape, chunks and dtype
    volumes.denoise_zarr(model, src / "0", tmp_path / "plain.zarr", memory_budget=25_000)
    level0 = out["0"]
    assert level0.shape == data.shape and level0.chunks == (2, 20, 18) and level0.dtype == np.uint16
    np.testing.assert_array_equal(level0[...], zarr.open_array(str(tmp_path / "plain.zarr"), mode="r")[...])
    if zarr_format == 3:
        assert level0.metadata.dimension_names == ("z", "y", "x")
    # levels 1 and 2: the 2x2 mean of the level above, z kept
    above = level0[...]
    for name, shape in (("1", (5, 20, 18)), ("2", (5, 10, 9))):
        level = out[name]
        assert level.shape == shape and level.dtype == np.uint16
        np.testing.assert_array_equal(level[...], _mean_2x2(above))
        above = level[...]
    # block by block, whole 2-slice chunks deep: 3 blocks per level, never the whole volume
    assert blocks == [(2, 40, 36), (2, 40, 36), (1, 40, 36), (2, 20, 18), (2, 20, 18), (1, 20, 18)]


def test_2d_image_with_singleton_t_and_c_odd_edges(model, tmp_path, monkeypatch):
    """(t, c, y, x) with t = c = 1: the leading axes are kept; a pixel on an odd edge averages what it covers."""
    img = (np.random.default_rng(1).random((1, 1, 50, 42)) * 255).astype(np.uint8)
    src, dst = tmp_path / "img.zarr", tmp_path / "den.zarr"
    _ome_group(src, img, axes="tcyx", chunks=(1, 1, 16, 16), scale=[1.0, 1.0, 0.5, 0.5])
    np.testing.assert_array_equal(io.read_image(src)[0], img[0, 0])  # the io facade reads level 0 too
    blocks = []
    real_mean = volumes._mean_2x2
    monkeypatch.setattr(volumes, "_mean_2x2", lambda b: blocks.append(b.shape) or real_mean(b))
    # a 2-D level is averaged along y in blocks of whole 16-row chunks of the new level (32 rows of the one above)
    volumes.denoise_zarr(model, src, dst, pyramid=3, memory_budget=20_000)
    assert blocks == [(32, 42), (18, 42), (25, 21), (13, 11)]
    out = zarr.open_group(str(dst), mode="r")
    ms = _multiscale(dict(out.attrs))
    np.testing.assert_array_equal(out["0"][0, 0], model.denoise(img[0, 0]))
    above = out["0"][...]
    for i, shape in enumerate([(1, 1, 25, 21), (1, 1, 13, 11), (1, 1, 7, 6)], start=1):
        level = out[str(i)]
        assert level.shape == shape and level.chunks == (1, 1, min(16, shape[2]), min(16, shape[3]))
        np.testing.assert_array_equal(level[...], _mean_2x2(above))
        assert ms["datasets"][i]["coordinateTransformations"][0]["scale"] == [1.0, 1.0, 0.5 * 2**i, 0.5 * 2**i]
        above = level[...]


@pytest.mark.parametrize("interrupt", [
    pytest.param(RuntimeError("boom"), id="error-in-level-0"),
    pytest.param(KeyboardInterrupt(), id="ctrl-c-in-the-pyramid"),
])
def test_a_run_that_fails_midway_leaves_no_output(model, tmp_path, monkeypatch, interrupt):
    data = np.random.default_rng(2).random((6, 32, 32), dtype=np.float32)
    src, dst = tmp_path / "in.zarr", tmp_path / "out.zarr"
    _ome_group(src, data, zarr_format=3, chunks=(2, 32, 32))
    seen: list[list[str]] = []
    if isinstance(interrupt, KeyboardInterrupt):  # fails on the 2nd block of level 1
        target, real = "_mean_2x2", volumes._mean_2x2
    else:  # fails on the 2nd block of level 0 (slices 2-3)
        target, real = "_predict_slice", volumes._predict_slice
    calls = []

    def flaky(*args):
        calls.append(1)
        if len(calls) == (2 if target == "_mean_2x2" else 3):
            seen.append(_listing(tmp_path))  # what was on disk when it failed
            raise interrupt
        return real(*args)

    monkeypatch.setattr(volumes, target, flaky)
    with pytest.raises(type(interrupt)):
        volumes.denoise_zarr(model, src, dst, memory_budget=1, pyramid=1)
    assert len(seen[0]) == 2 and seen[0][0].startswith(".out.zarr.partial-") and seen[0][1] == "in.zarr"
    assert _listing(tmp_path) == ["in.zarr"]  # the hidden partial store is gone; no output group


def _bad_groups(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    data = np.zeros((2, 16, 16), np.float32)
    empty = tmp_path / "empty.zarr"
    zarr.open_group(str(empty), mode="w")
    missing = tmp_path / "missing.zarr"
    _ome_group(missing, data, dataset="s0", write_dataset=False)
    colour = tmp_path / "colour.zarr"
    _ome_group(colour, np.zeros((3, 16, 16), np.uint8), axes="cyx", zarr_format=3, scale=[1.0, 1.0, 1.0])
    return {
        "empty": (empty, "empty.zarr: is a Zarr group with no arrays and no OME-Zarr multiscales metadata"),
        "missing": (missing, "missing.zarr: OME-Zarr attrs['multiscales'][0] names dataset 's0', which is missing "
                             f"(no Zarr array at {missing / 's0'})"),
        "colour": (colour, "colour.zarr: OME-Zarr axes (c, y, x) with shape (3, 16, 16) are not supported; iscl "
                           "denoises (y, x) or (z, y, x) images, optionally after t and c axes of size 1"),
    }


@pytest.mark.parametrize("case", ["empty", "missing", "colour"])
def test_bad_groups_give_one_line_and_write_nothing(model, tiny_run, tmp_path, case):
    from typer.testing import CliRunner

    from iscl.cli import app

    src, message = _bad_groups(tmp_path)[case]
    before = _listing(tmp_path)
    with pytest.raises(ImageReadError) as err:
        volumes.denoise_zarr(model, src, tmp_path / "out.zarr")
    assert str(err.value) == f"{tmp_path}/{message}"
    r = CliRunner().invoke(app, ["denoise", str(tiny_run), str(src), "--out", str(tmp_path / "out.zarr"), "--quiet"])
    assert r.exit_code == 1 and r.output.strip() == f"iscl: error: {tmp_path}/{message}", r.output
    assert _listing(tmp_path) == before


def test_cli_pyramid_and_its_refusals(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from iscl.cli import app

    data = (np.random.default_rng(3).random((3, 24, 24)) * 255).astype(np.uint8)
    _ome_group(tmp_path / "in.zarr", data, chunks=(1, 24, 24))

    def denoise(*args: str):
        return CliRunner().invoke(app, ["denoise", str(tiny_run), *args, "--quiet"])

    r = denoise(str(tmp_path / "in.zarr"), "--out", str(tmp_path / "out.zarr"), "--pyramid", "1")
    assert r.exit_code == 0, r.output
    out = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert out["1"].shape == (3, 12, 12)
    np.testing.assert_array_equal(out["1"][...], _mean_2x2(out["0"][...]))

    # refused in one line, before anything is written: a non-Zarr output, a plain Zarr array, too many levels,
    # a group that is not an image
    np.save(tmp_path / "a.npy", data[0])
    plain = zarr.open_array(str(tmp_path / "plain.zarr"), mode="w", shape=data.shape, dtype="u1")
    plain[...] = data
    zarr.open_group(str(tmp_path / "empty.zarr"), mode="w")
    before = _listing(tmp_path)
    for args, problem in [
        (["a.npy", "--pyramid", "1"], "a.npy: --pyramid writes OME-Zarr levels; only OME-Zarr inputs get them"),
        (["plain.zarr", "--pyramid", "1"], "plain.zarr: --pyramid writes OME-Zarr levels, but this is a plain "
                                           "Zarr array"),
        (["in.zarr", "--pyramid", "6"], "in.zarr: --pyramid 6: a 24x24 image reaches 1x1 after 5 levels"),
        (["empty.zarr"], "empty.zarr: is a Zarr group with no arrays and no OME-Zarr multiscales metadata"),
    ]:
        r = denoise(*[str(tmp_path / a) if a.endswith(("zarr", "npy")) else a for a in args],
                    "--out", str(tmp_path / "new"))
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("iscl: error: "), r.output
        assert problem in lines[0], lines[0]
    assert _listing(tmp_path) == before


def test_pyramid_refused_for_a_scale_stored_in_a_file(model, tmp_path):
    src = tmp_path / "in.zarr"
    _ome_group(src, np.zeros((2, 16, 16), np.float32))
    attrs = dict(zarr.open_group(str(src), mode="r").attrs)
    attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"] = [{"type": "scale", "path": "scale.bin"}]
    zarr.open_group(str(src), mode="r+").attrs.update(attrs)
    with pytest.raises(IsclError, match="--pyramid needs the level-0 scale inline"):
        volumes.denoise_zarr(model, src, tmp_path / "out.zarr", pyramid=1)
    assert _listing(tmp_path) == ["in.zarr"]
