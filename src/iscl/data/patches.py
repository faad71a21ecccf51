"""Unpaired patch sampling with 8-fold dihedral augmentation (the paper's EM protocol, method.md §5).

Each training image contributes, for each of the 8 dihedral transforms (4 rotations × flip), its grid
of non-overlapping ``P×P`` patches whose last row/column is aligned to the image edge. Patches are
never materialised as a whole: the sampler keeps an index (image, transform, row, col) and cuts each
patch on demand, so memory stays at the size of the images themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["PatchSampler", "grid_starts", "dihedral", "DIHEDRAL", "AUGMENTATIONS", "augmentation_indices"]

# (k rotations by 90° counter-clockwise, flip left-right first)
DIHEDRAL: tuple[tuple[int, bool], ...] = tuple((k, f) for f in (False, True) for k in range(4))
# which of them an ``augment`` setting uses: all 8 (the paper), the 4 that keep rows as rows (flips
# and the half turn: noise with a scan direction, such as SEM line charging, stays along the rows), none
AUGMENTATIONS: dict[str, tuple[int, ...]] = {"dihedral": tuple(range(8)), "flips": (0, 2, 4, 6), "none": (0,)}


def dihedral(a: np.ndarray, index: int) -> np.ndarray:
    """Apply dihedral transform ``index`` (0–7) to the last two axes: ``rot90(fliplr?(a), k)``."""
    k, flip = DIHEDRAL[index]
    if flip:
        a = a[..., :, ::-1]
    return np.rot90(a, k, axes=(-2, -1))


def grid_starts(n: int, p: int, reverse: bool = False) -> np.ndarray:
    """Start offsets of non-overlapping length-``p`` windows on an axis of length ``n``.

    Windows are laid from 0 in steps of ``p``; if ``n`` is not a multiple of ``p`` one more window is
    aligned to the end (``n - p``). ``reverse=True`` lays them from the end instead (what a grid on
    the mirrored axis looks like in the original coordinates).
    """
    if n < p:
        return np.zeros(0, dtype=np.int64)
    starts = list(range(0, n - p + 1, p))
    if starts[-1] != n - p:
        starts.append(n - p)
    s = np.asarray(starts, dtype=np.int64)
    return np.sort(n - p - s) if reverse else s


def augmentation_indices(augment: bool | str) -> tuple[int, ...]:
    """The dihedral transform indices of an ``augment`` setting: True/"dihedral", "flips", False/"none"."""
    key = {True: "dihedral", False: "none"}.get(augment, augment) if isinstance(augment, bool) else augment
    try:
        return AUGMENTATIONS[key]
    except KeyError:
        raise ValueError(f"augment must be one of {sorted(AUGMENTATIONS)} (or True/False), got {augment!r}") from None


def _reversed_axes(index: int) -> tuple[bool, bool]:
    """Whether dihedral transform ``index`` reverses the original rows / columns.

    Found by transforming a 2×2 index grid: the original corner that lands at the transformed origin.
    """
    corner = int(dihedral(np.arange(4).reshape(2, 2), index)[0, 0])
    return corner // 2 == 1, corner % 2 == 1


class PatchSampler:
    """Endless, seeded stream of shuffled patch batches from one image domain.

    Parameters
    ----------
    images : sequence of 2-D float32 arrays (H_i, W_i), already normalized to [-1, 1]; sizes may differ.
    patch_size : P; images with a side smaller than P contribute nothing.
    augment : which dihedral transforms: True or ``"dihedral"`` (all 8, the paper), ``"flips"`` (the
        4 that keep rows as rows), False or ``"none"`` (identity only).
    seed, stream : the shuffle of epoch ``e`` is drawn from ``default_rng([seed, stream, e])`` (use a
        different ``stream`` per domain), so the position (epoch, offset) is the complete state:
        resuming needs no RNG pickling.
    rank, world_size : data-parallel training: every rank draws the same epoch permutation and takes
        its shard ``perm[rank::world_size]`` (the ``DistributedSampler`` rule), so ranks see disjoint
        patches.
    min_std : leave out patches whose standard deviation (in the images' units) is below this, e.g.
        air that a CT display window clips to one value (0: keep every patch, as the paper does).

    Example
    -------
    >>> s = PatchSampler([np.zeros((70, 64), np.float32)], 64, seed=0)
    >>> s.next_batch(3).shape
    (3, 1, 64, 64)
    """

    def __init__(self, images: Sequence[np.ndarray], patch_size: int, augment: bool | str = True, seed: int = 0,
                 stream: int = 0, rank: int = 0, world_size: int = 1, min_std: float = 0.0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.stream = int(stream)
        self.rank, self.world_size = int(rank), int(world_size)
        self.images = [np.asarray(im, dtype=np.float32) for im in images]
        self.patch_size = int(patch_size)
        self.seed = int(seed)
        rows = []
        p = self.patch_size
        for i, im in enumerate(self.images):
            if im.ndim != 2:
                raise ValueError(f"PatchSampler: image {i} must be 2-D, got shape {im.shape}")
            flat: dict[tuple[int, int], bool] = {}  # a patch's std does not depend on the transform
            for t in augmentation_indices(augment):
                rev_r, rev_c = _reversed_axes(t)
                for r in grid_starts(im.shape[0], p, rev_r):
                    for c in grid_starts(im.shape[1], p, rev_c):
                        if min_std > 0 and (r, c) not in flat:
                            flat[(r, c)] = bool(im[r : r + p, c : c + p].std() < min_std)
                        if not flat.get((r, c), False):
                            rows.append((i, t, r, c))
        if not rows and min_std > 0:
            raise ValueError(f"every {p}x{p} training patch has a standard deviation below {min_std}; "
                             "lower min_patch_std")
        if not rows:
            sizes = sorted({im.shape for im in self.images})
            raise ValueError(
                f"no {self.patch_size}x{self.patch_size} patch fits in any training image (sizes {sizes}); "
                "use a smaller --patch-size or larger images"
            )
        self.index = np.asarray(rows, dtype=np.int64)
        self.epoch = 0
        self.offset = 0
        self._order = self._permutation(0)

    def __len__(self) -> int:
        """Patches per epoch."""
        return len(self.index)

    def _permutation(self, epoch: int) -> np.ndarray:
        perm = np.random.default_rng([self.seed, self.stream, epoch]).permutation(len(self.index))
        return perm[self.rank :: self.world_size] if self.world_size > 1 else perm

    def patch(self, row: int) -> np.ndarray:
        """Cut patch number ``row`` of the index: (P, P) float32."""
        i, t, r, c = self.index[row]
        p = self.patch_size
        return dihedral(self.images[i][r : r + p, c : c + p], int(t))

    def next_batch(self, batch_size: int) -> np.ndarray:
        """The next ``batch_size`` patches of the shuffled stream, (B, 1, P, P) float32, contiguous."""
        out = np.empty((batch_size, 1, self.patch_size, self.patch_size), dtype=np.float32)
        for b in range(batch_size):
            if self.offset == len(self._order):
                self.epoch += 1
                self.offset = 0
                self._order = self._permutation(self.epoch)
            out[b, 0] = self.patch(int(self._order[self.offset]))
            self.offset += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "offset": self.offset, "n_patches": len(self.index), "seed": self.seed,
                "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["n_patches"]) != len(self.index) or int(state["seed"]) != self.seed:
            raise ValueError(
                f"sampler state does not match the data: saved {state['n_patches']} patches (seed "
                f"{state['seed']}), now {len(self.index)} (seed {self.seed}); resume with the same images"
            )
        if int(state.get("world_size", 1)) != self.world_size:
            raise ValueError(f"the run was saved with {state.get('world_size', 1)} processes; resume it with the same "
                             f"number (now {self.world_size})")
        self.epoch = int(state["epoch"])
        self.offset = int(state["offset"])
        self._order = self._permutation(self.epoch)
