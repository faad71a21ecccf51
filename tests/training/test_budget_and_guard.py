"""The time budget (T fixed from measured steps) and the collapse guard (restore + half LR), on tiny runs.

Time is injected through the trainer's ``clock``: every training step "takes" exactly one second of a
fake clock, so the budget arithmetic is tested exactly, whatever the machine's speed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from iscl.data.normalize import Normalizer
from iscl.training import trainer as trainer_mod
from iscl.training.checkpoint import read_checkpoint_config


class FakeClock:
    """A clock that only moves when a training step runs (by ``step_seconds``) or when told to."""

    def __init__(self, step_seconds: float = 1.0):
        self.now = 1000.0
        self.step_seconds = step_seconds

    def __call__(self) -> float:
        return self.now


def budget_trainer(tiny_pair, config, clock, **kw):
    clean, noisy = tiny_pair
    t = trainer_mod.Trainer(config, clean, noisy, Normalizer(low=0, high=1), progress=False, clock=clock, **kw)
    step = t.model.train_step

    def timed_step(x, y, extra=()):
        clock.now += clock.step_seconds
        return step(x, y, extra)

    t.model.train_step = timed_step
    return t


def test_time_budget_ends_within_one_step_and_lr_reaches_its_minimum(tiny_pair, tiny_config, tmp_path):
    cfg = tiny_config.model_copy(deep=True)
    cfg.train.time_budget = 20.0
    cfg.train.steps = 1000  # ignored: the budget fixes T
    clock = FakeClock(1.0)
    t = budget_trainer(tiny_pair, cfg, clock, run_dir=tmp_path / "run")
    t0 = clock.now
    model = t.run()
    used = clock.now - t0
    assert 20.0 - 1.0 <= used <= 20.0  # within one step of the budget, never over it
    # calibration: 1 warm-up + 4 timed steps (undone); T steps fill the rest with a 3 % margin
    assert model.step == cfg.train.steps == int((20 - 5) / 1.03)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[0]["time_budget"]["steps"] == model.step and "T = 14 steps" in log[0]["message"]
    steps = [r for r in log if "lr_fg" in r]
    assert [r["step"] for r in steps] == list(range(1, model.step + 1))  # the calibration steps were undone
    assert steps[-1]["lr_fg"] == pytest.approx(cfg.train.min_lr) and steps[-1]["lr_h"] == pytest.approx(1e-7)
    assert steps[0]["lr_fg"] > steps[-2]["lr_fg"] > steps[-1]["lr_fg"]
    _, _, info = read_checkpoint_config(tmp_path / "run" / "checkpoint")
    assert info["time_budget"]["steps"] == model.step and info["total_steps"] == model.step


def test_time_budget_run_equals_the_same_t_given_as_steps(tiny_pair, tiny_config):
    cfg = tiny_config.model_copy(deep=True)
    cfg.train.time_budget = 12.0
    a = budget_trainer(tiny_pair, cfg, FakeClock(1.0)).run()
    plain = tiny_config.model_copy(deep=True)
    plain.train.steps = a.step
    clean, noisy = tiny_pair
    b = trainer_mod.Trainer(plain, clean, noisy, Normalizer(low=0, high=1), progress=False).run()
    for (name, p), q in zip(a.nets.named_parameters(), b.nets.parameters()):
        assert torch.equal(p, q), name


def test_time_budget_counts_validation_and_is_kept_on_resume(tiny_pair, tiny_config, tmp_path):
    cfg = tiny_config.model_copy(deep=True)
    cfg.train.time_budget = 25.0
    clean, noisy = tiny_pair
    clock = FakeClock(1.0)
    t = budget_trainer(tiny_pair, cfg, clock, run_dir=tmp_path / "run", validation=(clean[:1], noisy[:1]),
                       validate_every=2)
    validate = t.validate

    def slow_validate():
        clock.now += 0.5  # each validation "takes" half a step
        return validate()

    t.validate = slow_validate
    t0 = clock.now
    t.run(stop_at=5)
    total = t.config.train.steps
    # 5 s calibration, 0.5 s for the calibration's validation, T steps and a validation every 2 steps
    assert 5 + 0.5 + total * 1.03 + -(-total // 2) * 0.5 <= 25.0
    resumed_cfg = tiny_config.model_copy(deep=True)
    resumed_cfg.train.time_budget = 25.0
    r = trainer_mod.Trainer(resumed_cfg, clean, noisy, Normalizer(low=0, high=1), progress=False,
                            run_dir=tmp_path / "run", resume=True, validation=(clean[:1], noisy[:1]), validate_every=2)
    assert r.config.train.steps == total and r.model.step == 5
    r.run()
    assert r.model.step == total and clock.now - t0 < 25.0


def test_time_budget_too_short_is_a_clear_error(tiny_pair, tiny_config):
    cfg = tiny_config.model_copy(deep=True)
    cfg.train.time_budget = 5.5
    with pytest.raises(ValueError, match="too short.*one training step takes 1.00 s"):
        budget_trainer(tiny_pair, cfg, FakeClock(1.0)).run()


def sabotage_F(trainer, at_steps):
    """Make F's output constant (zero head weights and bias: tanh(0) = 0) after the given steps."""
    step = trainer.model.train_step

    def wrapped(x, y, extra=()):
        out = step(x, y, extra)
        if trainer.model.step in at_steps:
            with torch.no_grad():
                trainer.model.nets.F.head.weight.zero_()
                trainer.model.nets.F.head.bias.zero_()
        return out

    trainer.model.train_step = wrapped


def guard_config(tiny_config, **kw):
    cfg = tiny_config.model_copy(deep=True)
    cfg.train.collapse_guard = True
    cfg.train.guard_patience = 3
    cfg.train.steps = 14
    cfg.train.nonfinite = "skip"  # a constant F gives D's normalization a zero variance: skip those updates
    for k, v in kw.items():
        setattr(cfg.train, k, v)
    return cfg


def test_collapse_guard_restores_the_last_good_state_and_halves_the_lr(tiny_pair, tiny_config, tmp_path):
    cfg = guard_config(tiny_config)
    clean, noisy = tiny_pair
    t = trainer_mod.Trainer(cfg, clean, noisy, Normalizer(low=0, high=1), progress=False, run_dir=tmp_path / "run")
    snapshots = {}
    original = t._guard

    def spy(record):
        original(record)
        if t._good_state is not None:
            snapshots[t._good_state["step"]] = t._good_state
    t._guard = spy
    # F zeroed after steps 7-9, so constant in steps 8, 9, 10 (its updates are skipped: infinite gradients)
    sabotage_F(t, set(range(7, 10)))
    t.run(stop_at=10)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    guards = [r for r in log if "guard" in r]
    assert len(guards) == 1 and guards[0]["step"] == 10  # 3 constant steps: 8, 9, 10
    assert "restored the weights of step 6" in guards[0]["guard"]
    assert t.guard["restarts"] == 1 and t.guard["lr_scale"] == 0.5
    # the weights are those of the last good state (step 6: two healthy stretches of 3 steps)
    good = snapshots[6]["nets"]
    now = t.model.nets.state_dict()
    assert all(torch.equal(now[k], good[k]) for k in good)
    assert float(t.model.nets.F.head.weight.detach().abs().sum()) > 0
    # every rate is half of what the schedule gives at this step
    sched = t.model.sched_fg
    expected = 0.5 * cfg.train.lr * sched.lr_lambdas[0](sched.last_epoch)
    assert t.model.opt_fg.param_groups[0]["lr"] == pytest.approx(expected)
    assert t.model.opt_d.param_groups[0]["lr"] == pytest.approx(expected)
    t.run()
    after = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()][-1]
    assert after["lr_fg"] == pytest.approx(0.5 * cfg.train.min_lr)


def test_resume_after_a_guard_restart_is_exact(tiny_pair, tiny_config, tmp_path):
    clean, noisy = tiny_pair
    cfg = guard_config(tiny_config)

    def make(run_dir, resume=False):
        t = trainer_mod.Trainer(guard_config(tiny_config), clean, noisy, Normalizer(low=0, high=1), progress=False,
                                run_dir=run_dir, resume=resume)
        sabotage_F(t, {7, 8, 9})
        return t

    straight = make(tmp_path / "a")
    straight.run()
    split = make(tmp_path / "b")
    split.run(stop_at=12)  # after the restart at step 9
    assert split.guard["restarts"] == 1
    resumed = make(tmp_path / "b", resume=True)
    assert resumed.guard["restarts"] == 1 and resumed.model.step == 12
    resumed.run()
    assert resumed.model.step == straight.model.step == cfg.train.steps
    for (name, p), q in zip(straight.model.nets.named_parameters(), resumed.model.nets.parameters()):
        assert torch.equal(p, q), name
    assert straight.model.opt_fg.param_groups[0]["lr"] == resumed.model.opt_fg.param_groups[0]["lr"]


def test_guard_gives_up_with_one_line_error_and_keeps_the_last_good_state(tiny_pair, tiny_config, tmp_path):
    cfg = guard_config(tiny_config, guard_max_restarts=1)
    clean, noisy = tiny_pair
    t = trainer_mod.Trainer(cfg, clean, noisy, Normalizer(low=0, high=1), progress=False, run_dir=tmp_path / "run")
    sabotage_F(t, set(range(7, 14)))  # F is broken after every step: no restart can help
    with pytest.raises(trainer_mod.CollapseError, match="collapsed .*constant generator.*after 1 restart") as err:
        t.run()
    assert "\n" not in str(err.value)
    _, _, info = read_checkpoint_config(tmp_path / "run" / "checkpoint")
    assert "collapsed" not in info and info["collapse_guard"]["restarts"] == 1
    import iscl

    model = iscl.load(tmp_path / "run")  # the last good state is usable
    assert model.F_raw.head.weight.abs().sum() > 0


def test_collapsed_model_is_marked_and_refused_unless_forced(tiny_pair, tiny_config, tmp_path):
    import iscl
    from iscl.training.checkpoint import CheckpointError

    cfg = tiny_config.model_copy(deep=True)
    cfg.train.steps, cfg.train.guard_patience = 10, 3  # no guard: the collapse is only recorded
    cfg.train.nonfinite = "skip"
    clean, noisy = tiny_pair
    t = trainer_mod.Trainer(cfg, clean, noisy, Normalizer(low=0, high=1), progress=False, run_dir=tmp_path / "run")
    sabotage_F(t, set(range(5, 11)))
    t.run()
    _, _, info = read_checkpoint_config(tmp_path / "run" / "checkpoint")
    assert "constant generator" in info["collapsed"]
    with pytest.raises(CheckpointError, match="collapsed during training.*--force"):
        iscl.load(tmp_path / "run")
    assert iscl.load(tmp_path / "run", force=True).info["collapsed"]


def test_select_prediction_picks_gamma_and_weights_on_validation(tiny_pair, tiny_config, tmp_path):
    import iscl

    cfg = tiny_config.model_copy(deep=True)
    cfg.train.select_prediction = True
    clean, noisy = tiny_pair
    t = trainer_mod.Trainer(cfg, clean, noisy, Normalizer(low=0, high=1), progress=False, run_dir=tmp_path / "run",
                            validation=(clean[:2], noisy[:2]), validate_every=3)
    t.run()
    choice = t.prediction_choice
    assert choice["gamma"] in trainer_mod.GAMMAS and choice["weights"] in ("swa", "raw")
    # the choice is the best of the grid: recompute every candidate by hand
    from iscl.metrics import psnr
    from iscl.predict import predict_image

    def score(g, F_net):
        return np.mean([psnr(c, predict_image(F_net, t.model.nets.H, n, gamma=g)["denoised"], data_range=2.0)
                        for c, n in zip(clean[:2], noisy[:2])])

    nets = {"swa": t.model.prediction_F("swa"), "raw": t.model.nets.F}
    best = max(score(g, nets[w]) for g in trainer_mod.GAMMAS for w in nets)
    assert choice["val_psnr"] == pytest.approx(best, abs=1e-4)
    # the best model is saved with its choice and is what a run folder loads
    model = iscl.load(tmp_path / "run")
    assert model.config.predict.gamma in trainer_mod.GAMMAS
    assert str(model.info.get("step")) and (tmp_path / "run" / "best").is_dir()


def test_a_new_run_removes_an_older_runs_best_model(tiny_pair, tiny_config, tmp_path):
    import iscl

    clean, noisy = tiny_pair
    first = trainer_mod.Trainer(tiny_config, clean, noisy, Normalizer(low=0, high=1), progress=False,
                                run_dir=tmp_path / "run", validation=(clean[:1], noisy[:1]), validate_every=3)
    first.run()
    assert (tmp_path / "run" / "best").is_dir()
    assert iscl.load(tmp_path / "run").info["step"] in (3, 6)  # the best validation step
    cfg = tiny_config.model_copy(deep=True)
    cfg.train.steps = 2
    trainer_mod.Trainer(cfg, clean, noisy, Normalizer(low=0, high=1), progress=False, run_dir=tmp_path / "run").run()
    assert not (tmp_path / "run" / "best").exists()
    assert iscl.load(tmp_path / "run").info["step"] == 2  # not the older run's best model
