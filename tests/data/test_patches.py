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
