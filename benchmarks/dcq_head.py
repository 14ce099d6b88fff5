"""DCQ against Partial FC as the number of classes grows, head only.

Embeddings come from the synthetic hypersphere mixture's shape (random unit vectors), so
no images are needed: DCQ's momentum encoder is a ``D -> D`` linear layer over "key
embeddings", which keeps its whole mechanism (EMA update, weight generation, queue,
masking) while the backbone's cost, equal for both methods, is left out.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import peak_bytes, reset_peak, time_steps
from core.loss import MarginSoftmaxLoss
from core.margins import build_margin
from dcq.sampler import DCQSampler
from partial_fc.sampler import PartialFCSampler


def state_bytes(sampler: nn.Module) -> int:
    """Bytes of the method's own state; per-class counters for analysis are not counted."""
    if isinstance(sampler, DCQSampler):
        return sampler.method_state_bytes()
    tensors = [sampler.centers] + list(sampler.center_optimizer.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    device = torch.device(job["device"])
    torch.manual_seed(0)
    classes, batch, dim = job["classes"], job["batch"], job["dim"]
    embeddings = F.normalize(torch.randn(batch, dim, device=device)).requires_grad_(True)
    labels = torch.randint(classes, (batch,), device=device)
    baseline = reset_peak(device)
    if job["method"] == "dcq":
        encoder = nn.Linear(dim, dim, device=device)
        sampler = DCQSampler(encoder, dim, classes, job["queue"], device=device)
        loss_fn = MarginSoftmaxLoss(build_margin("cosface", scale=50.0, m=0.3))
        keys = {"key_images": torch.randn(batch, 1, dim, device=device)}
    else:
        sampler = PartialFCSampler(classes, dim, job["rate"], device=device)
        loss_fn = MarginSoftmaxLoss(build_margin("arcface"))
        keys = {}

    def step() -> None:
        selection = sampler.select(embeddings, labels, keys)
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
