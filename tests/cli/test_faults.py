"""Fault injection: the faults a user, a cluster and a disk throw, and what each one costs (goal: nothing).

Killed processes run as real subprocesses (``tests/cli/fault_driver.py`` SIGKILLs itself at
the chosen moment, mid-write included); the others are injected in-process. After each
fault the run is resumed (or rerun) and compared with the uninterrupted run.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli import main

ROOT = Path(__file__).resolve().parents[2]
FLAGS = ["--backbone", "tiny", "--input-size", "16", "--embedding-size", "16", "--batch-size", "8", "--epochs", "2",
         "--checkpoint-every", "4", "--log-every", "1", "--workers", "0", "--device", "cpu", "--quiet"]


def _python(*args, timeout=240):
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _train_command(data, run):
    return ["train", "--data", str(data), "--val", str(data / "val.bin"), "--out", str(run), *FLAGS]


def _final_state(run):
    """The backbone and every sampler table of a run's checkpoint, for bit-for-bit comparison."""
    from core.checkpoint import read_checkpoint, sampler_state_for

    _, state = read_checkpoint(run)
    tables = sampler_state_for(run, state, 0, state["num_classes"])
    return state["step"], {**{f"backbone.{k}": v for k, v in state["backbone"].items()},
                           **{f"sampler.{k}": v for k, v in tables.items() if isinstance(v, torch.Tensor)}}


def _losses(run):
    with open(run / "log.csv", newline="") as handle:
        return [(int(row["step"]), row["loss"]) for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from tests.conftest import write_tiny_rec

    return write_tiny_rec(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("straight") / "run"
    result = _python("cli.py", *_train_command(data, run))
    assert result.returncode == 0, result.stderr[-2000:]
    return run


@pytest.mark.parametrize("moment", [
    ["step", "1"],  # before the first checkpoint: nothing to resume, the command is run again
    ["step", "6"],  # between checkpoints
    ["partial", "sampler", "2"],  # half of the step-8 shard on disk
    ["partial", "checkpoint", "2"],  # the step-8 shards complete, half of checkpoint.pt
    ["written", "checkpoint", "2"],  # checkpoint.pt complete under its temporary name, not renamed
    ["written", "checkpoint", "3"],  # the final checkpoint not renamed: metrics and plot already written
], ids=lambda moment: "-".join(moment))
def test_kill_9_anywhere_then_resume_equals_the_uninterrupted_run(data, uninterrupted, tmp_path, moment):
    run = tmp_path / "run"
    killed = _python("-m", "tests.cli.fault_driver", *moment, "--", *_train_command(data, run))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    again = _train_command(data, run) if moment == ["step", "1"] else ["train", "--resume", str(run), "--quiet"]
    resumed = CliRunner().invoke(main, again)  # in this process: only the kill needs a process of its own
    assert resumed.exit_code == 0, resumed.output[-2000:]
    (step, mine), (_, theirs) = _final_state(run), _final_state(uninterrupted)
    assert step == 12 and mine.keys() == theirs.keys()
    assert all(torch.equal(mine[key], theirs[key]) for key in mine)
    assert _losses(run) == _losses(uninterrupted)  # each step logged once, with the same loss
    assert (run / "training.png").is_file() and (run / "metrics.json").is_file()
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]  # no temporary left behind


def _spawn_torchrun(data, run, epochs):
    # --standalone: a rendezvous on a free port of its own, so runs of two pytest workers (-n 2) never meet
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "cli.py", "train",
               "--data", str(data), "--out", str(run), *FLAGS, "--epochs", str(epochs), "--checkpoint-every", "2",
               "--batch-size", "4"]  # the later flags win: 2 x 4 images a step, a checkpoint every 2 steps
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _workers_of(agent: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(agent)], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found]


def _wait_for(path: Path, process: subprocess.Popen, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while not path.exists():
        assert process.poll() is None, process.stdout.read()[-2000:]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _resume_two_more_steps(run: Path) -> None:
    step = _final_state(run)[0]
    resumed = CliRunner().invoke(main, ["train", "--resume", str(run), "--max-steps", str(step + 2), "--quiet"])
    assert resumed.exit_code == 0, resumed.output[-2000:]
    assert _final_state(run)[0] == step + 2


def test_a_killed_launcher_stops_its_workers_within_30_s(data, tmp_path):
    run = tmp_path / "run"
    agent = _spawn_torchrun(data, run, epochs=500)
    try:
        _wait_for(run / "checkpoint.pt", agent)
        workers = _workers_of(agent.pid)
        assert len(workers) == 2
        os.kill(agent.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        while any(_alive(pid) for pid in workers) and time.monotonic() - killed_at < 30:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in workers), "workers still running 30 s after the launcher died"
        output = agent.stdout.read()
        assert "the torchrun launcher" in output and "is gone; this worker stops" in output
    finally:
        for pid in [agent.pid, *_workers_of(agent.pid)]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    _resume_two_more_steps(run)  # and nothing is lost: the run goes on, on one process, from its last checkpoint


def test_a_killed_rank_ends_the_run_and_it_resumes(data, tmp_path):
    run = tmp_path / "run"
    agent = _spawn_torchrun(data, run, epochs=500)
    try:
        _wait_for(run / "checkpoint.pt", agent)
        os.kill(_workers_of(agent.pid)[-1], signal.SIGKILL)
        agent.wait(timeout=120)
        assert agent.returncode != 0
    finally:
        if agent.poll() is None:
            agent.kill()
    _resume_two_more_steps(run)


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(data, tmp_path, monkeypatch):
    import core.io

    run = tmp_path / "run"
    original, writes = torch.save, {"checkpoint": 0}

    def save(obj, path, *rest, **options):
        if ".checkpoint.pt." in Path(path).name:
            writes["checkpoint"] += 1
            if writes["checkpoint"] == 2:
                original(obj, path, *rest, **options)  # part of it made it to disk
                raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing "
                                   "file data/0: file write failed")
        original(obj, path, *rest, **options)

    monkeypatch.setattr(core.io.torch, "save", save)
    usage = core.io.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(core.io.shutil, "disk_usage", lambda path: usage._replace(free=300_000))  # a full disk
    result = CliRunner().invoke(main, _train_command(data, run))
    assert result.exit_code == 2
    (message,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "Traceback" not in result.output
    assert f"{run / 'checkpoint.pt'}: cannot be written: no space left on its device" in message
    assert "0.3 MB free; it needs about" in message
    monkeypatch.undo()
    assert _final_state(run)[0] == 4  # the last good checkpoint is intact
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def test_a_failed_write_with_room_left_is_not_called_a_full_disk(tmp_path, monkeypatch):
    import core.io
    from core.errors import DataError

    def save(obj, path, *rest, **options):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(core.io.torch, "save", save)
    with pytest.raises(DataError) as error:
        core.io.atomic_torch_save({"x": torch.zeros(3)}, tmp_path / "state.pt")
    assert "no space" not in str(error.value) and "PytorchStreamWriter failed writing file" in str(error.value)
    assert not list(tmp_path.iterdir())


def test_a_second_training_into_a_busy_directory_is_refused_naming_the_holder(data, tmp_path):
    import socket

    from core.io import exclusive_directory

    run = tmp_path / "run"
    run.mkdir()
    with exclusive_directory(run):
        result = CliRunner().invoke(main, _train_command(data, run))
    assert result.exit_code == 2
    assert f"another training is writing into it (pid {os.getpid()} on {socket.gethostname()}" in result.output
    assert not (run / "config.yaml").exists()


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_run_folder_and_no_stranger_s_file_goes(tmp_path):
    from PIL import Image

    faces = tmp_path / "faces"
    for label in range(4):
        (faces / f"id{label}").mkdir(parents=True)
        for index in range(4):
            Image.new("RGB", (16, 16), (label * 60, index * 60, 0)).save(faces / f"id{label}" / f"{index}.png")
    (faces / "id3" / "3.png").write_bytes(b"not an image")  # found when its batch is loaded, after start-up
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--data", str(faces), "--out", str(run), "--cache-images", "off",
                                       *FLAGS, "--batch-size", "4"])
    assert result.exit_code == 2 and "3.png" in result.output
    assert not run.exists()
    # into a directory the user made and filled: only what the run wrote goes, and its log.csv stays
    run.mkdir()
    (run / "config.yaml").write_text("lr: 0.1\n")  # the user's own config, given as --config
    (run / "notes.txt").write_text("mine")
    again = CliRunner().invoke(main, ["train", "--config", str(run / "config.yaml"), "--data", str(faces), "--out",
                                      str(run), "--cache-images", "off", *FLAGS, "--batch-size", "4"])
    assert again.exit_code == 2
    assert (run / "config.yaml").is_file() and (run / "notes.txt").read_text() == "mine"  # (the run resolved it)
    assert not (run / "env.json").exists()


def test_a_damaged_log_is_no_reason_to_stop_a_resume(data, tmp_path):
    run = tmp_path / "run"
    first = CliRunner().invoke(main, [*_train_command(data, run), "--max-steps", "4"])
    assert first.exit_code == 0, first.output
    with open(run / "log.csv", "ab") as handle:
        handle.write(b"5,0,\xff\xfe\x00garbage\n")
    resumed = CliRunner().invoke(main, ["train", "--resume", str(run), "--max-steps", "6", "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert [step for step, _ in _losses(run)] == [1, 2, 3, 4, 5, 6]


def test_a_shard_of_another_step_is_refused(data, tmp_path):
    run = tmp_path / "run"
    assert CliRunner().invoke(main, [*_train_command(data, run), "--max-steps", "4"]).exit_code == 0
    (older,) = run.glob("sampler-step000000004-*.pt")
    kept = older.read_bytes()
    assert CliRunner().invoke(main, ["train", "--resume", str(run), "--max-steps", "8", "--quiet"]).exit_code == 0
    (newer,) = run.glob("sampler-step000000008-*.pt")
    newer.write_bytes(kept)  # same shape, the wrong step
    result = CliRunner().invoke(main, ["train", "--resume", str(run), "--max-steps", "12", "--quiet"])
    assert result.exit_code == 2 and f"{newer}: holds step 4, but" in result.output
