"""Named datasets: seeding, disjoint pools, caching, and the on-disk layout of write_dataset."""

import json

import numpy as np
import pytest
import tifffile

from iscl.simulate import datasets as D
from iscl.simulate.datasets import DATASETS, load_dataset, scene_seed, write_dataset
from iscl.simulate.em import em_tissue

SMALL = {"n_train": 3, "n_test": 4, "size": 32}


def test_dataset_names():
    assert DATASETS == ("em-film", "em-charge", "ct-ldct")
    with pytest.raises(ValueError, match="em-film, em-charge, ct-ldct"):
        load_dataset("em-noise", cache_dir=False)
    with pytest.raises(ValueError, match="valid names"):
        write_dataset("nope", "/nonexistent/never-created")


@pytest.mark.parametrize("name", DATASETS)
def test_arrays_shapes_ranges_and_params(name):
    ds = load_dataset(name, **SMALL, cache_dir=False)
    assert ds.name == name
    for arr, n in ((ds.train_clean, 3), (ds.train_noisy, 3), (ds.test_clean, 4), (ds.test_noisy, 4)):
        assert arr.shape == (n, 32, 32) and arr.dtype == np.float32
        assert arr.min() >= 0.0 and arr.max() <= 1.0
    assert not np.array_equal(ds.test_clean, ds.test_noisy)
    p = ds.params
    assert (p["seed"], p["strength"], p["n_train"], p["n_test"], p["size"]) == (0, 1.0, 3, 4, 32)
    json.dumps(p)  # every parameter is JSON-serialisable
    if name == "ct-ldct":
        lo, hi = p["scan"]["window_hu"]
        assert ds.test_clean_hu.shape == (4, 32, 32)
        np.testing.assert_allclose(ds.test_clean, np.clip((ds.test_clean_hu - lo) / (hi - lo), 0, 1), atol=1e-6)
        assert len(p["test_sources"]) == 4
    else:
        assert ds.test_clean_hu is None
        assert set(p) >= {"tissue", "noise", "shot"}


@pytest.mark.parametrize("name", ["em-film", "ct-ldct"])
def test_same_seed_same_data_different_seed_different_data(name):
    a = load_dataset(name, **SMALL, seed=5, cache_dir=False)
    b = load_dataset(name, **SMALL, seed=5, cache_dir=False)
    c = load_dataset(name, **SMALL, seed=6, cache_dir=False)
    for key in ("train_clean", "train_noisy", "test_clean", "test_noisy"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert not np.array_equal(a.train_clean, c.train_clean)
    assert not np.array_equal(a.test_noisy, c.test_noisy)


def test_images_do_not_depend_on_the_pool_size():
    small = load_dataset("em-charge", n_train=2, n_test=1, size=32, cache_dir=False)
    large = load_dataset("em-charge", n_train=4, n_test=3, size=32, cache_dir=False)
    np.testing.assert_array_equal(small.train_clean, large.train_clean[:2])
    np.testing.assert_array_equal(small.test_noisy, large.test_noisy[:1])


def test_clean_and_noisy_pools_never_share_a_scene():
    name, seed, n = "em-film", 0, 6
    keys = {
        pool: {scene_seed(name, seed, pool, i).spawn_key for i in range(n)}
        for pool in ("train_clean", "train_noisy", "test")
    }
    assert keys["train_clean"].isdisjoint(keys["train_noisy"])
    assert keys["train_clean"].isdisjoint(keys["test"]) and keys["train_noisy"].isdisjoint(keys["test"])
    assert len(set.union(*keys.values())) == 3 * n
    # The clean scenes behind the noisy pool, regenerated from their seeds, differ from every clean image.
    ds = load_dataset(name, n_train=n, n_test=2, size=32, cache_dir=False)
    def scene(pool, i):
        return em_tissue(32, np.random.default_rng(scene_seed(name, seed, pool, i).spawn(2)[0]))

    hidden = [scene("train_noisy", i) for i in range(n)]
    for h in hidden:
        for c in list(ds.train_clean) + list(ds.test_clean):
            assert not np.array_equal(h, c)
    # Sanity check of that reconstruction: the test split's clean images are reproduced exactly.
    np.testing.assert_array_equal(scene("test", 0), ds.test_clean[0])


def test_strength_changes_the_noise_only():
    weak = load_dataset("em-film", **SMALL, strength=0.5, cache_dir=False)
    strong = load_dataset("em-film", **SMALL, strength=2.0, cache_dir=False)
    np.testing.assert_array_equal(weak.test_clean, strong.test_clean)
    assert weak.test_metrics()["psnr"] > strong.test_metrics()["psnr"]
    none = load_dataset("em-charge", **SMALL, strength=0.0, cache_dir=False)
    np.testing.assert_allclose(none.test_noisy, none.test_clean, atol=1e-6)


@pytest.mark.parametrize("kwargs", [{"size": 8}, {"n_train": -1}, {"seed": -1}, {"seed": 1.5}, {"strength": -0.1}])
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        load_dataset("em-film", **{**SMALL, **kwargs}, cache_dir=False)


def test_cache_is_used_and_env_var_is_honoured(tmp_path, monkeypatch):
    monkeypatch.setenv("ISCL_CACHE_DIR", str(tmp_path / "envcache"))
    first = load_dataset("em-charge", **SMALL)
    assert first.cache_path.startswith(str(tmp_path / "envcache"))

    def boom(*args, **kwargs):
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(D, "_generate", boom)
    second = load_dataset("em-charge", **SMALL)
    np.testing.assert_array_equal(first.train_noisy, second.train_noisy)
    assert second.params == first.params
    # An explicit cache_dir wins over the environment variable.
    monkeypatch.undo()
    third = load_dataset("em-charge", **SMALL, cache_dir=tmp_path / "argcache")
    assert third.cache_path.startswith(str(tmp_path / "argcache"))
    np.testing.assert_array_equal(first.test_noisy, third.test_noisy)


def test_corrupt_cache_is_regenerated(tmp_path):
    ds = load_dataset("em-film", **SMALL, cache_dir=tmp_path)
    with open(ds.cache_path, "wb") as f:
        f.write(b"not an npz")
    again = load_dataset("em-film", **SMALL, cache_dir=tmp_path)
    np.testing.assert_array_equal(ds.test_noisy, again.test_noisy)


@pytest.mark.parametrize("name", ["em-film", "ct-ldct"])
def test_parallel_generation_matches_serial(name, monkeypatch):
    serial = load_dataset(name, n_train=2, n_test=2, size=32, cache_dir=False, workers=1)
    # Force the pool even for this tiny job (threads for EM, forked processes for CT on Linux).
    monkeypatch.setattr(D, "_estimated_seconds", lambda *a: 1e9)
    parallel = load_dataset(name, n_train=2, n_test=2, size=32, cache_dir=False, workers=2)
    for key in ("train_clean", "train_noisy", "test_clean", "test_noisy"):
        np.testing.assert_array_equal(getattr(serial, key), getattr(parallel, key))


def test_write_dataset_layout_and_summary(tmp_path):
    out = tmp_path / "data"
    summary = write_dataset("ct-ldct", out, **SMALL, seed=2, preview=True, cache_dir=False)
    for folder, n in (("train/clean", 3), ("train/noisy", 3), ("test/clean", 4), ("test/noisy", 4)):
        files = sorted((out / folder).glob("*.tif"))
        assert len(files) == n
        img = tifffile.imread(files[0])
        assert img.dtype == np.float32 and img.shape == (32, 32)
    assert (out / "preview.png").stat().st_size > 1000
    info = json.loads((out / "dataset.json").read_text())
    assert info["params"]["seed"] == 2 and info["params"]["name"] == "ct-ldct"
    ds = load_dataset("ct-ldct", **SMALL, seed=2, cache_dir=False)
    np.testing.assert_array_equal(tifffile.imread(out / "test" / "noisy" / "00003.tif"), ds.test_noisy[3])
    m = ds.test_metrics()
    assert summary["psnr"] == pytest.approx(m["psnr"]) and summary["ssim"] == pytest.approx(m["ssim"])
    assert info["test_metrics"]["psnr"] == pytest.approx(m["psnr"])
    assert summary["out_dir"] == str(out) and summary["preview"] == str(out / "preview.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temporary directories left


def test_write_dataset_refuses_non_empty_directory(tmp_path):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match=str(out)) as err:
        write_dataset("em-film", out, **SMALL, cache_dir=False)
    assert "\n" not in str(err.value)
    assert (out / "keep.txt").exists()
    write_dataset("em-film", out, **SMALL, cache_dir=False, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "dataset.json").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    write_dataset("em-film", empty, **SMALL, cache_dir=False)  # an empty directory is fine
    assert (empty / "test" / "clean" / "00000.tif").exists()


def test_interrupted_write_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_imwrite = tifffile.imwrite

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt
        return real_imwrite(*args, **kwargs)

    monkeypatch.setattr(tifffile, "imwrite", flaky)
    with pytest.raises(KeyboardInterrupt):
        write_dataset("em-charge", tmp_path / "out", **SMALL, cache_dir=False)
    assert list(tmp_path.iterdir()) == []
