"""The ``iscl`` command line: a thin shell over the Python API (parse, call, print).

Every failure prints one line, ``iscl: error: <file or thing>: <problem>``, and exits with status 1
(2 for usage errors, 130 when interrupted); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Unpaired image denoising (ISCL) for microscopy and CT.")

_state = {"debug": False}


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"iscl: error: {message}", err=True)
    raise typer.Exit(code)


def _run(fn: Callable[[], Any]) -> Any:
    """Run a command body; turn expected failures into one-line errors."""
    from iscl.engine.iscl import NonFiniteLossError
    from iscl.errors import IsclError
    from iscl.training.checkpoint import CheckpointError

    try:
        return fn()
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        if _state["debug"]:
            raise
        _fail("interrupted; nothing was left half-written", 130)
    # ImportError: an optional format/export library is missing; its message names the pip extra
    except (IsclError, CheckpointError, NonFiniteLossError, ValueError, TypeError, OSError, ImportError) as exc:
        if _state["debug"]:
            raise
        text = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, OSError) and not isinstance(exc, IsclError) and exc.filename:
            text = f"{exc.filename}: {exc.strerror or text}"
        _fail(text)


def _precision(text: str) -> Any:
    from iscl.precision import PRECISIONS

    if text not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}; got {text!r}")
    return text


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks instead of one-line errors")] = False):
    _state["debug"] = debug


# ---------------------------------------------------------------------------------------------- train
@app.command()
def train(
    clean: Annotated[list[str], typer.Option("--clean", help="clean images: files, folders or globs (repeatable)")],
    noisy: Annotated[list[str], typer.Option("--noisy", help="noisy images of OTHER scenes: files, folders, globs")],
    out: Annotated[Path, typer.Option("--out", help="run folder: checkpoint/, log.jsonl, loss.png")],
    preset: Annotated[str | None, typer.Option(
        "--preset", help="fast (quality per CPU minute; the default on a CPU), paper (the official method; the "
        "default with --device cuda) or cpu (the previous small preset)")] = None,
    config_file: Annotated[Path | None, typer.Option(
        "--config", help="a full configuration (JSON, e.g. a checkpoint's config.json) instead of --preset")] = None,
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="training steps (default: preset)")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1)] = None,
    patch_size: Annotated[int | None, typer.Option("--patch-size", min=64)] = None,
    lr: Annotated[float | None, typer.Option("--lr", min=0.0, help="initial learning rate")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="makes a CPU run repeatable")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N")] = "cpu",
    normalization: Annotated[str, typer.Option(
        "--normalization", help="auto, percentile, fixed (with --low/--high) or ct-window")] = "auto",
    low: Annotated[float | None, typer.Option("--low", help="fixed window: value mapped to -1")] = None,
    high: Annotated[float | None, typer.Option("--high", help="fixed window: value mapped to +1")] = None,
    time_budget: Annotated[str | None, typer.Option(
        "--time-budget", help="train for this long instead of --steps, e.g. 30m, 2h, 90s (T is fixed from the "
        "measured speed of the first steps)")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(
        "--checkpoint-every", min=0, help="save every N steps (default: the config's, 0 = at the end)")] = None,
    skip_nonfinite: Annotated[bool | None, typer.Option(
        "--skip-nonfinite/--stop-nonfinite",
        help="skip updates whose loss or gradient is NaN/Inf, or stop (default: the config's, stop)")] = None,
    val_clean: Annotated[list[str] | None, typer.Option("--val-clean", help="paired validation: clean")] = None,
    val_noisy: Annotated[list[str] | None, typer.Option("--val-noisy", help="paired validation: noisy")] = None,
    channel: Annotated[int | None, typer.Option("--channel", min=0, help="channel of colour images")] = None,
    min_patch_std: Annotated[float | None, typer.Option(
        "--min-patch-std", min=0.0, help="leave out flat training patches (std on [-1, 1] below this)")] = None,
    precision: Annotated[str | None, typer.Option(
        "--precision", help="fp32 (default), bf16 or fp16 mixed precision (GPU; BIN statistics stay fp32)")] = None,
    channels_last: Annotated[bool, typer.Option("--channels-last", help="NHWC memory format")] = False,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the training step")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a run already in --out")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar")] = False,
    tensorboard: Annotated[bool | None, typer.Option(
        "--tensorboard/--no-tensorboard", help="write OUT/tb/ for `tensorboard --logdir OUT/tb`: every logged scalar "
        "and a preview of a fixed crop (default: on when the tensorboard package is installed)")] = None,
    tensorboard_every: Annotated[int | None, typer.Option(
        "--tensorboard-every", min=1, help="a preview every N steps (default: every validation period, T/20)")] = None,
    axis: Annotated[str | None, typer.Option(
        "--axis", help="patches from the Z slices of training stacks (z, the default), their (Z, W) planes (y), "
        "(Z, H) planes (x) or all three orientations (all); stored in the run's config")] = None,
) -> None:
    """Train ISCL on unpaired clean and noisy images."""

    def body():
        from iscl.config import load_config, parse_duration
        from iscl.config import preset as make_preset
        from iscl.jobs import train_files

        default = "paper" if device.startswith("cuda") else "fast"
        config = load_config(config_file) if config_file is not None else make_preset(preset or default)
        for name, value in (("steps", steps), ("batch_size", batch_size), ("patch_size", patch_size), ("lr", lr),
                            ("seed", seed), ("min_patch_std", min_patch_std)):
            if value is not None:
                setattr(config.train, name, value)
        # a flag overrides the config (file or preset) only when it is given
        if checkpoint_every is not None:
            config.train.checkpoint_every = checkpoint_every
        if skip_nonfinite is not None:
            config.train.nonfinite = "skip" if skip_nonfinite else "stop"
        if time_budget is not None:
            if steps is not None:
                raise ValueError("give --steps or --time-budget, not both")
            config.train.time_budget = parse_duration(time_budget)
        if precision is not None:
            config.train.precision = _precision(precision)
        if axis is not None:
            from iscl.data.axes import volume_axes

            volume_axes(axis)  # one line naming the choices
            config.train.axis = axis
        config.train.channels_last = channels_last or config.train.channels_last
        config.train.compile = compile_ or config.train.compile
        if config_file is None or normalization != "auto" or low is not None or high is not None:
            norm = {"mode": normalization}
            if low is not None:
                norm["low"] = low
            if high is not None:
                norm["high"] = high
            config.normalization = type(config.normalization).model_validate(norm)
        from iscl.engine import distributed

        dist_info, dev = distributed.init_from_env(device)  # torchrun: one process per GPU (or CPU rank)
        try:
            model = train_files(clean, noisy, config, out, device=dev, resume=resume, progress=not quiet,
                                val_clean=val_clean, val_noisy=val_noisy, channel=channel, overwrite=overwrite,
                                tensorboard=tensorboard, tensorboard_every=tensorboard_every)
        finally:
            distributed.shutdown()
        if dist_info.is_main:
            extra = f" on {dist_info.world_size} processes" if dist_info.enabled else ""
            typer.echo(f"trained {model.info.get('step')} steps{extra}; run in {out} "
                       "(checkpoint/, log.jsonl, loss.png)")

    _run(body)


# -------------------------------------------------------------------------------------------- denoise
@app.command()
def denoise(
    run: Annotated[Path, typer.Argument(help="run folder, checkpoint folder or model package (.zip, iscl export)")],
    inputs: Annotated[list[str], typer.Argument(help="images: files, folders or globs")],
    out: Annotated[Path, typer.Option("--out", help="output folder (or file, for one input)")],
    tile: Annotated[int | None, typer.Option(
        "--tile", min=0, help="tile side; 0 = whole image; default: whole up to 2048x2048, else 512")] = None,
    overlap: Annotated[int, typer.Option("--overlap", min=0, help="tile overlap in pixels")] = 32,
    stats_tiles: Annotated[int, typer.Option(
        "--stats-tiles", min=1, help="tiles that measure whole-image BIN statistics (all: exact)")] = 16,
    output: Annotated[str, typer.Option("--output", help="denoised, generator (F) or bypass (x - H(x))")] = "denoised",
    weights: Annotated[str | None, typer.Option("--weights", help="swa (averaged F) or raw")] = None,
    gamma: Annotated[float | None, typer.Option("--gamma", min=0.0, max=1.0, help="blend of F and x-H(x)")] = None,
    device: Annotated[str, typer.Option("--device")] = "cpu",
    precision: Annotated[str | None, typer.Option("--precision", help="fp32 (default), bf16 or fp16")] = None,
    memory_budget: Annotated[str | None, typer.Option(
        "--memory-budget", help="Zarr volumes (and stacks with --axis y|x|all): pixel data held at once per worker, "
        "e.g. 512M, 4G (default 1G)")] = None,
    scheduler: Annotated[str | None, typer.Option(
        "--scheduler", help="Zarr volumes on Dask: N local workers, or a scheduler address tcp://host:8786")] = None,
    threads_per_worker: Annotated[int, typer.Option(
        "--threads-per-worker", min=1, help="torch threads per Dask worker")] = 1,
    pyramid: Annotated[int, typer.Option(
        "--pyramid", min=0, help="OME-Zarr inputs: N more output levels, each the 2x2 mean (y, x) of the one "
        "above")] = 0,
    save_noise_map: Annotated[bool, typer.Option("--save-noise-map", help="also write <name>_noise.tif")] = False,
    channel: Annotated[int | None, typer.Option("--channel", min=0)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace existing outputs")] = False,
    keep_going: Annotated[bool, typer.Option("--keep-going", help="skip bad inputs, process the rest")] = False,
    tta: Annotated[bool | None, typer.Option(
        "--tta/--no-tta", help="test-time augmentation: average the 8 rotations/flips (8x the time; default: the "
        "model's setting, off)")] = None,
    force: Annotated[bool, typer.Option("--force", help="use a model that training marked as collapsed")] = False,
    axis: Annotated[str, typer.Option(
        "--axis", help="stacks: denoise the (H, W) slices (z), the (Z, W) planes (y), the (Z, H) planes (x), or "
        "all three orientations and average them (all: against slice-to-slice streaks; 3x the time)")] = "z",
    quiet: Annotated[bool, typer.Option("--quiet")] = False,
) -> None:
    """Denoise images with a trained model; outputs keep format, shape, dtype and metadata.

    RUN is a run folder (its best-validation model when training had validation pairs, else its last
    checkpoint) or a checkpoint folder."""

    def body():
        from iscl.api import load
        from iscl.jobs import denoise_files

        if output not in ("denoised", "generator", "bypass"):
            raise ValueError(f"--output must be denoised, generator or bypass; got {output!r}")
        if weights not in (None, "swa", "raw"):
            raise ValueError(f"--weights must be swa or raw; got {weights!r}")
        from iscl.data.axes import volume_axes

        volume_axes(axis)  # before the model is loaded
        model = load(run, device=device, force=force)
        if gamma is not None:
            model.config.predict.gamma = gamma
        if weights is not None:
            model.config.predict.weights = weights  # type: ignore[assignment]
        if precision is not None:
            model.config.predict.precision = _precision(precision)
        if tta is not None:
            model.config.predict.tta = tta
        from iscl.volumes import parse_bytes

        report = denoise_files(model, inputs, out, tile=tile, overlap=overlap, stats_tiles=stats_tiles, output=output,
                               save_noise_map=save_noise_map, overwrite=overwrite, keep_going=keep_going,
                               channel=channel, progress=not quiet,
                               memory_budget=parse_bytes(memory_budget) if memory_budget else None,
                               scheduler=scheduler, threads_per_worker=threads_per_worker, pyramid=pyramid,
                               axis=axis)
        for _src, err in report.failed:
            typer.echo(f"iscl: error: {err}", err=True)
        typer.echo(f"denoised {len(report.written)} file(s) into {out}" +
                   (f"; {len(report.failed)} failed" if report.failed else ""))
        if report.failed:
            raise typer.Exit(1)

    _run(body)


# --------------------------------------------------------------------------------------------- export
@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="run folder or checkpoint folder")],
    format_: Annotated[str, typer.Option(
        "--format", help="bmz (BioImage Model Zoo package, .zip), torchscript (.pt) or onnx (.onnx)")],
    out: Annotated[Path, typer.Option("--out", help="the file to write")],
    sample: Annotated[Path | None, typer.Option(
        "--sample", help="a noisy image (its middle slice for a stack): the package's test image and cover, and "
        "the image every export is checked on (default: a synthetic one in the training intensity window)")] = None,
    gamma: Annotated[float | None, typer.Option("--gamma", min=0.0, max=1.0, help="blend of F and x-H(x)")] = None,
    weights: Annotated[str | None, typer.Option("--weights", help="swa (averaged F) or raw")] = None,
    name: Annotated[str | None, typer.Option("--name", help="bmz: the model's name in the zoo")] = None,
    force: Annotated[bool, typer.Option("--force", help="export a model that training marked as collapsed")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing --out")] = False,
) -> None:
    """Export a trained model: a BioImage Model Zoo package (Fiji/deepImageJ, ilastik, QuPath, napari),
    TorchScript or ONNX, checked against PyTorch before it is written.

    TorchScript and ONNX take and return (1, 1, H, W) float32 on [-1, 1] (apply the run's normalizer
    yourself); the zoo package works in image units. `iscl denoise` and `iscl.load` accept the package."""

    def body():
        from iscl.exporters import export as export_model

        path = export_model(run, format_, out, overwrite=overwrite, sample=sample, gamma=gamma, weights=weights,
                            name=name, force=force)
        note = "" if format_ == "bmz" else (
            "; it takes and returns (1, 1, H, W) float32 on [-1, 1]: the run's normalizer is stored in it as "
            "iscl_config.json")
        typer.echo(f"exported {format_} model to {path}{note}")

    _run(body)


# ------------------------------------------------------------------------------------------- simulate
@app.command()
def simulate(
    name: Annotated[str, typer.Argument(help="em-film, em-charge or ct-ldct")],
    out: Annotated[Path, typer.Option("--out", help="folder for train/ test/ dataset.json")],
    n: Annotated[int | None, typer.Option("--n", min=1, help="training images per pool")] = None,
    n_test: Annotated[int | None, typer.Option("--n-test", min=1, help="paired test images")] = None,
    size: Annotated[int | None, typer.Option("--size", min=16, help="image side in pixels")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    strength: Annotated[float, typer.Option("--strength", min=0.0, help="noise strength (1 = default)")] = 1.0,
    preview: Annotated[bool, typer.Option("--preview", help="also write preview.png")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
) -> None:
    """Simulate a named dataset (unpaired training pools + paired test split) as TIFF files."""

    def body():
        from iscl.simulate.datasets import write_dataset

        summary = write_dataset(name, out, n_train=n, n_test=n_test, size=size, seed=seed, strength=strength,
                                preview=preview, overwrite=overwrite)
        typer.echo(f"wrote {name} to {out}; test split noisy vs clean: PSNR {summary['psnr']:.2f} dB, "
                   f"SSIM {summary['ssim']:.3f}")

    _run(body)


# ------------------------------------------------------------------------------------------- evaluate
@app.command()
def evaluate(
    clean: Annotated[str, typer.Option("--clean", help="clean images (folder or glob), paired with --noisy by name")],
    noisy: Annotated[str, typer.Option("--noisy", help="noisy images of the SAME scenes")],
    out: Annotated[Path, typer.Option("--out", help="report folder: report.json, report.csv")],
    run: Annotated[Path | None, typer.Argument(help="a trained run: score it instead of cross-validating")] = None,
    kfold: Annotated[int, typer.Option("--kfold", min=2, help="folds of the paper's protocol")] = 4,
    preset: Annotated[str, typer.Option("--preset", help="training preset for cross-validation")] = "paper",
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="training steps per fold")] = None,
    output: Annotated[str, typer.Option("--output", help="denoised, generator or bypass")] = "denoised",
    weights: Annotated[str | None, typer.Option("--weights", help="swa or raw F")] = None,
    device: Annotated[str, typer.Option("--device")] = "cpu",
    precision: Annotated[str | None, typer.Option(
        "--precision", help="fp32 (default), bf16 or fp16: training (cross-validation) and prediction")] = None,
    quiet: Annotated[bool, typer.Option("--quiet")] = False,
) -> None:
    """The paper's k-fold protocol on paired folders, or score a trained RUN on a paired test set."""

    def body():
        from iscl.config import preset as make_preset
        from iscl.evaluate.crossval import evaluate_model, run_crossval

        if run is not None:
            from iscl.api import load

            model = load(run, device=device)
            if precision is not None:
                model.config.predict.precision = _precision(precision)
            rep = evaluate_model(model, clean, noisy, output=output, weights=weights, out_dir=out, device=device)
        else:
            config = make_preset(preset)
            if steps is not None:
                config.train.steps = steps
            if precision is not None:
                config.train.precision = config.predict.precision = _precision(precision)
            rep = run_crossval(clean, noisy, k=kfold, config=config, out_dir=out, progress=not quiet, device=device,
                               log=None if quiet else typer.echo)
        typer.echo(f"PSNR {rep['psnr']:.2f} dB, SSIM {rep['ssim']:.4f}; report in {out}")

    _run(body)


# ------------------------------------------------------------------------------------------ benchmark
@app.command()
def benchmark(
    out: Annotated[Path, typer.Option("--out", help="results folder (resumable: finished cells are kept)")],
    datasets: Annotated[str, typer.Option("--datasets", help="comma-separated")] = "em-film,em-charge,ct-ldct",
    methods: Annotated[str | None, typer.Option("--methods", help="comma-separated (default: all)")] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="training steps, the same for every method")] = 300,
    time_budget: Annotated[str | None, typer.Option(
        "--time-budget", help="training time per learned method instead of --steps, e.g. 30m")] = None,
    preset: Annotated[str, typer.Option("--preset", help="ISCL preset of every learned method")] = "cpu",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 8,
    n_train: Annotated[int | None, typer.Option("--n-train", min=1)] = None,
    n_test: Annotated[int | None, typer.Option("--n-test", min=1)] = None,
    size: Annotated[int | None, typer.Option("--size", min=64)] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: Annotated[str, typer.Option("--device")] = "cpu",
    quiet: Annotated[bool, typer.Option("--quiet")] = False,
) -> None:
    """Every method on every simulated dataset with the same budget: results.md and figures."""

    def body():
        from iscl.config import parse_duration
        from iscl.evaluate.benchmark import run_benchmark
        from iscl.methods.registry import DEFAULT_METHODS

        names = [m.strip() for m in methods.split(",")] if methods else list(DEFAULT_METHODS)
        budget = parse_duration(time_budget) if time_budget is not None else None
        run_benchmark([d.strip() for d in datasets.split(",")], names, steps=steps, batch_size=batch_size, seed=seed,
                      time_budget=budget, preset=preset,
                      out_dir=out, n_train=n_train, n_test=n_test, size=size, device=device, progress=not quiet,
                      command="iscl " + " ".join(sys.argv[1:]), log=None if quiet else typer.echo)
        typer.echo(f"results: {out / 'results.md'}")

    _run(body)


# ----------------------------------------------------------------------------------------------- demo
@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="where data, model and results go")] = Path("demo-output"),
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="training steps (default 600)")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet")] = False,
) -> None:
    """Simulate EM film noise, train ISCL (fast preset), denoise the test images, report PSNR/SSIM."""

    def body():
        from iscl.demo import run_demo

        run_demo(out, steps=steps, seed=seed, progress=not quiet, echo=typer.echo)

    _run(body)


def main() -> None:
    """Console entry point."""
    import warnings

    from iscl.runtime import retain_freed_memory

    # our warnings are sentences for the user: one line each, without Python's source location
    warnings.formatwarning = lambda message, category, *_a, **_k: f"iscl: warning: {message}\n"
    retain_freed_memory()
    app(prog_name="iscl")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
