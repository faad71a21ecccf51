"""Trainer guards: GAN-collapse warnings and crash safety with a real SIGKILL mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from iscl.training import trainer as trainer_mod
from iscl.training.checkpoint import load_train_state, read_checkpoint_config
from synthetic import shapes_image, structured_noise


def test_collapse_watch_warns_once_after_patience(tiny_pair, tiny_config):
    clean, noisy = tiny_pair
    from iscl.data.normalize import Normalizer

    t = trainer_mod.Trainer(tiny_config, clean, noisy, Normalizer(low=0, high=1), progress=False)
    flat = {"f_std": 0.0, "d_noisy": 0.5, "d_clean": 0.5}
    warnings = [t._watch_collapse(flat) for _ in range(trainer_mod.COLLAPSE_PATIENCE + 5)]
    assert [i for i, w in enumerate(warnings) if w] == [trainer_mod.COLLAPSE_PATIENCE - 1]
    assert "constant" in warnings[trainer_mod.COLLAPSE_PATIENCE - 1]
    d_wins = {"f_std": 0.3, "d_noisy": 0.0, "d_clean": 0.0}
    warnings = [t._watch_collapse(d_wins) for _ in range(trainer_mod.COLLAPSE_PATIENCE)]
    assert warnings[-1] and "discriminators have won" in warnings[-1]
    assert t._watch_collapse({"f_std": 0.3, "d_noisy": 0.5, "d_clean": 0.5}) is None


def _train_cmd(data: Path, config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "iscl", "train", "--config", str(config), "--clean", str(data / "clean"),
            "--noisy", str(data / "noisy"), "--out", str(out), "--quiet", *extra]


def _step(run: Path) -> int:
    try:
        return read_checkpoint_config(run / "checkpoint")[2]["step"]
    except Exception:
        return 0


def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path, tiny_config):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for pool in ("clean", "noisy"):
        (data / pool).mkdir(parents=True)
        for i in range(3):
            img = shapes_image(rng) if pool == "clean" else structured_noise(shapes_image(rng), rng)
            tifffile.imwrite(data / pool / f"{i}.tif", img)
    cfg = tiny_config.model_copy(deep=True)
    cfg.train.steps = 40
    cfg.train.checkpoint_every = 2
    cfg.normalization.mode = "fixed"
    cfg.normalization.low, cfg.normalization.high = 0.0, 1.0
    config = tmp_path / "config.json"
    config.write_text(cfg.model_dump_json())
    env = dict(os.environ, OMP_NUM_THREADS="1")

    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(data, config, straight), check=True, env=env, timeout=600)

    killed = tmp_path / "killed"
    killed_at = []  # the saved step at each kill: it must fall strictly inside the run
    cmd = _train_cmd(data, config, killed)
    for target in (6, 20):  # kill twice, at different points, while it trains and checkpoints
        proc = subprocess.Popen(cmd, env=env)
        deadline = time.time() + 300
        while _step(killed) < target and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed_at.append(_step(killed))
        proc.wait()
        cmd = _train_cmd(data, config, killed, "--resume")
    # the config file's checkpoint_every=2 reaches the run (a CLI default must not override it), so both
    # kills land mid-run, after a periodic checkpoint
    assert len(killed_at) == 2 and all(0 < s < 40 for s in killed_at), killed_at
    subprocess.run(cmd, check=True, env=env, timeout=600)

    a = load_train_state(straight / "checkpoint")["iscl"]["nets"]
    b = load_train_state(killed / "checkpoint")["iscl"]["nets"]
    assert read_checkpoint_config(killed / "checkpoint")[2]["step"] == 40
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
    steps = [json.loads(x)["step"] for x in (killed / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 41))


def test_validation_psnr_is_logged_and_best_model_kept(tiny_pair, tiny_config, tmp_path):
    import iscl

    clean, noisy = tiny_pair
    rng = np.random.default_rng(5)
    val_clean = [shapes_image(rng) for _ in range(2)]
    val_noisy = [structured_noise(c, rng) for c in val_clean]
    iscl.train(clean, noisy, tiny_config, run_dir=tmp_path / "run", progress=False,
               validation=(val_clean, val_noisy))
    records = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    scores = [r["val_psnr"] for r in records if "val_psnr" in r]
    assert len(scores) == tiny_config.train.steps  # steps // 20 rounds up to every step here
    best_step = records[int(np.argmax([r.get("val_psnr", -np.inf) for r in records]))]["step"]
    assert read_checkpoint_config(tmp_path / "run" / "best")[2]["step"] == best_step
