"""The training loop shared by every method, which it sees only through ClassSampler.

The Trainer owns all state that a resumed run needs (backbone, optimizer, schedule,
the sampler's own state, every RNG and the position in the data), so ``state_dict``
is the checkpoint and N straight steps equal N/2 + resume + N/2 bit for bit on CPU.
"""

from __future__ import annotations

import csv
import json
import platform
import random
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from core.backbones import build_backbone, default_input_size
from core.checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_NAME, RUN_FILES, SHARD_GLOB, TRAINING_FIGURE,
                             check_resumable, method_record, non_finite_names, read_checkpoint, sampler_state_for,
                             save_checkpoint)
from core.config import TrainConfig, save_config
from core.data.base import FaceDataset
from core.data.batch import Batch
from core.data.loader import (batch_order, default_val_files, make_loader, prepare_dataset, resolve_val_files,
                              synthetic_dataset_root)
from core.data.transforms import RandomFlip
from core.distributed import DistributedContext, init_distributed, resolve_device
from core.dynamics import TrainingDynamics
from core.errors import ConfigError, DataError, TrainingError
from core.evaluation import embed_images, evaluate_pairs, val_names
from core.figures import figure_file, save_figure
from core.io import atomic_path, atomic_write_json, exclusive_directory, plain, remove_stale_temporaries
from core.loss import margin_loss_for
from core.loss_scaling import LossScaler
from core.sampler import SamplerEnvironment, build_sampler


# --amp: the autocast dtype of each choice ("auto" resolves to bf16 on CUDA, off elsewhere)
AMP_DTYPES = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


def warmup_polynomial(total_steps: int, warmup_steps: int, power: float):
    """LR factor per iteration: linear warmup from 1/(W+1), then polynomial decay to 0.

    The first step runs at ``1/(W+1)`` of the base rate, never at the full rate.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return max(0.0, 1.0 - progress) ** power

    return factor


def build_optimizer(config: TrainConfig, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    raise ConfigError(f"--optimizer must be sgd or adamw, got {config.optimizer!r}")


def _write_environment(path: Path, device: torch.device, resumed_at: int) -> None:
    """env.json: where the run started; a resume appends where and when it went on, keeping the original."""
    environment = _environment(device)
    if resumed_at > 0 and path.is_file():
        try:
            previous = json.loads(path.read_text())
        except ValueError:  # damaged: the original is lost either way, the new entry is not
            previous = {"damaged_env_json": True}
        previous.setdefault("resumed", []).append({**environment, "step": resumed_at})
        environment = previous
    atomic_write_json(path, environment)


def _environment(device: torch.device) -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__,
            "platform": platform.platform(), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
            "threads": torch.get_num_threads(), "git_commit": commit, "argv": sys.argv}


def _numpy_rng_state() -> dict[str, Any]:
    """numpy's global RNG state as a tensor and numbers: a checkpoint then holds nothing ``torch.load``'s
    ``weights_only`` unpickler refuses (numpy arrays would need it to trust numpy's own pickling)."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _set_numpy_rng_state(state: dict[str, Any]) -> None:
    np.random.set_state((state["name"], state["keys"].numpy().astype(np.uint32), state["position"],
                         state["has_gauss"], state["cached_gaussian"]))


class Trainer:
    """Trains ``config.method`` on ``config.data`` into ``run_dir``, seeing the method only as a ClassSampler."""

    def __init__(self, config: TrainConfig, run_dir: str | Path, progress: bool = True,
                 dataset: Optional[FaceDataset] = None) -> None:
        """``dataset``: an already prepared dataset instead of ``config.data`` (the step benchmark's
        in-memory images over a million labels, which no file on disk needs to hold)."""
        self.config = config.validate().with_recipe()
        self.run_dir = Path(run_dir)
        self._init_runtime(progress)
        self.start_weights = self._read_start_weights()
        self._init_data(dataset)
        self._init_model()
        self._init_method()
        self._init_schedule()

    # -- set-up, in the order each phase needs the last ------------------------------------
    def _init_runtime(self, progress: bool) -> None:
        """Device, process group, mixed precision and seeds."""
        config = self.config
        self.device = resolve_device(config.device)
        self.context: DistributedContext = init_distributed(self.device)
        self.progress = progress and self.context.is_main
        amp = "bf16" if config.amp == "auto" and self.device.type == "cuda" else config.amp
        if amp not in AMP_DTYPES:
            raise ConfigError(f"amp must be one of {', '.join(AMP_DTYPES)}; got {config.amp!r}")
        self.amp_dtype = AMP_DTYPES[amp]
        # float16's gradients need the loss scaled (core/loss_scaling.py); bfloat16 has float32's range
        self.loss_scaler = LossScaler(self.device) if amp == "fp16" else None
        self._seed_everything(config.seed + self.context.rank)

    def _read_start_weights(self) -> Optional[dict[str, torch.Tensor]]:
        """--init's backbone weights, read and fitted to this run's network before any image is decoded: a wrong
        file costs nothing. Building the network to fit them draws no number from the run's random streams."""
        config = self.config
        if config.init is None:
            return None
        if config.resume:
            raise ConfigError(f"--init {config.init}: a resumed run continues from its checkpoint; --init starts a "
                              "new run's backbone")
        from core.models import start_weights

        with torch.random.fork_rng(devices=[]):
            return start_weights(config.init, config.backbone, config.embedding_size,
                                 config.input_size or default_input_size(config.backbone))

    def _init_data(self, dataset: Optional[FaceDataset]) -> None:
        """The training set (checked to hold at least two classes) and every --val file, read up front."""
        config = self.config
        self.input_size = config.input_size or default_input_size(config.backbone)
        self.data_root = self._data_root() if dataset is None else None
        self.val_files = (resolve_val_files(config.val, self.data_root or config.data) if config.val
                          else default_val_files(self.data_root))
        # Read now, before the training images are decoded and long before the first evaluation: a missing or
        # corrupt --val file must cost neither.
        self._val_pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if self.context.is_main:
            from core.data.verification_bin import load_verification_pairs
            for path in self.val_files:
                self._val_pairs[path] = load_verification_pairs(path)
        self.dataset = dataset if dataset is not None else prepare_dataset(
            self.data_root or config.data, self.input_size, config.cache_images, progress=self.progress)
        self.num_classes = self.dataset.num_classes
        if self.num_classes < 2:
            raise DataError(f"--data {config.data}: holds {self.num_classes} class; a softmax over identities "
                            "needs at least 2")
        empty = int((np.bincount(np.asarray(self.dataset.labels), minlength=self.num_classes) == 0).sum())
        if empty and self.context.is_main:  # e.g. a .rec whose property declares more classes than it holds
            print(f"warning: --data {config.data}: {empty} of {self.num_classes} classes have no images; they "
                  "are never a positive (a stored center is kept for each)", file=sys.stderr)

    def _init_model(self) -> None:
        """The backbone, wrapped for DDP and torch.compile as asked."""
        config = self.config
        self.backbone = build_backbone(config.backbone, config.embedding_size, self.input_size)
        if self.start_weights is not None:
            self.backbone.load_state_dict(self.start_weights)
        self.backbone.to(self.device)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.backbone.to(memory_format=self.memory_format)
        self.model = self.backbone
        if self.context.enabled:
            from torch.nn.parallel import DistributedDataParallel
            self.model = DistributedDataParallel(
                self.backbone, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if config.compile:
            self.model = torch.compile(self.model)

    def _init_method(self) -> None:
        """The method's sampler (from its spec), the loss, the optimizer, and the batches the method asks for."""
        config = self.config
        self.spec = config.spec
        self.sampler = build_sampler(self.spec, config.options, SamplerEnvironment(
            num_classes=self.num_classes, num_images=len(self.dataset), embedding_size=config.embedding_size,
            backbone=self.backbone, device=self.device, context=self.context, seed=config.seed,
            optimizer=config.optimizer, momentum=config.momentum, weight_decay=config.weight_decay,
            class_counts=self.dataset.class_counts(), batch_size=config.batch_size * self.context.world_size))
        # the head's GEMMs go to bf16 with bf16 autocast; under fp16 they stay float32, as a scaled loss's
        # gradients would overflow float16
        self.criterion = margin_loss_for(config, bf16_on_cuda=self.amp_dtype is torch.bfloat16)
        self.optimizer = build_optimizer(config, list(self.backbone.parameters()) + self.sampler.extra_parameters())
        self.dataset, self.batch_sampler = batch_order(self.dataset, self.sampler.batch_layout(), config.batch_size,
                                                       config.seed, self.context.rank, self.context.world_size)
        self.augment = RandomFlip(config.seed * 31)  # keyed by each sample's draw, the same on every rank
        self.dynamics = (TrainingDynamics(len(self.dataset), self.num_classes, self.device, self.context)
                         if config.record_dynamics else None)
        self.criterion.record_margins = self.dynamics is not None

    def _init_schedule(self) -> None:
        """Steps per epoch, the warm-up + polynomial schedule, and the position in the data."""
        config = self.config
        self.global_batch = config.batch_size * config.accumulate * self.context.world_size
        self.steps_per_epoch = len(self.batch_sampler) // config.accumulate
        if self.steps_per_epoch == 0:
            raise DataError(f"--data {config.data}: {len(self.dataset)} images make no full step of "
                            f"{config.batch_size} x {config.accumulate} accumulated batches")
        self.total_steps = self.steps_per_epoch * config.epochs
        warmup = max(1, int(config.warmup_epochs * self.steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_polynomial(self.total_steps, warmup, config.lr_power))
        self.first_nonfinite_step = torch.full((), -1, dtype=torch.int64, device=self.device)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.metrics: dict[str, Any] = {}

    # -- state -----------------------------------------------------------------------------
    def _data_root(self) -> Optional[Path]:
        """The synthetic default's directory (rank 0 generates it once, the others wait)."""
        if self.config.data != "synthetic":
            return None

        def root() -> Path:
            return synthetic_dataset_root(self.config.synthetic_identities, self.config.flip_noise,
                                          self.config.split, progress=self.progress)

        if self.context.is_main:
            root()
        self.context.barrier()
        return root()

    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "method": method_record(self.spec, self.sampler),
            "step": self.step, "epoch": self.epoch, "num_classes": self.num_classes, "input_size": self.input_size,
            # the position in the data in samples, and the world size (with the config: the global batch), so
            # that any number of processes continues it
            "samples_in_epoch": self.batch_in_epoch * self.config.batch_size * self.context.world_size,
            "world_size": self.context.world_size,
            "backbone": self.backbone.state_dict(),
            "eval_backbone": self.sampler.evaluation_model(self.backbone).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_rng_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None},
            "metrics": plain(self.metrics),
            **({"dynamics": self.dynamics.state_dict()} if self.dynamics is not None else {}),
            **({"loss_scaler": self.loss_scaler.state_dict()} if self.loss_scaler is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any], sampler_state: dict[str, Any]) -> None:
        """Continue ``state`` on this run's processes: the global batch must be the same, its split may not."""
        if state["num_classes"] != self.num_classes:
            raise DataError(f"the checkpoint was trained on {state['num_classes']} classes but the data has "
                            f"{self.num_classes}")
        saved = state["config"]
        saved_global_batch = saved["batch_size"] * saved["accumulate"] * state["world_size"]
        if saved_global_batch != self.global_batch:
            raise DataError(f"the checkpoint was trained with a global batch of {saved_global_batch} images per "
                            f"step, this run takes {self.global_batch}; a resumed run keeps its global batch")
        self.backbone.load_state_dict(state["backbone"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._apply_base_lr()
        self.sampler.load_state_dict(sampler_state)
        self.step, self.epoch = state["step"], state["epoch"]
        self.batch_in_epoch = state["samples_in_epoch"] // (self.config.batch_size * self.context.world_size)
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        _set_numpy_rng_state(rng["numpy"])
        random.setstate(rng["python"])
        if rng["cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.metrics = state.get("metrics", {})
        if self.loss_scaler is not None and "loss_scaler" in state:  # else: a run going on in fp16 starts afresh
            self.loss_scaler.load_state_dict(state["loss_scaler"])
        if self.dynamics is not None:
            if "dynamics" in state:
                self.dynamics.load_state_dict(state["dynamics"])
            else:  # recorded from here on: the analysis says which steps the margins cover
                self.dynamics.from_step = self.step

    def _apply_base_lr(self) -> None:
        """``--lr`` given on resume: the restored schedule goes on from this base rate, not the saved one."""
        factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        self.scheduler.base_lrs = [self.config.lr] * len(self.optimizer.param_groups)
        for group in self.optimizer.param_groups:
            group["initial_lr"] = self.config.lr
            group["lr"] = self.config.lr * factor
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def resume(self, path: str | Path) -> None:
        """Continue from a checkpoint written by any number of processes."""
        checkpoint, state = read_checkpoint(path, self.device)
        check_resumable(checkpoint, state)
        sampler_state = sampler_state_for(checkpoint.parent, state, *self.sampler.shard_range())
        self.load_state_dict(state, {k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                                     for k, v in sampler_state.items()})

    def save_checkpoint(self) -> Path:
        """Write the checkpoint atomically, refusing to replace a good one with non-finite weights."""
        path = self.run_dir / CHECKPOINT_NAME
        broken = non_finite_names([*self.backbone.state_dict().items(), *self.sampler.state_dict().items()])
        if broken:
            kept = f"the last good checkpoint is {path}" if path.exists() else "no checkpoint was written"
            raise TrainingError(f"step {self.step}: non-finite weights in {', '.join(broken[:3])}; training "
                                f"stopped and {kept}. Lower --lr or check the data.")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_checkpoint(self.run_dir, self.state_dict(), self.sampler, self.step, self.context)
        return path

    # -- data ------------------------------------------------------------------------------
    def batches(self) -> Iterator[Batch]:
        """Micro-batches from the saved position on, across epochs, advancing the position: what
        ``train_step`` consumes (a benchmark may instead feed it one batch over and over)."""
        pin = self.device.type == "cuda"
        while self.epoch < self.config.epochs:
            self.batch_sampler.set_position(self.epoch, self.batch_in_epoch)
            usable = self.steps_per_epoch * self.config.accumulate
            loader = make_loader(self.dataset, self.batch_sampler, self.config.workers, pin)
            for batch in loader:
                if self.batch_in_epoch >= usable:
                    break
                batch.positions = torch.from_numpy(self.epoch * len(self.dataset)
                                                   + self.batch_sampler.positions(self.batch_in_epoch))
                batch.indices = torch.from_numpy(self.batch_sampler.indices(self.batch_in_epoch))
                self.batch_in_epoch += 1
                yield batch
            self.epoch += 1
            self.batch_in_epoch = 0

    # -- the loop --------------------------------------------------------------------------
    def train_step(self, micro_batches: Iterator[Batch]) -> torch.Tensor:
        """One optimizer step over ``accumulate`` micro-batches; returns the mean loss (on device)."""
        self.backbone.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        sampler_weights = []  # the selections' weight leaves, whose gradient a loss scaler unscales
        for micro in range(self.config.accumulate):
            # Copied first, flipped on the device (see RandomFlip), then laid out for the network.
            batch = self.augment(next(micro_batches).to(self.device, non_blocking=True))
            batch = batch.contiguous(self.memory_format)
            autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                        else nullcontext())
            # DDP reduces gradients only on the last micro-batch of an accumulated step.
            last_micro = micro == self.config.accumulate - 1
            sync = nullcontext() if last_micro or self.model is self.backbone else self.model.no_sync()
            with sync:
                with autocast:  # select may run a network too (DCQ's key encoder)
                    embeddings = self.model(batch.images)
                    selection = self.sampler.select(embeddings.float(), batch)
                loss = self.criterion(selection) / self.config.accumulate
                # Recorded on the device, read by check_finite: a read here would stall the GPU every step.
                self.first_nonfinite_step = torch.where(
                    torch.isfinite(loss.detach()) | (self.first_nonfinite_step >= 0), self.first_nonfinite_step,
                    self.step + 1)
                (loss if self.loss_scaler is None else self.loss_scaler.scale(loss)).backward()
            if self.dynamics is not None and batch.indices is not None:
                self.dynamics.record(batch.indices, self.criterion.last_margins, batch.labels,
                                     self.criterion.last_other_classes)
            self.sampler.collect(selection)
            sampler_weights.append(selection.weights)
            total += loss.detach()
        applied = self.loss_scaler is None or self.loss_scaler.unscale(self.optimizer, sampler_weights)
        if self.config.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.backbone.parameters(), self.config.grad_clip)
        lr = self.scheduler.get_last_lr()[0]
        if applied:
            self.optimizer.step()
            self.sampler.step(lr)
        else:  # an fp16 overflow: nothing of this step is applied (the scale has backed off)
            self.sampler.discard_step()
        self.scheduler.step()
        self.step += 1
        return total

    def check_finite(self) -> None:
        """Stop at the first step whose loss was not finite (its checkpoint is never written)."""
        first = int(self.first_nonfinite_step.item())
        if first >= 0:
            last = self.run_dir / CHECKPOINT_NAME
            kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
            raise TrainingError(f"step {first}: the loss is not finite (nan or inf); training stopped and {kept}. "
                                "Lower --lr or check the data.")

    def fit(self) -> dict[str, Any]:
        """Train to the end (or ``max_steps``), evaluating and checkpointing on the way.

        The run directory is held exclusively while training (a second training into it is
        refused); a run that fails before its first checkpoint leaves no directory that could
        be taken for a run.
        """
        with self._claimed_run_dir():
            return self._fit()

    @contextmanager
    def _claimed_run_dir(self) -> Iterator[None]:
        if not self.context.is_main:
            yield
            return
        created = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with exclusive_directory(self.run_dir, "--resume" if self.config.resume else "--out"):
            remove_stale_temporaries(self.run_dir)
            before = {entry.name for entry in self.run_dir.iterdir()}
            try:
                yield
            except BaseException:
                if not (self.run_dir / CHECKPOINT_NAME).exists():
                    _remove_unfinished_run(self.run_dir, keep=before, remove_directory=created)
                raise

    def _fit(self) -> dict[str, Any]:
        config = self.config
        last_step = self.last_step
        if self.context.is_main:
            if self.step == 0:  # a new run: a resumed one was told when it started
                for note in self.sampler.notes():
                    print(f"note: {note}", file=sys.stderr)
            save_config(config, self.run_dir / "config.yaml")
            _write_environment(self.run_dir / "env.json", self.device, resumed_at=self.step)
        log = _CsvLog(self.run_dir / "log.csv", self.context.is_main, keep_through_step=self.step,
                      validation_columns=validation_columns(val_names(self.val_files)))
        board = _tensorboard(self.run_dir) if self.context.is_main else None
        micro_batches = self.batches()
        images_per_step = self.global_batch
        bar = tqdm(total=last_step, initial=self.step, disable=not self.progress, unit="step",
                   dynamic_ncols=True, desc=f"train {config.method}")
        window_loss, window_steps, window_start = torch.zeros((), device=self.device), 0, time.perf_counter()
        try:
            while self.step < last_step:
                epoch_before = self.epoch
                window_loss += self.train_step(micro_batches)
                window_steps += 1
                bar.update(1)
                epoch_done = self.batch_in_epoch >= self.steps_per_epoch * config.accumulate
                due_to_validate = self._should_validate(epoch_done, last_step)
                due_to_log = self.step % config.log_every == 0 or self.step == last_step or due_to_validate
                due_to_save = bool(config.checkpoint_every) and self.step % config.checkpoint_every == 0
                if self.device.type != "cuda" or due_to_log or due_to_save:
                    self.check_finite()
                if due_to_log:
                    elapsed = time.perf_counter() - window_start  # before validating: img/s counts training only
                    row = {"step": self.step, "epoch": epoch_before,
                           "loss": self.context.mean_over_ranks(window_loss / window_steps).item(),
                           "lr": self.scheduler.get_last_lr()[0],
                           "img_per_s": window_steps * images_per_step / max(elapsed, 1e-9)}
                if due_to_validate:
                    self.metrics = self.evaluate()
                    self._report_metrics(bar, board)
                    self.context.barrier()
                    row.update(validation_row(self.metrics))
                if due_to_log:
                    log.write(row)
                    if board is not None:
                        for key in ("loss", "lr", "img_per_s"):
                            board.add_scalar(f"train/{key}", row[key], self.step)
                    bar.set_postfix(loss=f"{row['loss']:.3f}", img_s=f"{row['img_per_s']:.0f}")
                    window_loss, window_steps = torch.zeros((), device=self.device), 0
                    window_start = time.perf_counter()
                if due_to_save:
                    self.save_checkpoint()
        finally:
            bar.close()
            if board is not None:
                board.close()
        if not self.metrics or self.metrics.get("_step") != self.step:
            self.metrics = self.evaluate()
        if self.loss_scaler is not None and self.loss_scaler.skipped_steps and self.context.is_main:
            print(f"note: fp16 loss scaling skipped {self.loss_scaler.skipped_steps} of {self.step} steps on a "
                  f"gradient overflow (final scale {self.loss_scaler.scaler.get_scale():g})", file=sys.stderr)
        if self.context.is_main:  # before the final checkpoint, the commit point: a run with it has them too
            atomic_write_json(self.run_dir / "metrics.json",
                              {k: v for k, v in self.metrics.items() if not k.startswith("_")})
            plot_training(self.run_dir / "log.csv", self.run_dir / figure_file(TRAINING_FIGURE, config.figure_format),
                          title=f"{self.run_dir.name}: {config.method} ({self.spec.title}), {config.backbone}, "
                                f"{self.num_classes:,} classes")
        self.save_checkpoint()
        return self.metrics

    @property
    def last_step(self) -> int:
        """The step this run stops at: the schedule's end, or ``--max-steps`` before it."""
        return min(self.total_steps, self.config.max_steps or self.total_steps)

    def _should_validate(self, epoch_done: bool, last_step: int) -> bool:
        """At every epoch's end (or every --val-every steps) and at the last step, when there is a --val."""
        if not self.val_files:
            return False
        if self.step == last_step:
            return True
        if self.config.val_every:
            return self.step % self.config.val_every == 0
        return epoch_done

    def _report_metrics(self, bar: tqdm, board) -> None:
        for name, result in self.metrics.items():
            if name.startswith("_"):
                continue
            if self.step < self.last_step:  # the last is in the summary that follows the run
                bar.write(f"step {self.step}: {name} accuracy {result['accuracy']:.4f} "
                          f"± {result['accuracy_std']:.4f}")
            if board is not None:
                board.add_scalar(f"val/{name}/accuracy", result["accuracy"], self.step)

    # -- evaluation ------------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        """Verification on every ``--val`` file with the method's evaluation network (rank 0 only)."""
        model = self.sampler.evaluation_model(self.backbone)
        results: dict[str, Any] = {"_step": self.step}
        if not self.context.is_main:
            return results
        for name, path in zip(val_names(self.val_files), self.val_files):
            images, issame = self._val_pairs[path]
            embeddings = embed_images(model, images, self.input_size, device=self.device, progress=self.progress)
            results[name] = evaluate_pairs(embeddings, issame)
        return results


# The figures of each --val set that log.csv keeps, as columns ``<set>_<figure>``.
LOGGED_VALIDATION = ("accuracy", "accuracy_std")


def validation_columns(names: list[str]) -> list[str]:
    """log.csv's columns for the --val sets ``names``: accuracy and its std over the 10 folds."""
    return [f"{name}_{figure}" for name in names for figure in LOGGED_VALIDATION]


def validation_row(metrics: dict[str, Any]) -> dict[str, float]:
    """The validation columns' values for one evaluation (see ``validation_columns``)."""
    names = [name for name in metrics if not name.startswith("_")]
    return dict(zip(validation_columns(names), (metrics[name][figure] for name in names
                                                 for figure in LOGGED_VALIDATION)))


class _CsvLog:
    """Append-only CSV of training progress: step, epoch, loss, lr, img/s on every row, and each --val set's
    accuracy on the rows of the steps it was measured at (empty on the others)."""

    FIELDS = ["step", "epoch", "loss", "lr", "img_per_s"]

    def __init__(self, path: Path, enabled: bool, keep_through_step: int = 0,
                 validation_columns: Sequence[str] = ()) -> None:
        """Rows after ``keep_through_step`` (the checkpoint being resumed, 0 for a new run) are dropped:
        they were logged by an interrupted run after its last checkpoint and are about to be redone. A resumed
        run keeps the validation columns of the rows before it, beside its own (its --val may differ)."""
        self.path = path
        self.enabled = enabled
        if not enabled:
            return
        kept: list[dict[str, str]] = []
        earlier: list[str] = []
        if path.exists() and keep_through_step > 0:
            # A damaged row (bytes that are not UTF-8, a cut line) is dropped, not a reason to stop the resume.
            with open(path, newline="", encoding="utf-8", errors="replace") as handle:
                reader = csv.DictReader(handle)
                kept = [row for row in reader
                        if _numeric_row(row, self.FIELDS) and int(row["step"]) <= keep_through_step]
                earlier = [name for name in reader.fieldnames or () if name not in self.FIELDS]
        self.fields = self.FIELDS + list(dict.fromkeys([*earlier, *validation_columns]))
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, self.fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept)

    def write(self, row: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a", newline="") as handle:
                csv.DictWriter(handle, self.fields).writerow(row)


def _remove_unfinished_run(run_dir: Path, keep: set[str], remove_directory: bool) -> None:
    """Delete what a run that never checkpointed wrote (nothing in it can be resumed or evaluated, so nothing
    should look like a run): only the entries that were not there before it started, and the directory when
    this run made it and it is left empty. The error that stopped the run says what went wrong."""
    import shutil

    from core.io import LOCK_NAME

    ours = [entry for entry in run_dir.iterdir() if entry.name not in keep and entry.name != LOCK_NAME
            and (entry.name in RUN_FILES or entry.match(SHARD_GLOB) or entry.name == "tensorboard")]
    for entry in ours:
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    left = sorted(entry.name for entry in run_dir.iterdir() if entry.name != LOCK_NAME)
    if remove_directory and not left:
        (run_dir / LOCK_NAME).unlink(missing_ok=True)
        run_dir.rmdir()
        print(f"note: {run_dir} held no checkpoint, so it was removed", file=sys.stderr)
    elif ours:
        print(f"note: {run_dir} holds no checkpoint; removed what this run wrote there "
              f"({', '.join(sorted(entry.name for entry in ours))})", file=sys.stderr)


def _numeric_row(row: dict[str, Any], fields: list[str]) -> bool:
    """Whether a log row read back has a whole step and a number in every other field."""
    if not (row.get("step") or "").isdigit():
        return False
    try:
        [float(row[field]) for field in fields]
    except (KeyError, TypeError, ValueError):
        return False
    return True


def _tensorboard(run_dir: Path):
    """A SummaryWriter when TensorBoard is installed; training never requires it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def plot_training(log_csv: Path, out: Path, title: str) -> Optional[Path]:
    """The training curves of log.csv: loss and learning rate against the step, and beside them each --val
    set's accuracy (± its std over the folds) at the steps it was measured. None when the log has no rows."""
    import pandas as pd
    from matplotlib.figure import Figure

    log = pd.read_csv(log_csv)
    if log.empty:
        return None
    accuracy_columns = [c for c in log.columns if c not in _CsvLog.FIELDS and c.endswith("_accuracy")]
    figure = Figure(figsize=(11 if accuracy_columns else 7, 4))
    loss_axis = figure.add_subplot(1, 2 if accuracy_columns else 1, 1)
    loss_axis.plot(log["step"], log["loss"], color="tab:blue")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("training loss", color="tab:blue")
    loss_axis.grid(alpha=0.3)
    loss_axis.set_title("loss and learning rate", fontsize=10)
    lr_axis = loss_axis.twinx()
    lr_axis.plot(log["step"], log["lr"], color="tab:orange")
    lr_axis.set_ylabel("learning rate", color="tab:orange")
    if accuracy_columns:
        accuracy_axis = figure.add_subplot(1, 2, 2)
        for column in accuracy_columns:
            measured = log.dropna(subset=[column])
            spread = measured.get(f"{column}_std")
            accuracy_axis.errorbar(measured["step"], measured[column] * 100,
                                   yerr=None if spread is None else spread * 100, marker="o", capsize=3,
                                   label=column[:-len("_accuracy")])
        accuracy_axis.set_xlabel("step")
        accuracy_axis.set_ylabel("verification accuracy % (± std over 10 folds)")
        accuracy_axis.set_xlim(loss_axis.get_xlim())
        accuracy_axis.grid(alpha=0.3)
        accuracy_axis.legend(fontsize=8)
        accuracy_axis.set_title("held-out verification", fontsize=10)
    figure.suptitle(title, fontsize=11)
    return save_figure(figure, out)
