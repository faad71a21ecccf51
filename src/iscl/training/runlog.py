"""A run's log: ``RUN/log.jsonl``, one JSON object per line (every loss term, rates, seconds per step,
plus a few event lines such as the time-budget plan). Written by the trainer; read here, once."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

LOG_FILE = "log.jsonl"


def read_log(path: str | os.PathLike, *, upto_step: int | None = None) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl`` file, in order; blank lines skipped.

    ``upto_step``: keep only records whose ``step`` is at most this (records without one count as 0).
    A missing file gives an empty list (a run that has not logged yet).
    """
    p = Path(path)
    if not p.exists():
        return []
    records = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    if upto_step is not None:
        records = [r for r in records if r.get("step", 0) <= upto_step]
    return records
