"""DCQ on 2 gloo processes equals 1 process on the same global batch (BN-free backbone)."""

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from core.data.batch import Batch
from core.loss import MarginSoftmaxLoss
from core.margins import build_margin
from dcq.sampler import DCQSampler
from tests.conftest import spawn_gloo

CLASSES, DIM, ROWS_PER_RANK, STEPS = 9, 4, 3, 3


def _problem():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(STEPS, 2 * ROWS_PER_RANK, 3, 2, 2, generator=generator, dtype=torch.float64)
    keys = torch.randn(STEPS, 2 * ROWS_PER_RANK, 1, 3, 2, 2, generator=generator, dtype=torch.float64)
    labels = torch.randint(CLASSES, (STEPS, 2 * ROWS_PER_RANK), generator=generator)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, DIM)).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    return images, keys, labels, model


def _train(model, online, sampler, images, keys, labels, rows):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    loss_fn = MarginSoftmaxLoss(build_margin("cosface", scale=10.0, m=0.3))
    grads = []
    for step in range(STEPS):
        optimizer.zero_grad()
        batch = Batch(images[step, rows], labels[step, rows], keys[step, rows])
        selection = sampler.select(model(batch.images), batch)
        loss_fn(selection).backward()
        grads.append(online[1].weight.grad.clone())
        sampler.collect(selection)
        optimizer.step()
        sampler.step(0.5)
    return grads


def _worker(rank, world_size, init_file, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        images, keys, labels, model = _problem()
        sampler = DCQSampler(model, DIM, CLASSES, queue_size=5, rank=rank, world_size=2)
        sampler.double()
        rows = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
        grads = _train(DistributedDataParallel(model), model, sampler, images, keys, labels, rows)
        torch.save({"grads": grads, "queue": sampler.queue, "queue_labels": sampler.queue_labels,
                    "encoder": sampler.encoder[1].weight}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one(tmp_path):
    spawn_gloo(_worker, 2, tmp_path, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    images, keys, labels, model = _problem()
    sampler = DCQSampler(model, DIM, CLASSES, queue_size=5)
    sampler.double()
    grads = _train(model, model, sampler, images, keys, labels, slice(None))
    for r in ranks:
        for theirs, ours in zip(r["grads"], grads):
            torch.testing.assert_close(theirs, ours, rtol=1e-10, atol=1e-12)
        assert torch.equal(r["queue_labels"], sampler.queue_labels)
        torch.testing.assert_close(r["queue"], sampler.queue, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(r["encoder"], sampler.encoder[1].weight, rtol=1e-10, atol=1e-12)
