"""Measurement helpers shared by the benchmarks: timing, peak memory, device naming.

Each configuration runs in a fresh subprocess so that its peak memory (the process's
maximum resident set on CPU, ``max_memory_allocated`` on CUDA) is its own and not the
largest of everything measured before it.
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

#: The repository root: benchmark processes run from it, wherever the CLI was started.
ROOT = Path(__file__).resolve().parents[1]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> float:
    """Median milliseconds of ``step`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def reset_peak(device: torch.device) -> int:
    """Start a peak-memory window; returns the baseline in bytes."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_isolated(module: str, job: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Run ``python -m module --job JSON`` in a fresh process and return its JSON result (or ``{"error": …}``)."""
    try:
        completed = subprocess.run([sys.executable, "-m", module, "--job", json.dumps(job)], capture_output=True,
                                   text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if completed.returncode != 0:
        return {"error": (completed.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table, readable in a terminal and pasteable into RESULTS.md."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
