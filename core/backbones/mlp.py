"""A multilayer perceptron over a small image's pixels, for the latent generator's observations.

The class-count sweep (experiments/scale.py) trains at 10^5 identities on two CPU cores,
where the question is the softmax head's, not the backbone's: the observations there are
8x8 renderings of latent codes (core/data/synthetic/latent.py), and two hidden layers
learn their embedding at a small fraction of a convolution's cost.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MLP", "mlp"]


class MLP(nn.Module):
    """Flatten -> (Linear-BN-PReLU) x depth -> Linear -> BatchNorm1d, with IResNet's ``fc``/``features`` names."""

    def __init__(self, embedding_size: int = 128, input_size: int = 8, hidden: int = 512, depth: int = 2) -> None:
        super().__init__()
        if hidden <= 0 or depth < 1:
            raise ValueError(f"MLP needs hidden > 0 and depth >= 1, got hidden={hidden}, depth={depth}")
        self.input_size = int(input_size)
        self.embedding_size = int(embedding_size)
        layers: list[nn.Module] = []
        width = 3 * self.input_size * self.input_size
        for _ in range(depth):
            layers += [nn.Linear(width, hidden, bias=False), nn.BatchNorm1d(hidden), nn.PReLU(hidden)]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(width, self.embedding_size)
        self.features = nn.BatchNorm1d(self.embedding_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.fc(self.body(torch.flatten(x, 1))))


def mlp(embedding_size: int = 128, input_size: int = 8, hidden: int = 512, depth: int = 2) -> MLP:
    """The latent generator's backbone (two hidden layers of 512 on 8x8 observations)."""
    return MLP(embedding_size=embedding_size, input_size=input_size, hidden=hidden, depth=depth)
