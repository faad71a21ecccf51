"""Data-parallel training: 2 CPU processes (gloo) train, agree, write one checkpoint, and resume."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

from iscl.config import Config, NetworkConfig, TrainConfig
from synthetic import shapes_image, structured_noise


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config() -> Config:
    return Config(network=NetworkConfig(generator_width=4, generator_res_blocks=1, extractor_width=4,
                                        extractor_layers=3, discriminator_width=4),
                  train=TrainConfig(steps=4, batch_size=2, seed=3),
                  normalization={"mode": "fixed", "low": 0, "high": 1})


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import iscl
    from iscl.engine import distributed

    info, device = distributed.init_from_env("cpu")
    assert info.world_size == world and info.rank == rank and device == "cpu"
    rng = np.random.default_rng(0)  # every rank holds the same pools; the samplers shard them
    clean = [shapes_image(rng) for _ in range(4)]
    noisy = [structured_noise(shapes_image(rng), rng) for _ in range(4)]
    run = Path(tmp) / "run"
    iscl.train(clean, noisy, _config(), run_dir=run, progress=False, stop_at=2)
    model = iscl.train(clean, noisy, _config(), run_dir=run, progress=False, resume=True)
    nets = model.trainer.model.nets.state_dict()
    torch.save({k: v.clone() for k, v in nets.items()}, Path(tmp) / f"rank{rank}.pt")
    torch.save(model.trainer.noisy._order[:4].copy(), Path(tmp) / f"order{rank}.pt")
    distributed.shutdown()


def test_two_gloo_ranks_train_identically_and_resume(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # DDP keeps every rank's weights identical
    # the ranks drew disjoint patch shards
    o0 = torch.load(tmp_path / "order0.pt", weights_only=False)
    o1 = torch.load(tmp_path / "order1.pt", weights_only=False)
    assert not set(o0.tolist()) & set(o1.tolist())
    # exactly one checkpoint, written by rank 0, and it holds the resumed, finished run
    run = tmp_path / "run"
    from iscl.training import tensorboard as tb

    assert sorted(p.name for p in run.iterdir()) == ["checkpoint", "log.jsonl"] + (["tb"] if tb.available() else [])
    if tb.available():  # TensorBoard from rank 0 only: one event file per session (first run, resume)
        assert len(list((run / "tb").iterdir())) == 2
    from iscl.training.checkpoint import load_train_state, read_checkpoint_config

    assert read_checkpoint_config(run)[2]["step"] == 4
    saved = load_train_state(run / "checkpoint")["iscl"]["nets"]
    assert all(torch.equal(saved[k], a[k]) for k in a)
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
