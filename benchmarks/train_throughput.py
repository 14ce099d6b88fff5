"""Whole training steps per second, by number of processes, through the real CLI.

Each setting is a short ``cli.py train`` run (under torchrun when more than one
process); the figure is the median images/s of its logged windows after the first,
read back from the run's log.csv, so loader, backbone, method and all-reduce are all in.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from benchmarks.common import ROOT
from core.errors import TrainingError


def measure(processes: int, method: str, steps: int, extra: list[str]) -> float:
    """Median global images/s of a ``steps``-step run with ``processes`` processes."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        launcher = ([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}"]
                    if processes > 1 else [sys.executable])
        command = launcher + ["cli.py", "train", "--method", method, "--max-steps", str(steps), "--log-every", "5",
                              "--val-every", str(10 * steps), "--out", str(run), "--quiet", *extra]
        completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if completed.returncode != 0:
            lines = completed.stderr.strip().splitlines() or ["no message"]
            reason = next((line for line in reversed(lines) if line.startswith("error: ")), lines[-1])
            raise TrainingError(f"bench train with {processes} process(es): {reason.removeprefix('error: ')}")
        log = pd.read_csv(run / "log.csv")
        return statistics.median(log["img_per_s"].iloc[1:].tolist() or log["img_per_s"].tolist())
