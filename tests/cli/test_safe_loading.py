"""Nothing a user loads can run code: malicious checkpoints, shards and state files, through every command.

Each malicious file carries a pickle whose loading would create a marker file. Every
command must refuse it (or, for a cache, ignore it) with one line naming the file, and
the marker must never appear.
"""

import os
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli import main

TRAIN = ["--backbone", "tiny", "--input-size", "16", "--embedding-size", "8", "--batch-size", "8", "--workers", "0",
         "--device", "cpu", "--quiet"]


class Payload:
    """Unpickling it runs ``touch MARKER``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def trained(tiny_rec_module, tmp_path_factory):
    run = tmp_path_factory.mktemp("safe") / "run"
    result = CliRunner().invoke(main, ["train", "--method", "pfc", "--data", str(tiny_rec_module), "--out", str(run),
                                       "--max-steps", "2", "--epochs", "1", *TRAIN], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture(scope="module")
def tiny_rec_module(tmp_path_factory):
    from tests.conftest import write_tiny_rec

    return write_tiny_rec(tmp_path_factory.mktemp("data") / "tiny")


def _poisoned_copy(trained, tmp_path, what):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    marker = tmp_path / "PWNED"
    if what == "checkpoint":
        state = torch.load(run / "checkpoint.pt", weights_only=True)
        state["metrics"] = {"val": Payload(marker)}  # a real checkpoint with one poisoned entry
        target = run / "checkpoint.pt"
        torch.save(state, target)
    else:
        target = next(run.glob("sampler-step*.pt"))
        shard = torch.load(target, weights_only=True)
        shard["tensors"]["store.centers"] = Payload(marker)
        torch.save(shard, target)
    return run, marker, target


COMMANDS = {
    "eval": lambda run, data, out: ["eval", str(run), "--val", str(data / "val.bin")],
    "export": lambda run, data, out: ["export", str(run), "--out", str(out / "model.pt")],
    "resume": lambda run, data, out: ["train", "--resume", str(run), "--max-steps", "4", "--quiet"],
    "analyze report": lambda run, data, out: ["analyze", "report", str(run), "--data", str(data), "--out", str(out),
                                              "--quiet"],
    "analyze longtail": lambda run, data, out: ["analyze", "longtail", str(run), "--data", str(data), "--out",
                                                str(out), "--quiet"],
}
# eval and export read the network only, never the shards of the center store.
CASES = [(command, "checkpoint") for command in COMMANDS] + [
    (command, "shard") for command in ("resume", "analyze report", "analyze longtail")]


@pytest.mark.parametrize("command, what", CASES)
def test_a_malicious_file_is_refused_naming_it_and_never_runs(trained, tiny_rec_module, tmp_path, command, what):
    run, marker, target = _poisoned_copy(trained, tmp_path, what)
    result = CliRunner().invoke(main, COMMANDS[command](run, tiny_rec_module, tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert f"{target}: refused to load" in result.output and "GLOBAL posix.system" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not marker.exists()


def test_a_malicious_embedding_cache_is_ignored_and_replaced(trained, tiny_rec_module, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    out, marker = tmp_path / "out", tmp_path / "PWNED"
    first = CliRunner().invoke(main, ["analyze", "noise", str(run), "--data", str(tiny_rec_module), "--out", str(out),
                                      "--quiet"], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    (cache,) = (run / "analysis_cache").glob("*.npy")
    np.save(cache, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    again = CliRunner().invoke(main, ["analyze", "noise", str(run), "--data", str(tiny_rec_module), "--out", str(out),
                                      "--quiet"], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert "(computed)" in (out / "report.md").read_text() and not marker.exists()
    assert np.load(cache).dtype == np.float32  # the poisoned cache was replaced by a real one


def test_a_malicious_experiment_state_file_is_refused(tmp_path):
    from experiments.report import _load_updates

    path, marker = tmp_path / "updates.npz", tmp_path / "PWNED"
    np.savez(path, counts=np.array([Payload(marker)], dtype=object))
    from core.errors import DataError

    with pytest.raises(DataError, match=f"{path}: cannot read the cell's update counters"):
        _load_updates(path)
    assert not marker.exists()
