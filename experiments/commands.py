"""``python cli.py experiment run|report``: the claims grid and its write-up."""

from __future__ import annotations

from pathlib import Path

import click

from core.errors import ConfigError
from core.figures import figure_format_option


@click.group()
def experiment() -> None:
    """Reproduce the seed papers' claims on controlled synthetic data (docs/RESULTS.md)."""


@experiment.command(name="run")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Grid directory (rerun to resume).")
@click.option("--quick", is_flag=True, help="Fewer identities and epochs (8.5 min on 2 cores); labelled quick.")
@click.option("--device", default="cpu", show_default=True, help="Device every cell trains on.")
@click.option("--cells", "only", type=int, default=None, help="Run only the first N cells of the grid.")
def run_command(out: str, quick: bool, device: str, only: int | None) -> None:
    """Train (and analyse) every cell of the grid; finished cells are skipped."""
    import time

    from core.distributed import resolve_device
    from experiments.grid import FULL, QUICK, grid_cells
    from experiments.runner import run_grid

    if only is not None and only < 1:
        raise ConfigError(f"--cells must be >= 1 (the first N cells of the grid), got {only}")
    resolve_device(device)  # a wrong --device fails now, not after the first cell's data is rendered
    scale = QUICK if quick else FULL
    started = time.perf_counter()
    total = len(grid_cells(scale)[:only])
    click.echo(f"{scale.name} grid: {total} cells into {out} ({scale.identities} identities, {scale.epochs} epochs, "
               f"seeds {', '.join(map(str, scale.seeds))})")
    results = run_grid(Path(out), scale, device, echo=click.echo, only=only)
    click.echo(f"\n{len(results)} cells finished in {out}/cells ({(time.perf_counter() - started) / 60:.1f} min "
               "this invocation).")
    click.echo(f"Next: python cli.py experiment report {out}")


@experiment.command(name="report")
@click.argument("grid_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", default="docs/RESULTS.md", show_default=True, type=click.Path(dir_okay=False),
              help="Markdown file to write; its plots go into a results/ folder beside it.")
@figure_format_option()
def report_command(grid_dir: str, out: str, figure_format: str) -> None:
    """Tables, plots, verdicts per claim, and the exact commands and versions."""
    from experiments.report import write_report

    written = write_report(Path(grid_dir), Path(out), figure_format)
    click.echo("Wrote " + ", ".join(str(path) for path in written))


@experiment.command(name="detection")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Benchmark directory (rerun to resume).")
@click.option("--quick", is_flag=True, help="3 scenarios, a third of the identities, half the epochs, no DCQ "
                                            "(under 10 min on 2 cores); labelled quick.")
@click.option("--held-out", is_flag=True, help="Only the held-out scenarios, at full scale: the figures a round of "
                                                "tuning is judged by (35-36 min for four on 2 cores).")
@click.option("--device", default="cpu", show_default=True, help="Device every cell trains on.")
@click.option("--cells", "only", type=int, default=None, help="Run only the first N cells.")
@click.option("--doc", type=click.Path(exists=True, dir_okay=False),
              help="Also write the table into this Markdown file, between its detection markers (docs/ANALYSIS.md).")
def detection_command(out: str, quick: bool, held_out: bool, device: str, only: int | None, doc: str | None) -> None:
    """Noise and conflict detection on scenarios held out from tuning, each beside a simple baseline."""
    import time

    from core.distributed import resolve_device
    from experiments.detection import FULL, HELD_OUT, QUICK, cells, run_detection, write_detection_report

    if only is not None and only < 1:
        raise ConfigError(f"--cells must be >= 1 (the first N cells), got {only}")
    if quick and held_out:
        raise ConfigError("--quick and --held-out are two different scales; give one")
    resolve_device(device)
    scale = QUICK if quick else HELD_OUT if held_out else FULL
    started = time.perf_counter()
    click.echo(f"{scale.name} detection benchmark: {len(cells(scale)[:only])} cells into {out}")
    results = run_detection(Path(out), scale, device, echo=click.echo, only=only)
    written = write_detection_report(Path(out), results, Path(doc) if doc else None)
    click.echo(f"\n{len(results)} cells finished ({(time.perf_counter() - started) / 60:.1f} min this invocation). "
               f"Wrote {', '.join(map(str, written))}")
    click.echo(f"Next: python cli.py analyze report {out}/cells/<cell>/run --out DIR   (any cell's full report)")


@experiment.command(name="scale")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Sweep directory (rerun to resume).")
@click.option("--quick", is_flag=True, help="Class counts 10^3 to 10^4, one seed, no image cells (under 10 min on 2 "
                                            "cores); labelled quick.")
@click.option("--device", default="cpu", show_default=True,
              help="Device every cell trains on; cuda adds 10^5 and 10^6 classes.")
@click.option("--classes", "class_counts", multiple=True, type=int,
              help="Class counts to run instead of the scale's (repeat the flag).")
@click.option("--cells", "only", type=int, default=None, help="Run only the first N cells.")
@click.option("--doc", default="docs/SCALING.md", show_default=True, type=click.Path(dir_okay=False),
              help="The report to write (its plot goes into a scaling/ folder beside it).")
def scale_command(out: str, quick: bool, device: str, class_counts: tuple[int, ...], only: int | None,
                  doc: str) -> None:
    """Softmax, Partial FC 0.3/0.1/0.01 and DCQ (10 % queue) from 10^3 classes up: where the claims hold."""
    import time

    from core.distributed import resolve_device
    from experiments.scale import FULL, GPU_CLASSES, QUICK, cells, run_scale, with_classes, write_scale_report

    if only is not None and only < 1:
        raise ConfigError(f"--cells must be >= 1 (the first N cells), got {only}")
    setting = QUICK if quick else FULL
    if class_counts:
        setting = with_classes(setting, class_counts)
    elif resolve_device(device).type == "cuda":
        setting = with_classes(setting, (*setting.classes, *GPU_CLASSES))
    started = time.perf_counter()
    click.echo(f"{setting.name} class-count sweep: {len(cells(setting)[:only])} cells into {out} (classes "
               f"{', '.join(f'{c:,}' for c in setting.classes)}; seeds {', '.join(map(str, setting.seeds))})")
    results = run_scale(Path(out), setting, device, echo=click.echo, only=only)
    written = write_scale_report(results, Path(doc), setting)
    click.echo(f"\n{len(results)} cells finished ({(time.perf_counter() - started) / 60:.1f} min this invocation). "
               f"Wrote {', '.join(map(str, written))}")
    click.echo(f"Next: python cli.py experiment scale --out {out}{' --quick' if quick else ''} --device cuda   (on a "
               "GPU: adds 10^5 and 10^6 classes)")
