"""The npe2 manifest: installed, valid, every command importable; the sample data napari opens."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from npe2 import PluginManifest


def test_manifest_is_installed_and_every_command_resolves():
    manifest = PluginManifest.from_distribution("iscl")  # through the napari.manifest entry point
    assert manifest.name == "iscl"
    assert {w.display_name for w in manifest.contributions.widgets} == {"Denoise (ISCL)", "Train (ISCL)"}
    assert {s.key for s in manifest.contributions.sample_data} == {"em-film", "em-charge", "ct-ldct"}
    for command in manifest.contributions.commands:
        module, name = command.python_name.split(":")
        assert callable(getattr(importlib.import_module(module), name)), command.id


@pytest.mark.parametrize("key", ["em-film", "ct-ldct"])
def test_sample_data_opens_unpaired_pools_and_a_test_pair(make_viewer, key):
    viewer = make_viewer()
    viewer.open_sample("iscl", key)
    names = [layer.name for layer in viewer.layers]
    assert names == [f"{key} clean (train)", f"{key} noisy (train)", f"{key} clean (test, ground truth)",
                     f"{key} noisy (test)"]
    train_clean, train_noisy, test_clean, test_noisy = (layer.data for layer in viewer.layers)
    assert train_clean.ndim == 3 and train_clean.shape == train_noisy.shape and test_clean.shape == (256, 256)
    assert all(a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1 for a in (train_clean, test_clean))
    assert not np.allclose(test_clean, test_noisy)


def test_npe2_validate_passes_with_imports():
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    npe2 = shutil.which("npe2", path=str(Path(sys.executable).parent))
    assert npe2 is not None
    r = subprocess.run([npe2, "validate", "iscl", "--imports"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "valid!" in r.stdout, r.stdout + r.stderr
