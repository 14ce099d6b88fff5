"""Cross-validated reference evidence: what models that never trained on an image say about its label.

A long run's final features fit its flipped labels (memorisation), and a run whose
method keeps no exact centers (DCQ) gives class means that bunch: in both cases the run
itself is a poor judge of its own labels. Cross-validation (INCV, Chen et al. 2019)
sidesteps both. Each class's images are dealt into K folds; K reference models are
trained, each on the other K-1 folds, and each image is read through the model that
never saw it:

- ``noise_score``: the held-out image's similarity to the nearest other class mean minus
  its similarity to its own class mean, both means taken over the images that model
  trained on. A flipped image lands near its true identity whatever its label says.
- ``class_vectors``: per class, the unit class means of all its images under each fold
  model, concatenated and scaled by 1/sqrt(K), so that one inner product is the cosine of
  two classes' means averaged over the K models (an ensemble; the conflict ranking).

The reference models depend on the data only, not on the analysed run, so one
``analyze crossval`` serves every run trained on that data (``analyze ... --crossval DIR``).
Its cost is K trainings on (K-1)/K of the data; a cheaper recipe (``--config``) is fine,
since only the ranking is kept.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from core.errors import ConfigError, DataError
from core.io import atomic_path, atomic_write_json, read_json

RESULT_JSON = "crossval.json"
RESULT_ARRAYS = "crossval.npz"
DEFAULT_FOLDS = 4
# The reference models' recipe unless --config gives another: the issue's simple baseline (a full softmax with
# CosFace s=32, m=0.3, 128-d embeddings, 12 epochs), under train's default method and backbone. It is also the
# detection benchmark's baseline, so the cross-validated figures and the baseline column differ only by the folds.
REFERENCE_LOSS = {"margin": "cosface", "scale": 32.0, "margin_m": 0.3, "embedding_size": 128}
REFERENCE_EPOCHS = 12


@dataclass
class CrossValidation:
    """The reference evidence for one dataset, in dataset order."""

    folds: int
    noise_score: np.ndarray  # float32 [N] held-out nearest other mean - own mean; NaN: no own mean to compare with
    class_vectors: np.ndarray  # float32 [C, K*D] see the module docstring; zero rows: a class with no image

    def pair_similarity(self, label_a: np.ndarray, label_b: np.ndarray) -> np.ndarray:
        """Cosine of the two classes' means averaged over the fold models (NaN where a class has no image)."""
        a, b = self.class_vectors[label_a], self.class_vectors[label_b]
        present = (np.abs(a).sum(axis=1) > 0) & (np.abs(b).sum(axis=1) > 0)
        return np.where(present, np.einsum("ij,ij->i", a, b), np.nan).astype(np.float32)


def assign_folds(labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Each class's images dealt round-robin into ``folds`` from a random start, in a random order: every fold
    holds ``n // folds`` or one more of each class, so every class with ``folds`` images or more trains in each
    reference model."""
    if folds < 2:
        raise ConfigError(f"--folds must be >= 2 (one fold held out, the rest trained on), got {folds}")
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    for members in np.split(order, bounds):
        members = rng.permutation(members)
        fold[members] = (np.arange(len(members)) + rng.integers(folds)) % folds
    return fold


def held_out_evidence(fold_embeddings: list[np.ndarray], labels: np.ndarray, fold: np.ndarray, num_classes: int
                      ) -> CrossValidation:
    """The evidence from each fold model's embeddings of every image (``[N, D]``, a memory map will do), see the
    module docstring. The nearest other class comes from one kNN search (analysis/noise.py's
    ``sample_neighbours``) per fold, so no ``[N, C]`` block is ever formed."""
    from analysis.centers import Centers, class_sums
    from analysis.index import normalize_rows
    from analysis.noise import sample_neighbours

    labels = np.asarray(labels, dtype=np.int64)
    fold = np.asarray(fold, dtype=np.int64)
    folds = len(fold_embeddings)
    score = np.full(len(labels), np.nan, dtype=np.float32)
    vectors = []
    for f, embeddings in enumerate(fold_embeddings):
        held = np.flatnonzero(fold == f)
        # one pass: the held-out images are summed into a spare class C, the rest into their own
        sums = class_sums(embeddings, np.where(fold == f, num_classes, labels), num_classes + 1, unit_rows=True)
        trained_counts = np.bincount(labels[fold != f], minlength=num_classes)
        means = Centers(vectors=sums[:num_classes], source="means", counts=trained_counts)
        held_rows = np.asarray(embeddings[held])
        found = sample_neighbours(held_rows, labels[held], means, leave_one_out=False)
        judged = (trained_counts[labels[held]] > 0) & (found.nearest_label >= 0)
        score[held[judged]] = (found.nearest_similarity - found.own_similarity)[judged]
        every_image = sums[:num_classes] + class_sums(held_rows, labels[held], num_classes, unit_rows=True)
        vectors.append(normalize_rows(every_image))
    class_vectors = (np.concatenate(vectors, axis=1) / math.sqrt(folds)).astype(np.float32)
    return CrossValidation(folds=folds, noise_score=score, class_vectors=class_vectors)


# -- training the reference models ---------------------------------------------------------
def reference_values(method: Optional[str] = None) -> dict[str, Any]:
    """The default reference recipe as config keys: ``REFERENCE_LOSS`` and the method's full-softmax options."""
    from core.config import TrainConfig
    from core.methods import get_method

    method = method or TrainConfig.method
    spec = get_method(method)
    if spec.full_softmax_options is None:
        raise ConfigError(f"--method {method} has no full-softmax setting for the reference models; give a --config "
                          "whose method has one")
    return {"method": method, **REFERENCE_LOSS, **spec.full_softmax_options, "epochs": REFERENCE_EPOCHS}


def reference_recipe(config: Optional[str | Path] = None, epochs: Optional[int] = None):
    """The reference models' TrainConfig: ``config`` (a train config file) if given, else ``reference_values``;
    ``epochs`` overrides either."""
    from core.config import load_config

    values = {} if config is not None else reference_values()
    return load_config(config, {**values, "epochs": epochs})


def _list_entries(dataset, data_path: Path) -> list[str]:
    """One ``--data`` list entry per image: its file, or ``train.rec#KEY`` for RecordIO data."""
    from analysis.noise import record_reference
    from core.data.base import sample_sources

    sources = sample_sources(dataset)
    if sources.records is not None:
        rec_path = getattr(dataset, "rec_path", None)
        if rec_path is None:
            raise DataError(f"--data {data_path}: has record keys but no .rec file to reference")
        return [record_reference(rec_path, key) for key in sources.records]
    if sources.paths is None:
        raise DataError(f"--data {data_path}: its images have neither files nor record keys, so the reference "
                        "models cannot be given a subset of them")
    return [str(Path(path).absolute()) for path in sources.paths]


def run_crossval(data: str | Path, out: Path, recipe, folds: int = DEFAULT_FOLDS, seed: int = 0,
                 device: str = "auto", progress: bool = True, echo: Callable[[str], None] = print
                 ) -> CrossValidation:
    """Train the K reference models on ``data`` with ``recipe`` (a TrainConfig), embed every image under each, and
    write ``out/crossval.npz`` and ``out/crossval.json`` (last). Resumable: a fold with embeddings is skipped, a fold
    with a checkpoint resumes."""
    from analysis.centers import cached_embeddings, load_run
    from core.data.folder import write_list
    from core.data.loader import open_dataset
    from core.data.transforms import ModelInputTransform
    from core.distributed import resolve_device
    from core.trainer import Trainer

    out = Path(out)
    data_path = Path(data).expanduser().absolute()
    dataset = open_dataset(data_path)
    labels = np.asarray(dataset.labels, dtype=np.int64)
    num_classes = int(dataset.num_classes)
    fold = assign_folds(labels, folds, seed)
    entries = _list_entries(dataset, data_path)
    fold_embeddings = []
    for f in range(folds):
        fold_dir = out / f"fold{f}"
        stored = fold_dir / "embeddings.npy"
        if not stored.is_file():
            trained = np.flatnonzero(fold != f)
            fold_dir.mkdir(parents=True, exist_ok=True)
            write_list(fold_dir / "train.txt", [entries[i] for i in trained], labels[trained].tolist())
            run_dir = fold_dir / "run"
            config = recipe.replace(data=str(fold_dir / "train.txt"), out=str(run_dir), seed=seed + f,
                                    device=device, record_dynamics=False).validate()
            echo(f"cross-validation: reference model {f + 1} of {folds} on {len(trained):,} of {len(labels):,} "
                 f"images ({config.epochs} epochs) -> {run_dir}")
            trainer = Trainer(config, run_dir, progress=progress)
            if (run_dir / "checkpoint.pt").exists():
                trainer.resume(run_dir)
            trainer.fit()
            run = load_run(run_dir)
            embedded = open_dataset(data_path, transform=ModelInputTransform(run.input_size))
            _, cache_file, _ = cached_embeddings(run, data_path, embedded, resolve_device(device), progress=progress)
            cache_file.replace(stored)  # the fold is done once its embeddings are in place
        fold_embeddings.append(np.load(stored, mmap_mode="r"))
    evidence = held_out_evidence(fold_embeddings, labels, fold, num_classes)
    with atomic_path(out / RESULT_ARRAYS) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, fold=fold, noise_score=evidence.noise_score, class_vectors=evidence.class_vectors)
    atomic_write_json(out / RESULT_JSON, {"data": str(data_path), "num_samples": len(labels),
                                          "num_classes": num_classes, "folds": folds, "seed": seed,
                                          "recipe": {k: v for k, v in asdict(recipe).items() if k != "out"}})
    return evidence


def default_crossval_dir(checkpoint: Path) -> Path:
    """Where ``analyze crossval`` writes without --out, and where every analyze command looks without --crossval:
    beside the run's checkpoint."""
    return Path(checkpoint).parent / "crossval"


def crossval_for(checkpoint: Path, data_path: Path) -> Optional[Path]:
    """The run's default cross-validation folder when it holds a result computed on ``data_path``, else None."""
    folder = default_crossval_dir(checkpoint)
    if not (folder / RESULT_JSON).is_file():
        return None
    computed_on = read_json(folder / RESULT_JSON).get("data")
    return folder if computed_on and Path(computed_on).resolve() == Path(data_path).resolve() else None


def load_crossval(path: str | Path, num_samples: int, num_classes: int) -> CrossValidation:
    """``analyze crossval``'s output, checked to describe data of this size (arrays only: nothing here runs code)."""
    folder = Path(path)
    where = f"--crossval {folder}"
    if not (folder / RESULT_JSON).is_file() or not (folder / RESULT_ARRAYS).is_file():
        raise ConfigError(f"{where}: holds no {RESULT_JSON} and {RESULT_ARRAYS}; write them with "
                          f"python cli.py analyze crossval RUN --out {folder}")
    meta = read_json(folder / RESULT_JSON)
    if meta.get("num_samples") != num_samples or meta.get("num_classes") != num_classes:
        raise DataError(f"{where}: was computed on {meta.get('num_samples')} images of {meta.get('num_classes')} "
                        f"classes ({meta.get('data')}), but the analysed data has {num_samples} images of "
                        f"{num_classes}; run analyze crossval on this data")
    try:
        with np.load(folder / RESULT_ARRAYS, allow_pickle=False) as arrays:
            evidence = CrossValidation(folds=int(meta["folds"]), noise_score=arrays["noise_score"],
                                       class_vectors=arrays["class_vectors"])
    except (KeyError, ValueError, OSError) as exc:
        raise DataError(f"{where}/{RESULT_ARRAYS}: not a readable cross-validation result ({exc})") from exc
    if len(evidence.noise_score) != num_samples or len(evidence.class_vectors) != num_classes:
        raise DataError(f"{where}/{RESULT_ARRAYS}: its arrays do not match {RESULT_JSON} "
                        f"({len(evidence.noise_score)} images, {len(evidence.class_vectors)} classes)")
    return evidence
