"""``python -m benchmarks.suite_report OUT``: the Markdown tables of a ``gpu_suite.sh`` run, from what it wrote.

Every figure comes from the JSON lines the benchmarks printed in that one run; a step
that failed or ran out of time is listed with its exit code instead of a figure, so a
table never mixes runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import format_table


def json_lines(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The JSON records of a benchmark's output, and its other lines (the device and the checks)."""
    records, notes = [], []
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))
            elif line.strip():
                notes.append(line.strip())
    return records, notes


def head_table(records: list[dict[str, Any]]) -> str:
    """Ours against the dense-update baseline per class count: step time, peak memory, ratio."""
    rows = []
    for record in (r for r in records if r.get("variant") == "ours"):
        key = (record["classes"], record.get("center_dtype"))
        baseline = next((r for r in records if r.get("variant") != "ours"
                         and (r["classes"], r.get("center_dtype")) == key), None)
        timed = baseline is not None and "step_ms" in baseline
        theirs = f"{baseline['step_ms']:.2f}" if timed else "–"
        ratio = f"{baseline['step_ms'] / record['step_ms']:.2f}x" if timed else ""
        rows.append([f"{record['classes']:,}", record.get("center_dtype", ""), f"{record['step_ms']:.2f}",
                     f"{record['peak_gib']:.2f}", theirs,
                     "–" if baseline is None else f"{baseline.get('peak_gib', float('nan')):.2f}", ratio])
    return format_table(["classes", "store", "ours ms", "ours GiB", "dense ms", "dense GiB", "speed-up"], rows)


def step_table(records: list[dict[str, Any]]) -> str:
    """Every variant of the whole step, with its speed against its method's peer step at the same batch."""
    rows = []
    for record in records:
        peer = next((r for r in records if r["method"] == record["method"] and r["batch"] == record["batch"]
                     and r["variant"] == "baseline"), None)
        ratio = "" if peer is None or record is peer else f"{record['images_per_s'] / peer['images_per_s']:.2f}x"
        rows.append([record["method"], record["batch"], record["name"], f"{record['images_per_s']:.0f}",
                     f"{record['step_ms']:.1f}", f"{record['peak_gib']:.2f}", ratio])
    return format_table(["method", "batch", "variant", "img/s", "ms", "peak GiB", "vs peer"], rows)


def write_report(out: Path) -> Path:
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines() if line.strip()]
    sections = ["# GPU suite results", "", "```", (out / "machine.txt").read_text().strip(), "```", "",
                format_table(["step", "exit code", "seconds"], [[s["step"], s["rc"], s["seconds"]] for s in steps])]
    tests = (out / "cuda_tests.out")
    if tests.is_file() and tests.read_text().strip():
        sections += ["", f"CUDA tests: {tests.read_text().strip().splitlines()[-1]}"]
    for name, title, table in (("bench_pfc", "Partial FC head", head_table),
                               ("bench_pfc_bf16", "Partial FC head, bf16 store", head_table),
                               ("bench_step", "Whole training step", step_table)):
        records, notes = json_lines(out / f"{name}.out")
        sections += ["", f"## {title} (`{name}`)", "", *notes]
        sections += ["", table(records) if records else "(no figures: see the step's exit code and .err file)"]
    data = out / "bench_data.out"
    sections += ["", "## Data pipeline (`bench_data`)", "", data.read_text().strip() if data.is_file() else "(none)"]
    report = out / "gpu_results.md"
    report.write_text("\n".join(sections) + "\n")
    return report


if __name__ == "__main__":
    write_report(Path(sys.argv[1]))
