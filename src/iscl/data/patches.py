"""Unpaired patch sampling with 8-fold dihedral augmentation (the paper's EM protocol, method.md §5).

Each training image contributes, for each of the 8 dihedral transforms (4 rotations × flip), its grid
of non-overlapping ``P×P`` patches whose last row/column is aligned to the image edge. Patches are
never materialised as a whole: the sampler keeps an index (image, transform, row, col) and cuts each
patch on demand, so memory stays at the size of the images themselves.

The official code does something else, and ``augment="official"`` reproduces it for reproduction
studies (``scripts/demo_EM.py`` and ``utils/image_tool.py`` of the official repository):

* ``image_augmentation`` fills 8 slots ``(f, r)``, f in 0..1, r in 0..3, with
  ``np.flip(np.rot90(x, r), f)`` and slot (0, 0) with ``x`` itself. ``np.flip(·, 0)`` is an up-down flip,
  not "no flip", so every slot but the first is a reflection: the identity, the transpose (twice), the
  left-right flip (twice), the anti-transpose (twice) and the up-down flip (once) — never a 90°, 180°
  or 270° rotation (:data:`OFFICIAL_SLOTS`, :func:`official_transform`);
* the augmented stack is slot-major (all images in slot 0, then all in slot 1, ...), each image cut
  by ``image_division`` into its row-major grid with the last row/column aligned to the edge;
* ``tf.data.Dataset.from_tensor_slices((clean, noisy))`` pairs clean patch i with noisy patch i, and
  ``.repeat().shuffle(len(train_clean))`` shuffles with a buffer of only as many elements as there are
  clean training *images*: each draw takes a uniformly chosen element of the buffer and refills it with
  the next element of the endless sequence, so the stream is near-sequential (the patch at draw s comes
  from the sequence positions before ``s + buffer``).

iscl's default, 8-fold dihedral with a full shuffle of each epoch and independent clean and noisy
streams, is what the paper describes; ``"official"`` is what its code ran. The buffer's random draws
come from NumPy (seeded by ``seed`` alone, so the clean and noisy samplers of one run draw the same
positions and stay paired), not from TensorFlow's generator: the order is the official one in
distribution, not bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["PatchSampler", "grid_starts", "dihedral", "DIHEDRAL", "AUGMENTATIONS", "augmentation_indices",
           "OFFICIAL_SLOTS", "official_transform", "OFFICIAL_DIHEDRAL"]

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


#: the official ``image_augmentation``'s slots in its order: (f, r) = np.flip(np.rot90(x, r), axis=f),
#: except (0, 0), which is x itself
OFFICIAL_SLOTS: tuple[tuple[int, int], ...] = tuple((f, r) for f in (0, 1) for r in range(4))


def official_transform(a: np.ndarray, slot: int) -> np.ndarray:
    """The official augmentation slot ``slot`` (0–7) of a 2-D image, as its code computes it."""
    f, r = OFFICIAL_SLOTS[slot]
    return a if slot == 0 else np.flip(np.rot90(a, r), f)


def _as_dihedral(slot: int) -> int:
    """The :func:`dihedral` index that equals official slot ``slot`` (found on a 2×3 test array)."""
    a = np.arange(6).reshape(2, 3)
    ref = official_transform(a, slot)
    return next(t for t in range(8) if dihedral(a, t).shape == ref.shape and np.array_equal(dihedral(a, t), ref))


#: the :func:`dihedral` index of each official slot: identity, then reflections only (no rotation)
OFFICIAL_DIHEDRAL: tuple[int, ...] = tuple(_as_dihedral(s) for s in range(8))


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
    """The dihedral transform indices of an ``augment`` setting: True/"dihedral", "flips", False/"none", or
    "official" (the official code's 8 slots, in its order, with their repeats: :data:`OFFICIAL_DIHEDRAL`)."""
    key = {True: "dihedral", False: "none"}.get(augment, augment) if isinstance(augment, bool) else augment
    if key == "official":
        return OFFICIAL_DIHEDRAL
    try:
        return AUGMENTATIONS[key]
    except KeyError:
        raise ValueError(f"augment must be one of {sorted([*AUGMENTATIONS, 'official'])} (or True/False), "
                         f"got {augment!r}") from None


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
        4 that keep rows as rows), False or ``"none"`` (identity only), or ``"official"``: the official
        code's transforms, patch order and shuffle buffer (see the module docstring).
    seed, stream : the shuffle of epoch ``e`` is drawn from ``default_rng([seed, stream, e])`` (use a
        different ``stream`` per domain), so the position (epoch, offset) is the complete state:
        resuming needs no RNG pickling. ``"official"`` ignores ``stream`` (its clean and noisy patches
        are drawn in pairs) and resumes by replaying its buffer's draws.
    shuffle_buffer : ``"official"`` only: the buffer size (default: the number of images, as the
        official ``shuffle(len(train_clean))``).
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
                 stream: int = 0, rank: int = 0, world_size: int = 1, min_std: float = 0.0,
                 shuffle_buffer: int | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.stream = int(stream)
        self.rank, self.world_size = int(rank), int(world_size)
        self.images = [np.asarray(im, dtype=np.float32) for im in images]
        self.patch_size = int(patch_size)
        self.seed = int(seed)
        self.official = augment == "official"
        rows = []
        p = self.patch_size
        for i, im in enumerate(self.images):
            if im.ndim != 2:
                raise ValueError(f"PatchSampler: image {i} must be 2-D, got shape {im.shape}")
        if self.official:
            if min_std > 0:
                raise ValueError("augment='official' keeps every patch, as the official code does (and pairs clean "
                                 "patch i with noisy patch i); set min_patch_std to 0")
            # slot-major, then image, then the transformed image's row-major grid; (row, col) in the
            # transformed image's coordinates
            for t in OFFICIAL_DIHEDRAL:
                for i, im in enumerate(self.images):
                    h, w = dihedral(im, t).shape
                    rows += [(i, t, r, c) for r in grid_starts(h, p) for c in grid_starts(w, p)]
        for i, im in enumerate(self.images if not self.official else []):
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
        if self.official:
            self.shuffle_buffer = int(shuffle_buffer or len(self.images))
            if self.shuffle_buffer < 1:
                raise ValueError(f"shuffle_buffer must be >= 1, got {shuffle_buffer}")
            self._restart_buffer()
        else:
            self._order = self._permutation(0)

    def __len__(self) -> int:
        """Patches per epoch."""
        return len(self.index)

    def _permutation(self, epoch: int) -> np.ndarray:
        perm = np.random.default_rng([self.seed, self.stream, epoch]).permutation(len(self.index))
        return perm[self.rank :: self.world_size] if self.world_size > 1 else perm

    # ---- "official": the endless sequence 0, 1, 2, ... (patch = position mod len) through a shuffle buffer
    def _restart_buffer(self) -> None:
        self._rng = np.random.default_rng([self.seed, 2019])  # no stream: the clean and noisy draws are paired
        self._buffer = list(range(self.shuffle_buffer))
        self._next_input = self.shuffle_buffer

    def _buffer_draw(self) -> int:
        """The next position of the official stream: a uniform element of the buffer, refilled in its place."""
        j = int(self._rng.integers(len(self._buffer)))
        position, self._buffer[j] = self._buffer[j], self._next_input
        self._next_input += 1
        return position

    def next_positions(self, count: int) -> np.ndarray:
        """``"official"``: the next ``count`` positions of this rank's share of the buffered sequence (patch
        ``index[position % len(self)]``); advances the stream as :meth:`next_batch` does."""
        if not self.official:
            raise ValueError("next_positions is the stream of augment='official'")
        out = np.empty(count, dtype=np.int64)
        for k in range(count):
            draws = [self._buffer_draw() for _ in range(self.world_size)]  # ranks take turns, as DistributedSampler
            out[k] = draws[self.rank]
        self.offset += count
        return out

    def patch(self, row: int) -> np.ndarray:
        """Cut patch number ``row`` of the index: (P, P) float32."""
        i, t, r, c = self.index[row]
        p = self.patch_size
        if self.official:  # (r, c) in the transformed image, as the official code cuts after augmenting
            return dihedral(self.images[i], int(t))[r : r + p, c : c + p]
        return dihedral(self.images[i][r : r + p, c : c + p], int(t))

    def next_batch(self, batch_size: int) -> np.ndarray:
        """The next ``batch_size`` patches of the shuffled stream, (B, 1, P, P) float32, contiguous."""
        out = np.empty((batch_size, 1, self.patch_size, self.patch_size), dtype=np.float32)
        if self.official:
            for b, position in enumerate(self.next_positions(batch_size)):
                out[b, 0] = self.patch(int(position % len(self.index)))
            return out
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
        if self.official:  # replay the buffer's draws up to the saved position
            self._restart_buffer()
            for _ in range(self.offset * self.world_size):
                self._buffer_draw()
            return
        self._order = self._permutation(self.epoch)
