"""Optimizers for a center store that touch only the rows that were sampled.

A row that is not updated keeps its value *and* its optimizer state bit for bit: no
weight decay, no momentum drift, no stale Adam moments applied. This is Partial FC's
semantics in the paper (and insightface's v1); PartialFC_V2 loses it because torch's
optimizers see a dense gradient with zero rows. Each update follows torch.optim's
arithmetic for the rows it touches, so at sample rate 1.0 the result equals
``torch.optim.SGD``/``AdamW`` over an ``nn.Linear`` weight.

The store and the optimizer state may be kept in bfloat16 (half the memory of float32,
what lets 20M+ classes fit on one GPU). The arithmetic then runs in float32 on the
touched rows and is written back with stochastic rounding: an update smaller than half
a bf16 step (lr x grad is often 1e-4 of a center's entries) would be rounded away every
time by round-to-nearest, whereas stochastic rounding keeps every update in expectation.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from core.errors import ConfigError


def stochastic_round(values: torch.Tensor, dtype: torch.dtype, generator: Optional[torch.Generator]
                     ) -> torch.Tensor:
    """float32 -> ``dtype``; to bfloat16 rounding up with probability equal to the remainder.

    bfloat16 is the upper half of a float32's bits. Adding uniform random low bits and
    truncating rounds the magnitude up with probability (dropped bits / 2^16), so the
    expectation equals the float32 value (for either sign, as the sign is a separate bit).
    Other target dtypes are a plain cast.
    """
    if dtype != torch.bfloat16:
        return values.to(dtype)
    bits = values.to(torch.float32).contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, dtype=torch.int32, device=bits.device, generator=generator)
    return ((bits + noise) & -(1 << 16)).view(torch.float32).to(torch.bfloat16)


class _RowOptimizer(nn.Module):
    """Reads touched rows into the working dtype and writes them back into the store's."""

    def __init__(self, compute_dtype: torch.dtype) -> None:
        super().__init__()
        self.compute_dtype = compute_dtype
        self.rounding_generator: Optional[torch.Generator] = None

    def use_fused_kernel(self) -> None:
        """Update rows with core/triton_head.py's kernel where there is one (SGD); the others keep torch's."""

    def read(self, store: torch.Tensor, rows: Optional[torch.Tensor]) -> torch.Tensor:
        """The rows to update; without a dtype change and with all rows, the store itself."""
        values = store if rows is None else store[rows]
        return values.to(self.compute_dtype)

    def write(self, store: torch.Tensor, rows: Optional[torch.Tensor], values: torch.Tensor,
              leaders: Optional[torch.Tensor] = None) -> None:
        """``leaders`` (see ``update``): every copy of a repeated row writes its leader's rounding."""
        if values is store:
            return
        values = stochastic_round(values, store.dtype, self.rounding_generator)
        if leaders is not None:
            values = values[leaders]
        if rows is None:
            store.copy_(values)
        else:
            store[rows] = values


class RowSGD(_RowOptimizer):
    """SGD with momentum and (coupled) weight decay, one momentum row per center.

    ``shape`` is the store's: ``[rows, D]``, or ``[rows, K, D]`` for K prototypes per class.
    """

    def __init__(self, shape: tuple[int, ...], momentum: float = 0.9, weight_decay: float = 5e-4,
                 device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32,
                 storage_dtype: Optional[torch.dtype] = None) -> None:
        super().__init__(dtype)
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.register_buffer("momentum_buffer", torch.zeros(shape, device=device, dtype=storage_dtype or dtype))
        self.fused = False

    def use_fused_kernel(self) -> None:
        self.fused = True

    @torch.no_grad()
    def update(self, centers: torch.Tensor, rows: Optional[torch.Tensor], grad: torch.Tensor, lr: float,
               leaders: Optional[torch.Tensor] = None) -> None:
        """Update ``centers[rows]`` (all rows when ``rows`` is None) from their gradient.

        ``rows`` may repeat a row when every copy carries the same (summed) gradient and
        ``leaders`` gives, per position, one position of the same row: each copy then
        computes the same new values and writes the same rounding, so the row is
        updated once, as if the rows were unique, without a host-syncing ``unique``.
        """
        if self.fused:
            from core.triton_head import sgd_rows
            return sgd_rows(centers.view(-1, centers.shape[-1]), self.momentum_buffer.view(-1, centers.shape[-1]),
                            rows, grad.reshape(-1, centers.shape[-1]), lr, self.momentum, self.weight_decay,
                            self.rounding_generator, leaders)
        weight = self.read(centers, rows)
        buffer = self.read(self.momentum_buffer, rows)
        grad = grad.to(weight.dtype).add(weight, alpha=self.weight_decay)
        buffer.mul_(self.momentum).add_(grad)
        weight.add_(buffer, alpha=-lr)
        self.write(centers, rows, weight, leaders)
        self.write(self.momentum_buffer, rows, buffer, leaders)


class RowAdamW(_RowOptimizer):
    """AdamW with a step count per row, so bias correction follows each row's own updates."""

    def __init__(self, shape: tuple[int, ...], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, device: Optional[torch.device] = None,
                 dtype: torch.dtype = torch.float32, storage_dtype: Optional[torch.dtype] = None) -> None:
        super().__init__(dtype)
        self.betas = betas
        self.eps = eps
        self.weight_decay = weight_decay
        storage_dtype = storage_dtype or dtype
        self.register_buffer("exp_avg", torch.zeros(shape, device=device, dtype=storage_dtype))
        self.register_buffer("exp_avg_sq", torch.zeros(shape, device=device, dtype=storage_dtype))
        self.register_buffer("row_steps", torch.zeros(shape[0], device=device, dtype=torch.int64))

    @torch.no_grad()
    def update(self, centers: torch.Tensor, rows: Optional[torch.Tensor], grad: torch.Tensor, lr: float,
               leaders: Optional[torch.Tensor] = None) -> None:
        """As ``RowSGD.update``; a repeated row's step count also advances once (same value written)."""
        beta1, beta2 = self.betas
        index = slice(None) if rows is None else rows
        weight = self.read(centers, rows)
        exp_avg = self.read(self.exp_avg, rows)
        exp_avg_sq = self.read(self.exp_avg_sq, rows)
        grad = grad.to(weight.dtype)
        self.row_steps[index] += 1
        steps = self.row_steps[index].to(weight.dtype).view(-1, *[1] * (weight.dim() - 1))
        weight.mul_(1 - lr * self.weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1 ** steps
        bias_correction2_sqrt = (1 - beta2 ** steps).sqrt()
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
        weight.addcdiv_(exp_avg, denom * bias_correction1 / lr, value=-1.0)
        self.write(centers, rows, weight, leaders)
        self.write(self.exp_avg, rows, exp_avg, leaders)
        self.write(self.exp_avg_sq, rows, exp_avg_sq, leaders)


def build_center_optimizer(name: str, shape: tuple[int, ...], momentum: float, weight_decay: float,
                           device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32,
                           storage_dtype: Optional[torch.dtype] = None) -> _RowOptimizer:
    """``sgd`` or ``adamw`` over a store of ``shape`` (rows first, kept in ``storage_dtype``)."""
    if name == "sgd":
        return RowSGD(shape, momentum, weight_decay, device, dtype, storage_dtype)
    if name == "adamw":
        return RowAdamW(shape, weight_decay=weight_decay, device=device, dtype=dtype, storage_dtype=storage_dtype)
    raise ConfigError(f"--optimizer must be sgd or adamw, got {name!r}")
