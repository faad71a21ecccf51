"""The three ISCL sub-steps: who is updated, rho stays in [0, 1], and the D → F/G → H order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iscl.engine.iscl import ISCL, NonFiniteLossError, blend
from iscl.nn import BatchInstanceNorm

NETS = ("F", "G", "H", "D_X", "D_Y")


def snapshot(model: ISCL) -> dict[str, list[torch.Tensor]]:
    return {name: [p.detach().clone() for p in getattr(model.nets, name).parameters()] for name in NETS}


def changed(before, model: ISCL) -> set[str]:
    out = set()
    for name in NETS:
        now = list(getattr(model.nets, name).parameters())
        if any(not torch.equal(a, b) for a, b in zip(before[name], now)):
            out.add(name)
    return out


@pytest.fixture
def model_and_batch(tiny_config):
    torch.manual_seed(0)
    m = ISCL(tiny_config.network, tiny_config.train, generator=torch.Generator().manual_seed(0))
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    y = torch.rand(2, 1, 64, 64) * 2 - 1
    return m, x, y


@pytest.mark.parametrize(("step", "owners"), [("d_step", {"D_X", "D_Y"}), ("fg_step", {"F", "G"}), ("h_step", {"H"})])
def test_each_substep_changes_only_its_networks(model_and_batch, step, owners):
    m, x, y = model_and_batch
    before = snapshot(m)
    getattr(m, step)(x, y)
    assert changed(before, m) == owners
    # frozen networks must not even collect gradients they would later apply
    for name in set(NETS) - owners:
        assert all(p.grad is None for p in getattr(m.nets, name).parameters())


def test_rho_is_clamped_to_unit_interval(model_and_batch):
    m, x, y = model_and_batch
    with torch.no_grad():  # push every rho out of range; one step of each optimizer must bring it back
        for i, norm in enumerate(n for n in m.nets.modules() if isinstance(n, BatchInstanceNorm)):
            norm.rho.fill_(1.7 if i % 2 else -0.4)
    m.train_step(x, y)
    rhos = torch.cat([n.rho.detach() for n in m.nets.modules() if isinstance(n, BatchInstanceNorm)])
    assert rhos.min() >= 0.0 and rhos.max() <= 1.0


def test_train_step_runs_d_then_fg_then_h(model_and_batch, tiny_config):
    m, x, y = model_and_batch
    manual = ISCL(tiny_config.network, tiny_config.train, generator=torch.Generator().manual_seed(0))
    record = m.train_step(x, y)
    d = manual.d_step(x, y)
    g = manual.fg_step(x, y)
    h = manual.h_step(x, y)
    for name, value in {**d, **g, **h}.items():
        assert record[name] == pytest.approx(float(value.detach()), abs=1e-6), name
    for a, b in zip(m.nets.parameters(), manual.nets.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert m.step == 1
    assert set(record) >= {"d_noisy", "d_clean", "d_boosting", "g_adv_noisy", "g_adv_clean", "g_cycle", "g_bypass",
                           "h_pseudo_noise", "h_noise_consistency", "lr_d", "lr_fg", "lr_h"}


def test_h_step_uses_updated_generators(model_and_batch):
    # pseudo-noise label must come from F *after* the F/G update of the same step
    m, x, y = model_and_batch
    m.d_step(x, y)
    m.fg_step(x, y)
    with torch.no_grad():
        expected = (m.nets.H(x) - (x - m.nets.F(x))).abs().mean().item()
    assert m.h_step(x, y)["h_pseudo_noise"].item() == pytest.approx(expected, abs=1e-6)


def test_non_finite_loss_names_step_and_term(model_and_batch):
    m, x, y = model_and_batch
    x = x.clone()
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"step 1: .*d_noisy"):
        m.train_step(x, y)


def test_blend_prediction_formula(model_and_batch):
    # the production path: predict_image (whole and tiled) blends through engine.iscl.blend
    from iscl.predict import predict_image

    m, x, _ = model_and_batch
    image = x[0, 0].numpy()
    with torch.no_grad():
        f, h = m.nets.F(x[:1])[0, 0], m.nets.H(x[:1])[0, 0]
    for gamma in (0.3, 1.0, 0.0):
        p = predict_image(m.nets.F, m.nets.H, image, gamma=gamma, outputs=("denoised", "generator", "bypass", "noise"))
        assert np.allclose(p["generator"], f, atol=1e-6) and np.allclose(p["noise"], h, atol=1e-6)
        assert np.allclose(p["bypass"], image - h.numpy(), atol=1e-6)
        assert np.allclose(p["denoised"], (gamma * f + (1 - gamma) * (image - h.numpy())).clamp(-1, 1), atol=1e-6)
    assert torch.equal(blend(torch.tensor([2.0, 0.0]), torch.tensor([0.0, -4.0]), 0.25), torch.tensor([0.5, -1.0]))


def test_skip_mode_skips_nonfinite_updates(tiny_config):
    cfg = tiny_config.model_copy(deep=True)
    cfg.train.nonfinite = "skip"
    m = ISCL(cfg.network, cfg.train, generator=torch.Generator().manual_seed(0))
    x, y = torch.rand(2, 1, 64, 64) * 2 - 1, torch.rand(2, 1, 64, 64) * 2 - 1
    x[0, 0, 5, 5] = float("inf")
    before = snapshot(m)
    record = m.train_step(x, y)
    assert record["skipped"] == "d,fg,h" and changed(before, m) == set()
    # the next, clean batch trains normally
    record = m.train_step(x.nan_to_num(posinf=0.0), y)
    assert "skipped" not in record and changed(before, m) == set(NETS)
    assert record["fg_grad_norm"] > 0 and record["f_std"] > 0


def test_fg_step_reuses_the_d_steps_noise_map(model_and_batch):
    # H is not updated between the D and F/G steps: one no-grad H(x) serves both (H runs 3 times a step)
    m, x, y = model_and_batch
    calls = []
    hook = m.nets.H.register_forward_hook(lambda *_: calls.append(1))
    m.train_step(x, y)
    assert len(calls) == 3  # d_step H(x), h_step H(x) and H(G(y))
    calls.clear()
    m.fg_step(x, y)  # on its own (no d_step on this batch before it): computes H(x) itself
    hook.remove()
    assert len(calls) == 1


def test_seeded_networks_leave_the_global_rng_alone(tiny_config):
    """ISCLNetworks' docstring: with a generator, the initialisation does not touch torch's global RNG (the
    layers' default init, which draws from it, runs inside fork_rng) and does not depend on it."""
    from iscl.engine.iscl import ISCLNetworks

    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = ISCLNetworks(tiny_config.network, torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(456)  # another global state: the same weights
    b = ISCLNetworks(tiny_config.network, torch.Generator().manual_seed(7))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    # without a generator the global RNG is the source: it advances and the weights follow it
    torch.manual_seed(123)
    ISCLNetworks(tiny_config.network)
    assert not torch.equal(torch.get_rng_state(), before)


def test_tone_term_is_added_with_its_weight_and_absent_by_default(tiny_config):
    from iscl import losses

    assert "g_tone" not in ISCL(tiny_config.network, tiny_config.train).fg_step(
        torch.zeros(2, 1, 64, 64), torch.zeros(2, 1, 64, 64))
    cfg = tiny_config.model_copy(deep=True)
    cfg.train.lowpass_weight, cfg.train.lowpass_sigma = 0.7, 1.5
    m = ISCL(cfg.network, cfg.train, generator=torch.Generator().manual_seed(0))
    x, y = torch.rand(2, 1, 64, 64) * 2 - 1, torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        expected = (losses.lowpass_fidelity(x, m.nets.F(x), 1.5) + losses.lowpass_fidelity(y, m.nets.G(y), 1.5)).item()
    rec = m.fg_step(x, y)
    assert rec["g_tone"].item() == pytest.approx(expected, rel=1e-5)
    t = cfg.train
    total = rec["g_adv_noisy"] + rec["g_adv_clean"] + t.cycle_weight * (
        rec["g_cycle"] + rec["g_bypass"] + t.identity_weight * rec.get("g_identity", 0) + 0.7 * rec["g_tone"])
    assert rec["g_total"].item() == pytest.approx(total.item(), rel=1e-5)


@pytest.mark.parametrize(("weight", "scrambled", "remaining"), [
    ("pseudo_noise_weight", "F", "h_noise_consistency"),  # H trained on G's synthetic pairs only
    ("noise_consistency_weight", "G", "h_pseudo_noise"),  # H trained on F's residual only
])
def test_a_zero_weight_makes_h_independent_of_that_terms_generator(tiny_config, weight, scrambled, remaining):
    # with the weight at 0, H's update must not depend on that generator at all: scramble it, get the same H
    cfg = tiny_config.model_copy(deep=True)
    setattr(cfg.train, weight, 0.0)
    x, y = torch.rand(2, 1, 64, 64) * 2 - 1, torch.rand(2, 1, 64, 64) * 2 - 1
    hs = []
    for scramble in (False, True):
        m = ISCL(cfg.network, cfg.train, generator=torch.Generator().manual_seed(0))
        if scramble:
            with torch.no_grad():
                for p in getattr(m.nets, scrambled).parameters():
                    p.add_(torch.randn_like(p))
        rec = m.h_step(x, y)
        assert rec["h_total"].item() == pytest.approx(rec[remaining].item())
        hs.append([p.detach().clone() for p in m.nets.H.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*hs))


def test_extractor_identity_term_is_mean_abs_h_of_the_clean_batch_with_its_weight(tiny_config):
    cfg = tiny_config.model_copy(deep=True)
    cfg.train.extractor_identity_weight, cfg.train.pseudo_noise_weight = 2.0, 0.5
    m = ISCL(cfg.network, cfg.train, generator=torch.Generator().manual_seed(0))
    x, y = torch.rand(2, 1, 64, 64) * 2 - 1, torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        expected = m.nets.H(y).abs().mean().item()
    rec = m.h_step(x, y)
    assert rec["h_no_noise"].item() == pytest.approx(expected, rel=1e-5)
    assert rec["h_total"].item() == pytest.approx(
        0.5 * rec["h_pseudo_noise"].item() + rec["h_noise_consistency"].item() + 2.0 * expected, rel=1e-5)
    assert "h_no_noise" not in ISCL(tiny_config.network, tiny_config.train).h_step(x, y)


@pytest.mark.parametrize("without_draw", [False, True])
def test_cycle_without_draw_feeds_g_zero_noise_in_the_x_cycle_only(tiny_config, without_draw):
    tiny_config.network.noise_generator_channels = 1
    tiny_config.train.cycle_without_draw = without_draw
    model = ISCL(tiny_config.network, tiny_config.train, generator=torch.Generator().manual_seed(0))
    calls: list[tuple[tuple, bool]] = []
    model.nets.G.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append((tuple(args[0].shape), kwargs.get("draw", True))), with_kwargs=True)
    x, y = torch.rand(2, 2, 1, 64, 64) * 2 - 1
    model.fg_step(x, y)
    # G(y) draws, G(F(x)) draws unless the option says otherwise
    assert [d for _, d in calls] == [True, not without_draw]


def test_renoise_term_is_h_of_y_plus_fixed_h_x_against_h_x_with_its_weight(tiny_config):
    cfg = tiny_config.model_copy(deep=True)
    cfg.train.extractor_renoise_weight = 3.0
    m = ISCL(cfg.network, cfg.train, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # a non-zero H, so that H(x) is a real noise map
        for p in m.nets.H.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, y = torch.rand(2, 1, 64, 64) * 2 - 1, torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        n = m.nets.H(x)
        expected = (m.nets.H(y + n) - n).abs().mean().item()
    rec = m.h_step(x, y)
    assert expected > 0 and rec["h_renoise"].item() == pytest.approx(expected, rel=1e-5)
    assert rec["h_total"].item() == pytest.approx(
        rec["h_pseudo_noise"].item() + rec["h_noise_consistency"].item() + 3.0 * expected, rel=1e-5)
    assert "h_renoise" not in ISCL(tiny_config.network, tiny_config.train).h_step(x, y)


def test_renoise_target_is_held_fixed(tiny_config):
    # the gradient flows through H(y + n) only, not through the target n = H(x)
    cfg = tiny_config.model_copy(deep=True)
    cfg.train.extractor_renoise_weight = 1.0
    m = ISCL(cfg.network, cfg.train, generator=torch.Generator().manual_seed(0))
    H = m.nets.H
    with torch.no_grad():
        for p in H.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, y = torch.rand(2, 1, 64, 64) * 2 - 1, torch.rand(2, 1, 64, 64) * 2 - 1
    renoise = m.h_objective(x, y, x, y)[3]
    got = torch.autograd.grad(renoise, list(H.parameters()))
    n = H(x).detach()
    want = torch.autograd.grad((H(y + n) - n).abs().mean(), list(H.parameters()))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, want))


@pytest.mark.parametrize("field,term,critic,image", [
    ("extractor_adversarial_weight", "h_adv_clean", "D_Y", lambda x, y, n: x - n),
    ("extractor_transplant_weight", "h_adv_noisy", "D_X", lambda x, y, n: y + n),
])
def test_extractor_adversarial_terms_are_minus_the_critic_on_the_pseudo_image_with_their_weight(
        tiny_config, field, term, critic, image):
    cfg = tiny_config.model_copy(deep=True)
    setattr(cfg.train, field, 0.5)
    m = ISCL(cfg.network, cfg.train, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # a non-zero H, so that the pseudo image is not x or y itself
        for p in m.nets.H.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, y = torch.rand(2, 1, 64, 64) * 2 - 1, torch.rand(2, 1, 64, 64) * 2 - 1
    D = getattr(m.nets, critic)
    d_before = [p.detach().clone() for p in D.parameters()]
    with torch.no_grad():
        expected = -D(image(x, y, m.nets.H(x))).mean().item()
    rec = m.h_step(x, y)
    assert rec[term].item() == pytest.approx(expected, rel=1e-5)
    assert rec["h_total"].item() == pytest.approx(
        rec["h_pseudo_noise"].item() + rec["h_noise_consistency"].item() + 0.5 * expected, rel=1e-5)
    # the critic is only looked at: not updated, no gradient left on it
    assert all(torch.equal(a, b) for a, b in zip(d_before, D.parameters()))
    assert all(p.grad is None and p.requires_grad for p in D.parameters())
    assert term not in ISCL(tiny_config.network, tiny_config.train).h_step(x, y)


def test_extractor_adversarial_term_changes_h_through_the_critic(tiny_config):
    # the term's gradient reaches H through the frozen D_Y: with the L1 terms weighted 0, H still moves
    cfg = tiny_config.model_copy(deep=True)
    cfg.train.pseudo_noise_weight = cfg.train.noise_consistency_weight = 0.0
    cfg.train.extractor_adversarial_weight = 1.0
    m = ISCL(cfg.network, cfg.train, generator=torch.Generator().manual_seed(0))
    x, y = torch.rand(2, 1, 64, 64) * 2 - 1, torch.rand(2, 1, 64, 64) * 2 - 1
    before = [p.detach().clone() for p in m.nets.H.parameters()]
    m.h_step(x, y)
    assert any(not torch.equal(a, b) for a, b in zip(before, m.nets.H.parameters()))


def test_blend_at_gamma_zero_equals_the_formula_and_needs_no_f():
    f, b = torch.randn(1, 1, 8, 8), torch.randn(1, 1, 8, 8) * 0.8
    assert torch.equal(blend(None, b, 0.0), (0.0 * f + 1.0 * b).clamp(-1, 1))
    assert torch.equal(blend(f, b, 0.0), blend(None, b, 0.0))
    with pytest.raises(ValueError, match="gamma 0.5"):
        blend(None, b, 0.5)


def test_flat_noise_term_is_h_against_the_known_noise_laid_on_y_with_its_weight(tiny_config):
    from iscl.engine.flat_noise import flat_block_noise

    cfg = tiny_config.model_copy(deep=True)
    cfg.train.extractor_flat_noise_weight = 2.0
    cfg.train.extractor_flat_noise_block = 32
    m = ISCL(cfg.network, cfg.train, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # a non-zero H
        for p in m.nets.H.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = (torch.rand(2, 1, 64, 64) * 2 - 1) * 0.3
    y = torch.rand(2, 1, 64, 64) * 2 - 1  # near ±1 in places: y + n is clipped there, and so is its noise
    noisy = m._flat_noisy(x, y)
    n = flat_block_noise(x, torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + 500_009), block=32)
    assert torch.equal(noisy, (y + n).clamp(-1, 1)) and not torch.equal(noisy, y + n)
    with torch.no_grad():
        expected = (m.nets.H(noisy) - (noisy - y)).abs().mean().item()
    rec = m.h_step(x, y)
    assert expected > 0 and rec["h_flat_noise"].item() == pytest.approx(expected, rel=1e-5)
    assert rec["h_total"].item() == pytest.approx(
        rec["h_pseudo_noise"].item() + rec["h_noise_consistency"].item() + 2.0 * expected, rel=1e-5)
    # the draw follows the step, so a resumed run draws the same tiles
    m.step = 7
    other = ISCL(cfg.network, cfg.train, generator=torch.Generator().manual_seed(0))
    other.step = 7
    assert torch.equal(m._flat_noisy(x, y), other._flat_noisy(x, y))
    assert not torch.equal(m._flat_noisy(x, y), noisy)
    assert "h_flat_noise" not in ISCL(tiny_config.network, tiny_config.train).h_step(x, y)
    # strips as wide as the patch, cut along each patch's lines under the 8 rotations/flips
    cfg.train.extractor_flat_noise_block, cfg.train.extractor_flat_noise_width = 8, 64
    for augment, turn in (("dihedral", True), ("flips", False)):
        cfg.train.augment = augment
        strips = ISCL(cfg.network, cfg.train, generator=torch.Generator().manual_seed(0))
        n = flat_block_noise(x, torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + 500_009), block=8,
                             width=64, turn=turn)
        assert torch.equal(strips._flat_noisy(x, y), (y + n).clamp(-1, 1))
    # ranked by the bypass x - H(x) instead of the noisy patches
    cfg.train.extractor_flat_noise_block, cfg.train.extractor_flat_noise_width = 16, 0
    cfg.train.extractor_flat_noise_guide = "bypass"
    guided = ISCL(cfg.network, cfg.train, generator=torch.Generator().manual_seed(0))
    guided.nets.H.load_state_dict(m.nets.H.state_dict())
    with torch.no_grad():
        bypass = x - guided.nets.H(x)
    seed = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + 500_009)
    n = flat_block_noise(x, seed, block=16, turn=False, guide=bypass)
    assert torch.equal(guided._flat_noisy(x, y), (y + n).clamp(-1, 1))
    assert not torch.equal(n, flat_block_noise(x, torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + 500_009),
                                               block=16))
    # matched to the clean patches' intensity
    cfg.train.extractor_flat_noise_guide, cfg.train.extractor_flat_noise_levels = "noisy", 4
    matched = ISCL(cfg.network, cfg.train, generator=torch.Generator().manual_seed(0))
    n = flat_block_noise(x, torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + 500_009), block=16,
                         turn=False, levels=4, clean=y)
    assert torch.equal(matched._flat_noisy(x, y), (y + n).clamp(-1, 1))
