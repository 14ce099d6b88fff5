import pytest
import torch

from core.chunked_loss import chunked_margin_cross_entropy
from core.loss import MarginSoftmaxLoss
from core.margins import build_margin
from core.sampler import Selection


@pytest.mark.parametrize("margin", [build_margin("arcface", scale=16.0), build_margin("cosface", scale=30.0),
                                    build_margin("combined", scale=20.0, combined=(1.1, 0.2, 0.1)),
                                    build_margin("arcface", scale=16.0, straight_through=True)])
@pytest.mark.parametrize("chunk", [5, 8, 1000])
def test_chunked_equals_simple_path_in_float64(margin, chunk):
    generator = torch.Generator().manual_seed(chunk)
    embeddings = torch.randn(6, 7, generator=generator, dtype=torch.float64)
    weights = torch.randn(37, 7, generator=generator, dtype=torch.float64)
    targets = torch.randint(37, (6,), generator=generator)
    ours_e, ours_w = embeddings.clone().requires_grad_(True), weights.clone().requires_grad_(True)
    ref_e, ref_w = embeddings.clone().requires_grad_(True), weights.clone().requires_grad_(True)
    ours = chunked_margin_cross_entropy(ours_e, ours_w, targets, margin, chunk=chunk)
    reference = MarginSoftmaxLoss(margin)(Selection(ref_e, ref_w, targets))
    ours.backward()
    reference.backward()
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours_e.grad, ref_e.grad, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(ours_w.grad, ref_w.grad, rtol=1e-8, atol=1e-12)


def test_bf16_gemms_stay_within_bf16_tolerance():
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(32, 64, generator=generator, requires_grad=True)
    weights = torch.randn(500, 64, generator=generator, requires_grad=True)
    targets = torch.randint(500, (32,), generator=generator)
    margin = build_margin("arcface")
    fast = chunked_margin_cross_entropy(embeddings, weights, targets, margin, chunk=128, dtype=torch.bfloat16)
    fast_grad = torch.autograd.grad(fast, (embeddings, weights))
    simple = MarginSoftmaxLoss(margin)(Selection(embeddings, weights, targets))
    simple_grad = torch.autograd.grad(simple, (embeddings, weights))
    assert abs(fast.item() - simple.item()) / simple.item() < 1e-2
    for ours, theirs in zip(fast_grad, simple_grad):
        assert (ours - theirs).norm() / theirs.norm() < 3e-2
