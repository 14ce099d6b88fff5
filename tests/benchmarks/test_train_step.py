"""The recording-cost estimator of ``bench step``: a known answer under drift, and the trainer left as found."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import benchmarks.train_step as train_step


def test_dynamics_cost_is_the_median_paired_ratio_and_restores_the_recorder(monkeypatch):
    recorder = object()
    trainer = SimpleNamespace(dynamics=recorder, criterion=SimpleNamespace(record_margins=True))
    calls = []

    def fake_time_steps(step, device, warmup, repeats):
        # the machine slows down 1 % a block (drift), and recording costs 4 %; one block pair is disturbed
        on = trainer.criterion.record_margins and trainer.dynamics is recorder
        calls.append(on)
        drift = 1 + 0.01 * ((len(calls) - 1) // 2)  # the same within a pair
        return drift * (1.04 if on else 1.0) * (3.0 if len(calls) == 7 else 1.0)

    monkeypatch.setattr(train_step, "time_steps", fake_time_steps)
    cost = train_step.dynamics_cost(trainer, lambda: None, torch.device("cpu"), blocks=9, steps_per_block=2)
    assert cost == pytest.approx(0.04)
    assert calls == [True, False] * 9  # each pair measured on, then off
    assert trainer.dynamics is recorder and trainer.criterion.record_margins is True
