"""A run resumed on another number of processes is the uninterrupted run: same steps, lr, samples and losses,
and the same per-sample training margins.

The global batch (12 images here) is what a run keeps; 1, 2 or 3 gloo processes split it
12, 6 or 4 per process. The backbone has no BatchNorm: with BatchNorm the batch statistics
of 2 x 6 images differ from those of 1 x 12 (without SyncBatchNorm), which is the one
thing a different split changes.
"""

from __future__ import annotations

import csv
import os
import socket

import pytest
import torch
from torch import nn

GLOBAL_BATCH, EPOCHS, FIRST_LEG = 12, 2, 3  # 48 images: 4 steps an epoch, 8 in all; the first leg stops mid-epoch
METHODS = {"pfc": {"sample_rate": 1.0},  # sampled negatives come from each rank's own stream: only rate 1 is comparable
           "dcq": {"queue_size": 24}}  # a whole number of global batches: the queue then holds the same entries


def _bn_free_backbone(name, embedding_size, input_size):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * input_size * input_size, embedding_size))


def _config(data, run_dir, method, world_size, max_steps=None):
    from core.config import TrainConfig

    return TrainConfig().replace(
        method=method, data=str(data), val=[], backbone="tiny", input_size=8, embedding_size=8,
        batch_size=GLOBAL_BATCH // world_size, epochs=EPOCHS, max_steps=max_steps, lr=0.05, workers=0,
        checkpoint_every=FIRST_LEG, log_every=1, seed=1, device="cpu", scale=16.0, **METHODS[method])


def _run(rank, world_size, port, data, run_dir, method, resume):
    """One process of one leg: a fresh run to FIRST_LEG steps, or a resumed one to the end."""
    import core.trainer
    from core.config import resume_config
    from core.trainer import Trainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    original, core.trainer.build_backbone = core.trainer.build_backbone, _bn_free_backbone
    try:
        if resume:
            run_dir, config = resume_config({"resume": run_dir, "max_steps": 0})  # 0 lifts the first leg's cap
            trainer = Trainer(config, run_dir, progress=False)
            trainer.resume(run_dir)
        else:
            trainer = Trainer(_config(data, run_dir, method, world_size, FIRST_LEG), run_dir, progress=False)
        trainer.fit()
    finally:
        core.trainer.build_backbone = original  # the one-process legs run in the test process itself
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
            os.environ.pop(name, None)


def _leg(world_size, data, run_dir, method, resume):
    if world_size == 1:
        _run(0, 1, 0, data, run_dir, method, resume)
        return
    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_run, args=(world_size, port, str(data), str(run_dir), method, resume), nprocs=world_size, join=True)


def _dynamics(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["dynamics"]


def _log(run_dir):
    with open(run_dir / "log.csv", newline="") as handle:
        return [(int(row["step"]), int(row["epoch"]), float(row["loss"]), float(row["lr"]))
                for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from tests.conftest import write_tiny_rec

    return write_tiny_rec(tmp_path_factory.mktemp("data") / "tiny", classes=6, per_class=8, size=8, with_val=False)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    """One process, all 8 steps, per method."""
    import core.trainer
    from core.trainer import Trainer

    logs = {}
    original = core.trainer.build_backbone
    core.trainer.build_backbone = _bn_free_backbone
    try:
        for method in METHODS:
            run_dir = tmp_path_factory.mktemp(f"straight-{method}")
            Trainer(_config(data, run_dir, method, 1), run_dir, progress=False).fit()
            logs[method] = _log(run_dir), _dynamics(run_dir)
    finally:
        core.trainer.build_backbone = original
    return logs


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("first, then", [(2, 1), (1, 2), (2, 3)])
def test_resumed_on_another_world_size_equals_the_uninterrupted_run(data, uninterrupted, tmp_path, method, first,
                                                                    then):
    run_dir = tmp_path / "run"
    _leg(first, data, run_dir, method, resume=False)
    assert [row[0] for row in _log(run_dir)] == list(range(1, FIRST_LEG + 1))
    _leg(then, data, run_dir, method, resume=True)
    (straight, straight_dynamics), resumed = uninterrupted[method], _log(run_dir)
    assert [row[:2] for row in resumed] == [row[:2] for row in straight] and len(straight) == 8
    for (step, _, loss, lr), (_, _, reference_loss, reference_lr) in zip(resumed, straight):
        assert lr == pytest.approx(reference_lr, rel=1e-12), step
        assert loss == pytest.approx(reference_loss, rel=1e-5, abs=1e-7), step  # DCQ starts near 0 (empty queue)
    dynamics = _dynamics(run_dir)  # every sample visited once an epoch, with the same margins
    assert torch.equal(dynamics["visits"], torch.full((48,), EPOCHS, dtype=torch.int32))
    assert torch.equal(dynamics["visits"], straight_dynamics["visits"])
    torch.testing.assert_close(dynamics["margin_sum"], straight_dynamics["margin_sum"], rtol=1e-5, atol=1e-6)
    assert dynamics["pair_counts"].sum() > 0  # and the same classes confused with each other, as often
    assert torch.equal(dynamics["pair_keys"], straight_dynamics["pair_keys"])
    assert torch.equal(dynamics["pair_counts"], straight_dynamics["pair_counts"])


@pytest.mark.parametrize("world_sizes", [(1, 2), (1, 3), (2, 3)])
@pytest.mark.parametrize("identity_aware", [False, True])
def test_every_split_of_the_global_batch_draws_the_same_samples_at_each_step(world_sizes, identity_aware):
    from core.data.loader import EpochBatchSampler, IdentityBatchSampler

    import numpy as np

    labels = np.repeat(np.arange(10), 6)
    steps = {}
    for world_size in world_sizes:
        batch = GLOBAL_BATCH // world_size
        samplers = [IdentityBatchSampler(labels, batch, 2, seed=4, rank=rank, world_size=world_size)
                    if identity_aware else EpochBatchSampler(len(labels), batch, seed=4, rank=rank,
                                                             world_size=world_size) for rank in range(world_size)]
        for sampler in samplers:
            sampler.set_position(epoch=1, start_batch=1)  # resumed after one step of the second epoch
        per_rank = [list(sampler) for sampler in samplers]
        steps[world_size] = [sorted(map(tuple if identity_aware else int, sum((rank[i] for rank in per_rank), [])))
                             for i in range(len(per_rank[0]))]
    first, second = (steps[w] for w in world_sizes)
    assert first == second and len(first) == len(labels) // GLOBAL_BATCH - 1
