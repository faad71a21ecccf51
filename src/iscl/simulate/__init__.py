"""Simulated training and test data: procedural EM tissue and CT anatomy with physical noise models.

Modules (one idea each):

* :mod:`iscl.simulate.em`: clean EM tissue (:func:`em_tissue`).
* :mod:`iscl.simulate.noise`: random fields, Poisson–Gaussian shot noise, film and charge noise.
* :mod:`iscl.simulate.volume`: isotropic EM-like volumes with slice-wise streaks (:func:`em_volume`,
  :func:`slice_streak_noise`), for the ``--axis`` study.
* :mod:`iscl.simulate.ct`: CT anatomy in HU and projection-space low-dose simulation.
* :mod:`iscl.simulate.datasets`: the named, seeded, cached datasets (:func:`load_dataset`,
  :func:`write_dataset`, :data:`DATASETS`).

Names are imported on first use so that ``import iscl.simulate`` stays cheap (scikit-image is slow to
import).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "DATASETS": "datasets",
    "SimulatedDataset": "datasets",
    "load_dataset": "datasets",
    "write_dataset": "datasets",
    "em_tissue": "em",
    "em_volume": "volume",
    "slice_streak_noise": "volume",
    "film_noise": "noise",
    "charge_noise": "noise",
    "poisson_gaussian": "noise",
    "phantom_hu": "ct",
    "simulate_low_dose": "ct",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"iscl.simulate.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'iscl.simulate' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
