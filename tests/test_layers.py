"""The package imports one way: each layer imports only the layers below it (read from the source with ast).

A unit is a sub-package of ``iscl`` (``nn``, ``engine``, ...) or a top-level module (``config``,
``predict``, ...). Imports inside a unit are free; an import of another unit must point down this list.
docs/architecture.md draws the same list.
"""

from __future__ import annotations

import ast
from pathlib import Path

import iscl

SRC = Path(iscl.__file__).parent

# lowest first; a unit may import the units of earlier rows only
LAYERS = [
    ("_version", "errors", "metrics", "atomic"),  # leaves: no iscl imports
    ("data",),  # files, normalization, patches, tiling
    ("config",),  # typed configuration (its normalization section comes from data)
    ("nn", "losses", "precision", "runtime"),  # networks, loss functions, mixed precision, allocator
    ("engine",),  # the ISCL training step, optimizers, schedules, SWA, process groups
    ("predict",),  # whole-image and tiled prediction
    ("training", "zoo"),  # the training loop, checkpoints, plots; reading iscl's model-zoo packages
    ("api",),  # Denoiser, train, load
    ("simulate",),  # simulated EM and CT data
    ("methods",),  # the baselines and the method registry
    ("evaluate",),  # benchmark, cross-validation, reports
    ("volumes",),  # Zarr/Dask volumes
    ("jobs",),  # file-level jobs
    ("exporters",),  # BioImage Model Zoo, TorchScript and ONNX export
    ("napari_plugin",),  # the napari widgets, sample data and a plain denoise function
    ("demo",),
    ("cli",),
    ("__main__",),  # python -m iscl
    ("__init__",),  # the public facade (lazy)
]
RANK = {unit: i for i, row in enumerate(LAYERS) for unit in row}


def unit_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported_units(path: Path) -> set[str]:
    """The iscl units ``path`` imports (at module level or inside functions), resolving relative imports."""
    package = list(path.relative_to(SRC).parts[:-1])
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ["iscl", *package[: len(package) - node.level + 1]]
                names = [".".join(base + ([node.module] if node.module else [a.name])) for a in node.names]
            elif node.module == "iscl":
                names = [f"iscl.{a.name}" for a in node.names]
            elif node.module:
                names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "iscl" and len(parts) > 1:
                target = parts[1]
                # ``from iscl import X``: X is a unit, or a name of the facade
                out.add(target if target in RANK else "__init__")
    return out


def test_every_unit_has_a_layer():
    units = {unit_of(p) for p in SRC.rglob("*.py")}
    assert units <= set(RANK), f"units without a layer: {sorted(units - set(RANK))}"


def test_imports_point_down_the_layers():
    upward = []
    for path in sorted(SRC.rglob("*.py")):
        me = unit_of(path)
        for target in imported_units(path) - {me}:
            if RANK[target] >= RANK[me]:
                upward.append(f"{path.relative_to(SRC)} ({me}, layer {RANK[me]}) imports {target} "
                              f"(layer {RANK[target]})")
    assert not upward, "imports that point up or sideways:\n" + "\n".join(upward)


def test_the_walker_sees_function_level_and_relative_imports(tmp_path):
    # the check must be able to fail: a lazy upward import inside a function is found
    pkg = tmp_path / "iscl_fake" / "nn"
    pkg.mkdir(parents=True)
    f = pkg / "x.py"
    f.write_text("def g():\n    from iscl.api import load\n    from ..training import trainer\n")
    global SRC
    saved, SRC = SRC, tmp_path / "iscl_fake"
    try:
        assert imported_units(f) == {"api", "training"}
        assert unit_of(f) == "nn"
    finally:
        SRC = saved
