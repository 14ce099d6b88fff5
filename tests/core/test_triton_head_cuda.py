"""The Triton head compiled for a GPU (run by benchmarks/gpu_suite.sh with TRITON_INTERPRET=0; skipped elsewhere)."""

import os

import pytest
import torch

from core.center_store.store import CenterStore
from core.loss import MarginSoftmaxLoss
from core.margins import build_margin
from core.sampler import Selection

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
                                reason="needs a CUDA GPU and TRITON_INTERPRET=0")
MARGINS = {"arcface": build_margin("arcface"), "cosface": build_margin("cosface"),
           "interclass-filter": build_margin("arcface", interclass_threshold=0.3)}


def _relative(value, reference):
    return ((value.double() - reference.double()).norm() / reference.double().norm()).item()


@pytest.mark.parametrize("margin", MARGINS.values(), ids=MARGINS.keys())
@pytest.mark.parametrize("gemm", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_compiled_head_equals_the_float64_torch_path(margin, gemm):
    from core.triton_head import fused_margin_cross_entropy

    device = torch.device("cuda")
    generator = torch.Generator(device=device).manual_seed(0)
    batch, classes, sampled, dim = 300, 50_000, 7_000, 512  # not multiples of any tile
    embeddings = torch.randn(batch, dim, device=device, generator=generator, requires_grad=True)
    table = torch.randn(classes, dim, device=device, generator=generator) * 0.01
    rows = torch.randperm(classes, device=device, generator=generator)[:sampled].sort().values
    targets = torch.randint(sampled, (batch,), device=device, generator=generator)
    row_gradient = table.new_zeros(()).expand(sampled, dim).detach().requires_grad_(True)
    loss = fused_margin_cross_entropy(embeddings, row_gradient, table, rows, targets, margin, gemm)
    grads = torch.autograd.grad(loss, (embeddings, row_gradient))
    reference_embeddings = embeddings.detach().double().requires_grad_(True)
    weights = table[rows].double().requires_grad_(True)
    expected = MarginSoftmaxLoss(margin, chunk_columns=None)(Selection(reference_embeddings, weights, targets))
    expected_grads = torch.autograd.grad(expected, (reference_embeddings, weights))
    tolerance = 1e-5 if gemm == torch.float32 else 2e-2
    assert _relative(loss, expected) < tolerance
    assert _relative(grads[0], expected_grads[0]) < tolerance
    assert _relative(grads[1], expected_grads[1]) < tolerance


@pytest.mark.parametrize("storage", [torch.float32, torch.bfloat16])
def test_compiled_store_steps_like_the_torch_store(storage):
    margin = build_margin("arcface")
    device = torch.device("cuda")
    stores = {kernel: CenterStore(20_000, (128,), seed=1, device=device, storage_dtype=storage, head_kernel=kernel)
              for kernel in ("torch", "triton")}
    generator = torch.Generator(device=device).manual_seed(3)
    for _ in range(3):
        embeddings = torch.randn(256, 128, device=device, generator=generator)
        labels = torch.randint(20_000, (256,), device=device, generator=generator)
        for store in stores.values():
            store.generator.manual_seed(5)
            selection = store.select(embeddings.clone().requires_grad_(True), labels, 2_000)
            MarginSoftmaxLoss(margin, bf16_on_cuda=False)(selection).backward()
            store.collect(selection)
            store.step(0.1)
    fused, plain = stores["triton"].centers.float(), stores["torch"].centers.float()
    if storage == torch.float32:  # the same update, to rounding
        torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-6)
    else:  # stochastic rounding draws differ: within a few bf16 steps (2^-8 of the value each) after 3 updates
        assert ((fused - plain).abs() <= plain.abs() * 2.0 ** -5 + 1e-6).all()


def test_a_fused_step_never_waits_for_the_host():
    from tests.conftest import assert_no_host_sync

    device = torch.device("cuda")
    store = CenterStore(100_000, (512,), device=device, head_kernel="triton")
    loss = MarginSoftmaxLoss(build_margin("arcface"))
    loss.record_margins = True
    embeddings = torch.randn(256, 512, device=device)
    labels = torch.randint(100_000, (256,), device=device)

    def step():
        selection = store.select(embeddings.clone().requires_grad_(True), labels, 10_000, "stratified")
        loss(selection).backward()
        store.collect(selection)
        store.step(0.1)

    assert_no_host_sync(step, step)  # the first step autotunes the tiles (that syncs); the second must not
