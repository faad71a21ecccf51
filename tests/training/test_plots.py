"""Figures are drawn with matplotlib's object-oriented API: no pyplot and no global backend switch, so a
caller's backend (a notebook's inline one, a GUI) is left as it was."""

from __future__ import annotations

import json
import sys

import matplotlib
import numpy as np
import pytest
from PIL import Image

from iscl.demo import _figure
from iscl.training.plots import plot_losses


@pytest.fixture
def no_global_matplotlib(monkeypatch):
    """Fail on matplotlib.use(...) and make ``import matplotlib.pyplot`` impossible."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"library code switched the global backend: matplotlib.use{args}")

    monkeypatch.setattr(matplotlib, "use", refuse)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # import raises ImportError
    # the raw rcParams entry (matplotlib.get_backend() would resolve it, which imports pyplot)
    backend = dict.__getitem__(matplotlib.rcParams, "backend")
    yield
    assert dict.__getitem__(matplotlib.rcParams, "backend") == backend


def test_loss_plot_needs_no_pyplot_or_backend(tmp_path, no_global_matplotlib):
    log = tmp_path / "log.jsonl"
    keys = ("d_total", "d_noisy", "d_clean", "d_boosting", "g_adv_noisy", "g_adv_clean", "g_cycle", "g_bypass",
            "h_pseudo_noise", "h_noise_consistency")
    log.write_text("".join(json.dumps({"step": s, **{k: 1.0 / s for k in keys},
                                       **({"val_psnr": 20.0 + s} if s % 5 == 0 else {})}) + "\n"
                           for s in range(1, 21)))
    out = plot_losses(log, tmp_path / "loss.png")
    assert Image.open(out).size == (1512, 306)  # 4 panels of 4.2 x 3.4 inches at 90 dpi


def test_demo_figure_needs_no_pyplot_or_backend(tmp_path, no_global_matplotlib):
    imgs = [np.random.default_rng(i).random((32, 32)).astype(np.float32) for i in range(3)]
    _figure(imgs, imgs, imgs, [(10.0, 20.0)] * 3, tmp_path / "demo.png")
    assert Image.open(tmp_path / "demo.png").size == (900, 900)  # 3 x 3 panels, 9 x 9 inches at 100 dpi
