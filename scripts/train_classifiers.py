"""Rebuild the evaluation classifiers that ship with genlab (genlab/metrics/classifiers/): one per
built-in data set at the sizes the presets use, each trained with the evaluator's default steps,
on the CPU, and saved with its held-out accuracy and sha256.

    python scripts/train_classifiers.py            # retrain all, print key, sha256, accuracy
    python scripts/train_classifiers.py --check    # retrain into a temporary folder, compare

The weights are bit-identical from run to run on one machine and torch version; another CPU or
torch may round differently, which is why the weights ship rather than each machine training its
own. Replacing them changes every distance measured in their features: re-measure docs/ tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from genlab.data import digits, mnist5k
from genlab.metrics.classifier import (
    SHIPPED,
    cache_key,
    default_steps,
    save_classifier,
    train_classifier,
)

PRESETS = [(mnist5k, 28), (mnist5k, 64), (digits, 32)]  # the presets' data sets and sizes


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="compare with the shipped weights")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        return rebuild(Path(tmp) if args.check else SHIPPED, args.check)


def rebuild(out: Path, check: bool) -> int:
    """Train each preset's classifier into `out`; with `check`, count those that differ from the
    shipped weights."""
    differ = 0
    for dataset, size in PRESETS:
        train, test = (dataset(image_size=size, split=split) for split in ("train", "test"))
        steps = default_steps(train)
        began = time.perf_counter()
        model, acc = train_classifier(train, test, torch.device("cpu"), steps=steps)
        record = {"dataset": train.name, "test_split": test.split, "accuracy": acc, "steps": steps}
        record["trained_with"] = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
        key = cache_key(train, steps)
        sha = save_classifier(model, record, out, key)["sha256"]
        line = f"{key}: sha256 {sha}, accuracy {100 * acc:.2f}%"
        if check:
            same = json.loads((SHIPPED / f"{key}.json").read_text())["sha256"] == sha
            differ += not same
            line += ", as shipped" if same else ", DIFFERS from the shipped weights"
        print(f"{line} ({time.perf_counter() - began:.0f} s)")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
