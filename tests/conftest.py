"""Shared fixtures: tiny datasets written in the real formats, small enough for CI."""

import os
from pathlib import Path

# Under pytest-xdist (-n 2) two workers share the cores: OpenMP threads that wait passively instead of spinning
# leave them to the other worker (set before anything loads OpenMP; it changes no result, only idle behaviour).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest

from core.data.base import encode_image

# The tests run Triton's kernels (core/triton_head.py) in its interpreter, on CPU tensors: set before anything
# imports Triton, and inherited by the processes the distributed tests spawn. On a GPU, the GPU suite runs
# tests/core/test_triton_head_cuda.py apart, with TRITON_INTERPRET=0, to compile them for the device.
os.environ.setdefault("TRITON_INTERPRET", "1")


def write_tiny_rec(root: Path, classes: int = 6, per_class: int = 8, size: int = 16, seed: int = 0,
                   with_val: bool = True) -> Path:
    """Class c is a colour pattern plus noise; val.bin pairs images of the same classes."""
    from core.data.recordio import write_insightface_rec
    from core.data.verification_bin import write_verification_bin

    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, size=(classes, 2, 3))

    def image(label: int) -> bytes:
        pixels = np.empty((size, size, 3), dtype=np.float64)
        pixels[: size // 2] = palette[label, 0]
        pixels[size // 2:] = palette[label, 1]
        pixels += rng.normal(0, 20, pixels.shape)
        return encode_image(np.clip(pixels, 0, 255).astype(np.uint8))

    samples = [(label, image(label)) for label in range(classes) for _ in range(per_class)]
    write_insightface_rec(root, samples, classes, image_size=(size, size))
    if with_val:
        pairs, issame = [], []
        for i in range(20):
            a = i % classes
            b = a if i % 2 == 0 else (a + 1) % classes
            pairs += [image(a), image(b)]
            issame.append(a == b)
        write_verification_bin(root / "val.bin", pairs, issame)
    return root


@pytest.fixture
def tiny_rec(tmp_path: Path) -> Path:
    return write_tiny_rec(tmp_path / "tiny")


def spawn_gloo(worker, world_size: int, tmp_path: Path, *args) -> None:
    """``mp.spawn(worker, (rank, world_size, init_file, *args))`` with a fresh init file per try.

    Gloo very rarely aborts a process while it sets up its connections (SIGABRT before
    any test code runs); such a crash is retried up to twice. Failures inside the worker
    (exceptions) and every comparison, done by the caller afterwards, are never retried.
    """
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessExitedException

    for attempt in range(3):
        init_file = tmp_path / f"gloo-init-{attempt}"
        try:
            mp.spawn(worker, args=(world_size, str(init_file), *args), nprocs=world_size, join=True)
            return
        except ProcessExitedException:
            if attempt == 2:
                raise


@pytest.fixture
def float64_default():
    """Tensors made without a dtype are float64: equivalence tests then compare to 1e-12, not to float32 noise."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def assert_no_host_sync(warm_up, step) -> None:
    """Run ``warm_up`` (lazy initialisations may sync), then ``step`` with any CUDA host sync raising."""
    import torch

    warm_up()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
