"""One registry for every backbone, so the trainer, DCQ's momentum encoder, evaluation
and export all build networks the same way from a name in the config.

Contract shared by every entry: input is float ``[B, 3, input_size, input_size]`` in
``[-1, 1]``; output is ``[B, embedding_size]`` un-normalised embeddings (normalisation
belongs to the margin head, which also needs the norm for analysis).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from core.backbones.iresnet import IResNet, iresnet18, iresnet34, iresnet50, iresnet100
from core.backbones.mlp import MLP, mlp
from core.backbones.mobilefacenet import MobileFaceNet, mobilefacenet
from core.backbones.tiny import TinyCNN, tiny
from core.errors import ConfigError

__all__ = [
    "build_backbone",
    "available_backbones",
    "default_input_size",
    "IResNet",
    "MobileFaceNet",
    "TinyCNN",
    "MLP",
]

#: Smallest accepted input side of a convolutional backbone: four stride-2 stages must leave at least one
#: pixel of real content per output cell for the embedding to mean anything.
MIN_INPUT_SIZE = 16


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., nn.Module]
    default_input_size: int
    min_input_size: int = MIN_INPUT_SIZE


_REGISTRY: dict[str, _Entry] = {
    "iresnet18": _Entry(iresnet18, 112),
    "iresnet34": _Entry(iresnet34, 112),
    "iresnet50": _Entry(iresnet50, 112),
    "iresnet100": _Entry(iresnet100, 112),
    "mobilefacenet": _Entry(mobilefacenet, 112),
    "tiny": _Entry(tiny, 32),
    "mlp": _Entry(mlp, 8, min_input_size=2),  # pixels, not convolutions: any size
}

# insightface's config names, so its configs and checkpoint file names can be used as is.
_ALIASES: dict[str, str] = {
    "r18": "iresnet18",
    "r34": "iresnet34",
    "r50": "iresnet50",
    "r100": "iresnet100",
    "mbf": "mobilefacenet",
}


def available_backbones() -> list[str]:
    """Canonical backbone names, smallest first, for ``--help`` texts and error messages."""
    return list(_REGISTRY)


def _resolve(name: str) -> str:
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        aliases = ", ".join(f"{a}={c}" for a, c in sorted(_ALIASES.items()))
        raise ConfigError(
            f"option --backbone: unknown backbone {name!r}; valid names are "
            f"{', '.join(available_backbones())} (aliases: {aliases})"
        )
    return key


def default_input_size(name: str) -> int:
    """Input side the backbone was designed for (112 for face models, 32 for ``tiny``, 8 for ``mlp``).

    The data pipeline asks this so that picking a backbone also picks the crop size,
    instead of every caller hard-coding 112.
    """
    return _REGISTRY[_resolve(name)].default_input_size


def build_backbone(name: str, embedding_size: int = 512, input_size: int = 112,
                   **kwargs: Any) -> nn.Module:
    """Build backbone ``name``; extra keyword options go to its constructor.

    Options are checked here, not left to a ``TypeError`` deep inside a constructor, so
    a typo in a YAML config fails with a message that names the option.
    """
    key = _resolve(name)
    entry = _REGISTRY[key]
    if isinstance(embedding_size, bool) or not isinstance(embedding_size, int) \
            or embedding_size <= 0:
        raise ConfigError(
            f"option --embedding-size: expected a positive integer, got {embedding_size!r}"
        )
    if isinstance(input_size, bool) or not isinstance(input_size, int) \
            or input_size < entry.min_input_size:
        raise ConfigError(
            f"option --input-size: expected an integer >= {entry.min_input_size} for backbone "
            f"{key!r} (its default is {entry.default_input_size}), got {input_size!r}"
        )
    params = inspect.signature(entry.factory).parameters
    allowed = sorted(p for p in params if p not in ("embedding_size", "input_size"))
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigError(
            f"option --backbone: backbone {key!r} does not accept option(s) "
            f"{', '.join(unknown)}; it accepts {', '.join(allowed) or 'no extra options'}"
        )
    try:
        return entry.factory(embedding_size=embedding_size, input_size=input_size, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"option --backbone: cannot build {key!r}: {exc}") from exc
