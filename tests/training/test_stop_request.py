"""Trainer.request_stop: a cooperative stop (a GUI's Stop button) leaves a checkpoint that resumes exactly."""

from __future__ import annotations

import json

import torch

import iscl
from iscl.training.checkpoint import load_train_state, read_checkpoint_config


def test_request_stop_saves_a_checkpoint_that_resumes_exactly(tiny_pair, tiny_config, tmp_path):
    clean, noisy = tiny_pair
    straight = tmp_path / "straight"
    iscl.train(clean, noisy, tiny_config, run_dir=straight, progress=False)

    def stop_at_step_3(trainer, record):
        if record["step"] == 3:
            trainer.request_stop()

    stopped = tmp_path / "stopped"
    model = iscl.train(clean, noisy, tiny_config, run_dir=stopped, progress=False, on_step=stop_at_step_3)
    assert read_checkpoint_config(stopped / "checkpoint")[2]["step"] == 3
    assert not model.trainer._stop.is_set()  # cleared on return: the request does not outlive the run
    iscl.train(clean, noisy, tiny_config, run_dir=stopped, progress=False, resume=True)

    assert read_checkpoint_config(stopped / "checkpoint")[2]["step"] == tiny_config.train.steps
    a = load_train_state(straight / "checkpoint")["iscl"]["nets"]
    b = load_train_state(stopped / "checkpoint")["iscl"]["nets"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [json.loads(x)["step"] for x in (stopped / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, tiny_config.train.steps + 1))


def test_request_before_run_stops_before_the_first_step(tiny_pair, tiny_config, tmp_path):
    from iscl.data.normalize import Normalizer
    from iscl.training.trainer import Trainer

    clean, noisy = tiny_pair
    t = Trainer(tiny_config, clean, noisy, Normalizer(low=0, high=1), run_dir=tmp_path / "run", progress=False)
    t.request_stop()
    t.run()
    assert t.model.step == 0 and (tmp_path / "run" / "checkpoint").is_dir()
    t.run(stop_at=2)  # the request was used up: the next run trains
    assert t.model.step == 2
