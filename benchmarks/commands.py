"""``python cli.py bench ...``: benchmarks that print side-by-side ratios, and absolute figures with the device.

Each configuration runs in a fresh process (benchmarks/common.py), so its peak memory is
its own. Methods and their options come from the registry and the method specs:
a new method is benchmarked by ``bench heads``, ``bench step`` and ``bench train``
without a line here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import click

from core.config import all_option_names
from core.errors import ConfigError
from core.method_options import method_choice, method_option_flags
from core.method_spec import option_flag
from core.methods import all_methods, get_method, method_names


def method_options_for(methods: tuple[str, ...], given: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per method: its spec's benchmark options, overridden by the option flags given that it takes.

    A flag that none of the chosen methods takes is an error rather than silently unused.
    """
    given = {key: value for key, value in given.items() if value is not None}
    chosen = {}
    for name in dict.fromkeys(methods):
        spec = get_method(name)
        values = {**spec.bench_options, **{key: given[key] for key in given if key in spec.option_names()}}
        spec.make_options(values)  # checked now, before any job starts
        chosen[name] = values
    unused = sorted(set(given) - {key for name in chosen for key in get_method(name).option_names()})
    if unused:
        raise ConfigError(f"{', '.join(map(option_flag, unused))}: not an option of "
                          f"{', '.join(chosen)}")
    return chosen


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


@click.group()
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
@click.option("--profile", is_flag=True, help="Also profile our heads' steps: their costliest kernels, ms per step "
              "(in the JSON lines).")
def bench_pfc(classes: tuple[int, ...], rates: tuple[float, ...], batch_size: int, dim: int, device: str,
              repeats: int, center_dtype: str, sampling: str, as_json: bool, profile: bool) -> None:
    """Partial FC head step time and peak memory: ours (Triton head on CUDA, torch head) vs PartialFC_V2's
    dense-update semantics."""
    from benchmarks.common import device_name, format_table, run_isolated
    from benchmarks.pfc_head import check_chunked_loss, check_fast_path, check_fused_head
    from core.distributed import resolve_device
    from core.triton_head import resolve_head_kernel

    torch_device = resolve_device(device)
    ours = ["triton", "torch"] if resolve_head_kernel("auto", torch_device, (dim,)) == "triton" else ["torch"]
    click.echo(f"device: {device_name(torch_device)}; batch {batch_size}, D {dim}, our centers in {center_dtype}, "
               f"{sampling} sampling; "
               f"check (rate 1.0 ours vs dense, max |diff| of centers): {check_fast_path(torch_device):.2e}")
    checks = {"chunked loss": check_chunked_loss(torch_device)}
    if "triton" in ours:
        checks["Triton head"] = check_fused_head(torch_device)
    for name, errors in checks.items():
        click.echo(f"check ({name} vs simple fp32, relative error): "
                   + ", ".join(f"{key} {value:.1e}" for key, value in errors.items()))
    rows = []
    for num_classes in classes:
        for rate in rates:
            results = {}
            for variant in [*ours, "dense"]:
                job = {"variant": variant, "classes": num_classes, "rate": rate, "batch": batch_size, "dim": dim,
                       "device": str(torch_device), "warmup": 2, "repeats": repeats, "center_dtype": center_dtype,
                       "sampling": sampling, "profile": profile and variant != "dense"}
                results[variant] = run_isolated("benchmarks.pfc_head", job)
                if as_json:  # the job too: a failed run's result holds only its error
                    click.echo(json.dumps({**job, **results[variant]}))
            dense = results["dense"]
            row = [f"{num_classes:,}", rate]
            for variant in ours:
                timed = "error" not in results[variant] and "error" not in dense
                row += [_figure(results[variant], "step_ms", ".2f"), _figure(results[variant], "peak_gib", ".2f"),
                        f"{dense['step_ms'] / results[variant]['step_ms']:.2f}x" if timed else ""]
            rows.append(row + [_figure(dense, "step_ms", ".2f"), _figure(dense, "peak_gib", ".2f")])
    if not as_json:
        headers = ["classes", "rate"]
        for variant in ours:
            headers += [f"{variant} ms", f"{variant} peak GiB", f"{variant} speed-up"]
        click.echo(format_table(headers + ["dense ms", "dense peak GiB"], rows))
        click.echo("Record these in benchmarks/RESULTS.md.")


@bench.command(name="heads")
@method_choice(multiple=True, default=tuple(method_names()), show_default=True)
@click.option("--classes", multiple=True, type=_CLASSES, default=(10_000, 100_000, 1_000_000), show_default=True)
@click.option("--batch-size", default=256, show_default=True, type=_POSITIVE)
@click.option("--dim", default=512, show_default=True, type=_POSITIVE)
@click.option("--device", default="auto", show_default=True)
@click.option("--repeats", default=5, show_default=True, type=_POSITIVE)
@click.option("--json", "as_json", is_flag=True, help="One JSON line per configuration.")
@method_option_flags
def bench_heads(method: tuple[str, ...], classes: tuple[int, ...], batch_size: int, dim: int, device: str,
                repeats: int, as_json: bool, **options: Any) -> None:
    """Each method's head as classes grow: state MiB, step ms, peak GiB (DCQ's stay flat, Partial FC's grow).

    A method runs with its spec's benchmark options (Partial FC: rate 0.1, DCQ: a queue of 8,192) unless
    its own flags say otherwise."""
    from benchmarks.common import device_name, format_table, run_isolated
    from core.distributed import resolve_device

    torch_device = resolve_device(device)
    chosen = method_options_for(method, options)
    click.echo(f"device: {device_name(torch_device)}; batch {batch_size}, D {dim}; "
               + "; ".join(f"{name} {values}" for name, values in chosen.items()))
    rows = []
    for num_classes in classes:
        row: list[Any] = [f"{num_classes:,}"]
        for name, values in chosen.items():
            job = {"method": name, "options": values, "classes": num_classes, "batch": batch_size, "dim": dim,
                   "device": str(torch_device), "warmup": 2, "repeats": repeats}
            result = run_isolated("benchmarks.heads", job)
            if as_json:
                click.echo(json.dumps(result))
            row += ([result["error"][:40], "", ""] if "error" in result else
                    [f"{result['state_mib']:.1f}", f"{result['step_ms']:.1f}", f"{result['peak_gib']:.2f}"])
        rows.append(row)
    if not as_json:
        header = ["classes"] + [f"{name} {what}" for name in chosen for what in ("state MiB", "step ms", "peak GiB")]
        click.echo(format_table(header, rows))


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


@bench.command(name="ijb")
@click.option("--faces", default=469_375, show_default=True, type=_POSITIVE, help="Face lines (IJB-C: 469,375).")
@click.option("--templates", default=23_124, show_default=True, type=_POSITIVE)
@click.option("--pairs", default=15_658_489, show_default=True, type=_POSITIVE)
@click.option("--positives", default=19_557, show_default=True, type=_POSITIVE)
@click.option("--dim", default=512, show_default=True, type=_POSITIVE)
@click.option("--baseline-templates", default=1000, show_default=True, type=_POSITIVE,
              help="Templates the insightface-style loop is timed on (scaled to all).")
def bench_ijb(faces: int, templates: int, pairs: int, positives: int, dim: int, baseline_templates: int) -> None:
    """IJB-C's scoring step (template pooling, pair scores, TAR@FAR) on random features: time and peak memory,
    beside insightface's eval_ijbc.py way."""
    from benchmarks.common import format_table, run_isolated

    if templates > faces or positives > pairs:
        raise ConfigError("--templates must be <= --faces and --positives <= --pairs")
    job = {"faces": faces, "templates": templates, "pairs": pairs, "positives": positives, "dim": dim,
           "baseline_templates": min(baseline_templates, templates)}
    ours = run_isolated("benchmarks.ijb_scoring", {**job, "side": "ours"})
    theirs = run_isolated("benchmarks.ijb_scoring", {**job, "side": "insightface"})
    rows = []
    for key, label in (("pooling_s", "template pooling s"), ("scoring_s", "pair scores s"),
                       ("tar_s", "ROC / TAR@FAR s"), ("total_s", "total s"), ("peak_gib", "peak resident GiB")):
        compared = "error" not in ours and "error" not in theirs and key != "peak_gib"
        ratio = f"{theirs[key] / ours[key]:.1f}x" if compared else ""
        rows.append([label, _figure(ours, key, ".2f"), _figure(theirs, key, ".2f"), ratio])
    click.echo(f"IJB scoring, CPU: {faces:,} faces, {templates:,} templates, {pairs:,} pairs, {dim}-d features "
               f"(baseline pooling timed on {job['baseline_templates']:,} templates and scaled)")
    click.echo(format_table(["", "facequeue", "insightface eval_ijbc.py", "speed-up"], rows))


@bench.command(name="train")
@method_choice(default="pfc", show_default=True)
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
@method_choice(multiple=True, help="Methods to time (default: every one whose spec names a peer step).")
@click.option("--batch-size", "batches", multiple=True, type=_POSITIVE,
              help="Per-step batch (repeatable); default 128 and 256 on CUDA, 64 on CPU.")
@click.option("--classes", type=_CLASSES, help="Labels of the head; default 1M on CUDA, 100K on CPU.")
@click.option("--backbone", help="Default iresnet50 on CUDA, tiny on CPU.")
@click.option("--input-size", type=click.IntRange(min=16), help="Default 112 on CUDA, 32 on CPU.")
@click.option("--device", default="auto", show_default=True)
@click.option("--compile/--no-compile", "with_compile", default=None,
              help="Include the torch.compile variant (default: on CUDA only).")
@click.option("--repeats", default=10, show_default=True, type=_POSITIVE, help="Timed steps per variant (median).")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per variant.")
@method_option_flags
def bench_step(method: tuple[str, ...], batches: tuple[int, ...], classes: Optional[int], backbone: Optional[str],
               input_size: Optional[int], device: str, with_compile: Optional[bool], repeats: int, as_json: bool,
               **options: Any) -> None:
    """Whole training step img/s: ours (each lever on its own) vs the method's peer step (arcface_torch, DCQ).

    Both sides use the method's benchmark options (Partial FC: rate 0.1, DCQ: a queue of 8,192) unless its
    own flags say otherwise; the data holds at least 8,192 images."""
    from benchmarks.common import device_name, format_table, run_isolated
    from core.distributed import resolve_device

    torch_device = resolve_device(device)
    cuda = torch_device.type == "cuda"
    batches = batches or ((128, 256) if cuda else (64,))
    classes = classes or (1_000_000 if cuda else 100_000)
    if classes < max(batches):
        raise click.BadParameter(f"{classes:,} labels are too few for a batch of {max(batches)} distinct labels; "
                                 f"give at least {max(batches):,}", param_hint="--classes")
    chosen = method_options_for(method or tuple(spec.name for spec in all_methods() if spec.peer_step), options)
    common = {"classes": classes, "backbone": backbone or ("iresnet50" if cuda else "tiny"),
              "size": input_size or (112 if cuda else 32), "device": str(torch_device), "warmup": 3,
              "repeats": repeats}
    variants = {"baseline": {}, "ours fp32": {"amp": "off"}, "ours fp16": {"amp": "fp16"},
                "ours bf16 + torch head": {"amp": "bf16", "head_kernel": "torch"}, "ours bf16": {"amp": "bf16"},
                "ours bf16 + channels_last": {"amp": "bf16", "channels_last": True},
                "ours bf16 + channels_last + compile": {"amp": "bf16", "channels_last": True, "compile": True},
                "ours bf16 + channels_last + compile + stratified": {"amp": "bf16", "channels_last": True,
                                                                     "compile": True, "pfc_sampling": "stratified"}}
    if not cuda:  # bf16 autocast is a GPU lever; on CPU it only slows the step down
        variants = {"baseline": {}, "ours fp32": {"amp": "off"},
                    "ours fp32 + channels_last": {"amp": "off", "channels_last": True},
                    "ours fp32 + compile": {"amp": "off", "compile": True}}
    if not (cuda if with_compile is None else with_compile):
        variants = {name: settings for name, settings in variants.items() if not settings.get("compile")}
    click.echo(f"device: {device_name(torch_device)}; {common['backbone']} at {common['size']}x{common['size']}, "
               f"{common['classes']:,} labels; " + "; ".join(f"{name} {values}" for name, values in chosen.items()))
    rows, checks, costs = [], [], []
    for name, values in chosen.items():
        takes = set(get_method(name).option_names())
        for batch in batches:
            results = {}
            for variant, settings in variants.items():
                method_settings = {key: value for key, value in settings.items() if key in takes}
                if len(method_settings) < len(set(settings) & set(all_option_names())):
                    continue  # a lever that is an option of another method
                job = {**common, "method": name, "batch": batch, "variant": variant.split()[0],
                       "amp": "off", "channels_last": False, "compile": False,
                       "measure_dynamics": variant == ("ours bf16" if cuda else "ours fp32"),
                       **{key: value for key, value in settings.items() if key not in takes},
                       "options": {**values, **method_settings}}
                results[variant] = run_isolated("benchmarks.train_step", job)
                if as_json:
                    click.echo(json.dumps({"name": variant, **job, **results[variant]}))
            base = results["baseline"].get("images_per_s")
            reference = results["ours fp32"].get("first_losses")
            for variant, result in results.items():
                if "error" in result:
                    rows.append([name, batch, variant, result["error"][:60], "", ""])
                    continue
                ratio = f"{result['images_per_s'] / base:.2f}x" if base else ""
                rows.append([name, batch, variant, f"{result['images_per_s']:.0f}", ratio, f"{result['peak_gib']:.2f}"])
                if variant.startswith("ours") and variant != "ours fp32" and reference:
                    worst = max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(result["first_losses"], reference))
                    checks.append(f"{name} b{batch} {variant}: {worst:.1e}")
            costs.extend(f"{name} b{batch} {variant}: {result['dynamics_cost']:+.1%}"
                         for variant, result in results.items() if "dynamics_cost" in result)
    if not as_json:
        click.echo(format_table(["method", "batch", "variant", "img/s", "vs baseline", "peak GiB"], rows))
    if checks:
        click.echo("check (first 3 losses vs ours fp32, max relative difference): " + "; ".join(checks))
    if costs:
        click.echo("training dynamics (per-sample margins for analyze), step time with vs without, interleaved in "
                   "one process: " + "; ".join(costs))


@bench.command(name="analysis")
@click.option("--classes", multiple=True, type=_CLASSES, default=(100_000,), show_default=True)
@click.option("--dim", default=512, show_default=True, type=_POSITIVE)
@click.option("--k", default=5, show_default=True, type=_POSITIVE)
@click.option("--approximate/--exact", default=False, help="Force IVF (tuned to recall >= 0.95) or exact search.")
@click.option("--images-per-class", default=0, show_default=True,
              help="Draw this many embeddings per class and analyse their class means, with the same-person "
                   "(PLDA) fit and ratios a dataset's analysis computes (0: the centers alone).")
@click.option("--crossval-folds", default=0, show_default=True,
              help="Also build the cross-validated reference evidence of this many folds from the drawn embeddings "
                   "and rank the pairs by it, as analyze crossval and --crossval do (0: no reference).")
def bench_analysis(classes: tuple[int, ...], dim: int, k: int, approximate: bool, images_per_class: int,
                   crossval_folds: int) -> None:
    """Time the conflict analysis (k nearest other centers of every class) on clustered centers."""
    from analysis.benchmark import run_analysis_benchmark
    from benchmarks.common import format_table

    if k >= min(classes):
        raise click.BadParameter(f"each class has at most {min(classes) - 1:,} other classes, fewer than {k}",
                                 param_hint="--k")
    rows = []
    for count in classes:
        result = run_analysis_benchmark(count, dim, k, approximate, progress=True, images_per_class=images_per_class,
                                        crossval_folds=crossval_folds)
        recall = result.get("verified_recall", 1.0 if result["method"] == "exact" else float("nan"))
        reference = ("–" if result["crossval_s"] is None
                     else f"{result['crossval_s']:.1f} ({result['crossval_bytes'] / 2**30:.2f} GiB of arrays)")
        rows.append([f"{count:,}", images_per_class or "centers only", result["method"],
                     f"{result['analysis_s']:.1f}", f"{result['plda_fit_s']:.1f}", reference,
                     f"{recall:.3f}", f"{result['peak_rss_gib']:.2f}"])
        click.echo(json.dumps(result))
    click.echo(format_table(["classes", "images per class", "index", "analysis s", "of which PLDA fit s",
                             "of which reference evidence s", "recall@k vs exact", "peak GiB"], rows))
