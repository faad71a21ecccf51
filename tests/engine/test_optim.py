"""Lookahead, the linear LR decay and the SWA start, each checked on a toy problem."""

from __future__ import annotations

import pytest
import torch

from iscl.engine.iscl import ISCL
from iscl.engine.optim import Lookahead, make_radam, make_scheduler, swa_should_update


def test_linear_decay_matches_tfa_rule():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = make_radam([p], 1e-4, (0.9, 0.999), 1e-7)
    sched = make_scheduler(opt, total_steps=20, lr=1e-4, min_lr=1e-7)
    lrs = []
    for _ in range(22):
        lrs.append(opt.param_groups[0]["lr"])
        p.grad = torch.ones(1)
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(9.5005e-5, rel=1e-9)  # the first update is already decayed by 1/T
    assert lrs[19] == pytest.approx(1e-7, rel=1e-9)  # update T uses exactly min_lr
    assert lrs[20] == pytest.approx(1e-7, rel=1e-9)  # and stays there
    steps = [lrs[i] - lrs[i + 1] for i in range(19)]
    assert max(steps) == pytest.approx(min(steps), rel=1e-6)  # linear


def test_lookahead_on_constant_gradient():
    # loss = p with SGD(lr=1): the fast weight falls by 1 per update; k=2, alpha=0.5 worked by hand
    p = torch.nn.Parameter(torch.zeros(1))
    la = Lookahead(torch.optim.SGD([p], lr=1.0), k=2, alpha=0.5)
    seen = []
    for _ in range(4):
        la.zero_grad()
        p.sum().backward()
        la.step()
        seen.append(p.item())
    # 1: -1; 2: fast -2 → slow 0 + 0.5·(-2) = -1, fast := -1; 3: -2; 4: fast -3 → slow -1 + 0.5·(-2) = -2
    assert seen == [-1.0, -1.0, -2.0, -2.0]
    assert la.slow[0].item() == -2.0


def test_lookahead_sync_leaves_inner_state_and_slow_starts_at_initial_weights():
    torch.manual_seed(0)
    start = torch.randn(3)
    plain_p = torch.nn.Parameter(start.clone())
    plain = make_radam([plain_p], 0.1, (0.9, 0.999), 1e-7)
    p = torch.nn.Parameter(start.clone())
    la = Lookahead(make_radam([p], 0.1, (0.9, 0.999), 1e-7), k=6, alpha=0.5)
    assert torch.equal(la.slow[0], start)
    for i in range(6):
        for param, opt in ((plain_p, plain), (p, la)):
            opt.zero_grad()
            (param**2).sum().backward()
            synced = opt.step()
        if i < 5:  # no sync yet: Lookahead's fast weights follow plain RAdam exactly
            assert not synced and torch.equal(p, plain_p)
    assert synced
    expected = start + 0.5 * (plain_p.detach() - start)
    assert torch.allclose(p.detach(), expected) and torch.allclose(la.slow[0], expected)
    # the inner RAdam state (moments, step count) is untouched by the sync
    assert la.optimizer.state[p]["step"].item() == 6
    assert torch.equal(la.optimizer.state[p]["exp_avg"], plain.state[plain_p]["exp_avg"])


def test_lookahead_state_round_trip():
    p = torch.nn.Parameter(torch.ones(2))
    la = Lookahead(torch.optim.SGD([p], lr=0.5), k=3)
    for _ in range(4):
        la.zero_grad()
        p.sum().backward()
        la.step()
    q = torch.nn.Parameter(p.detach().clone())
    lb = Lookahead(torch.optim.SGD([q], lr=0.5), k=3)
    lb.load_state_dict(la.state_dict())
    assert lb.updates == 4 and torch.equal(lb.slow[0], la.slow[0])


def test_swa_start_rule():
    # tfa: a snapshot after update t when t > int(0.6 T); T = 20 → first after update 13
    assert [t for t in range(1, 21) if swa_should_update(t, 20, 0.6)] == list(range(13, 21))


def test_swa_averages_F_from_the_start_step(tiny_config):
    cfg = tiny_config.model_copy(deep=True)
    cfg.train.steps = 5  # int(0.6·5) = 3 → snapshots after updates 4 and 5
    m = ISCL(cfg.network, cfg.train, generator=torch.Generator().manual_seed(0))
    x, y = torch.rand(2, 1, 64, 64) * 2 - 1, torch.rand(2, 1, 64, 64) * 2 - 1
    after = []
    for _ in range(5):
        m.train_step(x, y)
        after.append([p.detach().clone() for p in m.nets.F.parameters()])
        if m.step <= 3:
            assert m.swa_snapshots == 0
    assert m.swa_snapshots == 2
    for avg, a4, a5 in zip(m.swa_F.module.parameters(), after[3], after[4]):
        assert torch.allclose(avg, (a4 + a5) / 2, atol=1e-7)
    assert m.prediction_F("swa") is m.swa_F.module and m.prediction_F("raw") is m.nets.F
