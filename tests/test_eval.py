"""`genlab eval` and `genlab sample` on tiny trained runs; the data-set classifier."""

import io
import json
import logging
import shutil
import sys
import time

import pytest
import torch
from PIL import Image
from torch import nn

from genlab.commands.train import train
from genlab.data import digits, mnist5k
from genlab.errors import ConfigError, DataUnavailableError, GenlabError
from genlab.evaluation import Evaluator
from genlab.metrics.classifier import class_metrics, train_classifier
from genlab.metrics.inception import inception_weights
from tests.conftest import cli, make_cfg
from tests.test_train import scalars

CPU = torch.device("cpu")
SMALL = [
    "evaluator.num_generated=200",
    "evaluator.kid_subsets=10",
    "evaluator.kid_subset_size=100",
    "evaluator.nll_samples=4",
    "evaluator.classifier_steps=200",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny trained runs on digits: a cGAN and a VAE."""
    root = tmp_path_factory.mktemp("runs")
    for model in ("cgan", "vae"):
        cfg = make_cfg(f"model={model}", "dataset=digits", "trainer=smoke", "trainer.max_steps=20")
        train(cfg, run_dir=root / model)
    return root


def test_classifier_reaches_its_bar_on_digits():
    model, acc = train_classifier(digits(), digits(split="test"), CPU, steps=200)
    assert acc >= 0.97
    assert model.features(torch.zeros(2, 1, 32, 32)).shape == (2, 128)


@pytest.mark.slow
def test_classifier_reaches_its_bar_on_mnist5k():
    _, acc = train_classifier(mnist5k(), mnist5k(split="test"), CPU)
    assert acc >= 0.97


def test_eval_writes_metrics_with_their_protocol(runs):
    result = cli("eval", f"run={runs / 'cgan'}", *SMALL)
    assert result.returncode == 0, result.stderr
    assert "class_accuracy" in result.stdout and "features_sha256" in result.stdout
    (out,) = (runs / "cgan" / "eval").glob("classifier-32px_n*_step*.json")
    record = json.loads(out.read_text())
    metrics, protocol = record["metrics"], record["protocol"]
    assert record["step"] == 20
    assert metrics["fd"] > 0 and 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall"] <= 1
    assert metrics["density"] >= 0 and 0 <= metrics["coverage"] <= 1 and protocol["dc_k"] == 5
    assert (
        metrics["intra_fd"] > 0
        and 0 <= metrics["cas"] <= 1
        and "real test split" in protocol["cas"]
    )
    assert {f"class_accuracy/{c}" for c in range(10)} <= metrics.keys()
    assert protocol["num_generated"] == 200 and protocol["num_real"] == 179
    assert protocol["real_split"] == "test" and protocol["covariance_dtype"] == "float64"
    assert protocol["classifier_accuracy"] >= 0.97 and len(protocol["features_sha256"]) == 64
    _, logged = scalars(runs / "cgan")
    assert "eval/fd" in logged


def test_vae_eval_reports_likelihoods(runs):
    evaluator = Evaluator(
        num_generated=100, kid_subset_size=50, nll_samples=8, classifier_steps=200
    )
    from genlab.loading import load_run

    model, cfg, _ = load_run(str(runs / "vae"), CPU)
    report = evaluator(model, cfg.dataset, CPU)
    m = report.metrics
    assert m["nll_is"] <= m["neg_elbo"] * 1.01  # importance sampling tightens the bound
    assert m["neg_elbo_bits_per_dim"] == pytest.approx(
        m["neg_elbo"] / (32 * 32 * 0.6931471805599453)
    )
    assert 0 < m["ssim"] <= 1 and m["psnr"] > 0 and m["recon_mse"] > 0
    assert report.protocol["binarised"] is False and report.protocol["nll_samples"] == 8
    cheap = Evaluator(num_generated=100, kid_subset_size=50, nll_samples=0, classifier_steps=200)
    bound = cheap(model, cfg.dataset, CPU).metrics  # 0: the ELBO alone, as during training
    assert "nll_is" not in bound and bound["neg_elbo"] == pytest.approx(m["neg_elbo"], rel=0.02)
    with pytest.raises(ValueError, match="nll_samples must be >= 0, got -1"):
        Evaluator(nll_samples=-1)


def test_conditional_metrics_separate_a_model_that_follows_its_labels_from_one_that_ignores_them():
    """Intra-class FD and the classification accuracy score on a trivially separable case: the
    generated images are real training digits, given their own labels or shuffled ones."""
    from genlab.data import digits

    train, test = digits(), digits(split="test")

    def pooled(images):  # any feature space will do: 8x8 average-pooled pixels
        return torch.nn.functional.avg_pool2d(images.float(), 4).flatten(1)

    fake = train.images[:1000]
    right, shuffled = train.labels[:1000], train.labels[:1000][torch.randperm(1000)]
    evaluator = Evaluator(classifier_steps=300)
    follows, ignores = (
        evaluator.conditional_metrics(pooled(test.images), test, pooled(fake), fake, y, CPU)
        for y in (right, shuffled)
    )
    assert follows["cas"] > 0.9 and ignores["cas"] < 0.3
    assert {f"intra_fd/{c}" for c in range(10)} <= follows.keys()
    assert follows["intra_fd"] < 0.5 * ignores["intra_fd"]
    by_hand = sum(follows[f"intra_fd/{c}"] for c in range(10)) / 10
    assert follows["intra_fd"] == pytest.approx(by_hand)


class Collapsed(nn.Module):
    """A stand-in classifier that calls every image a 3."""

    shape = (1, 32, 10, 16, 128)

    def forward(self, x):
        return torch.nn.functional.one_hot(torch.full((len(x),), 3), 10).float()


def test_class_coverage_reports_a_collapse(caplog):
    fake = torch.zeros(50, 1, 32, 32, dtype=torch.uint8)
    with caplog.at_level(logging.WARNING):
        out = class_metrics(Collapsed(), fake, None, CPU)
    assert out["classes_covered"] == 1
    assert out["class_kl"] == pytest.approx(torch.log(torch.tensor(10.0)).item())
    assert "cover 1 of 10 classes" in caplog.text
    assert (out["class_share_min"], out["class_share_max"]) == (0.0, 1.0)


class Blank:
    """A stand-in model that draws grey images, slower than the bar's refresh interval (0.1 s),
    and records its batch sizes."""

    num_classes = 0

    def __init__(self):
        self.counts = []

    def generate(self, n, gen, labels=None):
        self.counts.append(n)
        time.sleep(0.15)
        return torch.zeros(n, 1, 8, 8)


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("tty", [True, False])
def test_generation_shows_progress_on_a_terminal_only(tty, monkeypatch):
    stream = Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    model = Blank()
    images, labels = Evaluator(batch_size=40).generate(model, 100, CPU)
    assert model.counts == [40, 40, 20] and labels is None
    assert images.shape == (100, 1, 8, 8) and images.dtype == torch.uint8
    assert (images == 128).all()  # 0 in [-1, 1] is grey
    bar = stream.getvalue()
    if tty:  # updated after each batch, then erased (leave=False)
        assert "generating" in bar and "40/100" in bar and "80/100" in bar
        assert bar.rstrip("\r").endswith(" ")
    else:
        assert bar == ""


class ByFirstPixel(nn.Module):
    """A stand-in classifier that reads the class from the first pixel (pixel values arrive
    normalized, so it ranks them)."""

    shape = (1, 32, 10, 16, 128)

    def forward(self, x):
        first = x[:, 0, 0, 0].contiguous()
        return torch.nn.functional.one_hot(torch.bucketize(first, first.unique()), 10).float()


def test_class_shares_are_the_rarest_and_commonest_fractions():
    # 40 images: classes 0..9 with 2, 4, 4, 4, 4, 4, 4, 4, 4, 6 images
    labels = torch.tensor([0] * 2 + [c for c in range(1, 9) for _ in range(4)] + [9] * 6)
    fake = torch.zeros(40, 1, 32, 32, dtype=torch.uint8)
    fake[:, 0, 0, 0] = labels.to(torch.uint8) * 20
    out = class_metrics(ByFirstPixel(), fake, None, CPU)
    assert out["classes_covered"] == 10
    assert out["class_share_min"] == pytest.approx(2 / 40)
    assert out["class_share_max"] == pytest.approx(6 / 40)


def test_a_conditional_models_class_shares_are_of_what_it_drew_beside_its_accuracy():
    # requested: four of each class; drawn: every requested 9 came out an 8
    labels = torch.arange(10).repeat_interleave(4)
    drawn = labels.clamp(max=8)
    fake = torch.zeros(40, 1, 32, 32, dtype=torch.uint8)
    fake[:, 0, 0, 0] = drawn.to(torch.uint8) * 20
    out = class_metrics(ByFirstPixel(), fake, labels, CPU)
    assert out["class_accuracy"] == pytest.approx(36 / 40)
    assert (out["class_accuracy/9"], out["class_accuracy/8"]) == (0.0, 1.0)
    assert out["classes_covered"] == 9
    assert (out["class_share_min"], out["class_share_max"]) == (0.0, pytest.approx(8 / 40))


def test_inception_weights_are_checked(tmp_path):
    fake = tmp_path / "weights.pth"
    fake.write_bytes(b"not the weights")
    with pytest.raises(GenlabError, match="is not torch-fidelity's FID Inception weights"):
        inception_weights(fake, tmp_path)
    with pytest.raises(DataUnavailableError, match="does not exist"):
        inception_weights(tmp_path / "missing.pth", tmp_path)


def test_sample_is_reproducible_and_sized(runs, tmp_path):
    outs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.png"
        result = cli("sample", f"run={runs / 'cgan'}", "sampler.num_images=20", f"out={out}")
        assert result.returncode == 0, result.stderr
        outs.append(out)
    assert outs[0].read_bytes() == outs[1].read_bytes()
    with Image.open(outs[0]) as im:  # cgan: 10 rows (classes) of 2, 32 px + 2 px padding
        assert im.size == (2 + 2 * 34, 2 + 10 * 34)


def test_sample_modes_and_ensembles(runs, tmp_path):
    from genlab.commands.sample import sample

    vae = runs / "vae"

    def size(*overrides):
        cfg = make_cfg(f"run={vae}", "device=cpu", *overrides, config_name="sample")
        with Image.open(sample(cfg)) as im:
            return im.size

    reconstruct = size(
        "sampler.mode=reconstruct", "sampler.num_images=16", f"out={tmp_path / 'r.png'}"
    )
    assert reconstruct == (2 + 4 * 34, 2 + 8 * 34)  # 4 pairs of rows of 4
    interpolate = size(
        "sampler.mode=interpolate", "sampler.num_images=16", f"out={tmp_path / 'i.png'}"
    )
    assert interpolate == (2 + 8 * 34, 2 + 2 * 34)  # 2 rows of 8 steps
    ensemble = size(f"runs=[{vae},{vae}]", "sampler.num_images=4", f"out={tmp_path / 'e.png'}")
    assert ensemble == (3 * (2 + 2 * 34) + 2 * 6, 2 + 2 * 34)  # three 2x2 grids, 6 px bars


def test_sample_refuses_what_does_not_fit(runs):
    result = cli("sample", f"run={runs / 'cgan'}", "sampler.mode=reconstruct")
    assert result.returncode == 1
    assert "sampler.mode=reconstruct needs a model that encodes images; GAN does not" in (
        result.stderr
    )
    result = cli("eval", "run=/nonexistent/run")
    assert result.returncode == 1 and "no checkpoint at /nonexistent/run" in result.stderr


def test_eval_and_sample_need_a_run():
    from genlab.commands.eval import evaluate
    from genlab.commands.sample import sample

    with pytest.raises(ConfigError, match="run is required: genlab eval run="):
        evaluate(make_cfg(config_name="eval"))
    with pytest.raises(ConfigError, match="run is required: genlab sample run="):
        sample(make_cfg(config_name="sample"))


def test_sample_writes_only_where_it_may(runs, tmp_path):
    """`out` names a PNG file; one that genlab did not write is replaced only on request."""
    from genlab.commands.sample import sample

    def make(*overrides):
        cfg = make_cfg(f"run={runs / 'vae'}", "device=cpu", "sampler.num_images=4", *overrides,
                       config_name="sample")  # fmt: skip
        return sample(cfg)

    (tmp_path / "grid").mkdir()
    for out in (tmp_path / "grid", tmp_path / "grid.jpg", tmp_path / "noext"):
        with pytest.raises(ConfigError, match=f"out={out}: give the name of a .png file"):
            make(f"out={out}", "files=true")
    foreign = tmp_path / "notes.png"
    foreign.write_text("my notes")
    with pytest.raises(ConfigError, match=f"{foreign} exists and is not a PNG that genlab wrote"):
        make(f"out={foreign}")
    assert foreign.read_text() == "my notes"
    ours = make(f"out={tmp_path / 'ours.png'}", "files=true")
    assert sorted(p.name for p in (tmp_path / "ours").iterdir())[-1] == "00003.png"
    assert make(f"out={ours}", "files=true") == ours  # genlab's own files are replaced
    (tmp_path / "ours" / "00002.png").write_text("mine")
    with pytest.raises(ConfigError, match="00002.png exists and is not a PNG that genlab"):
        make(f"out={ours}", "files=true")
    make(f"out={foreign}", "overwrite=true")
    with Image.open(foreign) as im:
        assert im.size == (2 + 2 * 34, 2 + 2 * 34)


def test_sampling_is_batched_so_any_number_fits(runs):
    from genlab.commands.sample import sample
    from genlab.loading import load_run
    from genlab.sampling import Sampler

    model, _, _ = load_run(runs / "vae", CPU)
    sizes = []
    generate = model.generate
    model.generate = lambda n, *args: sizes.append(n) or generate(n, *args)
    batches, nrow = Sampler(num_images=25, batch_size=10)(model, CPU, None)
    assert torch.cat(list(batches)).shape == (25, 1, 32, 32) and nrow == 5
    assert sizes == [10, 10, 5]
    interpolate = Sampler(mode="interpolate", num_images=40, steps=4, batch_size=8)
    rows, _ = interpolate(model, CPU, None)
    assert [len(b) for b in rows] == [8] * 5
    cfg = make_cfg(f"run={runs / 'vae'}", "sampler.num_images=5000", config_name="sample")
    with pytest.raises(ConfigError, match="a grid holds at most 4096 images; set files=true"):
        sample(cfg)


def test_truncation_draws_latents_inside_the_threshold_and_narrows_the_samples(runs):
    from genlab.loading import load_run
    from genlab.sampling import Sampler

    model, _, _ = load_run(runs / "cgan", CPU)
    seen = []
    decode = model.decode_latents
    model.decode_latents = lambda z, *args: seen.append(z) or decode(z, *args)

    def spread(truncation):
        sampler = Sampler(num_images=100, truncation=truncation, seed=1)
        sampler.check(model)
        images = torch.cat(list(sampler(model, CPU, None)[0]))
        return torch.pdist(images.flatten(1)).mean()

    narrow, wide = spread(0.1), spread(None)
    assert seen[0].abs().max() <= 0.1 and seen[0].shape == (100, model.latent_dim)
    assert narrow < 0.9 * wide  # nearly one latent per class: nearly one image per class
    assert torch.equal(
        torch.cat(list(Sampler(num_images=20, truncation=0.1, seed=1)(model, CPU, None)[0])),
        torch.cat(list(Sampler(num_images=20, truncation=0.1, seed=1)(model, CPU, None)[0])),
    )
    with pytest.raises(ValueError, match="truncation must be > 0"):
        Sampler(truncation=0)
    with pytest.raises(ValueError, match="truncation is for sampler.mode=samples"):
        Sampler(mode="interpolate", truncation=0.5).check(model)


def test_a_family_brings_its_own_sampling_mode(runs):
    """`sampler.mode` may name a mode of the family's own (`Family.sample_modes`), which draws
    from the sampler's generator and the held-out images; another mode is refused with the
    model's modes."""
    from genlab.data.loader import normalize
    from genlab.loading import load_run
    from genlab.models import VAE
    from genlab.sampling import Sampler

    class Denoising(VAE):  # a VAE that also shows what it makes of noised test images
        sample_modes = frozenset({"denoise"})

        def sample_mode(self, mode, sampler, generator, real):
            x = normalize(real().images[: sampler.num_images])
            noisy = (x + 0.5 * torch.randn(x.shape, generator=generator)).clamp(-1, 1)
            return iter([torch.cat([noisy, self.reconstruct(noisy)])]), len(x)

    model, _, _ = load_run(runs / "vae", CPU)
    model.__class__ = Denoising
    sampler = Sampler(mode="denoise", num_images=4, seed=3)
    sampler.check(model)

    def make():
        batches, nrow = sampler(model, CPU, lambda: digits(split="test"))
        return torch.cat(list(batches)), nrow

    (images, nrow), (again, _) = make(), make()
    assert images.shape == (8, 1, 32, 32) and nrow == 4 and torch.equal(images, again)
    with pytest.raises(ValueError, match="sampler.mode=complete is not a mode of Denoising, "):
        Sampler(mode="complete").check(model)
    with pytest.raises(ValueError, match="which has samples, interpolate, reconstruct; its own"):
        Sampler(mode="complete").check(model)


def test_the_classifier_trains_in_proportion_to_the_data(tmp_path, caplog):
    """1,000 steps for digits and mnist5k as before, 3 epochs of MNIST, 40 epochs of a small
    folder instead of 1,000 steps; and one line says what the evaluation is doing."""
    from genlab.data import ImageData
    from genlab.metrics.classifier import classifier_for, default_steps

    def sized(n):
        return ImageData("x", torch.zeros(n, 1, 8, 8, dtype=torch.uint8))

    assert [default_steps(sized(n)) for n in (72, 1618, 4500, 60000)] == [45, 1000, 1000, 2812]
    caplog.set_level(logging.INFO)
    data = digits(image_size=8, split="test")
    classifier_for(data, data, tmp_path, CPU, steps=2)
    assert "training a classifier on digits-1x8px-2steps once (2 steps; cached in" in caplog.text
    default = default_steps(data)
    classifier_for(data, data, tmp_path, CPU, steps=default)  # the default: the data set's name
    assert (tmp_path / "classifiers" / "digits-1x8px.safetensors").is_file()
    assert (tmp_path / "classifiers" / "digits-1x8px-2steps.safetensors").is_file()
    folder = tmp_path / "classifiers"
    for suffix in (".safetensors", ".json"):  # a cache from before: 2 steps, the default's name
        shutil.copy(folder / f"digits-1x8px-2steps{suffix}", folder / f"digits-1x8px{suffix}")
    caplog.clear()
    _, record = classifier_for(data, data, tmp_path, CPU)
    assert record["steps"] == default and "classifier on digits-1x8px once" in caplog.text
    assert "trainer.eval_every=null trains without evaluating" in caplog.text


def test_the_built_in_data_sets_use_the_classifiers_that_ship(tmp_path, monkeypatch):
    """mnist5k at 28 and 64 px and digits at 32 px load the weights in genlab/metrics/classifiers
    with an empty cache, announce and train nothing, and score their held-out split as their
    record says; their files match the sha256 recorded. Another size still trains its own."""
    from genlab.metrics import classifier as C

    monkeypatch.setattr(C, "train_classifier", lambda *a, **k: pytest.fail("trained"))
    shipped = sorted(p.stem for p in C.SHIPPED.glob("*.safetensors"))
    assert shipped == ["digits-1x32px", "mnist5k-1x28px", "mnist5k-1x64px"]
    for dataset, size in ((mnist5k, 28), (mnist5k, 64), (digits, 32)):
        train, test = dataset(image_size=size), dataset(image_size=size, split="test")
        assert not C.announce_training(train, tmp_path)
        model, record = C.classifier_for(train, test, tmp_path, CPU)
        key = C.cache_key(train, record["steps"])
        assert record["sha256"] == C.sha256(C.SHIPPED / f"{key}.safetensors")
        assert C.accuracy(model, test, CPU) == pytest.approx(record["accuracy"], abs=1 / len(test))
    assert not (tmp_path / "classifiers").exists()  # nothing trained, nothing cached
    assert C.announce_training(digits(image_size=16), tmp_path)


def test_inception_features_load_safely_and_give_2048_dims(tmp_path, monkeypatch):
    """With stand-in random weights (the real ones need internet): loaded with weights_only,
    accepted only with the expected hash prefix, 2048 features for grey 28 px images."""
    pytest.importorskip("torch_fidelity")
    import torch_fidelity.feature_extractor_inceptionv3 as fidelity

    from genlab.metrics import inception
    from genlab.metrics.classifier import sha256

    with monkeypatch.context() as m:  # build an untrained network to get its state dict
        m.setattr(fidelity, "load_state_dict_from_url", lambda *a, **k: None)
        m.setattr(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda *a, **k: None)
        state = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    weights = tmp_path / "weights.pth"
    torch.save(state, weights)
    monkeypatch.setattr(inception, "SHA256_PREFIX", sha256(weights)[:8])
    path, digest = inception.inception_weights(weights, tmp_path)
    features = inception.InceptionFeatures(path)
    out = features(torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8))
    assert out.shape == (2, 2048) and torch.isfinite(out).all()


def test_a_vae_run_from_before_configured_networks_evaluates_and_resumes(runs, tmp_path):
    """Runs written when the VAE kept `features` and `hidden` on the model node load into
    today's `model=vae` (same weights) and resume without a config-change refusal."""
    from omegaconf import OmegaConf

    from genlab.checkpoint import load_checkpoint, save_checkpoint
    from genlab.loading import load_run

    state = load_checkpoint(runs / "vae" / "checkpoints" / "last.pt")
    cfg = OmegaConf.create(state["config"])
    encoder = cfg.model.pop("encoder")
    cfg.model.pop("decoder")
    cfg.model.features, cfg.model.hidden = encoder.features, encoder.hidden
    state["config"] = OmegaConf.to_yaml(cfg)
    old = tmp_path / "old"
    save_checkpoint(state, old / "checkpoints" / "last.pt")

    model, run_cfg, _ = load_run(str(old), CPU)
    assert run_cfg.model.decoder._target_ == "genlab.models.vae.ConvDecoder"
    assert all(torch.equal(v, state["model"][k]) for k, v in model.state_dict().items())
    more = make_cfg("model=vae", "dataset=digits", "trainer=smoke", "trainer.max_steps=21")
    more.trainer.resume = "auto"
    assert train(more, run_dir=old)["step"] == 21
