"""``python -m tests.cli.fault_driver MOMENT N -- CLI ARGS``: run ``cli.py ARGS`` and SIGKILL itself at MOMENT.

The fault-injection tests use it to kill a training where a scheduler, an OOM killer or a
power cut would: ``step N`` before the N-th step, ``partial NAME N`` in the middle of the
N-th write of a file whose name starts with NAME (half of it on disk, not yet renamed),
``written NAME N`` after the N-th such write is complete but before it is renamed into place.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    separator = sys.argv.index("--")
    moment, *where = sys.argv[1:separator]
    args = sys.argv[separator + 1:]
    import torch

    import core.io
    import core.trainer

    if moment == "step":
        target = int(where[0])
        original_step = core.trainer.Trainer.train_step

        def train_step(self, batches):
            if self.step == target:
                _die()
            return original_step(self, batches)

        core.trainer.Trainer.train_step = train_step
    else:
        prefix, target = where[0], int(where[1])
        seen = {"writes": 0}
        original_save = torch.save

        def save(obj, path, *rest, **options):
            original_save(obj, path, *rest, **options)
            final_name = Path(path).name.split(".")[1]  # .NAME.PID.HEX.tmp -> NAME
            if not final_name.startswith(prefix.split(".")[0]):
                return
            seen["writes"] += 1
            if seen["writes"] == target:
                if moment == "partial":
                    with open(path, "r+b") as handle:
                        handle.truncate(os.path.getsize(path) // 2)
                _die()

        core.io.torch.save = save
    from cli import main as cli

    sys.argv = ["cli.py", *args]
    cli()


if __name__ == "__main__":
    main()
