"""Partial FC head: ours, with the Triton or the torch head, against PartialFC_V2's dense-update semantics.

The baseline is written here, following insightface's partial_fc_v2.py: a full
``nn.Parameter`` of centers, a random-score top-k selection, an autograd gather (so the
gradient is dense with zero rows) and torch's SGD with momentum and weight decay over
every center. Ours is Partial FC's center store (core/center_store/): with the torch head
the sampled rows are copied out; with the Triton head (core/triton_head.py) they are read
in place. Only they and their momentum are updated. All run the same margin softmax on the
same embeddings; only the head is timed (forward, backward, center update).
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from benchmarks.common import peak_bytes, reset_peak, synchronize, time_steps
from core.loss import MarginSoftmaxLoss
from core.margins import build_margin
from core.center_store.store import CenterStore
from core.sampler import Selection

LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4


class DenseUpdateBaseline:
    """PartialFC_V2's semantics: every center and its momentum move at every step."""

    def __init__(self, num_classes: int, dim: int, sample_rate: float, device: torch.device) -> None:
        self.weight = torch.nn.Parameter(torch.normal(0, 0.01, (num_classes, dim), device=device))
        self.optimizer = torch.optim.SGD([self.weight], lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        self.num_sample = int(sample_rate * num_classes)
        self.num_classes = num_classes

    def select(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Selection:
        """Random-score top-k over all classes, positives forced in; an autograd gather."""
        if self.num_sample < self.num_classes:
            positives = torch.unique(labels)
            scores = torch.rand(self.num_classes, device=labels.device)
            scores[positives] = 2.0
            index = torch.topk(scores, k=max(self.num_sample, positives.numel()))[1].sort()[0]
            return Selection(embeddings, self.weight[index], torch.searchsorted(index, labels))
        return Selection(embeddings, self.weight, labels)

    def step(self, embeddings: torch.Tensor, labels: torch.Tensor, loss_fn: MarginSoftmaxLoss) -> None:
        loss = loss_fn(self.select(embeddings, labels))
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    device = torch.device(job["device"])
    torch.manual_seed(0)
    classes, rate, batch, dim = job["classes"], job["rate"], job["batch"], job["dim"]
    loss_fn = MarginSoftmaxLoss(build_margin("arcface"))
    embeddings = F.normalize(torch.randn(batch, dim, device=device)).requires_grad_(True)
    labels = torch.randint(classes, (batch,), device=device)
    baseline = reset_peak(device)
    if job["variant"] == "dense":
        head = DenseUpdateBaseline(classes, dim, rate, device)
        simple_loss = MarginSoftmaxLoss(build_margin("arcface"), chunk_columns=None)  # as insightface computes it

        def step() -> None:
            head.step(embeddings, labels, simple_loss)
    else:
        store = CenterStore(classes, (dim,), "sgd", MOMENTUM, WEIGHT_DECAY, device=device,
                            storage_dtype=getattr(torch, job.get("center_dtype", "float32")),
                            head_kernel=job["variant"])
        num_sample, sampling = int(rate * classes), job.get("sampling", "uniform")

        def step() -> None:
            selection = store.select(embeddings, labels, num_sample, sampling)
            loss_fn(selection).backward()
            store.collect(selection)
            store.step(LR)
    milliseconds = time_steps(step, device, job["warmup"], job["repeats"])
    result = {**job, "step_ms": milliseconds, "peak_gib": (peak_bytes(device) - baseline) / 2**30}
    if job.get("profile"):
        result["kernels"] = kernel_times(step, device)
    return result


def kernel_times(step: Callable[[], None], device: torch.device, steps: int = 5, top: int = 8) -> list:
    """The step's costliest operations (CUDA kernels on a GPU, CPU operators elsewhere) as [name, ms per step]:
    where the head's time goes, read off one profiled run instead of guessed from the total."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as profiler:
        for _ in range(steps):
            step()
        synchronize(device)
    events = [event for event in profiler.key_averages() if not cuda or event.device_type.name == "CUDA"]
    microseconds = (lambda event: event.device_time_total) if cuda else (lambda event: event.self_cpu_time_total)
    events.sort(key=microseconds, reverse=True)
    return [[event.key[:80], microseconds(event) / 1000 / steps] for event in events[:top]]


def check_fast_path(device: torch.device, classes: int = 2000, dim: int = 64, batch: int = 32) -> float:
    """Max |difference| of centers after 3 steps at rate 1.0: ours vs the dense baseline."""
    torch.manual_seed(0)
    loss_fn = MarginSoftmaxLoss(build_margin("arcface"), chunk_columns=None)
    ours = CenterStore(classes, (dim,), "sgd", MOMENTUM, WEIGHT_DECAY, device=device)
    dense = DenseUpdateBaseline(classes, dim, 1.0, device)
    with torch.no_grad():
        dense.weight.copy_(ours.centers)
    for _ in range(3):
        embeddings = torch.randn(batch, dim, device=device)
        labels = torch.randint(classes, (batch,), device=device)
        dense.step(embeddings.clone().requires_grad_(True), labels, loss_fn)
        selection = ours.select(embeddings.clone().requires_grad_(True), labels, classes)
        loss_fn(selection).backward()
        ours.collect(selection)
        ours.step(LR)
    return (ours.centers - dense.weight.detach()).abs().max().item()


def check_fused_head(device: torch.device, classes: int = 70_000, sampled: int = 20_000, dim: int = 512,
                     batch: int = 256, gemm_dtype: Optional[torch.dtype] = None) -> dict:
    """Relative error of the Triton head's loss and gradients (by default bf16 GEMMs on CUDA, float32 elsewhere)
    against the simple fp32 path."""
    from core.triton_head import fused_margin_cross_entropy

    generator = torch.Generator(device=device).manual_seed(2)
    embeddings = torch.randn(batch, dim, device=device, generator=generator, requires_grad=True)
    table = torch.randn(classes, dim, device=device, generator=generator)
    rows = torch.randperm(classes, device=device, generator=generator)[:sampled].sort().values
    targets = torch.randint(sampled, (batch,), device=device, generator=generator)
    margin = build_margin("arcface")
    row_gradient = table.new_zeros(()).expand(sampled, dim).detach().requires_grad_(True)
    gemm_dtype = gemm_dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    fused = fused_margin_cross_entropy(embeddings, row_gradient, table, rows, targets, margin, gemm_dtype)
    fused_grads = torch.autograd.grad(fused, (embeddings, row_gradient))
    weights = table[rows].requires_grad_(True)
    simple = MarginSoftmaxLoss(margin, chunk_columns=None)(Selection(embeddings, weights, targets))
    simple_grads = torch.autograd.grad(simple, (embeddings, weights))
    return {"loss": _relative(fused.detach(), simple.detach()),
            "grad_embeddings": _relative(fused_grads[0], simple_grads[0]),
            "grad_rows": _relative(fused_grads[1], simple_grads[1])}


def _relative(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value - reference).norm() / reference.norm()).item()


def check_chunked_loss(device: torch.device, classes: int = 70_000, dim: int = 512, batch: int = 256) -> dict:
    """Relative error of the chunked (bf16 on CUDA) loss and gradients against the simple fp32 path."""
    generator = torch.Generator(device=device).manual_seed(1)
    embeddings = torch.randn(batch, dim, device=device, generator=generator, requires_grad=True)
    weights = torch.randn(classes, dim, device=device, generator=generator, requires_grad=True)
    targets = torch.randint(classes, (batch,), device=device, generator=generator)
    margin = build_margin("arcface")
    results = []
    for chunk in (16_384, None):
        loss = MarginSoftmaxLoss(margin, chunk_columns=chunk)(Selection(embeddings, weights, targets))
        results.append((loss.detach(), *torch.autograd.grad(loss, (embeddings, weights))))
    (fast, *fast_grads), (simple, *simple_grads) = results
    return {"loss": _relative(fast, simple), "grad_embeddings": _relative(fast_grads[0], simple_grads[0]),
            "grad_weights": _relative(fast_grads[1], simple_grads[1])}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--job", required=True)
    print(json.dumps(run_job(json.loads(parser.parse_args().job))))
