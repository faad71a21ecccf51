"""The benchmark: same data and budget for every method, resumable cells, tables and figures."""

from __future__ import annotations

import builtins
import json

import numpy as np
import pytest
import torch

from iscl.evaluate.benchmark import cell_path, run_benchmark, training_pairs
from iscl.methods.base import MethodBase
from iscl.simulate.datasets import load_dataset

TINY = {"generator_width": 4, "generator_res_blocks": 1, "extractor_width": 4, "extractor_layers": 3,
        "discriminator_width": 4}
SIZES = {"n_train": 2, "n_test": 2, "size": 64, "cache_dir": False}
METHODS = ["noisy", "bm3d", "blindspot", "iscl", "iscl-F", "supervised"]


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny networks gain nothing from a second thread, and a spinning pool crawls on a busy machine
    torch.set_num_threads(1)
    yield


def _no_bm3d(monkeypatch):
    real_import = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "bm3d" or name.startswith("bm3d."):
            raise ImportError("No module named 'bm3d'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)


def test_benchmark_end_to_end_and_resume(tmp_path, monkeypatch):
    _no_bm3d(monkeypatch)  # also keeps the test fast; the skip must be clean
    seen: dict[str, dict] = {}
    real_fit = MethodBase.fit

    def spy(self, **kw):
        seen[self.name] = kw
        return real_fit(self, **kw)

    monkeypatch.setattr(MethodBase, "fit", spy)
    res = run_benchmark(["em-film"], METHODS, steps=2, batch_size=2, seed=5, out_dir=tmp_path, network=TINY,
                        progress=False, log=None, command="pytest", **SIZES)
    assert "bm3d" in res["skipped"] and "pip install iscl[bm3d]" in res["skipped"]["bm3d"]
    assert res["methods"] == ["noisy", "blindspot", "iscl", "iscl-F", "supervised"]

    # the same budget and seed for every learned method; ISCL trained once for its two rows
    ds = load_dataset("em-film", seed=0, **SIZES)
    for name in ("blindspot", "iscl", "supervised"):
        assert (seen[name]["steps"], seen[name]["batch_size"], seen[name]["seed"]) == (2, 2, 5)
    assert "iscl-F" not in seen
    assert all(np.array_equal(a, b) for a, b in zip(seen["iscl"]["clean"], ds.train_clean))
    assert all(np.array_equal(a, b) for a, b in zip(seen["iscl"]["noisy"], ds.train_noisy))
    # the supervised bound's pairs are training pairs, not test images
    pn, pc = seen["supervised"]["pairs"]
    assert len(pn) == len(ds.train_clean)
    for a in list(pn) + list(pc):
        assert not any(np.array_equal(a, t) for t in list(ds.test_noisy) + list(ds.test_clean))

    cells = res["cells"]["em-film"]
    noisy_psnr = [10 * np.log10(1.0 / np.mean((c - n) ** 2)) for c, n in zip(ds.test_clean, ds.test_noisy)]
    assert cells["noisy"]["psnr_per_image"] == pytest.approx(noisy_psnr, abs=1e-4)
    for c in cells.values():
        assert c["n_test"] == 2 and len(c["psnr_per_image"]) == 2
        assert c["psnr_mean"] == pytest.approx(np.mean(c["psnr_per_image"]))
        assert c["predict_seconds_per_megapixel"] >= 0
    assert cells["iscl"]["train_seconds"] == cells["iscl-F"]["train_seconds"] > 0
    md = (tmp_path / "results.md").read_text()
    assert "2 steps × batch 2" in md and "| iscl |" in md and "pytest" in md and "bm3d` skipped" in md
    assert (tmp_path / "figures" / "em-film.png").stat().st_size > 0
    assert (tmp_path / "figures" / "em-film_losses.png").exists()
    assert json.loads((tmp_path / "results.json").read_text())["settings"]["steps"] == 2

    # resumable: finished cells are read, nothing is retrained
    monkeypatch.setattr(MethodBase, "fit", lambda *a, **k: pytest.fail("recomputed a finished cell"))
    again = run_benchmark(["em-film"], METHODS, steps=2, batch_size=2, seed=5, out_dir=tmp_path, network=TINY,
                          progress=False, log=None, **SIZES)
    assert again["cells"]["em-film"]["iscl"]["psnr_mean"] == cells["iscl"]["psnr_mean"]

    # a missing ISCL row is predicted from the saved ISCL model, without retraining
    cell_path(tmp_path, "em-film", "iscl-F").unlink()
    third = run_benchmark(["em-film"], METHODS, steps=2, batch_size=2, seed=5, out_dir=tmp_path, network=TINY,
                          progress=False, log=None, **SIZES)
    assert third["cells"]["em-film"]["iscl-F"]["psnr_mean"] == pytest.approx(cells["iscl-F"]["psnr_mean"], abs=1e-6)

    # other settings never mix into the same directory
    with pytest.raises(ValueError, match="steps"):
        run_benchmark(["em-film"], METHODS, steps=3, batch_size=2, seed=5, out_dir=tmp_path, network=TINY,
                      progress=False, log=None, **SIZES)


def test_unknown_names_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        run_benchmark(["em-foo"], ["noisy"], out_dir=tmp_path, log=None)
    with pytest.raises(ValueError, match="unknown method"):
        run_benchmark(["em-film"], ["n2v"], out_dir=tmp_path, log=None)


@pytest.mark.parametrize("name", ["em-film", "em-charge"])
def test_training_pairs_are_new_seeded_scenes(name):
    noisy, clean = training_pairs(name, 2, 32, seed=0)
    assert noisy.shape == clean.shape == (2, 32, 32) and noisy.dtype == np.float32
    assert 0.0 <= clean.min() and clean.max() <= 1.0
    assert not np.array_equal(noisy, clean)
    again = training_pairs(name, 2, 32, seed=0)
    assert np.array_equal(again[0], noisy) and np.array_equal(again[1], clean)
    # what PAIRS_POOL_CODE is for: no pair shares a scene or a noise draw with any pool of the dataset (training
    # clean, training noisy, test). A shared seed gives the same image (correlation 1); independent draws of
    # these simulators correlate at most ~0.5 at this size
    ds = load_dataset(name, n_train=2, n_test=2, size=32, cache_dir=False)

    def corr(a, b):
        return abs(float(np.corrcoef(a.ravel(), b.ravel())[0, 1]))

    for a in clean:
        for b in list(ds.train_clean) + list(ds.test_clean):
            assert corr(a, b) < 0.95
    for a in noisy:
        for b in list(ds.train_noisy) + list(ds.test_noisy):
            assert corr(a, b) < 0.95
    for a, c in zip(noisy, clean):
        for b, d in zip(ds.test_noisy, ds.test_clean):
            assert corr(a - c, b - d) < 0.95  # not the same noise draw on another scene either
