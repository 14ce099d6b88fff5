"""The embedded default dataset: procedurally rendered identities with known noise.

Real face datasets cannot be shipped with the code, and their label noise is unknown, so
experiments on inter-class conflict, label noise and long-tail behaviour need data whose
ground truth is recorded. One module per job:

* ``faces``: an identity's appearance parameters and its rendered face-like images;
* ``labels``: long-tailed counts, split identities, label flips and verification pairs;
* ``dataset``: ``make_synthetic_dataset`` writes train.rec / val.bin / ground_truth.json,
  ``load_ground_truth`` reads the ground truth back;
* ``embeddings``: embeddings drawn straight from a long-tailed mixture on the hypersphere;
* ``streams``: the seeded random streams that make all of it deterministic.
"""

from __future__ import annotations

from core.data.synthetic.dataset import GROUND_TRUTH_FILE, SyntheticConfig, load_ground_truth, make_synthetic_dataset
from core.data.synthetic.embeddings import (
    SyntheticEmbeddingConfig,
    class_centers,
    embedding_batches,
    make_synthetic_embeddings,
)
from core.data.synthetic.faces import draw_identity_params, render_identity_images
from core.data.synthetic.labels import long_tail_counts

__all__ = [
    "SyntheticConfig",
    "SyntheticEmbeddingConfig",
    "GROUND_TRUTH_FILE",
    "draw_identity_params",
    "render_identity_images",
    "long_tail_counts",
    "make_synthetic_dataset",
    "load_ground_truth",
    "make_synthetic_embeddings",
    "class_centers",
    "embedding_batches",
]
