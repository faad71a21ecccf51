"""The paper's k-fold protocol: the official permutation and splits, unpaired training, exact scoring."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import iscl.api
from iscl.evaluate import crossval
from iscl.evaluate.crossval import default_data_range, evaluate_model, kfold_splits, official_permutation, run_crossval


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny networks gain nothing from a second thread, and a spinning pool crawls on a busy machine
    torch.set_num_threads(1)
    yield


def _global_permutation(n: int, seed: int = 2019) -> np.ndarray:
    """What the official script does, with NumPy's global state restored afterwards."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        return np.random.permutation(n)
    finally:
        np.random.set_state(state)


def _official_folds(n: int, k: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """demo_EM.py's loop, transcribed: reshape, setdiff1d, int(len/2)."""
    kf = np.reshape(_global_permutation(n), [k, -1])
    out = []
    for test_index in kf:
        train_index = np.array(np.setdiff1d(np.array(range(0, n)), test_index), dtype=np.int32)
        half = int(len(train_index) / 2)
        out.append((test_index, train_index[:half], train_index[half:]))
    return out


@pytest.mark.parametrize("n", [8, 12, 40, 100, 400])
def test_permutation_is_the_official_one(n):
    assert np.array_equal(official_permutation(n), _global_permutation(n))


def test_permutation_leaves_global_state_alone():
    np.random.seed(5)
    expected = np.random.rand()
    np.random.seed(5)
    official_permutation(50)
    assert np.random.rand() == expected


@pytest.mark.parametrize("n,k", [(8, 4), (12, 4), (40, 4), (30, 5), (14, 2)])
def test_folds_equal_the_official_script(n, k):
    folds = kfold_splits(n, k)
    assert len(folds) == k
    for fold, (test, clean, noisy) in zip(folds, _official_folds(n, k)):
        assert np.array_equal(fold.test, test)
        assert np.array_equal(fold.train_clean, clean)
        assert np.array_equal(fold.train_noisy, noisy)


def test_folds_cover_everything_and_training_is_unpaired_and_disjoint():
    n, k = 40, 4
    folds = kfold_splits(n, k)
    assert sorted(np.concatenate([f.test for f in folds]).tolist()) == list(range(n))
    for f in folds:
        test, clean, noisy = set(f.test.tolist()), set(f.train_clean.tolist()), set(f.train_noisy.tolist())
        assert len(f.test) == n // k
        assert not test & clean and not test & noisy  # no test scene in training
        assert not clean & noisy  # unpaired: no scene both clean and noisy
        assert test | clean | noisy == set(range(n))
        assert len(clean) == len(noisy) == (n - n // k) // 2
        assert np.all(np.diff(f.train_clean) > 0) and f.train_clean.max() < f.train_noisy.min()  # first/second half


def test_unequal_folds_need_strict_false():
    with pytest.raises(ValueError, match="equal folds"):
        kfold_splits(10, 4)
    folds = kfold_splits(10, 4, strict=False)
    assert sorted(len(f.test) for f in folds) == [2, 2, 3, 3]
    with pytest.raises(ValueError, match="too few"):
        kfold_splits(3, 4)
    with pytest.raises(ValueError, match="k must be"):
        kfold_splits(8, 1)


def test_data_range_follows_the_clean_dtype():
    assert default_data_range([np.zeros((8, 8), np.uint8)]) == 255.0
    assert default_data_range([np.zeros((8, 8), np.uint16)]) == 65535.0
    assert default_data_range([np.array([[0.0, 0.5], [1.0, 0.2]], np.float32)]) == 1.0
    assert default_data_range([np.array([[-100.0, 300.0]])]) == 400.0


def test_scores_match_scikit_image_on_known_arrays():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (32, 40)).astype(np.uint8)
    est = np.clip(ref + rng.normal(0, 5, ref.shape), 0, 255)
    rows = crossval._score_pairs(lambda x: est, [ref], [ref + 0], [0], None, 255.0)
    r = rows[0]
    assert r["psnr"] == pytest.approx(peak_signal_noise_ratio(ref.astype(float), est, data_range=255), abs=1e-12)
    assert r["ssim"] == pytest.approx(structural_similarity(ref.astype(float), est, data_range=255), abs=1e-12)
    # a hand-computable case: constant error 1 on 8-bit → PSNR = 20 log10(255)
    rows = crossval._score_pairs(lambda x: x.astype(float) + 1, [ref.astype(float)], [ref.astype(float)], [0], None,
                                 255.0)
    assert rows[0]["psnr"] == pytest.approx(20 * np.log10(255.0))


def _uint8_pairs(n: int = 8, size: int = 64):
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:size, 0:size]
    clean, noisy = [], []
    for i in range(n):
        c = 60 + 20 * i + 40 * np.sin(xx / (3 + i)) * np.cos(yy / 5)
        clean.append(np.clip(c, 0, 255).astype(np.uint8))
        noisy.append(np.clip(c + rng.normal(0, 20, c.shape), 0, 255).astype(np.uint8))
    return clean, noisy


def test_run_crossval_end_to_end_trains_on_the_protocols_images(tmp_path, tiny_config, monkeypatch):
    # n = 6, k = 2: two trainings; 3 remaining indices → 1 clean, 2 noisy (the odd one goes to noisy)
    n, k = 6, 2
    clean, noisy = _uint8_pairs(n)
    tiny_config.train.steps = 1
    seen = []
    real_train = iscl.api.train

    def spy(c, x, config, **kw):
        seen.append(([a.copy() for a in c], [a.copy() for a in x]))
        return real_train(c, x, config, **kw)

    monkeypatch.setattr(iscl.api, "train", spy)
    report = run_crossval(clean, noisy, k=k, config=tiny_config, out_dir=tmp_path, progress=False, log=None,
                          save_predictions=True)
    folds = kfold_splits(n, k)
    assert len(seen) == k
    for fold, (c, x) in zip(folds, seen):
        assert all(np.array_equal(a, clean[i]) for a, i in zip(c, fold.train_clean))
        assert all(np.array_equal(a, noisy[i]) for a, i in zip(x, fold.train_noisy))
        assert len(c) == 1 and len(x) == 2
    assert report["data_range"] == 255.0
    fold_means = [f["psnr_mean"] for f in report["folds"]]
    for f in report["folds"]:
        assert f["psnr_mean"] == pytest.approx(np.mean([r["psnr"] for r in f["images"]]))
        assert [r["index"] for r in f["images"]] == f["test"]
    assert report["psnr"] == pytest.approx(np.mean(fold_means))
    # each per-image score is skimage's on the float prediction of that fold's model
    f1 = report["folds"][0]
    i = f1["test"][0]
    pred = np.load(tmp_path / "fold1" / f"pred_{i}.npy")
    assert pred.dtype == np.float32 and pred.max() <= 255.0 and not np.allclose(pred, np.round(pred))
    assert f1["images"][0]["psnr"] == pytest.approx(
        peak_signal_noise_ratio(clean[i].astype(float), pred.astype(float), data_range=255), abs=1e-9)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["permutation"] == official_permutation(n).tolist()
    csv_lines = (tmp_path / "report.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + n + k + 1  # header, images, folds, mean
    assert (tmp_path / "report.png").exists()

    # resumable: finished folds are not retrained
    monkeypatch.setattr(iscl.api, "train", lambda *a, **k: pytest.fail("retrained a finished fold"))
    again = run_crossval(clean, noisy, k=k, config=tiny_config, out_dir=tmp_path, progress=False, log=None)
    assert again["psnr"] == pytest.approx(report["psnr"])

    # a trained model on a paired test set
    ev = evaluate_model(tmp_path / "fold1", [clean[j] for j in f1["test"]], [noisy[j] for j in f1["test"]],
                        out_dir=tmp_path / "eval")
    assert ev["psnr"] == pytest.approx(f1["psnr_mean"], abs=1e-6)
    assert (tmp_path / "eval" / "report.csv").exists()


def test_read_paired_matches_file_names(tmp_path):
    import tifffile

    (tmp_path / "c").mkdir()
    (tmp_path / "n").mkdir()
    for name, v in (("b.tif", 2), ("a.tif", 1)):
        tifffile.imwrite(tmp_path / "c" / name, np.full((8, 8), v, np.uint8))
        tifffile.imwrite(tmp_path / "n" / name, np.full((8, 8), v + 10, np.uint8))
    c, n, names = crossval.read_paired(tmp_path / "c", tmp_path / "n")
    assert names == ["a.tif", "b.tif"]
    assert [int(a[0, 0]) for a in c] == [1, 2] and [int(a[0, 0]) for a in n] == [11, 12]
    tifffile.imwrite(tmp_path / "n" / "z.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="pairs"):
        crossval.read_paired(tmp_path / "c", tmp_path / "n")
