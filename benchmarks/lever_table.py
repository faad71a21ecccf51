"""The lever table of docs/benchmark.md from the JSON lines written by ``lever_study.py``.

Usage::

    python benchmarks/lever_table.py benchmarks/results/levers/*.jsonl

One row per setting (its preset, tag and overrides), one column per (family, task): the validation PSNR
of the preset's blend (gamma 0.5 in ``cpu``, 0.25 in ``fast``), with F(x), x - H(x) and the gamma-0.25
blend (where the study scored it) in brackets; the noisy input and BM3D of each column head the table.
A run that appears twice (same tag, family, task, steps) is shown once (the last).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = [("sim", "em-film"), ("sim", "em-charge"), ("sim", "ct-ldct"), ("alt", "em-film"), ("alt", "em-charge"),
           ("alt", "ct-ldct")]


def main(paths: list[str]) -> int:
    runs: dict[tuple[str, int], dict[tuple[str, str], dict]] = {}
    settings: dict[tuple[str, int], list[str]] = {}
    refs: dict[tuple[str, str], tuple[float, float]] = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            r = json.loads(line)
            preset = r.get("preset", "cpu")
            key = (r["tag"] if preset == "cpu" else f"{preset}: {r['tag']}", r["steps"])
            runs.setdefault(key, {})[(r["family"], r["task"])] = r
            settings[key] = r["set"]
            refs[(r["family"], r["task"])] = (r["noisy"], r["bm3d"])
    cols = [c for c in COLUMNS if c in refs]
    print("| setting | steps | " + " | ".join(f"{f}/{t}" for f, t in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    print("| noisy input / BM3D | – | " + " | ".join(f"{refs[c][0]:.2f} / {refs[c][1]:.2f}" for c in cols) + " |")
    for (tag, steps), by in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        cells = []
        for c in cols:
            r = by.get(c)
            if r is None:
                cells.append("–")
            elif r.get("stopped"):
                cells.append(f"stopped ({r['stopped'].split(':')[0]})")
            else:
                f = r["final"]
                g25 = f"{f['gamma0.25']:.2f}" if "gamma0.25" in f else "–"
                cells.append(f"**{f['blend']:.2f}** ({f['F']:.2f} / {f['bypass']:.2f} / {g25})")
        over = ", ".join(s.replace("train.", "").replace("network.", "") for s in settings[(tag, steps)])
        print(f"| {tag} (`{over}`) | {steps} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
