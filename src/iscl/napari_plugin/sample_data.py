"""napari sample data: small simulated EM and CT sets from :mod:`iscl.simulate`, generated offline.

Each sample gives four layers, all float32 on [0, 1]: an unpaired training pool of clean images and
one of noisy images (different scenes: what "Train (ISCL)" needs), and a paired test image, noisy and
clean (the clean one is the ground truth, to judge a denoised result). Generated in a few seconds on
one core, then read from iscl's dataset cache (``$ISCL_CACHE_DIR`` or ``~/.cache/iscl``).
"""

from __future__ import annotations

from iscl.simulate.datasets import load_dataset

__all__ = ["em_film", "em_charge", "ct_ldct", "sample_layers", "SAMPLE_SIZES"]

#: (training images per pool, image side): small enough to generate in seconds on one core (CT's
#: projection-space simulation costs ~6x EM's per pixel, so its pools are smaller)
SAMPLE_SIZES = {"em-film": (8, 256), "em-charge": (8, 256), "ct-ldct": (2, 256)}


def sample_layers(name: str, *, n_train: int | None = None, size: int | None = None) -> list[tuple]:
    """napari LayerData tuples for the simulated dataset ``name`` (see the module docstring)."""
    default_n, default_size = SAMPLE_SIZES[name]
    ds = load_dataset(name, n_train=default_n if n_train is None else n_train, n_test=1,
                      size=default_size if size is None else size, seed=0, workers=1)
    gray = {"colormap": "gray", "contrast_limits": (0.0, 1.0)}
    return [
        (ds.train_clean, {"name": f"{name} clean (train)", "visible": False, **gray}, "image"),
        (ds.train_noisy, {"name": f"{name} noisy (train)", "visible": False, **gray}, "image"),
        (ds.test_clean[0], {"name": f"{name} clean (test, ground truth)", "visible": False, **gray}, "image"),
        (ds.test_noisy[0], {"name": f"{name} noisy (test)", **gray}, "image"),
    ]


def em_film() -> list[tuple]:
    """EM tissue under multiplicative support-film noise."""
    return sample_layers("em-film")


def em_charge() -> list[tuple]:
    """EM tissue with charging artefacts (streaks along the scan rows)."""
    return sample_layers("em-charge")


def ct_ldct() -> list[tuple]:
    """Low-dose CT slices (soft-tissue window)."""
    return sample_layers("ct-ldct")
