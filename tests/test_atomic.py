"""iscl.atomic: files and directories appear whole or not at all; without overwrite, one writer wins a race."""

from __future__ import annotations

import errno
import multiprocessing as mp
import os

import numpy as np
import pytest

from iscl import atomic
from iscl.data.io import create_output_like, read_image, write_image
from iscl.errors import ImageWriteError


def _hidden(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_atomic_file_publishes_on_success_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "sub" / "a.bin"
    with atomic.atomic_file(target) as f:
        f.write(b"one")
        assert not target.exists() and len(_hidden(target.parent)) == 1  # only the hidden temporary file
    assert target.read_bytes() == b"one" and _hidden(target.parent) == []
    with pytest.raises(RuntimeError), atomic.atomic_file(target) as f:
        f.write(b"half")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"one" and _hidden(target.parent) == []
    with pytest.raises(atomic.AlreadyExistsError):
        atomic.write_bytes(target, b"two", overwrite=False)
    assert target.read_bytes() == b"one" and _hidden(target.parent) == []
    atomic.write_text(target, "three")
    assert target.read_text() == "three"


def test_without_hard_links_a_checked_replace_is_used(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(atomic.os, "link", no_links)
    target = tmp_path / "a.bin"
    atomic.write_bytes(target, b"one", overwrite=False)
    with pytest.raises(atomic.AlreadyExistsError):
        atomic.write_bytes(target, b"two", overwrite=False)
    assert target.read_bytes() == b"one" and _hidden(tmp_path) == []


def test_atomic_dir_publish_refuse_replace_and_recover(tmp_path):
    final = tmp_path / "store"
    with atomic.atomic_dir(final) as tmp:
        (tmp / "x").write_text("1")
    assert (final / "x").read_text() == "1"
    with pytest.raises(atomic.AlreadyExistsError), atomic.atomic_dir(final) as tmp:
        (tmp / "x").write_text("2")
    assert (final / "x").read_text() == "1" and _hidden(tmp_path) == []
    with atomic.atomic_dir(final, overwrite=True) as tmp:
        (tmp / "x").write_text("3")
    assert (final / "x").read_text() == "3" and _hidden(tmp_path) == []
    # a crash between the two renames of a replacement leaves only the old copy: it is put back
    os.replace(final, atomic.temp_path(final, "old"))
    assert atomic.recover_dir(final) and (final / "x").read_text() == "3"
    assert not atomic.recover_dir(final)


def _race_writer(kind, target, value, barrier, results):
    """One of two processes writing the same output; both publish right after the barrier."""
    data = np.full((2, 12, 10), value, np.uint16)
    try:
        if kind == "stack":
            w = create_output_like(target, data.shape, data.dtype)
            for z in range(len(data)):
                w[z] = data[z]
            barrier.wait(timeout=60)
            w.commit()
        else:
            barrier.wait(timeout=60)
            write_image(target, data)
        results.put((value, "ok"))
    except ImageWriteError as exc:
        results.put((value, str(exc)))


@pytest.mark.parametrize("kind, suffix", [("stack", ".tif"), ("stack", ".npy"), ("whole", ".tif"), ("whole", ".npy")])
def test_two_processes_writing_one_output_one_wins(tmp_path, kind, suffix):
    ctx = mp.get_context("fork")  # the children only run numpy/tifffile code
    for attempt in range(4):
        target = tmp_path / f"out{attempt}{suffix}"
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_race_writer, args=(kind, target, v, barrier, results)) for v in (1, 2)]
        for p in procs:
            p.start()
        outcome = dict(results.get(timeout=120) for _ in procs)
        for p in procs:
            p.join(timeout=60)
        assert sorted(outcome.values()).count("ok") == 1, outcome
        winner = next(v for v, r in outcome.items() if r == "ok")
        loser = next(v for v, r in outcome.items() if r != "ok")
        assert outcome[loser] == f"{target}: exists; pass --overwrite to replace it"
        # a complete, valid file holding exactly the winner's data
        np.testing.assert_array_equal(read_image(target)[0], np.full((2, 12, 10), winner, np.uint16))
        assert _hidden(tmp_path) == []
