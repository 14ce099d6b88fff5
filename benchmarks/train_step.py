"""Whole training step, img/s: this project's Trainer against the peers' steps written here.

A method's spec names its peer (``peer_step``). The two here follow the peers' training
loops: arcface_torch (PartialFC_V2 semantics: one SGD over backbone and every center,
fp16 autocast with a GradScaler, gradient clipping) and the official DCQ code (a query
network, a key network updated by a parameter-by-parameter EMA loop, a FIFO queue of
key features). Ours is the real ``Trainer.train_step``, with each lever (fp16 or bf16 autocast,
the Triton or torch head, channels_last, torch.compile) as its own variant. Every variant
runs in a fresh process on the same in-memory batch, re-used each step, so the figure is the
step itself: the data pipeline is measured by ``bench data``. On CPU the baselines run in float32 (fp16 autocast is a GPU feature).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import statistics
import tempfile
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import peak_bytes, reset_peak, time_steps
from benchmarks.pfc_head import DenseUpdateBaseline
from core.backbones import build_backbone
from core.data.base import FaceDataset
from core.data.loader import CachedImages
from core.data.transforms import to_model_input
from core.loss import MarginSoftmaxLoss
from core.margins import build_margin
from core.method_spec import load_reference
from core.methods import get_method

LR, MOMENTUM, WEIGHT_DECAY, CLIP = 0.1, 0.9, 5e-4, 5.0
CHECK_STEPS = 3


#: Images of the step benchmark's dataset, at least: a DCQ queue of 8,192 (the official size) must fit.
MIN_IMAGES = 8192


class RandomFaces(FaceDataset):
    """Random images, two (or more) per label, labels spread over ``num_classes``.

    Two images per label give a key-image method (DCQ) its key image and give a center
    method (Partial FC) a batch of about ``batch`` distinct positives, as in a real
    shuffled batch of a large dataset; there are at least ``min_images`` images (DCQ
    refuses a queue longer than the dataset).
    """

    def __init__(self, batch: int, num_classes: int, size: int, min_images: int = 0, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        images = max(2 * batch, min_images)
        count = min(num_classes, max(batch, (images + 1) // 2))
        identities = np.sort(rng.choice(num_classes, size=count, replace=False))
        self.labels = np.repeat(identities, -(-images // count))[:max(images, 2 * count)].astype(np.int64)
        self.num_classes = num_classes
        self.images = rng.integers(0, 256, size=(len(self.labels), size, size, 3), dtype=np.uint8)

    def load_image(self, index: int) -> np.ndarray:
        return self.images[index]


def _trainer(job: dict[str, Any], run_dir: str):
    from core.config import TrainConfig
    from core.trainer import Trainer

    config = TrainConfig(method=job["method"], backbone=job["backbone"], input_size=job["size"],
                         batch_size=job["batch"], device=job["device"], workers=0, amp=job["amp"],
                         channels_last=job["channels_last"], compile=job["compile"], val=[], seed=0,
                         checkpoint_every=0).replace(**job["options"])
    faces = RandomFaces(job["batch"], job["classes"], job["size"], min_images=MIN_IMAGES)
    dataset = CachedImages(faces, job["size"], progress=False)
    return Trainer(config, run_dir, progress=False, dataset=dataset)


def ours_step(job: dict[str, Any], run_dir: str):
    """The Trainer's own step on one prepared batch (copied to the device every step, as in training); returns
    the step and the trainer."""
    trainer = _trainer(job, run_dir)
    stream = itertools.repeat(next(trainer.batches()))
    return (lambda: trainer.train_step(stream)), trainer


def dynamics_cost(trainer, step, device: torch.device, blocks: int | None = None, steps_per_block: int = 5) -> float:
    """The step-time share of recording training dynamics (core/dynamics.py), measured in one process: blocks of
    steps with it on and off, interleaved, and the median of each on block's time over the off block beside it, so
    drift in the machine's speed falls on both alike. By default 30 blocks on the CPU (on a 2-core CPU ten blocks
    left a spread of several points) and 10 on CUDA, where the timing is steadier and 30 blocks of an iresnet50
    step would take most of the GPU suite's ``bench step`` budget."""
    blocks = blocks or (10 if device.type == "cuda" else 30)
    recorder, ratios = trainer.dynamics, []
    try:
        for _ in range(blocks):
            times = {}
            for on in (True, False):
                trainer.dynamics, trainer.criterion.record_margins = (recorder if on else None), on
                times[on] = time_steps(step, device, 1, steps_per_block)
            ratios.append(times[True] / times[False])
    finally:
        trainer.dynamics, trainer.criterion.record_margins = recorder, recorder is not None
    return statistics.median(ratios) - 1


def scaled_update(loss: torch.Tensor, scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer,
                  network: nn.Module) -> None:
    """The peers' fp16 update: scaled backward, unscale, clip the network, step, update the scale."""
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    nn.utils.clip_grad_norm_(network.parameters(), CLIP)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


class InsightfaceStylePFC:
    """arcface_torch's loop: fp16 autocast, GradScaler, one SGD over backbone and all centers, clipping."""

    def __init__(self, job: dict[str, Any], device: torch.device) -> None:
        torch.manual_seed(0)
        self.backbone = build_backbone(job["backbone"], 512, job["size"]).to(device)
        self.head = DenseUpdateBaseline(job["classes"], 512, job["options"]["sample_rate"], device)
        self.optimizer = torch.optim.SGD([*self.backbone.parameters(), self.head.weight], lr=LR, momentum=MOMENTUM,
                                         weight_decay=WEIGHT_DECAY)
        self.loss_fn = MarginSoftmaxLoss(build_margin("arcface"), chunk_columns=None)
        self.fp16 = device.type == "cuda"
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.fp16)
        self.device = device

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, key_images: torch.Tensor) -> torch.Tensor:
        images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.fp16):
            embeddings = self.backbone(images)
        loss = self.loss_fn(self.head.select(embeddings.float(), labels))
        scaled_update(loss, self.scaler, self.optimizer, self.backbone)
        return loss.detach()


class OfficialStyleDCQ:
    """The official DCQ loop: query net, EMA key net updated parameter by parameter, a feature queue."""

    def __init__(self, job: dict[str, Any], device: torch.device) -> None:
        queue = int(job["options"]["queue_size"])
        if queue % job["batch"] or queue != job["options"]["queue_size"]:
            raise ValueError(f"the official queue needs a whole number of entries divisible by the batch ({queue})")
        torch.manual_seed(0)
        self.query = build_backbone(job["backbone"], 512, job["size"]).to(device)
        self.key = copy.deepcopy(self.query).requires_grad_(False)
        self.queue = F.normalize(torch.randn(queue, 512, device=device), dim=1)
        self.queue_labels = torch.full((queue,), -1, dtype=torch.int64, device=device)
        self.pointer = 0
        self.optimizer = torch.optim.SGD(self.query.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        self.margin = build_margin("cosface", scale=50.0, m=0.3)  # DCQ's recipe
        self.fp16 = device.type == "cuda"
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.fp16)
        self.device = device

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, key_images: torch.Tensor) -> torch.Tensor:
        images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        keys = key_images[:, 0].to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.fp16):
            query = self.query(images)
            with torch.no_grad():
                for key_param, query_param in zip(self.key.parameters(), self.query.parameters()):
                    key_param.data = key_param.data * 0.999 + query_param.data * (1.0 - 0.999)
                key = F.normalize(self.key(keys).float(), dim=1)
        weights = torch.cat([key, self.queue])
        cosine = F.normalize(query.float(), dim=1) @ weights.t()
        rows = torch.arange(labels.numel(), device=self.device)
        same_label = labels[:, None] == torch.cat([labels, self.queue_labels])[None, :]
        same_label[rows, rows] = False
        logits = self.margin(cosine.clamp(-1, 1), rows).masked_fill(same_label, float("-inf"))
        loss = F.cross_entropy(logits, rows)
        scaled_update(loss, self.scaler, self.optimizer, self.query)
        end = self.pointer + key.shape[0]
        self.queue[self.pointer:end], self.queue_labels[self.pointer:end] = key, labels
        self.pointer = end % self.queue.shape[0]
        return loss.detach()


def baseline_step(job: dict[str, Any]):
    """The method's peer step (its spec's ``peer_step``) on the first image of each of ``batch`` labels."""
    peer = get_method(job["method"]).peer_step
    if peer is None:
        raise ValueError(f"--method {job['method']} names no peer step to compare with")
    device = torch.device(job["device"])
    faces = RandomFaces(job["batch"], job["classes"], job["size"])
    pairs = slice(0, 2 * job["batch"], 2)  # one image per identity; the image after it is its key
    images = to_model_input(faces.images[pairs], job["size"])
    keys = to_model_input(faces.images[1:2 * job["batch"]:2], job["size"]).unsqueeze(1)
    labels = torch.from_numpy(faces.labels[pairs].copy())
    step = load_reference(peer)(job, device)
    return lambda: step(images, labels, keys)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    device = torch.device(job["device"])
    base = reset_peak(device)  # the peak covers the whole training state: model, optimizer, head
    with tempfile.TemporaryDirectory() as run_dir:
        step, trainer = (baseline_step(job), None) if job["variant"] == "baseline" else ours_step(job, run_dir)
        losses = [float(step()) for _ in range(CHECK_STEPS)]  # also the warm-up (compilation happens here)
        milliseconds = time_steps(step, device, job["warmup"], job["repeats"])
        peak = (peak_bytes(device) - base) / 2**30
        extra = {"dynamics_cost": dynamics_cost(trainer, step, device)} if job.get("measure_dynamics") else {}
    return {**job, "step_ms": milliseconds, "images_per_s": job["batch"] * 1000 / milliseconds, "peak_gib": peak,
            "first_losses": losses, **extra}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--job", required=True)
    print(json.dumps(run_job(json.loads(parser.parse_args().job))))
