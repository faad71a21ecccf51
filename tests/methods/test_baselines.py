"""Every method runs end to end through the one contract; the baselines' own pieces do what they claim."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch

from iscl.methods import registry
from iscl.methods.base import Method, check_image
from iscl.methods.classical import BM3DUnavailableError, Identity, estimate_noise_psd, estimate_noise_sigma
from iscl.methods.supervised import _PairedStream
from synthetic import shapes_image, structured_noise

TINY = {"generator_width": 4, "generator_res_blocks": 1, "extractor_width": 4, "extractor_layers": 3,
        "discriminator_width": 4}


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny networks gain nothing from a second thread, and a spinning pool crawls on a busy machine
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    clean = [shapes_image(rng) for _ in range(3)]
    noisy = [np.clip(structured_noise(shapes_image(rng), rng), 0, 1) for _ in range(3)]
    pair_clean = [shapes_image(rng) for _ in range(3)]
    pair_noisy = [np.clip(structured_noise(c, rng), 0, 1) for c in pair_clean]
    test = np.clip(structured_noise(shapes_image(rng), rng), 0, 1).astype(np.float32)
    return {"clean": clean, "noisy": noisy, "pairs": (pair_noisy, pair_clean), "test": test}


_trained: dict[str, object] = {}


def _fitted(name: str, data) -> object:
    """Train each family once per session (the four ISCL rows share one model, as in the benchmark)."""
    fam = registry.family(name)
    if fam not in _trained:
        kwargs = {"network": TINY} if registry.METHODS[fam].trained else {}
        m = registry.get_method(fam, **kwargs)
        m.fit(clean=data["clean"], noisy=data["noisy"], pairs=data["pairs"], steps=3, batch_size=2, seed=0)
        _trained[fam] = m
    return registry.view(_trained[fam], name)


@pytest.mark.parametrize("name", registry.method_names())
def test_every_method_runs_through_the_contract(name, data):
    if registry.family(name).startswith("bm3d"):
        pytest.importorskip("bm3d")
    m = _fitted(name, data)
    assert isinstance(m, Method)
    assert m.name == name
    assert m.needs <= {"clean", "noisy", "pairs"}
    out = m.denoise(data["test"])
    assert out.shape == data["test"].shape and out.dtype == np.float32
    assert np.isfinite(out).all()
    if registry.METHODS[name].trained:
        assert len(m.history) == 3 and m.train_seconds > 0
    desc = m.describe()
    assert desc["name"] == name


def test_iscl_rows_are_views_of_one_model(data):
    base = _fitted("iscl", data)
    rows = {n: _fitted(n, data) for n in ("iscl", "iscl-F", "iscl-bypass", "iscl-raw")}
    assert all(r.model is base.model for r in rows.values())
    x = data["test"]
    assert np.array_equal(rows["iscl-F"].denoise(x), base.model.denoise(x, output="generator", weights="swa"))
    assert np.array_equal(rows["iscl-bypass"].denoise(x), base.model.denoise(x, output="bypass"))
    assert np.array_equal(rows["iscl-raw"].denoise(x), base.model.denoise(x, weights="raw"))
    # 3 steps: SWA starts after update int(0.6*3) = 1, so the averaged and raw F differ
    assert not np.array_equal(rows["iscl"].denoise(x), rows["iscl-raw"].denoise(x))


#: the learned baselines that train ISCL's generator with ISCL's optimiser; blindspot is left out on purpose:
#: it is Noise2Void with n2v's own U-Net and Adam (checked below as *not* sharing, and in test_blindspot.py)
SHARES_ISCL_GENERATOR_AND_OPTIMISER = ("supervised", "cyclegan")


def _shapes(net: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in net.state_dict().items()]


def _optimiser_settings(opt) -> dict:
    """Type and hyper-parameters of an optimiser (Lookahead: its k and alpha and the inner optimiser's)."""
    inner = getattr(opt, "optimizer", opt)
    group = inner.param_groups[0]
    settings = {"type": type(inner), "wrapper": type(opt) if inner is not opt else None,
                "lookahead": (opt.k, opt.alpha) if inner is not opt else None}
    settings.update({k: group[k] for k in ("initial_lr", "betas", "eps", "weight_decay") if k in group})
    return settings


def test_learned_methods_share_iscls_generator_and_optimiser(data):
    """The trained networks and optimisers themselves, not the configs: supervised's and CycleGAN's predicting
    generator is ISCL's F (same class, same layers and widths), trained by ISCL's optimisers (RAdam, same lr,
    betas and eps, same schedule; CycleGAN's D with ISCL's Lookahead)."""
    from iscl.engine.iscl import ISCL
    from iscl.engine.optim import Lookahead
    from iscl.nn.generator import Generator

    iscl = _fitted("iscl", data)
    F = iscl.model.F_raw  # ISCL's trained F
    assert type(F) is Generator
    # ISCL's optimisers as its engine builds them for the same (resolved) config
    ref = ISCL(iscl.resolved.network, iscl.resolved.train)
    ref_fg, ref_d = _optimiser_settings(ref.opt_fg), _optimiser_settings(ref.opt_d)
    assert ref_fg["type"] is torch.optim.RAdam and ref_d["wrapper"] is Lookahead
    iscl_lrs = [r["lr_fg"] for r in iscl.history]
    assert len(iscl_lrs) == 3

    for name in SHARES_ISCL_GENERATOR_AND_OPTIMISER:
        m = _fitted(name, data)
        net = m.net if name == "supervised" else m.F
        assert type(net) is type(F), name
        assert _shapes(net) == _shapes(F), name  # same layers, widths and depth
        assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in F.parameters()), name
        assert net is not F, name  # its own network, trained by its own loop
        generator_opt = m.optimizers["F" if name == "supervised" else "FG"]
        assert _optimiser_settings(generator_opt) == ref_fg, name
        # the generator parameters are exactly what that optimiser updates
        trained = {id(p) for g in generator_opt.param_groups for p in g["params"]}
        assert trained >= {id(p) for p in m._live[0].parameters()}, name
        assert [r["lr"] for r in m.history] == pytest.approx(iscl_lrs), name  # the same LR schedule
        if name == "cyclegan":
            assert _optimiser_settings(m.optimizers["D"]) == ref_d

    # the blind-spot row deliberately uses n2v's U-Net and Adam, not ISCL's generator and RAdam
    bs = _fitted("blindspot", data)
    assert type(bs.net) is not Generator
    assert type(bs.optimizers["net"]) is torch.optim.Adam


def test_fit_checks_what_a_method_needs(data):
    with pytest.raises(ValueError, match="pairs"):
        registry.get_method("supervised", network=TINY).fit(noisy=data["noisy"], pairs=None, steps=1, batch_size=1)
    with pytest.raises(ValueError, match="clean"):
        registry.get_method("cyclegan", network=TINY).fit(clean=None, noisy=data["noisy"], steps=1, batch_size=1)
    with pytest.raises(RuntimeError, match="fit"):
        registry.get_method("blindspot", network=TINY).denoise(data["test"])
    with pytest.raises(ValueError, match="unknown method"):
        registry.get_method("n2v")
    with pytest.raises(ValueError, match="2-D"):
        check_image(np.zeros((2, 8, 8)))


def test_paired_stream_keeps_pairs_aligned():
    rng = np.random.default_rng(0)
    clean = [rng.random((96, 80)).astype(np.float32) for _ in range(2)]
    noisy = [c + 10.0 for c in clean]  # a pair differs by exactly 10 everywhere
    s = _PairedStream(noisy, clean, 64, True, seed=1)
    for _ in range(5):
        x, y = s.next(4)
        assert torch.allclose(x - y, torch.full_like(x, 10.0))


def test_noise_estimates_on_known_noise():
    rng = np.random.default_rng(0)
    flat = np.full((128, 128), 0.5)
    white = flat + rng.normal(0, 0.05, flat.shape)
    assert estimate_noise_sigma(white) == pytest.approx(0.05, rel=0.1)
    psd = estimate_noise_psd(white)
    assert psd.shape == white.shape
    assert np.sqrt(psd.mean() / white.size) == pytest.approx(0.05, rel=0.15)
    # correlated (blurred) noise: more power at low than at high frequencies
    from scipy.ndimage import gaussian_filter

    corr = flat + gaussian_filter(rng.normal(0, 0.2, flat.shape), 1.5)
    psd = estimate_noise_psd(corr)
    assert psd[0, 0] > 5 * psd[64, 64]
    # clipped pixels carry no noise information
    clipped = np.where(np.arange(128)[None, :] < 100, 0.0, white)
    assert estimate_noise_sigma(clipped) == pytest.approx(0.05, rel=0.2)


def test_bm3d_skips_cleanly_without_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_bm3d(name, *args, **kwargs):
        if name == "bm3d" or name.startswith("bm3d."):
            raise ImportError("No module named 'bm3d'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bm3d)
    with pytest.raises(BM3DUnavailableError, match=r"pip install iscl\[bm3d\]"):
        registry.get_method("bm3d")
    assert isinstance(registry.get_method("noisy"), Identity)


def test_bm3d_reduces_white_noise():
    pytest.importorskip("bm3d")
    rng = np.random.default_rng(1)
    clean = shapes_image(rng)
    noisy = (clean + rng.normal(0, 0.1, clean.shape)).astype(np.float32)
    out = registry.get_method("bm3d-white").denoise(noisy)
    assert np.mean((out - clean) ** 2) < 0.5 * np.mean((noisy - clean) ** 2)
