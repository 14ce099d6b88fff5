"""The one seam between the trainer and a softmax-sampling method (Partial FC, DCQ, a variant).

The trainer's step is always::

    selection = sampler.select(embeddings, batch)           # which columns the softmax sees
    loss = criterion(selection)                             # cosine logits -> margin -> CE
    loss.backward()
    sampler.collect(selection)                              # after every (micro-)batch backward
    ...                                                     # every `accumulate` micro-batches:
    optimizer.step(); sampler.step(lr)                      # method-specific state update

so a method owns all of its state (centers and their optimizer, or a queue and a
momentum encoder) and the trainer never needs to know which method it is running.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from core.data.batch import Batch, BatchLayout
from core.distributed import DistributedContext
from core.method_spec import MethodSpec, load_reference


@dataclass
class Selection:
    """What the margin softmax of one (micro-)batch sees.

    ``embeddings`` are the rows of the softmax (possibly gathered from all ranks) and
    ``weights`` the class weights of the selected columns, both un-normalised: the loss
    normalises them so gradients flow through the normalisation. ``weights`` is
    ``[K, D]``, or ``[K, P, D]`` when each column has P prototypes (sub-centers): the
    column's cosine is then the best of its prototypes'. ``targets[i]`` is the
    column of row i's class, or -1 when that class is not among this rank's columns.
    ``negative_mask[i, j]`` is True where column j must not act as a negative for row i
    (DCQ's same-label queue entries and empty slots). ``sharded_columns`` says that the
    columns are this rank's slice of a model-parallel softmax, so the loss must reduce
    its max and sum over ranks. ``unit_weights`` says that the weights are unit rows
    already and take no gradient (DCQ's generated weights and queue), so the loss skips
    renormalising the whole queue every step. ``column_classes[j]`` is the class of column j
    (-1: none, an empty queue slot), by which the trainer counts which classes each class's
    samples were confused with (core/dynamics.py); None: unknown, nothing is counted.
    ``weight_table``, when set, holds the weights: they are its rows ``weight_rows`` (None:
    all of them), read in place by a fused head (core/triton_head.py), and ``weights`` is
    a ``[K, D]`` leaf without storage that only receives their gradient.
    """

    embeddings: torch.Tensor
    weights: torch.Tensor
    targets: torch.Tensor
    negative_mask: Optional[torch.Tensor] = None
    sharded_columns: bool = False
    unit_weights: bool = False
    column_classes: Optional[torch.Tensor] = None
    weight_table: Optional[torch.Tensor] = None
    weight_rows: Optional[torch.Tensor] = None
    state: dict[str, Any] = field(default_factory=dict)


class ClassSampler(nn.Module, ABC):
    """A method that decides the softmax's columns and updates its own state.

    Subclasses are ``nn.Module`` so that any network they own (DCQ's momentum encoder)
    follows ``.to(device)``; their checkpoint state is ``state_dict``/``load_state_dict``.
    """

    def batch_layout(self) -> BatchLayout:
        """What the method needs in each batch beyond images and labels (DCQ: key images)."""
        return BatchLayout()

    @abstractmethod
    def select(self, embeddings: torch.Tensor, batch: Batch) -> Selection:
        """Build the selection for a batch: ``embeddings`` of ``batch.images``, labels and any key images."""

    def collect(self, selection: Selection) -> None:
        """Called after each micro-batch's backward, before the optimizer step."""

    @abstractmethod
    def step(self, lr: float) -> None:
        """Apply the method's own update after the backbone's optimizer step.

        ``lr`` is the scheduled learning rate of this iteration, which Partial FC's
        center optimizer follows.
        """

    def discard_step(self) -> None:
        """Forget what ``collect`` queued since the last ``step``: the step was skipped (an fp16 overflow,
        core/loss_scaling.py), and a skipped step changes none of the method's state, counters included."""

    def notes(self) -> list[str]:
        """What the user should know about this configuration before it trains (printed once at the start):
        a setting that quietly degenerates, say."""
        return []

    def extra_parameters(self) -> list[nn.Parameter]:
        """Parameters to be optimised together with the backbone (none of the registered methods has any)."""
        return []

    def evaluation_model(self, backbone: nn.Module) -> nn.Module:
        """The network used for evaluation and export; DCQ returns its momentum encoder."""
        return backbone

    def sharded_state_names(self) -> list[str]:
        """state_dict entries whose rows are this rank's slice of a per-class table.

        Checkpoints save them as shards with a manifest, so that any world size can
        reassemble its own rows (see core/checkpoint.py).
        """
        return []

    def shard_range(self) -> tuple[int, int]:
        """``(first class, number of classes)`` of this rank's slice of the sharded tables."""
        return 0, 0

    def class_statistics(self) -> dict[str, torch.Tensor]:
        """The per-class counters its spec's ``statistics`` name, each a tensor of its state_dict.

        The checkpoint records them by name (see core/checkpoint.py), so analysis plots
        whatever a run recorded without knowing the method.
        """
        return {}


@dataclass
class SamplerEnvironment:
    """What the trainer hands a method's builder besides the method's own options."""

    num_classes: int
    num_images: int
    embedding_size: int
    backbone: nn.Module  # the online network (DCQ copies it into its momentum encoder)
    device: torch.device
    context: DistributedContext
    seed: int
    optimizer: str = "sgd"  # the backbone's optimizer settings, which a center store follows
    momentum: float = 0.9
    weight_decay: float = 5e-4
    class_counts: Optional[np.ndarray] = None  # images per class of the training data
    batch_size: int = 0  # images per select(): one micro-batch of every rank


def build_sampler(spec: MethodSpec, options: Any, environment: SamplerEnvironment) -> ClassSampler:
    """The method's sampler, from its spec's builder."""
    return load_reference(spec.sampler)(options, environment)
