"""The `evaluator` config group: metrics of a trained model, with their protocol beside them.

Every model family gets the Fréchet distance, KID, precision/recall and density/coverage between
generated and real images in a feature space: the data set's own classifier (offline) or FID's
Inception-v3. With labelled data, the classifier also scores class-conditional samples (accuracy
per class, intra-class Fréchet distance and the classification accuracy score) or the class
coverage of unconditional ones. Families with the `likelihood` ability
(the VAE, diffusion) add their likelihood metrics on the held-out split, with their protocol.
A model that generates from an image (a degradation of the `condition` group) is given the
held-out images' conditions, and adds PSNR and SSIM of each output against its target.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from tqdm.auto import tqdm

from genlab.checkpoint import save_checkpoint
from genlab.config import build
from genlab.data import ImageData
from genlab.data.datasets import Split
from genlab.data.degrade import Degradation
from genlab.data.loader import normalize
from genlab.errors import ConfigError, GenlabError, require_at_least
from genlab.metrics.classifier import (
    Classifier,
    announce_training,
    class_metrics,
    classifier_for,
    train_classifier,
)
from genlab.metrics.distances import (
    density_coverage,
    feature_stats,
    frechet_distance,
    intra_class_fd,
    kernel_distance,
    precision_recall,
)
from genlab.metrics.paired import paired_metrics, paired_protocol
from genlab.progress import phase, unit

log = logging.getLogger(__name__)


@dataclass
class Features:
    """A feature extractor for uint8 images, and what identifies it."""

    name: str
    sha256: str
    resize: str
    extract: Any  # uint8 (N, C, H, W) -> (N, D)
    classifier: Classifier | None = None
    record: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.name}-{self.sha256[:12]}"


@dataclass
class Report:
    metrics: dict[str, float]
    protocol: dict[str, Any]


def to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] floats -> uint8 as a saved PNG would hold them."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class Evaluator:
    """Metric settings. `extractor`: `classifier` (trained on the data set once and cached),
    `inception` (FID's weights, from `inception_weights` or downloaded into `cache_dir`), or
    `none` (only the paired metrics of a model that generates from an image).
    `num_generated` generated images are compared with every image of the real `split`. The
    cheap evaluation during training uses `num_generated_cheap` and skips KID, precision/recall,
    density/coverage and the importance-sampled NLL."""

    def __init__(
        self,
        extractor: Literal["classifier", "inception", "none"] = "classifier",
        num_generated: int = 5000,
        num_generated_cheap: int = 1000,
        split: Split = "test",
        batch_size: int = 500,
        seed: int = 0,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        pr_k: int = 3,
        dc_k: int = 5,
        nll_samples: int = 100,
        classifier_steps: int | None = None,
        inception_weights: str | None = None,
        cache_dir: str = "~/.cache/genlab",
    ) -> None:
        if not 0 <= seed < 2**32:
            raise ValueError(f"seed must be in 0..{2**32 - 1}, got {seed}")
        if extractor not in ("classifier", "inception", "none"):
            raise ValueError(
                f"extractor must be 'classifier', 'inception' or 'none', got {extractor!r}"
            )
        require_at_least(0, nll_samples=nll_samples)
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        require_at_least(
            2,
            num_generated=num_generated,
            num_generated_cheap=num_generated_cheap,
            kid_subset_size=kid_subset_size,
        )
        require_at_least(
            1,
            batch_size=batch_size,
            kid_subsets=kid_subsets,
            pr_k=pr_k,
            dc_k=dc_k,
            classifier_steps=classifier_steps or None,  # null or 0: the default
        )
        self.extractor, self.split, self.seed = extractor, split, seed
        self.num_generated, self.num_generated_cheap = num_generated, num_generated_cheap
        self.batch_size = batch_size
        self.kid_subsets, self.kid_subset_size, self.pr_k = kid_subsets, kid_subset_size, pr_k
        self.dc_k = dc_k
        self.nll_samples, self.classifier_steps = nll_samples, classifier_steps
        self.inception_weights, self.cache_dir = inception_weights, Path(cache_dir).expanduser()
        self._features: Features | None = None
        self._real: dict[str, Tensor] = {}
        self._data: dict[str, tuple[ImageData, ImageData]] = {}

    # --- inputs -------------------------------------------------------------------------------

    def load_real(self, dataset: DictConfig) -> tuple[ImageData, ImageData]:
        """The training split (for the classifier) and the evaluation split of the run's data,
        loaded once per data set config (evaluation during training calls this repeatedly)."""
        key = OmegaConf.to_yaml(dataset, resolve=True)
        if key not in self._data:
            train = build(dataset, "dataset", split="train")
            real = train if self.split == "train" else build(dataset, "dataset", split=self.split)
            self._data[key] = (train, real)
        return self._data[key]

    def announce(self, dataset: DictConfig, condition: Degradation | None) -> None:
        """At a run's start: refuse an extractor that cannot measure it (`check`), and say that
        its first evaluation trains the data set's classifier (once; cached), rather than leave
        the run's end to wait without a word."""
        train, _ = self.load_real(dataset)
        self.check(train, condition)
        if train.labels is not None and self.extractor != "none":
            announce_training(train, self.cache_dir, self.classifier_steps)

    def check(self, train: ImageData, condition: Degradation | None) -> None:
        """Refuse `extractor=none` for a model that does not generate from an image (it would
        have no metric), and `extractor=classifier` for a data set without labels."""
        if self.extractor == "none" and condition is None:
            raise ConfigError(
                "evaluator.extractor=none measures only the paired metrics (PSNR, SSIM) of a "
                "model that generates from an image (condition=...): use classifier or inception"
            )
        if self.extractor == "classifier" and train.labels is None:
            paired = ", or none (PSNR and SSIM only)" if condition is not None else ""
            raise ConfigError(
                f"evaluator.extractor=classifier needs a labelled data set, and {train.name} has "
                f"no labels: use evaluator.extractor=inception (or one folder per class){paired}"
            )

    def feature_extractor(
        self, train: ImageData, real: ImageData, device: torch.device
    ) -> Features:
        if self._features is not None:
            return self._features
        classifier, record = None, {}
        if train.labels is not None:
            classifier, record = classifier_for(
                train, real, self.cache_dir, device, self.classifier_steps
            )
        if self.extractor == "inception":  # (`none` never gets here)
            from genlab.metrics.inception import RESIZE, InceptionFeatures, inception_weights

            path, digest = inception_weights(self.inception_weights, self.cache_dir)
            net = InceptionFeatures(path).to(device)
            self._features = Features("inception-v3-fid", digest, RESIZE, net, classifier, record)
        else:
            assert classifier is not None  # `check`: a labelled data set
            size = f"none (the data set's {train.image_size}x{train.image_size})"
            self._features = Features(
                f"classifier-{record['shape'][1]}px",
                record["sha256"],
                size,
                lambda x: classifier.features(normalize(x)),
                classifier,
                record,
            )
        return self._features

    @torch.no_grad()
    def _extract(self, features: Features, images: Tensor, device: torch.device) -> Tensor:
        return torch.cat(
            [features.extract(b.to(device)).double().cpu() for b in images.split(self.batch_size)]
        )

    def real_features(
        self, features: Features, real: ImageData, device: torch.device
    ) -> dict[str, Tensor]:
        """Features, mean and covariance of the real split, cached on disk under the extractor's
        name and hash, the data set and the split."""
        key = f"{features.key}-{real.name}-{real.channels}x{real.image_size}px-{real.split}"
        if key in self._real:
            return self._real[key]
        path = self.cache_dir / "reference" / f"{key}.pt"
        stats = None
        if path.is_file():
            try:
                stats = torch.load(path, weights_only=True)
            except Exception as e:
                log.warning("recomputing the reference statistics %s: unreadable (%s)", path, e)
            if not isinstance(stats, dict) or stats.get("num_real") != len(real):
                stats = None
        if stats is None:
            f = self._extract(features, real.images, device)
            mu, sigma = feature_stats(f)
            stats = {"features": f, "mu": mu, "sigma": sigma, "num_real": len(real)}
            try:
                save_checkpoint(stats, path)
            except GenlabError as e:
                log.warning("the reference statistics are not cached: %s", e)
        self._real[key] = stats
        return stats

    # --- evaluation ---------------------------------------------------------------------------

    def pairs(self, real: ImageData, n: int) -> Tensor:
        """The indices of the held-out images whose conditions an image-conditional model is
        given: `n` of them (at most all), drawn from the evaluator's seed."""
        gen = torch.Generator().manual_seed(self.seed)
        return torch.randperm(len(real), generator=gen)[: min(n, len(real))]

    @torch.no_grad()
    def generate(
        self,
        model: Any,
        n: int,
        device: torch.device,
        targets: Tensor | None = None,
        degrade: Degradation | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """`n` generated images as uint8 (class-balanced labels for a class-conditional model),
        or, given uint8 `targets` and their degradation, an output for each target's condition
        (its conditions drawn from a stream of their own)."""
        gen = torch.Generator(device=device).manual_seed(self.seed)
        degrading = torch.Generator(device=device).manual_seed(self.seed + 1)
        classes = model.num_classes
        labels = torch.arange(n, device=device) % classes if classes else None
        n = n if targets is None else len(targets)
        chunks = []
        # minutes for a diffusion model's solver: a bar on a terminal, as diffusers' pipelines show
        bar = tqdm(total=n, desc="generating", unit="image", leave=False, disable=None)
        with bar:
            for start in range(0, n, self.batch_size):
                part = None if labels is None else labels[start : start + self.batch_size]
                count = min(self.batch_size, n - start)
                if targets is not None and degrade is not None:
                    target = normalize(targets[start : start + count].to(device))
                    part = degrade(target, degrading)
                chunks.append(to_uint8(model.generate(count, gen, part)).cpu())
                bar.update(count)
        return torch.cat(chunks), None if labels is None else labels.cpu()

    @torch.no_grad()
    def baseline(self, targets: Tensor, degrade: Degradation, device: torch.device) -> Tensor:
        """The degradation's own guess at each uint8 target from the condition `generate` gave
        the model for it (the same stream, batch by batch): bicubic enlargement for a low
        resolution (`Degradation.baseline`), the floor of the paired metrics."""
        degrading = torch.Generator(device=device).manual_seed(self.seed + 1)
        guesses = []
        for target in targets.split(self.batch_size):
            x = normalize(target.to(device))
            guesses.append(to_uint8(degrade.baseline(degrade(x, degrading), x.shape[1])).cpu())
        return torch.cat(guesses)

    def __call__(
        self,
        model: Any,
        dataset: DictConfig,
        device: torch.device,
        cheap: bool = False,
        condition: Degradation | None = None,
    ) -> Report:
        """The metrics of `model` against the `dataset`'s held-out split; `condition`: the
        degradation that makes the conditions of a model that generates from an image."""
        train, real = self.load_real(dataset)
        self.check(train, condition)
        features = None if self.extractor == "none" else self.feature_extractor(train, real, device)
        n = self.num_generated_cheap if cheap else self.num_generated
        metrics: dict[str, float] = {}
        made = n if condition is None else min(n, len(real))
        with phase(f"Evaluation: generated {made} images"):
            if condition is not None:  # outputs for held-out images' conditions, their classes
                pick = self.pairs(real, n)
                targets = real.images[pick]
                fake, _ = self.generate(model, n, device, targets, condition)
                labels = None if real.labels is None else real.labels[pick]
                baseline = self.baseline(targets, condition, device)
                metrics = paired_metrics(fake, targets, condition.border, baseline)
            else:
                fake, labels = self.generate(model, n, device)
        protocol: dict[str, Any] = {}
        if features is not None:
            if condition is not None:
                metrics["baseline/fd"] = self._fd(features, real, baseline, device)
            theirs, protocol = self._feature_metrics(features, real, fake, labels, device, cheap)
            metrics = theirs | metrics
        k, how = 0 if cheap else self.nll_samples, {}
        if "likelihood" in model.abilities:  # k = 0: what the family measures cheaply, if any
            with phase(f"Evaluation: likelihood of {len(real)} held-out images"):
                bound, how = model.likelihood(normalize(real.images.to(device)), k, self.seed)
            metrics.update(bound)
        protocol = {
            "features": "none" if features is None else features.name,
            **protocol,
            "dataset": real.name,
            "real_split": real.split,
            "num_real": len(real),
            "num_generated": len(fake),
            "seed": self.seed,
            **model.sampling_protocol(),
        }
        if condition is not None:
            protocol.update(condition.protocol())
            protocol["paired"] = paired_protocol(real.channels, condition.border, len(fake))
            protocol["baseline"] = condition.baseline_name()
        protocol.update(how)  # how the likelihood was measured, where it was
        return Report(metrics, protocol)

    def _fd(self, features: Features, real: ImageData, images: Tensor, device) -> float:
        """The Fréchet distance of uint8 `images` to the real split."""
        ref = self.real_features(features, real, device)
        f = self._extract(features, images, device)
        return frechet_distance(*feature_stats(f), ref["mu"], ref["sigma"])

    def _feature_metrics(
        self,
        features: Features,
        real: ImageData,
        fake: Tensor,
        labels: Tensor | None,
        device: torch.device,
        cheap: bool,
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """The metrics in the extractor's feature space (and its classifier's), and their
        protocol."""
        ref = self.real_features(features, real, device)
        n = len(fake)
        with phase(f"Evaluation: features of {n} generated images"):
            f = self._extract(features, fake, device)
        metrics = {"fd": frechet_distance(*feature_stats(f), ref["mu"], ref["sigma"])}
        protocol: dict[str, Any] = {
            "features_sha256": features.sha256,
            "feature_dim": int(f.shape[1]),
            "resize": features.resize,
            "covariance_dtype": "float64",
        }
        if not cheap:
            kid, kid_std = kernel_distance(
                ref["features"], f, self.kid_subsets, self.kid_subset_size, self.seed
            )
            m = min(len(f), len(ref["features"]))  # equal sets: the k-NN radii are comparable
            pick = torch.randperm(
                len(ref["features"]), generator=torch.Generator().manual_seed(self.seed)
            )
            real_f, fake_f = ref["features"][pick[:m]], f[:m]
            precision, recall = precision_recall(real_f, fake_f, self.pr_k)
            density, coverage = density_coverage(real_f, fake_f, self.dc_k)
            metrics.update(
                kid=kid,
                kid_std=kid_std,
                precision=precision,
                recall=recall,
                density=density,
                coverage=coverage,
            )
            protocol.update(
                kid_subsets=self.kid_subsets,
                kid_subset_size=min(self.kid_subset_size, len(real), n),
                pr_k=self.pr_k,
                pr_samples=min(n, len(real)),
                dc_k=self.dc_k,
            )
        if features.classifier is not None:
            classes = class_metrics(features.classifier, fake, labels, device, self.batch_size)
            metrics.update(classes)
        if labels is not None and real.labels is not None and not cheap:
            metrics.update(self.conditional_metrics(ref["features"], real, f, fake, labels, device))
            protocol["cas"] = (
                "evaluator's classifier trained on the generated images and their labels "
                f"({self.classifier_steps or 'default'} steps), accuracy on the real "
                f"{real.split} split"
            )
        if features.record:
            protocol["classifier_accuracy"] = features.record["accuracy"]
            protocol["classifier_split"] = features.record.get("test_split", "test")
        return metrics, protocol

    def conditional_metrics(
        self,
        real_features: Tensor,
        real: ImageData,
        fake_features: Tensor,
        fake: Tensor,
        labels: Tensor,
        device: torch.device,
    ) -> dict[str, float]:
        """A conditional model's intra-class Fréchet distance (mean and per class) and its
        classification accuracy score (Ravuri & Vinyals 2019): a classifier of the evaluator's
        kind trained on the generated images and their requested labels, scored on the real
        split. A model that ignores its labels, or draws one image per class, scores low."""
        per_class = intra_class_fd(
            real_features, real.labels, fake_features, labels, int(real.num_classes or 0)
        )
        generated = ImageData("generated", fake, labels, real.num_classes, "generated")
        _, cas = train_classifier(generated, real, device, self.classifier_steps, seed=self.seed)
        return {
            "intra_fd": sum(per_class.values()) / max(len(per_class), 1),
            **{f"intra_fd/{c}": v for c, v in per_class.items()},
            "cas": cas,
        }


def format_table(report: Report) -> str:
    """Metrics (with their units), then protocol, as aligned `name  value` lines."""
    rows = [
        (k, (f"{v:.6g}" if isinstance(v, float) else str(v)) + (f" {unit(k)}" if unit(k) else ""))
        for k, v in report.metrics.items()
    ]
    rows += [("", "")] + [(k, str(v)) for k, v in report.protocol.items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" if k else "" for k, v in rows)
