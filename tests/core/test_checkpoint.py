"""Checkpoints of sharded class tables do not depend on the number of processes."""

import pytest
import torch
import torch.distributed as dist

from core.checkpoint import sampler_state_for, save_checkpoint
from core.data.batch import Batch
from core.distributed import DistributedContext
from core.errors import DataError
from core.loss import MarginSoftmaxLoss
from core.margins import build_margin
from partial_fc.sampler import PartialFCSampler
from tests.conftest import spawn_gloo

CLASSES, DIM = 23, 4


def _trained_sampler(rank, world_size, optimizer):
    sampler = PartialFCSampler(CLASSES, DIM, 0.5, optimizer=optimizer, rank=rank, world_size=world_size,
                               seed=1, dtype=torch.float64)
    for step in range(2):
        generator = torch.Generator().manual_seed(step)
        embeddings = torch.randn(6, DIM, generator=generator, dtype=torch.float64, requires_grad=True)
        labels = torch.randint(CLASSES, (6,), generator=generator)
        if world_size > 1:  # each rank sees the same global batch through the all-gather
            embeddings = embeddings[rank * 3:(rank + 1) * 3].detach().requires_grad_(True)
            labels = labels[rank * 3:(rank + 1) * 3]
        selection = sampler.select(embeddings, Batch(torch.zeros(labels.shape[0], 3, 2, 2), labels))
        MarginSoftmaxLoss(build_margin("cosface"))(selection).backward()
        sampler.collect(selection)
        sampler.step(0.1)
    return sampler


def _writer(rank, world_size, init_file, run_dir, optimizer):
    if world_size > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    sampler = _trained_sampler(rank, world_size, optimizer)
    save_checkpoint(run_dir, {"step": 2}, sampler, 2, DistributedContext(rank, world_size))
    torch.save({k: v for k, v in sampler.state_dict().items() if k in sampler.sharded_state_names()},
               run_dir / f"own-rows-{rank}.pt")
    if world_size > 1:
        dist.destroy_process_group()


def _write(tmp_path, world_size, optimizer):
    run_dir = tmp_path / f"written-by-{world_size}"
    run_dir.mkdir()
    if world_size == 1:
        _writer(0, 1, None, run_dir, optimizer)
    else:
        spawn_gloo(_writer, world_size, tmp_path, run_dir, optimizer)
    return run_dir, torch.load(run_dir / "checkpoint.pt", weights_only=False)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("written_by, read_by", [(2, 1), (1, 2), (2, 3)])
def test_resume_with_another_world_size(tmp_path, written_by, read_by, optimizer):
    run_dir, state = _write(tmp_path, written_by, optimizer)
    logical = sampler_state_for(run_dir, state, 0, CLASSES)
    assert logical["store.centers"].shape == (CLASSES, DIM)
    # Reading ranks each rebuild their slice; together they are the logical table again.
    slices = []
    for rank in range(read_by):
        sampler = PartialFCSampler(CLASSES, DIM, 0.5, optimizer=optimizer, rank=rank, world_size=read_by,
                                   dtype=torch.float64)
        sampler.load_state_dict(sampler_state_for(run_dir, state, *sampler.shard_range()))
        slices.append({k: v for k, v in sampler.state_dict().items() if k in state["sampler_shards"]["names"]})
    for name in state["sampler_shards"]["names"]:
        assert torch.equal(torch.cat([part[name] for part in slices]), logical[name]), name
    # And the logical table is exactly what the writers held, however many they were.
    own = [torch.load(run_dir / f"own-rows-{rank}.pt") for rank in range(written_by)]
    for name in state["sampler_shards"]["names"]:
        assert torch.equal(torch.cat([part[name] for part in own]), logical[name]), name
    moment = "store.center_optimizer.momentum_buffer" if optimizer == "sgd" else "store.center_optimizer.exp_avg"
    assert {"store.centers", "store.positive_updates", "store.negative_updates", moment} <= set(
        state["sampler_shards"]["names"])  # every per-class table of the store is saved as shards
    assert logical[moment].abs().sum() > 0  # the optimizer rows carry real state


def test_missing_shard_is_a_clear_error(tmp_path):
    run_dir, state = _write(tmp_path, 1, "sgd")
    next(run_dir.glob("sampler-step*.pt")).unlink()
    with pytest.raises(DataError, match="shard .* is missing"):
        sampler_state_for(run_dir, state, 0, CLASSES)


def test_numpy_data_of_older_checkpoints_loads_but_objects_inside_it_do_not(tmp_path):
    import os

    import numpy as np

    from core.checkpoint import read_checkpoint

    older = {"config": {"method": "pfc"}, "eval_backbone": {}, "rng": {"numpy": np.random.get_state()},
             "metrics": {"val": {"accuracy": np.float64(0.9)}}}  # what format 1 wrote
    torch.save(older, tmp_path / "checkpoint.pt")
    _, state = read_checkpoint(tmp_path)
    assert np.array_equal(state["rng"]["numpy"][1], np.random.get_state()[1])
    assert state["metrics"]["val"]["accuracy"] == 0.9

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'PWNED'}",)

    older["rng"]["numpy"] = np.array([Payload()], dtype=object)
    torch.save(older, tmp_path / "checkpoint.pt")
    with pytest.raises(DataError, match="refused to load.*but got <class 'numpy.dtypes.ObjectDType'>"):
        read_checkpoint(tmp_path)
    assert not (tmp_path / "PWNED").exists()
