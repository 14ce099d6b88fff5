"""Every method's head as the number of classes grows: its state, step time and peak memory.

Embeddings are random unit vectors, so no images are needed: a method whose sampler
encodes key images (DCQ's momentum encoder) gets a ``D -> D`` linear "backbone" over
random "key embeddings", which keeps its whole mechanism (EMA update, weight
generation, queue, masking) while the backbone's cost, the same for every method, is
left out. Each method runs through its spec's builder and loss recipe, as in training.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import peak_bytes, reset_peak, time_steps
from core.data.batch import Batch
from core.distributed import DistributedContext
from core.config import TrainConfig
from core.loss import margin_loss_for
from core.methods import get_method
from core.sampler import ClassSampler, SamplerEnvironment, build_sampler


def state_bytes(sampler: ClassSampler) -> int:
    """Bytes of the method's own state: its whole state_dict but the per-class counters kept for analysis."""
    counters = {id(tensor) for tensor in sampler.class_statistics().values()}
    return sum(tensor.numel() * tensor.element_size() for tensor in sampler.state_dict(keep_vars=True).values()
               if isinstance(tensor, torch.Tensor) and id(tensor) not in counters)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    device = torch.device(job["device"])
    torch.manual_seed(0)
    classes, batch, dim = job["classes"], job["batch"], job["dim"]
    embeddings = F.normalize(torch.randn(batch, dim, device=device)).requires_grad_(True)
    labels = torch.randint(classes, (batch,), device=device)
    baseline = reset_peak(device)
    spec = get_method(job["method"])
    environment = SamplerEnvironment(num_classes=classes, num_images=100 * classes, embedding_size=dim,
                                     backbone=nn.Linear(dim, dim, device=device), device=device,
                                     context=DistributedContext(), seed=0)
    sampler = build_sampler(spec, spec.make_options(job["options"]), environment)
    loss_fn = margin_loss_for(TrainConfig(method=spec.name))
    keys = sampler.batch_layout().key_images_per_row
    data = Batch(embeddings.detach(), labels, torch.randn(batch, keys, dim, device=device) if keys else None)

    def step() -> None:
        selection = sampler.select(embeddings, data)
        loss_fn(selection).backward()
        sampler.collect(selection)
        sampler.step(0.1)

    milliseconds = time_steps(step, device, job["warmup"], job["repeats"])
    return {**job, "step_ms": milliseconds, "state_mib": state_bytes(sampler) / 2**20,
            "peak_gib": (peak_bytes(device) - baseline) / 2**30}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--job", required=True)
    print(json.dumps(run_job(json.loads(parser.parse_args().job))))
