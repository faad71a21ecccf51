"""Unpaired patch sampling: the paper's 8-fold dihedral grid, determinism and exact resume."""

from __future__ import annotations

import numpy as np
import pytest

from iscl.data.patches import PatchSampler, dihedral, grid_starts


def test_grid_starts_align_last_patch_to_edge():
    assert grid_starts(128, 64).tolist() == [0, 64]
    assert grid_starts(150, 64).tolist() == [0, 64, 86]
    assert grid_starts(150, 64, reverse=True).tolist() == [0, 22, 86]
    assert grid_starts(63, 64).tolist() == []


def test_dihedral_group_has_eight_distinct_elements():
    a = np.arange(6).reshape(2, 3)
    assert len({dihedral(a, i).tobytes() + bytes(dihedral(a, i).shape) for i in range(8)}) == 8


def test_patch_set_equals_grid_of_every_transformed_image():
    # the paper: every image in 8 transforms, each cut into a non-overlapping grid aligned to the edges
    im = np.random.default_rng(0).random((70, 100)).astype(np.float32)
    sampler = PatchSampler([im], 32)
    got = sorted(np.ascontiguousarray(sampler.patch(r)).tobytes() for r in range(len(sampler)))
    expected = []
    for t in range(8):
        ti = np.ascontiguousarray(dihedral(im, t))
        for r in grid_starts(ti.shape[0], 32):
            for c in grid_starts(ti.shape[1], 32):
                expected.append(np.ascontiguousarray(ti[r : r + 32, c : c + 32]).tobytes())
    assert got == sorted(expected)


def test_stream_is_seeded_and_resumable():
    images = [np.random.default_rng(i).random((64, 96)).astype(np.float32) for i in range(3)]
    a = PatchSampler(images, 64, seed=3)
    b = PatchSampler(images, 64, seed=3)
    first = [a.next_batch(5) for _ in range(4)]  # crosses an epoch boundary (48 patches per epoch)
    assert all(np.array_equal(x, b.next_batch(5)) for x in first)
    c = PatchSampler(images, 64, seed=3)
    c.load_state_dict(a.state_dict())
    assert np.array_equal(c.next_batch(7), a.next_batch(7))
    assert not np.array_equal(PatchSampler(images, 64, seed=4).next_batch(5), first[0])
    assert not np.array_equal(PatchSampler(images, 64, seed=3, stream=1).next_batch(5), first[0])


def test_images_too_small_for_a_patch_are_refused():
    with pytest.raises(ValueError, match="no 64x64 patch fits"):
        PatchSampler([np.zeros((40, 200), np.float32)], 64)


def test_min_std_leaves_out_flat_patches():
    rng = np.random.default_rng(0)
    im = np.full((128, 128), -1.0, np.float32)  # four 64x64 grid cells; the top-left one stays flat
    im[64:, :] = rng.random((64, 128), dtype=np.float32)
    im[:64, 64:] = rng.random((64, 64), dtype=np.float32)
    keep_all = PatchSampler([im], 64, augment=True, seed=0)
    no_flat = PatchSampler([im], 64, augment=True, seed=0, min_std=0.01)
    assert len(keep_all) == 32 and len(no_flat) == 24  # 8 transforms x 4 cells, minus the flat cell's 8
    batch = no_flat.next_batch(24)
    assert (batch.reshape(24, -1).std(axis=1) >= 0.01).all()
    with pytest.raises(ValueError, match="every 64x64 training patch has a standard deviation below 0.5"):
        PatchSampler([np.zeros((64, 64), np.float32)], 64, min_std=0.5)


# ---- augment="official": what the official code ran (utils/image_tool.py, scripts/demo_EM.py)


def _official_reference(images: list[np.ndarray], p: int) -> list[np.ndarray]:
    """The official patch list, written out from its code: image_augmentation (out[i + n*r + 4*n*f] =
    np.flip(np.rot90(x[i], r), f), slot (0, 0) = x), then image_division (each augmented image's row-major
    grid, the last row/column taken from the end: temp[-p:])."""
    n = len(images)
    augmented = [None] * (8 * n)
    for f in range(2):
        for r in range(4):
            for i, x in enumerate(images):
                augmented[i + n * r + 4 * n * f] = x if (f, r) == (0, 0) else np.flip(np.rot90(x, r), f)
    out = []
    for a in augmented:
        rows, cols = int(np.ceil(a.shape[0] / p)), int(np.ceil(a.shape[1] / p))
        for j in range(rows):
            for k in range(cols):
                rs = slice(-p, None) if j == rows - 1 else slice(j * p, (j + 1) * p)
                cs = slice(-p, None) if k == cols - 1 else slice(k * p, (k + 1) * p)
                out.append(a[rs, cs])
    return out


def test_official_augmentation_is_the_official_patch_list():
    rng = np.random.default_rng(0)
    images = [rng.random((70, 100)).astype(np.float32) for _ in range(2)]
    s = PatchSampler(images, 32, augment="official")
    ref = _official_reference(images, 32)
    assert len(s) == len(ref)
    for row, expected in enumerate(ref):  # the same patches in the same order
        assert np.array_equal(s.patch(row), expected), row


def test_official_transforms_are_the_identity_and_reflections_only():
    from iscl.data.patches import DIHEDRAL, OFFICIAL_DIHEDRAL

    a = np.random.default_rng(1).random((5, 7))
    slots = [np.flip(np.rot90(a, r), f) if (f, r) != (0, 0) else a for f in range(2) for r in range(4)]
    assert [dihedral(a, t).tobytes() for t in OFFICIAL_DIHEDRAL] == [np.ascontiguousarray(x).tobytes() for x in slots]
    # dihedral index t is rot90(fliplr?(a), k): a reflection has the flip, a rotation (k > 0) does not
    assert OFFICIAL_DIHEDRAL[0] == 0 and all(DIHEDRAL[t][1] for t in OFFICIAL_DIHEDRAL[1:])
    assert not {1, 2, 3} & set(OFFICIAL_DIHEDRAL)  # never a 90, 180 or 270 degree rotation
    assert sorted(set(OFFICIAL_DIHEDRAL)) == [0, 4, 5, 6, 7] and len(OFFICIAL_DIHEDRAL) == 8  # 3 reflections twice


def test_official_order_is_near_sequential_and_pairs_clean_with_noisy():
    rng = np.random.default_rng(2)
    clean = [rng.random((64, 128)).astype(np.float32) for _ in range(3)]
    noisy = [rng.random((64, 128)).astype(np.float32) + 5 for _ in range(3)]
    cs = PatchSampler(clean, 64, augment="official", seed=4, stream=0)
    ns = PatchSampler(noisy, 64, augment="official", seed=4, stream=1)
    n_draws = 5 * len(cs)  # 5 passes over the 48 patches: the buffer runs across epochs (repeat, then shuffle)
    pos = cs.next_positions(n_draws)
    assert np.array_equal(ns.next_positions(n_draws), pos)  # noisy patch i with clean patch i
    # a buffer of 3 (the number of clean images): draw s comes from the positions before s + 3, no position is
    # drawn twice, and the 3 positions below n_draws + 3 not drawn yet are the ones still in the buffer
    s = np.arange(n_draws)
    assert (pos < s + 3).all()
    assert len(set(pos.tolist())) == n_draws and len(set(range(n_draws + 3)) - set(pos.tolist())) == 3
    assert np.abs(pos - s).mean() < 3  # near-sequential; a full shuffle of 48 patches would give ~16
    assert not np.array_equal(pos, s)  # but shuffled
    # the batches are those patches, and the clean and noisy batches are the same patch of each pool
    cs2 = PatchSampler(clean, 64, augment="official", seed=4)
    ns2 = PatchSampler(noisy, 64, augment="official", seed=4, stream=1)
    x, y = cs2.next_batch(10), ns2.next_batch(10)
    assert all(np.array_equal(x[b, 0], cs2.patch(int(pos[b] % len(cs2)))) for b in range(10))
    rows = [int(p_ % len(cs2)) for p_ in pos[:10]]
    assert [tuple(cs2.index[r]) for r in rows] == [tuple(ns2.index[r]) for r in rows]
    assert np.array_equal(y[:, 0], np.stack([ns2.patch(r) for r in rows]))


def test_official_stream_resumes_and_refuses_a_patch_filter():
    images = [np.random.default_rng(i).random((64, 96)).astype(np.float32) for i in range(3)]
    a = PatchSampler(images, 64, augment="official", seed=3)
    a.next_batch(11)
    b = PatchSampler(images, 64, augment="official", seed=3)
    b.load_state_dict(a.state_dict())
    assert np.array_equal(b.next_batch(9), a.next_batch(9))
    with pytest.raises(ValueError, match="min_patch_std"):
        PatchSampler(images, 64, augment="official", min_std=0.1)


def test_official_pipeline_needs_pools_of_equal_size(tiny_pair, tiny_config):
    from iscl.data.normalize import Normalizer
    from iscl.training.trainer import Trainer

    clean, noisy = tiny_pair
    tiny_config.train.augment = "official"
    t = Trainer(tiny_config, clean, noisy, Normalizer(low=0, high=1), progress=False)
    assert t.clean.official and t.noisy.official
    with pytest.raises(ValueError, match="as many clean as noisy images"):
        Trainer(tiny_config, clean, noisy[:1], Normalizer(low=0, high=1), progress=False)
