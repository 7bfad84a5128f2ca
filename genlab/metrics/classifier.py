"""A small classifier trained on a data set itself: offline features for Fréchet distance, KID
and precision/recall on MNIST-like data, and labels for cGAN accuracy and class coverage.

The built-in data sets at the presets' sizes (mnist5k at 28 and 64 px, digits at 32 px) use the
classifiers that ship in `genlab/metrics/classifiers/`, so every machine measures the same
distances for the same images (`scripts/train_classifiers.py` rebuilds them). Any other data set,
size or number of steps trains its classifier once and caches it the same way, as safetensors with
a JSON record (accuracy on the held-out split, sha256 of the weights), under
`cache_dir/classifiers/`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import Tensor, nn
from tqdm.auto import tqdm

from genlab.augment import affine_jitter
from genlab.data import ImageData
from genlab.data.loader import normalize
from genlab.errors import GenlabError
from genlab.files import write_file

log = logging.getLogger(__name__)

SHIPPED = Path(__file__).with_name("classifiers")  # the built-in data sets' classifiers
COVERED = 0.2  # a class is covered when it gets at least this fraction of its uniform share


class Classifier(nn.Module):
    """LeNet-style: two 5x5 conv blocks (BatchNorm, ReLU, max-pool), a `features`-wide
    penultimate layer and a linear head. Cheap enough to train on a CPU in a minute."""

    def __init__(
        self, channels: int, image_size: int, num_classes: int, width: int = 16, features: int = 128
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 5, padding=2, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 5, padding=2, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(2 * width * 16, features),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(features, num_classes))
        self.shape = (channels, image_size, num_classes, width, features)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations for images in [-1, 1]."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


@torch.no_grad()
def accuracy(model: Classifier, data: ImageData, device: torch.device, batch: int = 500) -> float:
    model.eval()
    correct = 0
    for images, labels in zip(data.images.split(batch), data.labels.split(batch), strict=True):
        logits = model(normalize(images.to(device)))
        correct += int((logits.argmax(1).cpu() == labels).sum())
    return correct / len(data)


def default_steps(data: ImageData, batch_size: int = 64) -> int:
    """40 epochs, at most 1,000 steps (digits, mnist5k: 1,000), and at least 3 epochs on larger
    sets (MNIST: 2,812); a folder of 72 images takes 45."""
    epoch = len(data) / batch_size
    return max(1, round(max(3 * epoch, min(1000, 40 * epoch))))


def train_classifier(
    train: ImageData,
    test: ImageData,
    device: torch.device,
    steps: int | None = None,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
) -> tuple[Classifier, float]:
    """Adam with a one-cycle schedule and label smoothing on randomly shifted, rotated and scaled
    batches; returns the model and its accuracy on `test`."""
    if train.labels is None or train.num_classes is None:
        raise GenlabError(
            f"the classifier features need a labelled data set, and {train.name} has no labels "
            "(use evaluator.extractor=inception, or one sub-folder per class)"
        )
    steps = steps or default_steps(train, batch_size)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = Classifier(train.channels, train.image_size, train.num_classes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    images, labels = train.images.to(device), train.labels.to(device)
    # a bar with its estimate on a terminal (the first evaluation on a data set waits for this)
    bar = tqdm(range(steps), desc="evaluation classifier", unit="step", leave=False, disable=None)
    for _ in bar:
        idx = torch.randint(len(images), (min(batch_size, len(images)),), generator=gen)
        x = affine_jitter(normalize(images[idx.to(device)]), translate=0.1, rotate=10, scale=0.1)
        loss = F.cross_entropy(model.train()(x), labels[idx.to(device)], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval(), accuracy(model, test, device)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(data: ImageData, steps: int) -> str:
    """The cached classifier's name: the data set, and its training steps where they are not
    the default (`evaluator.classifier_steps` never reuses a classifier trained otherwise)."""
    key = f"{data.name}-{data.channels}x{data.image_size}px"
    return key if steps == default_steps(data) else f"{key}-{steps}steps"


def save_classifier(model: Classifier, record: dict, folder: Path, key: str) -> dict:
    """Cache the classifier as safetensors with its record (and the weights' sha256); a cache
    that cannot be written is left out with a warning."""
    tensors = {k: v.contiguous().cpu() for k, v in model.state_dict().items()}
    data = save(tensors)
    record = {**record, "shape": list(model.shape), "sha256": hashlib.sha256(data).hexdigest()}
    try:
        write_file(folder / f"{key}.safetensors", data)
        write_file(folder / f"{key}.json", json.dumps(record, indent=2).encode())
    except GenlabError as e:
        log.warning("the classifier is not cached: %s", e)
    return record


def load_classifier(
    folder: Path, key: str, device: torch.device, steps: int
) -> tuple[Classifier, dict] | None:
    """The stored classifier trained for `steps` and its record, or None when absent (a cache
    from before the key named the steps may hold one trained for other steps); a file whose hash
    differs from its record is refused."""
    weights, meta = folder / f"{key}.safetensors", folder / f"{key}.json"
    if not (weights.is_file() and meta.is_file()):
        return None
    try:
        record = json.loads(meta.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        log.warning("retraining the classifier: its record %s is unreadable (%s)", meta, e)
        return None
    if isinstance(record, dict) and record.get("steps") != steps:
        return None
    if not isinstance(record, dict) or sha256(weights) != record.get("sha256"):
        raise GenlabError(
            f"classifier {weights} does not match the sha256 in {meta}: delete both to retrain"
        )
    model = Classifier(*record["shape"])
    model.load_state_dict(load_file(str(weights)))
    return model.to(device).eval(), record


def _stored(folder: Path, key: str, steps: int) -> bool:
    """Whether `folder` holds the classifier `key` trained for `steps` (a cache from before the
    key named the steps may hold one trained for other steps)."""
    try:
        record = json.loads((folder / f"{key}.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("steps") == steps


def announce_training(train: ImageData, cache_dir: str | Path, steps: int | None = None) -> bool:
    """Say (at a run's start) that its first evaluation trains the classifier of `train`, where
    none ships or is cached; return whether it does."""
    steps = steps or default_steps(train)
    folder, key = Path(cache_dir).expanduser() / "classifiers", cache_key(train, steps)
    if any(_stored(f, key, steps) for f in (SHIPPED, folder)):
        return False
    log.info(
        "The first evaluation trains the evaluation classifier %s (%d steps) once, cached in %s "
        "for later runs (a bar on a terminal)",
        key,
        steps,
        folder,
    )
    return True


def classifier_for(
    train: ImageData,
    test: ImageData,
    cache_dir: str | Path,
    device: torch.device,
    steps: int | None = None,
) -> tuple[Classifier, dict]:
    """The classifier of this data set and steps that ships with genlab or is cached, trained
    first if there is none."""
    steps = steps or default_steps(train)
    folder, key = Path(cache_dir).expanduser() / "classifiers", cache_key(train, steps)
    for stored in (SHIPPED, folder):
        if found := load_classifier(stored, key, device, steps):
            return found
    log.info(
        "Evaluation: training a classifier on %s once (%d steps; cached in %s) for the metrics' "
        "features (trainer.eval_every=null trains without evaluating)",
        key,
        steps,
        folder,
    )
    began = time.perf_counter()
    model, acc = train_classifier(train, test, device, steps=steps)
    log.info(
        "%s classifier: %.2f%% accuracy on the %s split (trained in %.0f s)",
        key,
        100 * acc,
        test.split,
        time.perf_counter() - began,
    )
    record = {"dataset": train.name, "test_split": test.split, "accuracy": acc, "steps": steps}
    return model, save_classifier(model, record, folder, key)


@torch.no_grad()
def class_metrics(
    classifier: Classifier,
    fake: Tensor,
    labels: Tensor | None,
    device: torch.device,
    batch_size: int = 500,
) -> dict[str, float]:
    """How many classes the samples cover, KL(classes || uniform), and the shares of the
    rarest and the commonest class (uniform: 1 / classes each); for a conditional model also
    the classifier's accuracy on the requested classes (overall and per class)."""
    predicted = torch.cat(
        [classifier(normalize(b.to(device))).argmax(1).cpu() for b in fake.split(batch_size)]
    )
    k = classifier.shape[2]
    share = torch.bincount(predicted, minlength=k).double() / len(predicted)
    covered = int((share >= COVERED / k).sum())
    nonzero = share[share > 0]
    kl = float((nonzero * (nonzero * k).log()).sum())
    if covered < k:
        log.warning(
            "generated images cover %d of %d classes (%s): the generator may have collapsed",
            covered,
            k,
            ", ".join(f"{c}: {100 * s:.0f}%" for c, s in enumerate(share.tolist())),
        )
    metrics = {
        "classes_covered": covered,
        "class_kl": kl,
        "class_share_min": float(share.min()),
        "class_share_max": float(share.max()),
    }
    if labels is not None:
        hits = (predicted == labels).double()
        metrics["class_accuracy"] = float(hits.mean())
        metrics.update({f"class_accuracy/{c}": float(hits[labels == c].mean()) for c in range(k)})
    return metrics
