"""Train a built-in task's checkpoint: ``python -m edgeprune.zoo.train NAME [--seed N] [--out DIR]``.

Each trainer writes ``NAME.pt`` (a state dict, loadable with ``weights_only=True``) and ``NAME.json`` (seed, data,
steps, wall time, final metrics) into the output folder, so a shipped checkpoint says how it was made.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from edgeprune.zoo import CHECKPOINTS

TRAINERS: dict[str, str] = {
    "digits-autoencoder": "edgeprune.zoo.autoencoder:train_digits",
    "digits-resnet": "edgeprune.zoo.resnet:train_digits_resnet",
    "fashion-autoencoder": "edgeprune.zoo.autoencoder:train_fashion",
    "fashion-mobilenet_v2": "edgeprune.zoo.fashion:train_mobilenet_v2",
    "fashion-resnet18": "edgeprune.zoo.fashion:train_resnet18",
    "pendulum-agent": "edgeprune.zoo.pendulum_train:train_agent",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeprune.zoo.train", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(TRAINERS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=CHECKPOINTS)
    args = parser.parse_args(argv)
    module, _, attr = TRAINERS[args.name].partition(":")
    trainer = getattr(importlib.import_module(module), attr)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = trainer(seed=args.seed, out=args.out)
    print(f"{args.name}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
