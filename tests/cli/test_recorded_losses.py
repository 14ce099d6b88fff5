"""`--method pfc` and `--method dcq` train step for step as recorded: a change of behaviour must be deliberate.

``recorded_losses.json`` holds the per-step losses of each scenario below, written by
this module (``python -m tests.cli.test_recorded_losses --record``). It was first recorded
at commit ca2fdf6, the last one before the method plug-in redesign moved the center
store, the options and the batch into new seams; the redesign reproduced it bit for bit.
It was re-recorded once since, on purpose, when flips and DCQ's key images came to be
drawn from each sample's position in the data order (so that a run resumes on any number
of processes): a new stream of random draws, the same distribution. The test trains the
scenarios through the command line and compares step by step: any other change in
sampling, RNG streams, option defaults or update order shows here. (The sub-center
scenario was added when that method was; it has no pre-redesign record.)
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

RECORD = Path(__file__).with_name("recorded_losses.json")
COMMON = ["--backbone", "tiny", "--input-size", "16", "--embedding-size", "16", "--batch-size", "16",
          "--epochs", "2", "--max-steps", "10", "--log-every", "1", "--workers", "0", "--device", "cpu",
          "--checkpoint-every", "0", "--quiet", "--seed", "5"]
SCENARIOS = {
    "pfc": ["--method", "pfc"],
    "pfc-rate1-adamw": ["--method", "pfc", "--sample-rate", "1.0", "--optimizer", "adamw", "--lr", "0.01"],
    "pfc-stratified-bf16-accumulate": ["--method", "pfc", "--sample-rate", "0.2", "--pfc-sampling", "stratified",
                                       "--center-dtype", "bfloat16", "--accumulate", "2"],
    "pfc-filter-cosface": ["--method", "pfc", "--margin", "cosface", "--interclass-threshold", "0.3"],
    "subcenter": ["--method", "subcenter", "--sample-rate", "0.5", "--subcenters", "3"],
    "dcq": ["--method", "dcq", "--queue-size", "32"],
    "dcq-k2-category-accumulate": ["--method", "dcq", "--queue-size", "0.5", "--k-shot", "2",
                                   "--identity-sampling", "category", "--accumulate", "2",
                                   "--dcq-momentum", "0.99"],
}


def _data(root: Path) -> Path:
    from tests.conftest import write_tiny_rec

    return write_tiny_rec(root / "data", classes=40, per_class=6, seed=11, with_val=False)


def _losses(data: Path, out: Path, flags: list[str]) -> list[float]:
    from click.testing import CliRunner

    from cli import main

    result = CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(out), *COMMON, *flags],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with open(out / "log.csv", newline="") as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_losses_match_the_recording(tmp_path, scenario):
    recorded = json.loads(RECORD.read_text())[scenario]
    losses = _losses(_data(tmp_path), tmp_path / "run", SCENARIOS[scenario])
    assert len(losses) == len(recorded) == 10
    # Another sampling, RNG stream, default or update order moves the first steps' losses already. Float rounding
    # differs between CPUs (an AMD EPYC machine against the recording one) and compounds as training goes: the
    # first steps agreed within 1e-5 there, and the later ones drifted up to 0.6 % (DCQ with two key shots).
    assert losses[:3] == pytest.approx(recorded[:3], rel=1e-5, abs=1e-6)
    assert losses == pytest.approx(recorded, rel=2e-2)


if __name__ == "__main__" and "--record" in sys.argv:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        data = _data(Path(folder))
        losses = {name: _losses(data, Path(folder) / name, flags) for name, flags in SCENARIOS.items()}
    RECORD.write_text(json.dumps(losses, indent=1) + "\n")
    print(f"wrote {RECORD}")
