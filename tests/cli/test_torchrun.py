"""The same commands under torchrun: 2 CPU processes with gloo."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from cli import main
from core.data.base import encode_image
from core.data.recordio import write_insightface_rec

ROOT = Path(__file__).resolve().parents[2]
FLAGS = ["--backbone", "tiny", "--input-size", "16", "--embedding-size", "16", "--batch-size", "4",
         "--workers", "0", "--quiet", "--device", "cpu"]


def _torchrun(*args, timeout=240):
    """Run ``cli.py`` under torchrun with 2 processes.

    Gloo very rarely aborts a process while connecting (SIGABRT before any training);
    such a start-up crash is retried up to twice, after clearing the run directory it
    may have created. Errors the command reports itself are never retried.
    """
    # --standalone: a rendezvous on a free port of its own, so runs of two pytest workers (-n 2) never meet
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "cli.py",
               *map(str, args)]
    out = Path(args[list(args).index("--out") + 1]) if "--out" in args else None
    for attempt in range(3):
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        aborted = "SIGABRT" in result.stderr or "exitcode: -6" in result.stderr
        if result.returncode == 0 or not aborted or attempt == 2:
            return result
        if out is not None:
            shutil.rmtree(out, ignore_errors=True)
    return result


def _cli(*args):
    """One process: this one (only the torchrun legs need processes of their own)."""
    return CliRunner().invoke(main, [str(arg) for arg in args])


def test_two_process_run_resumes_and_evaluates_in_one(tiny_rec, tmp_path):
    run = tmp_path / "run"
    first = _torchrun("train", "--data", tiny_rec, "--val", tiny_rec / "val.bin", "--epochs", "2", "--max-steps",
                      "5", "--out", run, *FLAGS)
    assert first.returncode == 0, first.stderr[-2000:]
    assert len(list(run.glob("sampler-step000000005-rank*-of-002.pt"))) == 2
    second = _cli("train", "--resume", run, "--max-steps", "12", "--quiet")  # 1 process takes over the 2-process run
    assert second.exit_code == 0, second.output[-2000:]
    assert len(list(run.glob("sampler-step000000012-rank000-of-001.pt"))) == 1
    saved = json.loads((run / "metrics.json").read_text())
    evaluated = json.loads(_cli("eval", run, "--val", tiny_rec / "val.bin", "--json").stdout)
    assert evaluated["val"]["accuracy"] == saved["val"]["accuracy"]
    lines = (run / "log.csv").read_text().splitlines()
    assert [int(line.split(",")[0]) for line in lines[1:]][-1] == 12


def test_two_process_checkpoint_is_analysed_by_one(tiny_rec, tmp_path):
    import pandas as pd

    run = tmp_path / "run"
    trained = _torchrun("train", "--data", tiny_rec, "--epochs", "2", "--sample-rate", "1.0", "--out", run, *FLAGS)
    assert trained.returncode == 0, trained.stderr[-2000:]
    analysed = _cli("analyze", "longtail", run, "--data", tiny_rec, "--out", tmp_path / "analysis",
                    "--device", "cpu", "--quiet")
    assert analysed.exit_code == 0, analysed.output[-2000:]
    table = pd.read_csv(tmp_path / "analysis" / "longtail.csv").sort_values("label")
    # Both ranks' shards are read: every class has its center norm and its update counters.
    assert len(table) == 6 and table["center_norm"].gt(0).all()
    assert table["positive_updates"].gt(0).all() and table["negative_updates"].gt(0).any()


def test_a_failing_rank_ends_every_rank_with_its_message(tmp_path):
    rng = np.random.default_rng(0)
    samples = []
    for label in range(4):
        for index in range(6):
            image = encode_image(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
            samples.append((label, b"this is not an image" if (label, index) == (2, 3) else image))
    write_insightface_rec(tmp_path / "broken", samples, 4, image_size=(16, 16))
    result = _torchrun("train", "--data", tmp_path / "broken", "--epochs", "1", "--cache-images", "off",
                       "--out", tmp_path / "run", *FLAGS, timeout=120)
    assert result.returncode != 0
    assert "record 16: cannot decode image" in result.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
