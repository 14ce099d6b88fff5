"""The MODEL argument and the flags that describe bare weights, alike on every command that reads a network.

Kept apart from ``core.models`` (which needs torch) so that building the commands'
options, for ``--help`` say, imports no torch.
"""

from __future__ import annotations

from typing import Callable, Optional

import click


def model_argument(function: Optional[Callable] = None, *, several: bool = False) -> Callable:
    """MODEL (``several``: MODEL..., one or more), then --backbone / --embedding-size / --input-size for bare
    weights. Used bare (``@model_argument``) or called (``@model_argument(several=True)``)."""
    if function is None:
        return lambda decorated: model_argument(decorated, several=several)
    argument = (click.argument("models", nargs=-1, required=True, type=click.Path(exists=True)) if several
                else click.argument("model", type=click.Path(exists=True)))
    return argument(bare_weight_options(function))


def bare_weight_options(function: Callable) -> Callable:
    """--backbone / --embedding-size / --input-size: what bare weights do not say of themselves."""
    decorators = [
        click.option("--backbone", default=None,
                     help="For bare weights (a state_dict .pth/.pt, as insightface saves backbone.pth): the network "
                          "they belong to (iresnet18/34/50/100, mobilefacenet, tiny). A run knows its own."),
        click.option("--embedding-size", type=int, default=None,
                     help="For bare weights: the embedding size (default: read off the weights)."),
        click.option("--input-size", type=int, default=None,
                     help="For bare weights: the input side (default: the backbone's, 112 for iresnet)."),
    ]
    for decorator in reversed(decorators):
        function = decorator(function)
    return function
