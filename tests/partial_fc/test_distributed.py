"""Model-parallel Partial FC on 2 gloo processes equals 1 process on the same global batch."""

import os

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from core.center_store.store import CenterStore
from core.data.batch import Batch
from core.loss import MarginSoftmaxLoss
from core.margins import build_margin
from partial_fc.sampler import PartialFCSampler
from tests.conftest import spawn_gloo

CLASSES, DIM, IN, BATCH_PER_RANK = 400, 6, 5, 4


def _problem():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(2 * BATCH_PER_RANK, IN, generator=generator, dtype=torch.float64)
    labels = torch.randint(CLASSES, (2 * BATCH_PER_RANK,), generator=generator)
    model = nn.Linear(IN, DIM, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(DIM, IN, generator=generator, dtype=torch.float64))
    return inputs, labels, model


def _step(model, sampler, inputs, labels):
    margin = build_margin("arcface", scale=16.0)
    selection = sampler.select(model(inputs), Batch(inputs, labels))
    loss = MarginSoftmaxLoss(margin)(selection)
    loss.backward()
    sampler.collect(selection)
    sampler.step(0.1)
    index = selection.state["index"]
    return loss.detach(), (None if index is None else index + sampler.store.shard_start)


def _worker(rank, world_size, init_file, rate, out, head_kernel="torch"):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        inputs, labels, model = _problem()
        ddp = DistributedDataParallel(model)
        sampler = PartialFCSampler(CLASSES, DIM, rate, rank=rank, world_size=world_size, dtype=torch.float64,
                                   head_kernel=head_kernel)
        rows = slice(rank * BATCH_PER_RANK, (rank + 1) * BATCH_PER_RANK)
        loss, index = _step(ddp, sampler, inputs[rows], labels[rows])
        torch.save({"loss": loss, "grad": model.weight.grad, "centers": sampler.store.centers,
                    "momentum": sampler.store.center_optimizer.momentum_buffer, "start": sampler.store.shard_start,
                    "index": index}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


class _ForcedColumns(CenterStore):
    """One process whose store selects exactly the union of what the ranks selected."""

    def __init__(self, forced, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.forced = forced

    def choose_columns(self, positives, num_sample):
        return self.forced


@pytest.mark.parametrize("rate,head_kernel", [(1.0, "torch"), (0.1, "torch"), (0.1, "triton")])
def test_two_processes_equal_one(tmp_path, rate, head_kernel):
    """The Triton head (its kernels in float32, interpreted on a CPU) reduces its max and sum over ranks like the
    torch path: 2 processes with it equal 1 process of the float64 torch path to float32's precision."""
    if head_kernel == "triton":
        pytest.importorskip("triton")
    spawn_gloo(_worker, 2, tmp_path, rate, str(tmp_path), head_kernel)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    inputs, labels, model = _problem()
    if rate == 1.0:
        sampler = PartialFCSampler(CLASSES, DIM, rate, dtype=torch.float64)
    else:
        union = torch.sort(torch.cat([r["index"] for r in ranks])).values
        assert union.numel() > torch.unique(labels).numel()  # negatives were sampled
        sampler = PartialFCSampler(CLASSES, DIM, 0.5, dtype=torch.float64)
        sampler.store = _ForcedColumns(union, CLASSES, (DIM,), dtype=torch.float64)
    loss, _ = _step(model, sampler, inputs, labels)
    # gradients reach ~80 here (rows of norm 0.02): float32 leaves ~1e-5 of absolute error
    float32 = dict(rtol=1e-5, atol=1e-4) if head_kernel == "triton" else {}
    for r in ranks:
        torch.testing.assert_close(r["loss"].double(), loss, **(float32 or dict(rtol=1e-12, atol=1e-12)))
        torch.testing.assert_close(r["grad"], model.weight.grad, **(float32 or dict(rtol=1e-10, atol=1e-12)))
    torch.testing.assert_close(torch.cat([r["centers"] for r in ranks]), sampler.store.centers,
                               **(float32 or dict(rtol=1e-10, atol=1e-14)))
    momentum = sampler.store.center_optimizer.momentum_buffer
    torch.testing.assert_close(torch.cat([r["momentum"] for r in ranks]), momentum,
                               **(float32 or dict(rtol=1e-10, atol=1e-14)))
