"""Training dynamics: each sample's margin at every visit, summed over the run (area under the margin).

A network trained long enough fits flipped labels too: at the end a mislabeled image sits
near the center of the label it was given, and a score read from the final features no
longer finds it. While it is being learnt, though, its given class loses to another one
visit after visit. Pleiss et al. (2020) rank samples by this area under the margin (AUM):
the mean over training of ``logit of the given class - largest other logit``. Here the
margin is taken on cosines, before the margin penalty, over the columns the step's softmax
saw; ``analysis`` reads the mean back as a per-sample noise signal.

Recording costs a top-2 over the logits the loss builds anyway (``margins_from_logits``)
and two ``index_add_`` per step into two ``[N]`` counters kept on the device.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from core.distributed import DistributedContext
from core.errors import DataError

NO_COLUMN = -2.0  # below any cosine: "this rank holds no such column" (the target on another rank, or no negative)


def best_other(cosine: torch.Tensor, column: torch.Tensor, has_target: torch.Tensor,
               missing: float = NO_COLUMN) -> torch.Tensor:
    """Each row's largest entry outside its own ``column`` (where ``has_target``), from a top-2: no ``[B, K]`` copy.

    ``missing`` stands where a row has no other column.
    """
    if cosine.shape[1] == 0:
        return cosine.new_full((cosine.shape[0],), missing)
    top = cosine.topk(min(2, cosine.shape[1]), dim=1)
    own_first = has_target & (top.indices[:, 0] == column)
    runner_up = top.values[:, 1] if cosine.shape[1] > 1 else torch.full_like(top.values[:, 0], missing)
    return torch.where(own_first, runner_up, top.values[:, 0])


def margins_from_logits(cosine: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, scale: float,
                        sharded_columns: bool = False) -> torch.Tensor:
    """Each row's ``cos(given class) - max cos(any other column)`` (``[B]``, float32, no gradient).

    The best other column is read from the loss's own ``logits`` (``scale x cos`` off the
    target, masked columns at -inf: DCQ's same-label queue entries are not other classes),
    so recording copies nothing of ``[B, K]`` size. With ``sharded_columns`` each rank
    holds a slice of the columns, so both maxima are all-reduced; every rank then holds
    the same margins.
    """
    with torch.no_grad():
        has_target = targets >= 0
        column = targets.clamp(min=0)
        target = torch.where(has_target, cosine.gather(1, column.unsqueeze(1)).squeeze(1).float(), NO_COLUMN)
        other = best_other(logits.detach(), column, has_target, NO_COLUMN * scale).float().clamp(min=NO_COLUMN * scale)
        best = torch.stack([target, other / scale])
        if sharded_columns and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(best, op=dist.ReduceOp.MAX)
        return best[0] - best[1]


class TrainingDynamics:
    """Per-sample sums of the margin and visit counts over a run, kept on the training device.

    Each process adds its own rows. At a checkpoint the counters are summed onto the main
    process, which saves them and keeps the totals, while the others start again from
    zero, so the sum over processes is always the run's and a run resumes on any number
    of processes.
    """

    def __init__(self, num_samples: int, device: torch.device, context: DistributedContext,
                 from_step: int = 0) -> None:
        self.margin_sum = torch.zeros(num_samples, dtype=torch.float64, device=device)
        self.visits = torch.zeros(num_samples, dtype=torch.int32, device=device)
        self.context = context
        self.from_step = from_step

    def record(self, indices: torch.Tensor, margins: torch.Tensor) -> None:
        """Add one micro-batch: ``indices`` (host or device ``[B]``) are the rows' places in the dataset.

        ``margins`` are this process's rows or every process's in rank order (Partial FC
        gathers the batch); only this process's rows are added.
        """
        rows = indices.to(self.margin_sum.device, non_blocking=True)
        start = self.context.rank * rows.shape[0] if margins.shape[0] != rows.shape[0] else 0
        own = margins[start:start + rows.shape[0]]
        self.margin_sum.index_add_(0, rows, own.to(torch.float64))
        self.visits.index_add_(0, rows, torch.ones_like(rows, dtype=torch.int32))

    def state_dict(self) -> dict[str, Any]:
        """The run's totals (on the main process; a collective: every process must call it at the same time)."""
        if self.context.enabled:
            for total in self._counters():
                dist.all_reduce(total)
                if not self.context.is_main:
                    total.zero_()
        return {"margin_sum": self.margin_sum.cpu(), "visits": self.visits.cpu(), "from_step": self.from_step}

    def _counters(self) -> tuple[torch.Tensor, ...]:
        return self.margin_sum, self.visits

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["margin_sum"].shape != self.margin_sum.shape:
            raise DataError(f"the checkpoint's training dynamics cover {state['margin_sum'].shape[0]} samples, the "
                            f"data has {self.margin_sum.shape[0]}: a resumed run trains on the data it started on")
        self.from_step = int(state["from_step"])
        for name, total in zip(("margin_sum", "visits"), self._counters()):
            if self.context.is_main:
                total.copy_(state[name])
            else:
                total.zero_()
