"""Optimizers for a center store that touch only the rows that were sampled.

A row that is not updated keeps its value *and* its optimizer state bit for bit: no
weight decay, no momentum drift, no stale Adam moments applied. This is Partial FC's
semantics in the paper (and insightface's v1); PartialFC_V2 loses it because torch's
optimizers see a dense gradient with zero rows. Each update follows torch.optim's
arithmetic for the rows it touches, so at sample rate 1.0 the result equals
``torch.optim.SGD``/``AdamW`` over an ``nn.Linear`` weight.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from core.errors import ConfigError


class RowSGD(nn.Module):
    """SGD with momentum and (coupled) weight decay, one momentum row per center."""

    def __init__(self, num_rows: int, dim: int, momentum: float = 0.9, weight_decay: float = 5e-4,
                 device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.register_buffer("momentum_buffer", torch.zeros(num_rows, dim, device=device, dtype=dtype))

    @torch.no_grad()
    def update(self, centers: torch.Tensor, rows: Optional[torch.Tensor], grad: torch.Tensor, lr: float) -> None:
        """Update ``centers[rows]`` (all rows when ``rows`` is None) from their gradient."""
        weight = centers if rows is None else centers[rows]
        buffer = self.momentum_buffer if rows is None else self.momentum_buffer[rows]
        grad = grad.to(weight.dtype).add(weight, alpha=self.weight_decay)
        buffer.mul_(self.momentum).add_(grad)
        weight.add_(buffer, alpha=-lr)
        if rows is not None:
            centers[rows] = weight
            self.momentum_buffer[rows] = buffer


class RowAdamW(nn.Module):
    """AdamW with a step count per row, so bias correction follows each row's own updates."""

    def __init__(self, num_rows: int, dim: int, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, device: Optional[torch.device] = None,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.betas = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.register_buffer("exp_avg", torch.zeros(num_rows, dim, device=device, dtype=dtype))
        self.register_buffer("exp_avg_sq", torch.zeros(num_rows, dim, device=device, dtype=dtype))
        self.register_buffer("row_steps", torch.zeros(num_rows, device=device, dtype=torch.int64))

    @torch.no_grad()
    def update(self, centers: torch.Tensor, rows: Optional[torch.Tensor], grad: torch.Tensor, lr: float) -> None:
        beta1, beta2 = self.betas
        every = slice(None)
        index = every if rows is None else rows
        weight = centers[index]
        exp_avg = self.exp_avg[index]
        exp_avg_sq = self.exp_avg_sq[index]
        grad = grad.to(weight.dtype)
        self.row_steps[index] += 1
        steps = self.row_steps[index].to(weight.dtype).unsqueeze(1)
        weight.mul_(1 - lr * self.weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1 ** steps
        bias_correction2_sqrt = (1 - beta2 ** steps).sqrt()
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
        weight.addcdiv_(exp_avg, denom * bias_correction1 / lr, value=-1.0)
        centers[index] = weight
        self.exp_avg[index] = exp_avg
        self.exp_avg_sq[index] = exp_avg_sq


def build_center_optimizer(name: str, num_rows: int, dim: int, momentum: float, weight_decay: float,
                           device: Optional[torch.device] = None,
                           dtype: torch.dtype = torch.float32) -> nn.Module:
    """``sgd`` or ``adamw`` over a ``[num_rows, dim]`` store."""
    if name == "sgd":
        return RowSGD(num_rows, dim, momentum, weight_decay, device, dtype)
    if name == "adamw":
        return RowAdamW(num_rows, dim, weight_decay=weight_decay, device=device, dtype=dtype)
    raise ConfigError(f"--optimizer must be sgd or adamw, got {name!r}")
