"""Dynamic loss scaling for ``--amp fp16``: torch's GradScaler over the backbone *and* the method's gradients.

float16 keeps five exponent bits, so small gradients underflow to zero unless the loss is
scaled up before the backward; too large a scale overflows them to inf instead. GradScaler
moves the scale to stay between the two. Out of the box it guards one optimizer's
parameters, and would skip each optimizer on its own: a step whose backbone gradients
overflowed while the head's, computed in float32, did not would still move the class
centers. Here a step is applied whole or not at all: a non-finite value anywhere (backbone,
or the rows the sampler collected) skips the backbone's optimizer and the sampler's update
together (``ClassSampler.discard_step``), and the scale backs off. With several processes
the verdict is theirs together.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

# GradScaler's defaults: start at 2^16, halve on an overflow, double after 2,000 clean steps.
INITIAL_SCALE = 2.0 ** 16


class LossScaler:
    """Scales the loss, unscales every gradient of a step, says whether the step may be applied, and moves the
    scale: halved after an overflow, doubled after ``growth_interval`` clean steps (GradScaler's schedule).

    The verdict is all-reduced over the processes, since each holds its own shard of the
    centers' gradients: every rank skips the same steps and keeps the same scale.
    """

    def __init__(self, device: torch.device, initial_scale: float = INITIAL_SCALE) -> None:
        self.scaler = torch.amp.GradScaler(device.type, init_scale=initial_scale)
        self.skipped_steps = 0
        self.clean_steps = 0  # since the last overflow or growth

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss)

    def unscale(self, optimizer: torch.optim.Optimizer, sampler_weights: list[torch.Tensor]) -> bool:
        """Divide the backbone's and the sampler's gradients by the scale; True when all are finite on every rank.

        ``sampler_weights`` are the selections' weight leaves whose ``.grad`` the sampler
        collected: they are unscaled in place, so what the sampler applies is the true gradient.
        Reading the verdict waits for the device once per step, as GradScaler's own step does.
        """
        self.scaler.unscale_(optimizer)
        with_grad = [weights for weights in sampler_weights if weights.grad is not None]
        if with_grad:  # a throwaway optimizer: GradScaler unscales (and checks) any optimizer's parameters
            self.scaler.unscale_(torch.optim.SGD(with_grad, lr=0.0))
        gradients = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        gradients += [weights.grad for weights in with_grad]
        finite = torch.isfinite(torch.nn.utils.get_total_norm(gradients)).float() if gradients else torch.ones(())
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        applied = bool(finite)
        self._move_scale(applied)
        return applied

    def _move_scale(self, applied: bool) -> None:
        scale = self.scaler.get_scale()
        if not applied:
            self.skipped_steps += 1
            self.clean_steps = 0
            scale *= self.scaler.get_backoff_factor()
        else:
            self.clean_steps += 1
            if self.clean_steps == self.scaler.get_growth_interval():
                self.clean_steps = 0
                scale *= self.scaler.get_growth_factor()
        self.scaler.update(new_scale=scale)

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict(), "skipped_steps": self.skipped_steps,
                "clean_steps": self.clean_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scaler.load_state_dict(state["scaler"])
        self.skipped_steps = state["skipped_steps"]
        self.clean_steps = state["clean_steps"]
