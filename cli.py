"""facequeue command line: train | eval | data | bench.

Entry points stay thin: each command parses options, calls into core/, partial_fc/,
dcq/ or analysis/, and ends by saying what it produced and what to run next. Errors
that are the user's to fix (bad files, bad options) print as one line, not a traceback.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

import click

from core.errors import FaceQueueError


class _Group(click.Group):
    """Turns FaceQueueError and OSError (a path that cannot be read or written) into one line and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (FaceQueueError, OSError) as exc:
            click.echo(f"error: {_one_line(exc)}", err=True)
            sys.exit(2)


def _one_line(exc: BaseException) -> str:
    """The error's own message; a DataLoader worker's re-raised error carries the worker's traceback."""
    message = str(exc)
    if "Original Traceback" in message:  # the last line is "module.ErrorType: the original message"
        last = message.strip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return message


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train face-recognition embeddings with Partial FC or Dynamic Class Queue, and analyse them."""


# -- train ------------------------------------------------------------------------------------
@main.command()
@click.option("--method", type=click.Choice(["pfc", "dcq"]), help="Partial FC or Dynamic Class Queue.")
@click.option("--data", help="'synthetic' (default), a .rec directory, a folder of identities or a list file.")
@click.option("--val", multiple=True, help="Verification .bin file (repeatable); synthetic data ships val.bin.")
@click.option("--backbone", help="tiny (CPU default), iresnet18/34/50/100, mobilefacenet.")
@click.option("--embedding-size", type=int)
@click.option("--input-size", type=int, help="Model input side; defaults to the backbone's.")
@click.option("--sample-rate", type=float, help="Partial FC: fraction of classes in each softmax.")
@click.option("--margin", type=click.Choice(["arcface", "cosface", "combined"]))
@click.option("--margin-m", type=float, help="The margin of arcface (0.5) or cosface (0.4).")
@click.option("--margin-combined", nargs=3, type=float, help="m1 m2 m3 of the combined margin.")
@click.option("--scale", type=float, help="Logit scale s.")
@click.option("--straight-through/--exact-gradient", default=None,
              help="ArcFace gradient as insightface computes it (straight through) or exact (default).")
@click.option("--center-dtype", type=click.Choice(["float32", "bfloat16"]),
              help="Partial FC: dtype of the center store and its optimizer state (bfloat16: half the memory, "
                   "stochastic rounding).")
@click.option("--pfc-sampling", type=click.Choice(["uniform", "stratified"]),
              help="Partial FC negatives: uniform (default), or stratified (fixed shapes, no host sync per step).")
@click.option("--interclass-threshold", type=float, help="Zero non-target cosines above this (duplicates).")
@click.option("--epochs", type=int)
@click.option("--max-steps", type=int, help="Stop after this many steps (the schedule still spans --epochs; 0: no "
                                           "cap).")
@click.option("--batch-size", type=int, help="Per-process batch size.")
@click.option("--accumulate", type=int, help="Micro-batches per optimizer step.")
@click.option("--lr", type=float)
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]))
@click.option("--weight-decay", type=float)
@click.option("--grad-clip", type=float, help="Max backbone gradient norm (0 disables).")
@click.option("--amp", type=click.Choice(["auto", "bf16", "off"]))
@click.option("--channels-last/--no-channels-last", default=None, help="NHWC convolutions (CUDA + bf16).")
@click.option("--compile/--no-compile", "compile_backbone", default=None, help="torch.compile the backbone.")
@click.option("--queue-size", type=float, help="DCQ: entries, or a fraction of the classes if < 1.")
@click.option("--dcq-momentum", type=float, help="DCQ: momentum of the EMA encoder.")
@click.option("--k-shot", type=int, help="DCQ: images per identity that generate a class weight.")
@click.option("--strict-k-shot", is_flag=True, default=None,
              help="DCQ: fail when an identity has fewer than k + 1 images instead of repeating images.")
@click.option("--identity-sampling", type=click.Choice(["image", "category"]),
              help="DCQ: draw batch rows uniformly over images or over identities.")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory (default runs/METHOD-TIME).")
@click.option("--resume", type=click.Path(), help="Continue the run in this directory from its checkpoint.")
@click.option("--config", "config_file", type=click.Path(), help="YAML config; flags override it.")
@click.option("--device", help="auto, cpu or cuda.")
@click.option("--seed", type=int)
@click.option("--workers", type=int, help="DataLoader workers.")
@click.option("--cache-images", type=click.Choice(["auto", "on", "off"]))
@click.option("--checkpoint-every", type=int, help="Steps between checkpoints.")
@click.option("--val-every", type=int, help="Steps between validations (0: every epoch).")
@click.option("--log-every", type=int, help="Steps between log.csv rows.")
@click.option("--identities", "synthetic_identities", type=int, help="Synthetic data: training identities.")
@click.option("--flip-noise", type=float, help="Synthetic data: fraction of flipped labels.")
@click.option("--split", type=float, help="Synthetic data: fraction of identities split in two labels.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(config_file: Optional[str], quiet: bool, **options: Any) -> None:
    """Train with Partial FC (--method pfc) or DCQ (--method dcq); with no --data, on synthetic identities."""
    from core.config import load_config, resume_config
    from core.trainer import Trainer, metrics_summary

    options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()}
    options = {k: v for k, v in options.items() if v is not None and v != []}
    if "compile_backbone" in options:  # `compile` would shadow the builtin as a parameter name
        options["compile"] = options.pop("compile_backbone")
    if "resume" in options:
        if config_file is not None:
            raise FaceQueueError("--config cannot be combined with --resume: a resumed run keeps the config it was "
                                 "trained with; give flags for what may change (--epochs, --max-steps, --val, ...)")
        run_dir, config = resume_config(options)
    else:
        config = load_config(config_file, options)
        run_dir = Path(config.out or f"runs/{config.method}-{time.strftime('%Y%m%d-%H%M%S')}")
        if (run_dir / "checkpoint.pt").exists():
            raise FaceQueueError(f"--out {run_dir} already holds a run; use --resume {run_dir} or another --out")
    started = time.perf_counter()
    trainer = Trainer(config, run_dir, progress=not quiet)
    if config.resume:
        trainer.resume(config.resume)
        if trainer.step >= trainer.last_step:
            capped = trainer.last_step < trainer.total_steps
            more = ("--max-steps beyond them (0: no cap)" if capped else
                    f"--epochs beyond its {config.epochs} (the schedule is stretched to the new end)")
            raise FaceQueueError(f"--resume {run_dir}: the run already finished its {trainer.step} steps; give "
                                 f"{more} to train on")
    metrics = trainer.fit()
    if trainer.context.is_main:
        minutes = (time.perf_counter() - started) / 60
        click.echo(f"\nTrained {config.method} for {trainer.step} steps in {minutes:.1f} min "
                   f"({trainer.num_classes} classes, {len(trainer.dataset)} images).")
        click.echo("Held-out verification:\n  " + (metrics_summary(metrics).replace("\n", "\n  ") or "(no --val)"))
        click.echo(f"Run directory: {run_dir} (checkpoint.pt, config.yaml, log.csv, loss.png, metrics.json)")
        val = trainer.val_files[0] if trainer.val_files else "F.bin"
        click.echo(f"Next: python cli.py eval {run_dir} --val {val}")


# -- eval -------------------------------------------------------------------------------------
@main.command(name="eval")
@click.argument("run", type=click.Path(exists=True))
@click.option("--val", multiple=True, required=True, help="Verification .bin file (repeatable).")
@click.option("--online", is_flag=True, help="DCQ: evaluate the online encoder instead of the momentum one.")
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", default=256, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON line shaped like metrics.json.")
def eval_command(run: str, val: tuple[str, ...], online: bool, device: str, batch_size: int, as_json: bool) -> None:
    """Verification accuracy (10-fold) and TAR@FAR of a run directory or checkpoint."""
    from core.distributed import resolve_device
    from core.evaluation import evaluate_bin, val_names
    from core.export import load_evaluation_backbone
    from core.trainer import metrics_json, metrics_summary

    torch_device = resolve_device(device)
    model, input_size = load_evaluation_backbone(run, torch_device, online=online)
    metrics = {name: evaluate_bin(model, path, input_size, torch_device, batch_size)
               for name, path in zip(val_names(val), val)}
    click.echo(metrics_json(metrics) if as_json else metrics_summary(metrics))


# -- export -----------------------------------------------------------------------------------
@main.command()
@click.argument("run", type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="File to write (e.g. model.pt).")
@click.option("--format", "fmt", type=click.Choice(["state_dict", "torchscript"]), default="state_dict",
              show_default=True, help="state_dict: insightface-style model.pt; torchscript: a traced module.")
@click.option("--online", is_flag=True, help="DCQ: export the online encoder instead of the momentum one.")
def export(run: str, out: str, fmt: str, online: bool) -> None:
    """Write a run's evaluation network (DCQ: the momentum encoder) for deployment or insightface tools."""
    from core.export import export_backbone

    input_size = export_backbone(run, out, fmt, online=online)
    click.echo(f"Wrote {out} ({fmt}, input 3x{input_size}x{input_size} in [-1, 1]).")
    if fmt == "state_dict":
        click.echo("Load it with core.backbones.build_backbone(...).load_state_dict(torch.load(path)).")


# -- analyze ----------------------------------------------------------------------------------
from analysis.commands import analyze  # noqa: E402  (click only; faiss is imported when a command runs)
from experiments.commands import experiment  # noqa: E402

main.add_command(analyze)
main.add_command(experiment)


# -- data -------------------------------------------------------------------------------------
@main.group()
def data() -> None:
    """Make and inspect datasets (.rec directories, folders, lists, .bin pair sets)."""


@data.command(name="make-synthetic")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory to create.")
@click.option("--identities", default=600, show_default=True, help="Training identities.")
@click.option("--heldout", default=100, show_default=True, help="Held-out identities for val.bin.")
@click.option("--flip-noise", default=0.0, show_default=True, help="Fraction of images given a wrong label.")
@click.option("--split", default=0.0, show_default=True, help="Fraction of identities split under two labels.")
@click.option("--min-images", default=2, show_default=True)
@click.option("--max-images", default=80, show_default=True)
@click.option("--seed", default=0, show_default=True)
def make_synthetic(out: str, identities: int, heldout: int, flip_noise: float, split: float, min_images: int,
                   max_images: int, seed: int) -> None:
    """Render long-tailed synthetic identities with known noise as train.rec + val.bin + ground_truth.json."""
    from core.data.synthetic import SyntheticConfig, make_synthetic_dataset

    summary = make_synthetic_dataset(out, SyntheticConfig(
        identities=identities, heldout_identities=heldout, flip_noise=flip_noise, split=split,
        min_images=min_images, max_images=max_images, seed=seed))
    click.echo(f"Wrote {summary['num_images']} images of {summary['num_classes']} classes to {out} "
               f"({summary.get('num_flipped', 0)} flipped labels, {summary.get('num_split_pairs', 0)} split pairs).")
    plot = Path(out).with_name(Path(out).name + "-counts.png")  # beside the dataset: regenerating replaces it whole
    click.echo(f"Next: python cli.py data inspect {out} --plot {plot}  |  "
               f"python cli.py train --method pfc --data {out}")


@data.command()
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="One JSON line.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write the images-per-class histogram here.")
def inspect(path: str, as_json: bool, plot: Optional[str]) -> None:
    """Counts of a dataset (images, classes, images per class) or of a .bin (pairs, positives)."""
    from core.data.inspect import inspect_path, plot_class_histogram

    if plot is not None and Path(plot).suffix.lower() != ".png":
        raise FaceQueueError(f"--plot {plot!r}: the histogram is a PNG; give a file name ending in .png")
    summary = inspect_path(path)
    if plot and "counts" not in summary:
        raise FaceQueueError(f"--plot {plot}: {path} holds verification pairs, not classes; the histogram of "
                             "images per class needs a dataset")
    if plot:
        plot_class_histogram(summary["counts"], plot, title=str(path))
    public = {k: v for k, v in summary.items() if k != "counts"}
    if as_json:
        keys = ("num_pairs", "num_positive_pairs") if "num_pairs" in public else ("num_images", "num_classes")
        click.echo(json.dumps({k: public[k] for k in keys}))
        return
    for key, value in public.items():
        click.echo(f"{key}: {value}")
    if plot:
        click.echo(f"histogram: {plot}")


# -- bench ------------------------------------------------------------------------------------
class _Rate(click.FloatRange):
    """A sampling rate in (0, 1]; click's range test lets nan through, since every comparison with it is false."""

    def __init__(self) -> None:
        super().__init__(0.0, 1.0, min_open=True)

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> float:
        number = super().convert(value, param, ctx)
        if number != number:
            self.fail(f"{value!r} is not a number in the range 0<x<=1.", param, ctx)
        return number


_POSITIVE = click.IntRange(min=1)
_CLASSES = click.IntRange(min=2)
_RATE = _Rate()


@main.group()
def bench() -> None:
    """Benchmarks that print side-by-side ratios (and absolute figures with the device named)."""


def _figure(result: dict[str, Any], key: str, spec: str) -> str:
    """One side's figure, or why it has none (a baseline that runs out of memory must not hide ours)."""
    if "error" not in result:
        return format(result[key], spec)
    return "out of memory" if "out of memory" in result["error"].lower() else result["error"]


@bench.command(name="pfc")
@click.option("--classes", multiple=True, type=_CLASSES, default=(100_000, 1_000_000), show_default=True)
@click.option("--sample-rate", "rates", multiple=True, type=_RATE, default=(0.1,), show_default=True)
@click.option("--batch-size", default=256, show_default=True, type=_POSITIVE)
@click.option("--dim", default=512, show_default=True, type=_POSITIVE)
@click.option("--device", default="auto", show_default=True)
@click.option("--repeats", default=5, show_default=True, type=_POSITIVE, help="Timed steps per configuration (median).")
@click.option("--center-dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True,
              help="Our center store's dtype (the baseline keeps PartialFC_V2's float32).")
@click.option("--pfc-sampling", "sampling", type=click.Choice(["uniform", "stratified"]), default="uniform",
              show_default=True, help="Our negative sampling (stratified: no host sync).")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per configuration.")
def bench_pfc(classes: tuple[int, ...], rates: tuple[float, ...], batch_size: int, dim: int, device: str,
              repeats: int, center_dtype: str, sampling: str, as_json: bool) -> None:
    """Partial FC head step time and peak memory: ours vs PartialFC_V2's dense-update semantics."""
    from benchmarks.common import device_name, format_table, run_isolated
    from benchmarks.pfc_head import check_chunked_loss, check_fast_path
    from core.distributed import resolve_device

    torch_device = resolve_device(device)
    click.echo(f"device: {device_name(torch_device)}; batch {batch_size}, D {dim}, our centers in {center_dtype}, "
               f"{sampling} sampling; "
               f"check (rate 1.0 ours vs dense, max |diff| of centers): {check_fast_path(torch_device):.2e}")
    errors = check_chunked_loss(torch_device)
    click.echo("check (chunked loss vs simple fp32, relative error): "
               + ", ".join(f"{name} {value:.1e}" for name, value in errors.items()))
    rows = []
    for num_classes in classes:
        for rate in rates:
            results = {}
            for variant in ("ours", "dense"):
                job = {"variant": variant, "classes": num_classes, "rate": rate, "batch": batch_size, "dim": dim,
                       "device": str(torch_device), "warmup": 2, "repeats": repeats, "center_dtype": center_dtype,
                       "sampling": sampling}
                results[variant] = run_isolated("benchmarks.pfc_head", job)
                if as_json:
                    click.echo(json.dumps(results[variant]))
            ours, dense = results["ours"], results["dense"]
            both = "error" not in ours and "error" not in dense
            rows.append([f"{num_classes:,}", rate, _figure(ours, "step_ms", ".1f"), _figure(dense, "step_ms", ".1f"),
                         f"{dense['step_ms'] / ours['step_ms']:.2f}x" if both else "",
                         _figure(ours, "peak_gib", ".2f"), _figure(dense, "peak_gib", ".2f"),
                         f"{dense['peak_gib'] / ours['peak_gib']:.2f}x" if both and ours["peak_gib"] > 0 else ""])
    if not as_json:
        click.echo(format_table(["classes", "rate", "ours ms", "dense ms", "speed-up", "ours peak GiB",
                                 "dense peak GiB", "memory ratio"], rows))
        click.echo("Record these in benchmarks/RESULTS.md.")


@bench.command(name="dcq")
@click.option("--classes", multiple=True, type=_CLASSES, default=(10_000, 100_000, 1_000_000), show_default=True)
@click.option("--queue-size", default=8192, show_default=True, type=_POSITIVE)
@click.option("--sample-rate", default=0.1, show_default=True, type=_RATE, help="Partial FC's rate, for comparison.")
@click.option("--batch-size", default=256, show_default=True, type=_POSITIVE)
@click.option("--dim", default=512, show_default=True, type=_POSITIVE)
@click.option("--device", default="auto", show_default=True)
@click.option("--repeats", default=5, show_default=True, type=_POSITIVE)
@click.option("--json", "as_json", is_flag=True, help="One JSON line per configuration.")
def bench_dcq(classes: tuple[int, ...], queue_size: int, sample_rate: float, batch_size: int, dim: int,
              device: str, repeats: int, as_json: bool) -> None:
    """DCQ's state and step time stay flat in the number of classes; Partial FC's grow."""
    from benchmarks.common import device_name, format_table, run_isolated
    from core.distributed import resolve_device

    torch_device = resolve_device(device)
    click.echo(f"device: {device_name(torch_device)}; batch {batch_size}, D {dim}, DCQ queue {queue_size}, "
               f"Partial FC rate {sample_rate}")
    rows = []
    for num_classes in classes:
        results = {}
        for method in ("dcq", "pfc"):
            job = {"method": method, "classes": num_classes, "queue": queue_size, "rate": sample_rate,
                   "batch": batch_size, "dim": dim, "device": str(torch_device), "warmup": 2, "repeats": repeats}
            results[method] = run_isolated("benchmarks.dcq_head", job)
            if as_json:
                click.echo(json.dumps(results[method]))
        dcq, pfc = results["dcq"], results["pfc"]
        if "error" in dcq or "error" in pfc:
            rows.append([num_classes, dcq.get("error", ""), "", "", pfc.get("error", ""), "", ""])
            continue
        rows.append([f"{num_classes:,}", f"{dcq['state_mib']:.1f}", f"{dcq['step_ms']:.1f}",
                     f"{dcq['peak_gib']:.2f}", f"{pfc['state_mib']:.1f}", f"{pfc['step_ms']:.1f}",
                     f"{pfc['peak_gib']:.2f}"])
    if not as_json:
        click.echo(format_table(["classes", "DCQ state MiB", "DCQ step ms", "DCQ peak GiB", "PFC state MiB",
                                 "PFC step ms", "PFC peak GiB"], rows))


@bench.command(name="data")
@click.option("--data", "data_path", default="synthetic", show_default=True,
              help="A dataset path, or 'synthetic' for the default set.")
@click.option("--size", default=112, show_default=True, type=click.IntRange(16, 1024),
              help="Model input size (112: no resize).")
@click.option("--workers", multiple=True, type=click.IntRange(min=0), default=(0, 2), show_default=True)
@click.option("--batch-size", default=128, show_default=True, type=_POSITIVE)
@click.option("--images", "max_images", default=4096, show_default=True, type=_POSITIVE,
              help="Images timed per setting.")
def bench_data(data_path: str, size: int, workers: tuple[int, ...], batch_size: int, max_images: int) -> None:
    """Decode + load images/s of the data pipeline with 0 and 2 workers."""
    from benchmarks.common import format_table
    from benchmarks.data_loading import images_per_second
    from core.config import TrainConfig
    from core.data.loader import synthetic_dataset_root

    if data_path == "synthetic":
        defaults = TrainConfig()
        data_path = str(synthetic_dataset_root(defaults.synthetic_identities, defaults.flip_noise, defaults.split))
    rows = [[count, f"{images_per_second(data_path, size, count, batch_size, max_images):.0f}"] for count in workers]
    click.echo(f"data: {data_path}; input {size}x{size}; batch {batch_size}")
    click.echo(format_table(["workers", "images/s"], rows))


@bench.command(name="train")
@click.option("--method", type=click.Choice(["pfc", "dcq"]), default="pfc", show_default=True)
@click.option("--processes", multiple=True, type=_POSITIVE, default=(1, 2), show_default=True,
              help="Process counts to compare (torchrun for > 1).")
@click.option("--steps", default=40, show_default=True, type=_POSITIVE)
@click.option("--batch-size", default=64, show_default=True, type=_POSITIVE, help="Per-process batch size.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--data", "data_path", default="synthetic", show_default=True)
def bench_train(method: str, processes: tuple[int, ...], steps: int, batch_size: int, device: str,
                data_path: str) -> None:
    """Training throughput (images/s) of N processes against 1, through the real trainer."""
    from benchmarks.common import format_table
    from benchmarks.train_throughput import measure

    if data_path != "synthetic":  # the runs start in the repository root
        data_path = str(Path(data_path).absolute())
    extra = ["--device", device, "--batch-size", str(batch_size), "--data", data_path, "--workers", "0"]
    figures = {count: measure(count, method, steps, extra) for count in processes}
    base = figures[processes[0]]
    rows = [[count, f"{value:.0f}", f"{value / base:.2f}x"] for count, value in figures.items()]
    click.echo(f"{method}, {device}, per-process batch {batch_size}, {steps} steps per setting")
    click.echo(format_table(["processes", "images/s (global)", f"vs {processes[0]}"], rows))


@bench.command(name="step")
@click.option("--method", "methods", multiple=True, type=click.Choice(["pfc", "dcq"]), default=("pfc", "dcq"),
              show_default=True)
@click.option("--batch-size", "batches", multiple=True, type=_POSITIVE,
              help="Per-step batch (repeatable); default 128 and 256 on CUDA, 64 on CPU.")
@click.option("--classes", type=_CLASSES, help="Labels of the head; default 1M on CUDA, 100K on CPU.")
@click.option("--sample-rate", default=0.1, show_default=True, type=_RATE, help="Partial FC rate (both sides).")
@click.option("--queue", default=8192, show_default=True, type=_POSITIVE, help="DCQ queue entries (both sides).")
@click.option("--backbone", help="Default iresnet50 on CUDA, tiny on CPU.")
@click.option("--input-size", type=click.IntRange(min=16), help="Default 112 on CUDA, 32 on CPU.")
@click.option("--device", default="auto", show_default=True)
@click.option("--compile/--no-compile", "with_compile", default=None,
              help="Include the torch.compile variant (default: on CUDA only).")
@click.option("--repeats", default=10, show_default=True, type=_POSITIVE, help="Timed steps per variant (median).")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per variant.")
def bench_step(methods: tuple[str, ...], batches: tuple[int, ...], classes: Optional[int], sample_rate: float,
               queue: int, backbone: Optional[str], input_size: Optional[int], device: str,
               with_compile: Optional[bool], repeats: int, as_json: bool) -> None:
    """Whole training step img/s: ours (each lever on its own) vs arcface_torch- and DCQ-style steps."""
    from benchmarks.common import device_name, format_table, run_isolated
    from core.distributed import resolve_device

    torch_device = resolve_device(device)
    cuda = torch_device.type == "cuda"
    batches = batches or ((128, 256) if cuda else (64,))
    classes = classes or (1_000_000 if cuda else 100_000)
    # the step's random faces come two per label: a batch of distinct labels, and DCQ's queue filled
    needed = max(max(batches), (queue + 1) // 2 if "dcq" in methods else 0)
    if classes < needed:
        raise click.BadParameter(f"{classes:,} labels are too few for a batch of {max(batches)}"
                                 + (f" and a DCQ queue of {queue}" if "dcq" in methods else "")
                                 + f"; give at least {needed:,}", param_hint="--classes")
    common = {"classes": classes, "rate": sample_rate, "queue": queue,
              "backbone": backbone or ("iresnet50" if cuda else "tiny"), "size": input_size or (112 if cuda else 32),
              "device": str(torch_device), "warmup": 3, "repeats": repeats}
    variants = {"baseline": {}, "ours fp32": {"amp": "off"}, "ours bf16": {"amp": "bf16"},
                "ours bf16 + channels_last": {"amp": "bf16", "channels_last": True},
                "ours bf16 + channels_last + compile": {"amp": "bf16", "channels_last": True, "compile": True},
                "ours bf16 + channels_last + compile + stratified": {"amp": "bf16", "channels_last": True,
                                                                     "compile": True, "pfc_sampling": "stratified"}}
    if not cuda:  # bf16 autocast is a GPU lever; on CPU it only slows the step down
        variants = {"baseline": {}, "ours fp32": {"amp": "off"},
                    "ours fp32 + channels_last": {"amp": "off", "channels_last": True},
                    "ours fp32 + compile": {"amp": "off", "compile": True}}
    if not (cuda if with_compile is None else with_compile):
        variants = {name: options for name, options in variants.items() if not options.get("compile")}
    click.echo(f"device: {device_name(torch_device)}; {common['backbone']} at {common['size']}x{common['size']}, "
               f"{common['classes']:,} labels, PFC rate {sample_rate}, DCQ queue {queue}")
    rows, checks = [], []
    for method in methods:
        for batch in batches:
            results = {}
            for name, options in variants.items():
                if method != "pfc" and "pfc_sampling" in options:
                    continue
                job = {**common, "method": method, "batch": batch, "variant": name.split()[0],
                       "amp": "off", "channels_last": False, "compile": False, **options}
                results[name] = run_isolated("benchmarks.train_step", job)
                if as_json:
                    click.echo(json.dumps({"name": name, **results[name]}))
            base = results["baseline"].get("images_per_s")
            reference = results["ours fp32"].get("first_losses")
            for name, result in results.items():
                if "error" in result:
                    rows.append([method, batch, name, result["error"][:60], "", ""])
                    continue
                ratio = f"{result['images_per_s'] / base:.2f}x" if base else ""
                rows.append([method, batch, name, f"{result['images_per_s']:.0f}", ratio, f"{result['peak_gib']:.2f}"])
                if name.startswith("ours") and name != "ours fp32" and reference:
                    worst = max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(result["first_losses"], reference))
                    checks.append(f"{method} b{batch} {name}: {worst:.1e}")
    if not as_json:
        click.echo(format_table(["method", "batch", "variant", "img/s", "vs baseline", "peak GiB"], rows))
    if checks:
        click.echo("check (first 3 losses vs ours fp32, max relative difference): " + "; ".join(checks))


@bench.command(name="analysis")
@click.option("--classes", multiple=True, type=_CLASSES, default=(100_000,), show_default=True)
@click.option("--dim", default=512, show_default=True, type=_POSITIVE)
@click.option("--k", default=5, show_default=True, type=_POSITIVE)
@click.option("--approximate/--exact", default=False, help="Force IVF (tuned to recall >= 0.95) or exact search.")
@click.option("--images-per-class", default=0, show_default=True,
              help="Draw this many embeddings per class and analyse their class means, with the same-person "
                   "(PLDA) fit and ratios a dataset's analysis computes (0: the centers alone).")
def bench_analysis(classes: tuple[int, ...], dim: int, k: int, approximate: bool, images_per_class: int) -> None:
    """Time the conflict analysis (k nearest other centers of every class) on clustered centers."""
    from analysis.benchmark import run_analysis_benchmark
    from benchmarks.common import format_table

    if k >= min(classes):
        raise click.BadParameter(f"each class has at most {min(classes) - 1:,} other classes, fewer than {k}",
                                 param_hint="--k")
    rows = []
    for count in classes:
        result = run_analysis_benchmark(count, dim, k, approximate, progress=True, images_per_class=images_per_class)
        recall = result.get("verified_recall", 1.0 if result["method"] == "exact" else float("nan"))
        rows.append([f"{count:,}", images_per_class or "centers only", result["method"],
                     f"{result['analysis_s']:.1f}", f"{result['plda_fit_s']:.1f}", f"{recall:.3f}",
                     f"{result['peak_rss_gib']:.2f}"])
        click.echo(json.dumps(result))
    click.echo(format_table(["classes", "images per class", "index", "analysis s", "of which PLDA fit s",
                             "recall@k vs exact", "peak GiB"], rows))


if __name__ == "__main__":
    main()
