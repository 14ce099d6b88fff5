"""``python -m benchmarks.suite_report OUT``: the Markdown tables of a ``gpu_suite.sh`` run, from what it wrote.

Every figure comes from the JSON lines the benchmarks printed in that one run (``OUT/steps/NAME.out``); a step
that failed or ran out of time is listed with its exit code instead of a figure, and one the suite's budget left
no time for as "skipped", so a table never mixes runs.
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
            record = None
            if line.startswith("{"):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # the last line of a step killed while it printed it
                    pass
            if record is not None:
                records.append(record)
            elif line.strip():
                notes.append(line.strip())
    return records, notes


def head_table(records: list[dict[str, Any]]) -> str:
    """Our head (Triton and torch, as run) against the dense-update baseline per class count: step time, peak
    memory, and the baseline's time over ours."""
    ours = [variant for variant in ("triton", "torch") if any(r.get("variant") == variant for r in records)]
    keys = list(dict.fromkeys((r["classes"], r.get("center_dtype", "")) for r in records))
    rows = []
    for key in keys:
        found = {r["variant"]: r for r in records if (r["classes"], r.get("center_dtype", "")) == key}
        dense = found.get("dense", {})
        row = [f"{key[0]:,}", key[1]]
        for variant in [*ours, "dense"]:
            record = found.get(variant, {})
            row += [f"{record['step_ms']:.2f}" if "step_ms" in record else "–",
                    f"{record['peak_gib']:.2f}" if "peak_gib" in record else "–"]
            if variant != "dense":
                timed = "step_ms" in record and "step_ms" in dense
                row.append(f"{dense['step_ms'] / record['step_ms']:.2f}x" if timed else "")
        rows.append(row)
    headers = ["classes", "store"]
    for variant in ours:
        headers += [f"{variant} ms", f"{variant} GiB", f"{variant} speed-up"]
    return format_table(headers + ["dense ms", "dense GiB"], rows)


def kernel_table(records: list[dict[str, Any]]) -> str:
    """Where each profiled head's step goes: its costliest kernels, ms per step, beside the step's timed total."""
    rows = [[f"{record['classes']:,}", record["variant"], f"{record['step_ms']:.2f}" if "step_ms" in record else "–",
             name, f"{milliseconds:.3f}"]
            for record in records for name, milliseconds in record.get("kernels", [])]
    return format_table(["classes", "head", "step ms", "kernel", "ms per step"], rows) if rows else ""


def step_table(records: list[dict[str, Any]]) -> str:
    """Every variant of the whole step, with its speed against its method's peer step at the same batch (a variant
    that failed, out of memory say, shows its error instead)."""
    rows = []
    for record in records:
        if "images_per_s" not in record:
            rows.append([record.get("method", ""), record.get("batch", ""), record.get("name", ""),
                         record.get("error", "no figure")[:80], "", "", ""])
            continue
        peer = next((r for r in records if r.get("method") == record["method"] and r.get("batch") == record["batch"]
                     and r.get("variant") == "baseline" and "images_per_s" in r), None)
        ratio = "" if peer is None or record is peer else f"{record['images_per_s'] / peer['images_per_s']:.2f}x"
        rows.append([record["method"], record["batch"], record["name"], f"{record['images_per_s']:.0f}",
                     f"{record['step_ms']:.1f}", f"{record['peak_gib']:.2f}", ratio])
    return format_table(["method", "batch", "variant", "img/s", "ms", "peak GiB", "vs peer"], rows)


def write_report(out: Path) -> Path:
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines() if line.strip()]
    sections = ["# GPU suite results", "", "```", (out / "machine.txt").read_text().strip(), "```", "",
                format_table(["step", "exit code", "seconds", "limit s"],
                             [[s["step"], s["rc"], s["seconds"], s.get("limit", "")] for s in steps])]
    for name, title in (("cuda_tests", "CUDA tests"), ("triton_tests", "Triton head compiled for the GPU"),
                        ("triton_warmup", "Triton head kernels compiled once (relative errors)")):
        output = out / "steps" / f"{name}.out"
        if output.is_file() and output.read_text().strip():
            sections += ["", f"{title}: {output.read_text().strip().splitlines()[-1]}"]
    for name, title, table in (("bench_pfc", "Partial FC head", head_table),
                               ("bench_pfc_bf16", "Partial FC head, bf16 store", head_table),
                               ("bench_step_256", "Whole training step", step_table),
                               ("bench_step_128", "Whole training step", step_table)):
        records, notes = json_lines(out / "steps" / f"{name}.out")
        sections += ["", f"## {title} (`{name}`)", "", *notes]
        sections += ["", table(records) if records else "(no figures: see the step's exit code and .err file)"]
        kernels = kernel_table(records) if table is head_table else ""
        sections += ["", "Costliest kernels of the profiled steps:", "", kernels] if kernels else []
    data = out / "steps" / "bench_data.out"
    sections += ["", "## Data pipeline (`bench_data`)", "", data.read_text().strip() if data.is_file() else "(none)"]
    scaling = out / "scale" / "SCALING.md"
    sections += ["", "## Class-count sweep (`scale`)", "",
                 "See scale/SCALING.md (in suite.tgz)." if scaling.is_file() else "(none)"]
    report = out / "gpu_results.md"
    report.write_text("\n".join(sections) + "\n")
    return report


if __name__ == "__main__":
    write_report(Path(sys.argv[1]))
