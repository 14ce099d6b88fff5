"""insightface arcface_torch configs (``configs/ms1mv3_r50.py`` and the like), read without running them.

arcface_torch users keep dozens of these edict-style Python files. ``--config`` takes one as
it is: its assignments are read with ``ast`` (numbers, strings, tuples, lists and simple
arithmetic on keys set before), so a config from anywhere cannot run code, and mapped to
this project's options. arcface_torch's ``configs/base.py`` defaults stand in for keys the
file leaves out, as its own ``get_config`` does. A key that would change training and has no
counterpart here is refused by name; keys that do not (logging, DALI, wandb) are reported
as unused.
"""

from __future__ import annotations

import ast
import operator
from pathlib import Path
from typing import Any, Callable

from core.errors import ConfigError

#: arcface_torch's configs/base.py: what a config file that leaves a key out trains with there.
BASE_DEFAULTS: dict[str, Any] = {
    "margin_list": (1.0, 0.5, 0.0), "network": "r50", "resume": False, "save_all_states": False,
    "output": "ms1mv3_arcface_r50", "embedding_size": 512, "sample_rate": 1.0, "interclass_filtering_threshold": 0,
    "fp16": False, "batch_size": 128, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
    "verbose": 2000, "frequent": 10, "dali": False, "gradient_acc": 1, "seed": 2048, "num_workers": 2,
}
NETWORKS = {"r18": "iresnet18", "r34": "iresnet34", "r50": "iresnet50", "r100": "iresnet100", "mbf": "mobilefacenet"}
# Keys that do not change what is trained: bookkeeping, loaders, loggers.
NOT_TRAINING = {"num_classes", "num_image", "save_all_states", "dali", "dali_aug", "wandb_key", "suffix_run_name",
                "using_wandb", "wandb_entity", "wandb_project", "wandb_log_all", "save_artifacts", "wandb_resume"}
_OPERATORS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}


def read_arcface_config(path: Path) -> tuple[dict[str, Any], list[str]]:
    """``(options of this project, notes)`` from an arcface_torch config file."""
    raw = {**BASE_DEFAULTS, **_assignments(path)}
    options: dict[str, Any] = {"method": "pfc"}
    notes = []
    network = raw["network"]
    if network not in NETWORKS:
        raise ConfigError(f"--config {path}: network {network!r} has no counterpart here (backbones: "
                          f"{', '.join(f'{key} -> {value}' for key, value in NETWORKS.items())})")
    options["backbone"] = NETWORKS[network]
    options.update(_margin(path, raw["margin_list"]))
    threshold = raw["interclass_filtering_threshold"]
    options["interclass_threshold"] = float(threshold) if threshold else None
    options["sample_rate"] = float(raw["sample_rate"])
    options["amp"] = "auto" if raw["fp16"] else "off"
    if raw["fp16"]:
        notes.append("fp16 -> --amp auto (bf16 autocast on CUDA, off on CPU); --amp fp16 is its float16 autocast "
                     "with loss scaling, for GPUs without bf16")
    for theirs, ours, kind in (("embedding_size", "embedding_size", int), ("batch_size", "batch_size", int),
                               ("optimizer", "optimizer", str), ("lr", "lr", float), ("momentum", "momentum", float),
                               ("weight_decay", "weight_decay", float), ("gradient_acc", "accumulate", int),
                               ("seed", "seed", int), ("num_workers", "workers", int), ("frequent", "log_every", int),
                               ("verbose", "val_every", int), ("num_epoch", "epochs", int),
                               ("warmup_epoch", "warmup_epochs", float), ("rec", "data", str)):
        if theirs in raw:
            options[ours] = kind(raw[theirs])
    if raw.get("output"):
        options["out"] = str(raw["output"])
    if raw.get("val_targets"):
        options["val"] = [str(name) for name in raw["val_targets"]]  # names: found beside the data
    if raw["resume"]:
        raise ConfigError(f"--config {path}: resume = True; continue a run with --resume RUN instead")
    unknown = sorted(set(raw) - set(BASE_DEFAULTS) - NOT_TRAINING - {"rec", "num_epoch", "warmup_epoch",
                                                                      "val_targets"})
    if unknown:
        raise ConfigError(f"--config {path}: {', '.join(unknown)}: no counterpart here, and they may change training")
    unused = sorted(NOT_TRAINING & set(raw))
    if unused:
        notes.append(f"not used here: {', '.join(unused)} (they do not change training)")
    return options, notes


def _margin(path: Path, margins: Any) -> dict[str, Any]:
    """arcface_torch's (m1, m2, m3) as this project's margin options."""
    try:
        m1, m2, m3 = (float(value) for value in margins)
    except (TypeError, ValueError):
        raise ConfigError(f"--config {path}: margin_list must be three numbers, got {margins!r}") from None
    if m1 == 1.0 and m3 == 0.0 and m2 > 0:
        return {"margin": "arcface", "margin_m": m2}
    if m1 == 1.0 and m2 == 0.0 and m3 > 0:
        return {"margin": "cosface", "margin_m": m3}
    return {"margin": "combined", "margin_combined": [m1, m2, m3]}


def _assignments(path: Path) -> dict[str, Any]:
    """``config.KEY = VALUE`` statements, evaluated as data; anything that would need running is an error."""
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as exc:
        raise ConfigError(f"--config {path}: not valid Python (line {exc.lineno}: {exc.msg})") from exc
    values: dict[str, Any] = {}
    for statement in tree.body:
        if isinstance(statement, (ast.Import, ast.ImportFrom)) or _is_edict_call(statement):
            continue  # `from easydict import EasyDict as edict` and `config = edict()`
        target = statement.targets[0] if isinstance(statement, ast.Assign) and len(statement.targets) == 1 else None
        if not (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                and target.value.id == "config"):
            raise ConfigError(f"--config {path}, line {statement.lineno}: only `config.KEY = VALUE` lines are read "
                              "(the file is never run)")
        values[target.attr] = _value(path, statement.value, values)
    return values


def _is_edict_call(statement: ast.stmt) -> bool:
    """``config = edict()``: the empty dictionary the assignments fill."""
    return (isinstance(statement, ast.Assign) and len(statement.targets) == 1
            and isinstance(statement.targets[0], ast.Name) and statement.targets[0].id == "config"
            and isinstance(statement.value, ast.Call) and isinstance(statement.value.func, ast.Name)
            and not statement.value.args and not statement.value.keywords)


def _value(path: Path, node: ast.expr, known: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        return [_value(path, item, known) for item in node.elts]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_value(path, node.operand, known)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_value(path, node.left, known), _value(path, node.right, known))
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "config"
            and node.attr in {**BASE_DEFAULTS, **known}):
        return {**BASE_DEFAULTS, **known}[node.attr]
    raise ConfigError(f"--config {path}, line {node.lineno}: {ast.unparse(node)!r} is not a value this reader "
                      "evaluates (numbers, strings, lists and arithmetic on keys set above)")
