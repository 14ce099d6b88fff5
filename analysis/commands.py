"""``python cli.py analyze ...``: conflict, noise, longtail and the combined report.

Each command reads a run and a dataset (by default the one the run trained on), writes
its CSV, PNG plots and ``report.html`` / ``report.md`` into ``--out``, and ends by
printing what it wrote and the next command worth running. FaceQueueError propagates
so that the main CLI prints it as one line.
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Any, Callable, Optional

import click

from analysis.choices import CENTER_SOURCES, DEFAULT_K
from analysis.crossval import DEFAULT_FOLDS, DEFAULT_REPEATS
from analysis.index import METHODS
from core.errors import ConfigError
from core.figures import figure_format_option
from core.model_options import bare_weight_options


def _common(function: Callable) -> Callable:
    """RUN and the options every analyze command shares."""
    decorators = [
        click.argument("run", type=click.Path(), metavar="MODEL"),
        click.option("--data", default=None,
                     help="Dataset to analyse (.rec directory, folder, list, or 'synthetic'); default: the run's "
                          "own training data."),
        click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory."),
        click.option("--device", default="auto", show_default=True, help="Device that embeds the data."),
        click.option("--batch-size", default=256, show_default=True, type=int, help="Images per embedding batch."),
        click.option("--workers", default=2, show_default=True, type=int, help="Image decoding workers."),
        click.option("--centers", type=click.Choice(CENTER_SOURCES), default="auto", show_default=True,
                     help="auto: class means of the data's embeddings for conflict / noise, the Partial FC "
                          "center store for the long tail (DCQ: class means); store / means: that source for all."),
        click.option("--index", "index_method", type=click.Choice(METHODS), default="auto", show_default=True,
                     help="Nearest-neighbour search: exact, or IVF / HNSW tuned to recall >= 0.95 (auto: "
                          "approximate above 100k classes)."),
        figure_format_option(),
        click.option("--quiet", is_flag=True, help="No progress bars."),
        bare_weight_options,
    ]
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


def crossval_option(function: Callable) -> Callable:
    return click.option("--crossval", type=click.Path(file_okay=False), default=None,
                        help="The folder analyze crossval wrote for this data (default: RUN/crossval when it was "
                             "computed on this data): the cross-validated reference models' "
                             "evidence ranks noise and conflicts (recommended for long runs and DCQ runs).")(function)


def _run(which: tuple[str, ...], run: str, data: Optional[str], out: str, device: str, batch_size: int,
         workers: int, centers: str, index_method: str, quiet: bool, backbone: Optional[str],
         embedding_size: Optional[int], input_size: Optional[int], **options: Any):
    from analysis.inputs import load_analysis_input
    from analysis.runner import AnalysisOptions, run_analyses

    out_dir = Path(out)
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {workers}")
    if options.get("k", 1) < 1:
        raise ConfigError(f"--k must be >= 1, got {options['k']}")
    if options.get("relabel") and not options.get("write_clean"):
        raise ConfigError("--relabel changes what --write-clean writes; give --write-clean FILE too")
    for name, low, high in THRESHOLD_RANGES:
        value = options.get(name)
        if value is not None and not (math.isfinite(value) and low <= value <= high):
            raise ConfigError(f"{OPTION_NAMES[name]} must be a number in [{low}, {high}], got {value}")
    inputs = load_analysis_input(run, data, device=device, batch_size=batch_size, workers=workers,
                                 progress=not quiet, centers=centers, backbone=backbone,
                                 embedding_size=embedding_size, input_size=input_size)
    if options.get("crossval") is not None:
        options["crossval"] = Path(options["crossval"])
    analysis_options = AnalysisOptions(index_method=index_method, centers=centers, progress=not quiet,
                                       **{k: v for k, v in options.items() if v is not None})
    return run_analyses(inputs, out_dir, which, analysis_options)


def _echo_written(analysis) -> None:
    from analysis.runner import warnings

    for path in analysis.written:
        click.echo(f"  {path}")
    for line in warnings(analysis.summary):
        click.echo(line)


def _next_report(common: dict[str, Any]) -> str:
    return (f"Next: python cli.py analyze report {_model_and_data(common)} "
            f"--out {shlex.quote(common['out'])}   (conflict, noise and long tail in one report)")


def _next_after_clean(analysis, write_clean: str) -> str:
    """Train on the cleaned list, unless it was withheld because the flags are not credible."""
    from analysis.centers import BARE_WEIGHTS

    clean = analysis.summary["noise"].get("clean", {})
    run = analysis.inputs.run
    bare = run.method == BARE_WEIGHTS
    if not clean.get("written"):
        if bare:
            return "Next: check the weights' verification accuracy (python cli.py eval ... --val FILE.bin) before " \
                   "cleaning with them"
        metrics = shlex.quote(str(run.checkpoint.parent / "metrics.json"))
        return f"Next: check the run's verification accuracy ({metrics}) before cleaning with it"
    if bare:  # weights name no method: retrain with the default, starting from them
        return (f"Next: python cli.py train --method pfc --backbone {run.config['backbone']} --embedding-size "
                f"{run.config['embedding_size']} --input-size {run.input_size} --init "
                f"{shlex.quote(str(run.checkpoint))} --data {shlex.quote(write_clean)}")
    val = "".join(f" --val {shlex.quote(path)}" for path in run_val_files(run))
    return f"Next: python cli.py train --method {run.method} --data {shlex.quote(write_clean)}{val}"


def run_val_files(run) -> list[str]:
    """The --val files the run was validated on, so that a retraining is measured the same way (none when they
    cannot be found any more)."""
    from analysis.centers import resolve_data_path
    from core.data.loader import default_val_files, resolve_val_files
    from core.errors import FaceQueueError

    try:
        trained_on = resolve_data_path(run)
        if run.config.get("val"):
            return resolve_val_files(run.config["val"], trained_on)
        return default_val_files(trained_on if run.config.get("data") == "synthetic" else None)
    except FaceQueueError:
        return []


def _model_and_data(common: dict[str, Any]) -> str:
    """The MODEL, the flags that describe bare weights, and --data, as the command was given them."""
    flags = "".join(f" --{name.replace('_', '-')} {shlex.quote(str(common[name]))}"
                    for name in ("backbone", "embedding_size", "input_size", "data") if common.get(name) is not None)
    return shlex.quote(common["run"]) + flags


# Options given as cosines must lie in their range: nan, inf or a cosine of 2 would flag nothing or everything
# without a word. The noise threshold is on noise.csv's score, a sum of robust z-scores or a cosine difference.
THRESHOLD_RANGES = (("conflict_threshold", -1.0, 1.0), ("noise_threshold", -math.inf, math.inf),
                    ("outlier_similarity", -1.0, 1.0))
OPTION_NAMES = {"conflict_threshold": "--threshold (conflict)",
                "noise_threshold": "--threshold of analyze noise (--noise-threshold of analyze report)",
                "outlier_similarity": "--outlier-threshold"}


@click.group(name="analyze")
def analyze() -> None:
    """Find conflicting labels, noisy labels and long-tail effects in a trained run."""


@analyze.command()
@_common
@crossval_option
@click.option("--k", default=DEFAULT_K, show_default=True, type=int, help="Nearest other centers per class.")
@click.option("--threshold", default=None, type=float,
              help="Cosine above which a pair is flagged as a probable conflict (default: max(0.4, median + "
                   "2.5 robust sd of the classes' nearest-other-center cosines); the report explains it).")
def conflict(k: int, threshold: Optional[float], **common: Any) -> None:
    """Class pairs whose centers are closest (probably one person under two labels) -> conflict.csv."""
    analysis = _run(("conflict",), conflict_threshold=threshold, k=k, **common)
    summary = analysis.summary["conflict"]
    click.echo(f"Wrote {summary['pairs']:,} candidate pairs, {summary['flagged']:,} flagged "
               f"(cosine > {summary['threshold']}):")
    _echo_written(analysis)
    click.echo(_next_report(common))


@analyze.command()
@_common
@crossval_option
@click.option("--threshold", default=None, type=float,
              help="Flag samples whose score is above this (default: max(0, median + 4 robust sd of all scores)). "
                   "The score sums robust z-scores of own-center distance and training margins, or is the nearest "
                   "other minus own cosine for a run without recorded margins; the report says which.")
@click.option("--outlier-threshold", type=float, default=None,
              help="Also flag samples whose own-center cosine is below this (default: median - 4 robust sd).")
@click.option("--write-clean", type=click.Path(dir_okay=False), default=None,
              help="Write a 'path label' list without the flagged samples, usable as --data.")
@click.option("--relabel", is_flag=True, help="With --write-clean: move flagged samples to their nearest class "
                                              "instead of dropping them.")
def noise(threshold: Optional[float], outlier_threshold: Optional[float], write_clean: Optional[str], relabel: bool,
          **common: Any) -> None:
    """Per-sample label-noise scores (nearer another class than its own, or an outlier) -> noise.csv."""
    analysis = _run(("noise",), noise_threshold=threshold, outlier_similarity=outlier_threshold,
                    write_clean=Path(write_clean) if write_clean else None, relabel=relabel, **common)
    from analysis.runner import headline

    for line in headline({"noise": analysis.summary["noise"]}, with_warnings=False):  # with the method's own signals
        click.echo(line)
    click.echo("Wrote:")
    _echo_written(analysis)
    click.echo(_next_after_clean(analysis, write_clean) if write_clean else _next_report(common))


@analyze.command()
@_common
def longtail(**common: Any) -> None:
    """Center norm, compactness, nearest other center and update counts against class frequency."""
    analysis = _run(("longtail",), k=1, **common)
    summary = analysis.summary["longtail"]
    click.echo(f"Analysed {summary['classes']:,} classes ({summary['head_classes']:,} head, "
               f"{summary['tail_classes']:,} tail):")
    _echo_written(analysis)
    click.echo(_next_report(common))


@analyze.command()
@_common
@crossval_option
@click.option("--k", default=DEFAULT_K, show_default=True, type=int, help="Nearest other centers per class.")
@click.option("--threshold", default=None, type=float,
              help="Conflict: cosine above which a pair is flagged (default: adaptive, see 'analyze conflict').")
@click.option("--noise-threshold", default=None, type=float,
              help="Noise: score above which a sample is flagged (default: adaptive, see 'analyze noise').")
@click.option("--write-clean", type=click.Path(dir_okay=False), default=None,
              help="Write a 'path label' list without the flagged samples, usable as --data.")
@click.option("--relabel", is_flag=True, help="With --write-clean: relabel flagged samples instead of dropping.")
def report(k: int, threshold: Optional[float], noise_threshold: Optional[float], write_clean: Optional[str],
           relabel: bool, **common: Any) -> None:
    """Conflict, noise and long tail in one report (report.html / report.md)."""
    analysis = _run(("conflict", "noise", "longtail"), k=k, conflict_threshold=threshold,
                    noise_threshold=noise_threshold, write_clean=Path(write_clean) if write_clean else None,
                    relabel=relabel, **common)
    from analysis.runner import headline

    for line in headline(analysis.summary, with_warnings=False):
        click.echo(line)
    click.echo("Wrote:")
    _echo_written(analysis)
    if write_clean:
        click.echo(_next_after_clean(analysis, write_clean))
    elif "warning" in analysis.summary["noise"]:
        click.echo(f"Next: open {Path(common['out']) / 'report.html'}")
    else:
        click.echo(f"Next: open {Path(common['out']) / 'report.html'}, or clean the data with: python cli.py "
                   f"analyze report {_model_and_data(common)} --out "
                   f"{shlex.quote(common['out'])} --write-clean {shlex.quote(str(Path(common['out']) / 'clean.txt'))}")


@analyze.command(name="crossval")
@click.argument("run", type=click.Path(), metavar="MODEL")
@click.option("--data", default=None,
              help="Dataset the reference models train on (default: the run's own training data).")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Output directory (default: RUN/crossval, which every analyze command of the run then uses).")
@click.option("--folds", default=DEFAULT_FOLDS, show_default=True, type=int,
              help="Fold reference models: each trains on all folds but one and reads the held-out one (one more "
                   "trains on all the data).")
@click.option("--repeats", default=DEFAULT_REPEATS, show_default=True, type=int,
              help="Independent cross-validations averaged, each with its own folds and models (a later call with "
                   "more reuses the finished ones).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="A train config (YAML or arcface_torch .py) for the reference models; default: a full softmax "
                   "with CosFace s=32 m=0.3, 128-d embeddings, 12 epochs, train's default backbone.")
@click.option("--epochs", type=int, default=None, help="Epochs of each reference model (overrides --config).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the folds and of the models.")
@click.option("--device", default="auto", show_default=True, help="Device that trains and embeds.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def crossval(run: str, data: Optional[str], out: Optional[str], folds: int, repeats: int,
             config_file: Optional[str], epochs: Optional[int], seed: int, device: str, quiet: bool) -> None:
    """Evidence on every label from models that never trained on it (INCV): survives memorisation -> --crossval."""
    from analysis.centers import load_run, resolve_data_path
    from analysis.crossval import crossval_for, default_crossval_dir, reference_recipe, run_crossval

    info = load_run(run)
    data_path = resolve_data_path(info, data)
    folder = Path(out) if out is not None else default_crossval_dir(info.checkpoint)
    evidence = run_crossval(data_path, folder, reference_recipe(config_file, epochs), folds=folds, repeats=repeats,
                            seed=seed, device=device, progress=not quiet, echo=click.echo)
    judged = evidence.judged
    click.echo(f"Wrote {folder / 'crossval.json'} and each repeat's crossval.npz: {repeats} x ({evidence.folds} fold "
               f"models and one on all the data); {int(judged.sum()):,} of {len(judged):,} images judged by a model "
               "that never trained on them. Keep [repeat*/]fold*/embeddings.npy: the pair separation reads them "
               "([repeat*/]fold*/run may go).")
    found = crossval_for(info.checkpoint, data_path) == folder
    click.echo(f"Next: python cli.py analyze report {shlex.quote(run)}"
               + (f" --data {shlex.quote(data)}" if data else "")
               + f" --out {shlex.quote(str(folder.parent / 'analysis' if found else folder / 'report'))}"
               + ("" if found else f" --crossval {shlex.quote(str(folder))}"))
