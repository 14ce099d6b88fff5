"""Training dynamics: each sample's margin at every visit, and which class it lost to, summed over the run.

A network trained long enough fits flipped labels too: at the end a mislabeled image sits
near the center of the label it was given, and a score read from the final features no
longer finds it. While it is being learnt, though, its given class loses to another one
visit after visit. Pleiss et al. (2020) rank samples by this area under the margin (AUM):
the mean over training of ``logit of the given class - largest other logit``. Here the
margin is taken on cosines, before the margin penalty, over the columns the step's softmax
saw; ``analysis`` reads the mean back as a per-sample noise signal.

The same visit names the class the sample came closest to confusing with its own. Counted
per class pair over the run, that is the conflict analogue of the margin: the two labels
of one person keep being confused early on, even after training has pulled them apart.

Recording costs a top-2 over the logits the loss builds anyway (``margins_from_logits``),
two ``index_add_`` per step into ``[N]`` counters kept on the device, and a buffer of
class-pair keys folded into counts now and then.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist

from core.distributed import DistributedContext
from core.errors import DataError

NO_COLUMN = -2.0  # below any cosine: "this rank holds no such column" (the target on another rank, or no negative)
PAIR_BUFFER_ROWS = 1 << 20  # confused-pair keys held before they are folded into counts


def best_other(cosine: torch.Tensor, column: torch.Tensor, has_target: torch.Tensor,
               missing: float = NO_COLUMN) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's largest entry outside its own ``column`` (where ``has_target``) and that entry's column, from a
    top-2: no ``[B, K]`` copy. ``missing`` (column -1) stands where a row has no other column."""
    if cosine.shape[1] == 0:
        return cosine.new_full((cosine.shape[0],), missing), column.new_full((cosine.shape[0],), -1)
    top = cosine.topk(min(2, cosine.shape[1]), dim=1)
    own_first = has_target & (top.indices[:, 0] == column)
    if cosine.shape[1] > 1:
        runner_up, runner_up_column = top.values[:, 1], top.indices[:, 1]
    else:
        runner_up, runner_up_column = torch.full_like(top.values[:, 0], missing), torch.full_like(column, -1)
    return (torch.where(own_first, runner_up, top.values[:, 0]),
            torch.where(own_first, runner_up_column, top.indices[:, 0]))


def margins_from_logits(cosine: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, scale: float,
                        sharded_columns: bool = False, column_classes: Optional[torch.Tensor] = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's ``cos(given class) - max cos(any other column)`` (``[B]``, float32) and the class of that other
    column (``[B]``, -1 when unknown: no ``column_classes``, or no other column).

    The best other column is read from the loss's own ``logits`` (``scale x cos`` off the
    target, masked columns at -inf: DCQ's same-label queue entries are not other classes),
    so recording copies nothing of ``[B, K]`` size. With ``sharded_columns`` each rank
    holds a slice of the columns, so the maxima are all-reduced and the class taken from
    the rank that holds the best column; every rank then holds the same values.
    """
    with torch.no_grad():
        has_target = targets >= 0
        column = targets.clamp(min=0)
        target = torch.where(has_target, cosine.gather(1, column.unsqueeze(1)).squeeze(1).float(), NO_COLUMN)
        other, other_column = best_other(logits.detach(), column, has_target, NO_COLUMN * scale)
        return margins_from_best(target, other.float() / scale, other_column, sharded_columns, column_classes)


def margins_from_best(target: torch.Tensor, other: torch.Tensor, other_column: torch.Tensor,
                      sharded_columns: bool = False, column_classes: Optional[torch.Tensor] = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``margins_from_logits`` from each row's target cosine and best other logit / scale, as a head that never
    holds ``[B, K]`` logits finds them (the chunked and the Triton head); below ``NO_COLUMN``: none."""
    with torch.no_grad():
        target, other = target.float().clamp(min=NO_COLUMN), other.float().clamp(min=NO_COLUMN)
        if column_classes is None:
            other_class = torch.full_like(other_column, -1)
        else:
            other_class = torch.where(other_column >= 0, column_classes[other_column.clamp(min=0)], -1)
        other_class = torch.where(other > NO_COLUMN, other_class, -1)
        if sharded_columns and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            best = torch.stack([target, other])
            dist.all_reduce(best, op=dist.ReduceOp.MAX)
            other_class = torch.where(other == best[1], other_class, -1)
            dist.all_reduce(other_class, op=dist.ReduceOp.MAX)
            target, other = best[0], best[1]
        return target - other, other_class


class TrainingDynamics:
    """Per-sample sums of the margin and visit counts, and per class pair how often a sample of the first class had
    the second as its best other column, over a run, kept on the training device.

    Each process adds its own rows. At a checkpoint the counters are summed onto the main
    process, which saves them and keeps the totals, while the others start again from
    zero, so the sum over processes is always the run's and a run resumes on any number
    of processes. Pairs are keys ``given * C + other``.
    """

    def __init__(self, num_samples: int, num_classes: int, device: torch.device, context: DistributedContext,
                 from_step: int = 0) -> None:
        self.margin_sum = torch.zeros(num_samples, dtype=torch.float64, device=device)
        self.visits = torch.zeros(num_samples, dtype=torch.int32, device=device)
        self.num_classes = num_classes
        self.pair_keys = torch.zeros(0, dtype=torch.int64, device=device)
        self.pair_counts = torch.zeros(0, dtype=torch.int64, device=device)
        self._pending: list[torch.Tensor] = []
        self._pending_rows = 0
        self.context = context
        self.from_step = from_step

    def record(self, indices: torch.Tensor, margins: torch.Tensor, labels: Optional[torch.Tensor] = None,
               other_classes: Optional[torch.Tensor] = None) -> None:
        """Add one micro-batch: ``indices`` (host or device ``[B]``) are the rows' places in the dataset, ``labels``
        their given classes.

        ``margins`` / ``other_classes`` are this process's rows or every process's in rank
        order (Partial FC gathers the batch); only this process's rows are added.
        """
        rows = indices.to(self.margin_sum.device, non_blocking=True)
        start = self.context.rank * rows.shape[0] if margins.shape[0] != rows.shape[0] else 0
        own = slice(start, start + rows.shape[0])
        self.margin_sum.index_add_(0, rows, margins[own].to(torch.float64))
        self.visits.index_add_(0, rows, torch.ones_like(rows, dtype=torch.int32))
        if labels is not None and other_classes is not None:
            given, other = labels.to(self.pair_keys.device), other_classes[own]
            self._pending.append(torch.where((other >= 0) & (other != given), given * self.num_classes + other, -1))
            self._pending_rows += rows.shape[0]
            if self._pending_rows >= PAIR_BUFFER_ROWS:
                self._fold()

    def _fold(self, extra: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> None:
        """Fold the buffered keys (and ``extra`` (keys, counts)) into the sorted pair counts."""
        keys = [self.pair_keys, *self._pending]
        counts = [self.pair_counts, *[torch.ones_like(pending) for pending in self._pending]]
        if extra is not None:
            keys.append(extra[0].to(self.pair_keys.device))
            counts.append(extra[1].to(self.pair_keys.device))
        keys, counts = torch.cat(keys), torch.cat(counts)
        keep = keys >= 0
        unique, inverse = torch.unique(keys[keep], return_inverse=True)
        self.pair_keys = unique
        self.pair_counts = torch.zeros_like(unique).index_add_(0, inverse, counts[keep])
        self._pending, self._pending_rows = [], 0

    def state_dict(self) -> dict[str, Any]:
        """The run's totals (on the main process; a collective: every process must call it at the same time)."""
        self._fold()
        if self.context.enabled:
            for total in (self.margin_sum, self.visits):
                dist.all_reduce(total)
                if not self.context.is_main:
                    total.zero_()
            gathered: list[Any] = [None] * self.context.world_size
            dist.all_gather_object(gathered, (self.pair_keys.cpu(), self.pair_counts.cpu()))
            self.pair_keys, self.pair_counts = self.pair_keys[:0], self.pair_counts[:0]
            if self.context.is_main:
                for pair in gathered:
                    self._fold(pair)
        return {"margin_sum": self.margin_sum.cpu(), "visits": self.visits.cpu(), "from_step": self.from_step,
                "pair_keys": self.pair_keys.cpu(), "pair_counts": self.pair_counts.cpu(),
                "num_classes": self.num_classes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["margin_sum"].shape != self.margin_sum.shape:
            raise DataError(f"the checkpoint's training dynamics cover {state['margin_sum'].shape[0]} samples, the "
                            f"data has {self.margin_sum.shape[0]}: a resumed run trains on the data it started on")
        self.from_step = int(state["from_step"])
        self._pending, self._pending_rows = [], 0
        if not self.context.is_main:  # the totals live on the main process
            self.margin_sum.zero_()
            self.visits.zero_()
            self.pair_keys, self.pair_counts = self.pair_keys[:0], self.pair_counts[:0]
            return
        self.margin_sum.copy_(state["margin_sum"])
        self.visits.copy_(state["visits"])
        if "pair_keys" in state:  # a checkpoint from before pairs were counted has none
            self.pair_keys = state["pair_keys"].to(self.pair_keys.device)
            self.pair_counts = state["pair_counts"].to(self.pair_counts.device)
