"""The restoration family (SRCNN, ESPCN): the papers' networks at every scale and channel count,
a start at bicubic enlargement, a few steps that beat it, and a user's folder upscaled."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image

from genlab.commands.train import train
from genlab.data.degrade import Grey, Lowres, Mask, Noise
from genlab.errors import ConfigError
from genlab.evaluation import Evaluator
from genlab.images import enlarged
from genlab.models.restoration import ESPCN, SRCNN
from tests.conftest import cli, make_cfg

NETWORKS = (SRCNN, ESPCN)


@pytest.mark.parametrize("network", NETWORKS)
def test_every_scale_and_channel_count_gives_the_images_shape(network):
    for scale in (1, 2, 3, 4):
        for channels, condition_channels in ((1, 1), (3, 3), (3, 1), (1, 2), (3, 4)):
            net = network(channels, condition_channels, scale)
            out = net(None, torch.rand(2, condition_channels, 7, 5) * 2 - 1)
            assert out.shape == (2, channels, 7 * scale, 5 * scale)


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("scale", [2, 3])
def test_a_residual_network_starts_as_bicubic_enlargement(network, scale):
    condition = torch.rand(3, 1, 6, 6) * 2 - 1
    expected = F.interpolate(condition, scale_factor=scale, mode="bicubic", antialias=True)
    torch.testing.assert_close(network(1, 1, scale)(None, condition), expected)
    plain = network(1, 1, scale, residual=False)(None, condition)
    assert not torch.allclose(plain, expected)  # the papers' form starts from random weights


def test_the_networks_are_the_papers():
    """SRCNN's 9-1-5 base network has 8,032 weights for one channel (Dong et al. 2014, section
    4.1); ESPCN convolves at the condition's size and shuffles scale^2 maps per channel."""
    srcnn = SRCNN(1, 1, 3, residual=False)
    weights = sum(m.weight.numel() for m in srcnn.modules() if isinstance(m, torch.nn.Conv2d))
    assert weights == 9 * 9 * 64 + 64 * 32 + 5 * 5 * 32 == 8032
    espcn, seen = ESPCN(3, 3, 3), []
    for conv in (m for m in espcn.modules() if isinstance(m, torch.nn.Conv2d)):
        conv.register_forward_hook(lambda m, inputs, out: seen.append(tuple(out.shape[1:])))
    espcn(None, torch.zeros(1, 3, 10, 8))
    assert seen == [(64, 10, 8), (32, 10, 8), (27, 10, 8)]  # 3 channels x 3^2, then the shuffle


def test_enlargement_is_pil_s_bicubic():
    """Keys' kernel with a = -0.5, as PIL and MATLAB's imresize (the SR papers' baseline): within
    the rounding PIL does between its two passes."""
    small = torch.randint(0, 256, (1, 1, 9, 7), generator=torch.Generator().manual_seed(0))
    image = Image.fromarray(small[0, 0].numpy().astype("uint8"))
    pil = torch.tensor(np.array(image.resize((21, 27), Image.Resampling.BICUBIC)))
    ours = enlarged(small.float(), 3)[0, 0].clamp(0, 255).round()
    diff = (ours - pil.float()).abs()
    assert diff.mean() < 0.2 and diff.max() <= 1
    plain = F.interpolate(small.float(), scale_factor=3, mode="bicubic")[0, 0]  # a = -0.75
    assert (plain.clamp(0, 255).round() - pil.float()).abs().mean() > 2 * diff.mean()


def test_each_degradation_s_baseline_is_its_naive_guess():
    """The floor of the paired metrics: bicubic enlargement of a low resolution; a noisy image
    itself; a grey one repeated; a masked one without its known/hole channel."""
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    gen = torch.Generator().manual_seed(0)
    low = Lowres(2)(images, gen)
    torch.testing.assert_close(
        Lowres(2).baseline(low, 3), enlarged(low, 2).clamp(-1, 1), rtol=0, atol=0
    )
    noisy = Noise()(images, gen)
    assert torch.equal(Noise().baseline(noisy, 3), noisy)
    grey = Grey()(images, gen)
    assert torch.equal(Grey().baseline(grey, 3), grey.expand(-1, 3, -1, -1))
    masked = Mask()(images, gen)
    assert torch.equal(Mask().baseline(masked, 3), masked[:, :3])
    assert Lowres(4).baseline_name() == "bicubic enlargement of the condition"


@pytest.mark.parametrize("model", ["srcnn", "espcn"])
def test_a_few_steps_beat_bicubic_on_held_out_digits(model, tmp_path):
    """60 steps on scikit-learn's digits at x2: more than 2 dB above bicubic enlargement on the
    held-out split, the baseline measured on the same pairs."""
    cfg = make_cfg(
        f"model={model}",
        "dataset=digits",
        "trainer=smoke",
        "trainer.max_steps=60",
        "trainer.eval_every=0",
        "logger=none",
        "evaluator.num_generated_cheap=179",
    )
    values = train(cfg, run_dir=tmp_path)
    assert values["eval/psnr"] > values["eval/baseline/psnr"] + 2
    assert 0 < values["eval/baseline/ssim"] < 1 and values["eval/baseline/fd"] > 0
    assert 30 < values["eval/baseline/psnr"] < 40  # bicubic x2 on these smooth digits


class Bicubic:
    """A stand-in upscaler that answers every condition with its bicubic enlargement."""

    num_classes, abilities = None, set()

    def generate(self, n, gen, condition):
        return Lowres(2).baseline(condition, 3)

    def sampling_protocol(self):
        return {}


def test_colour_photos_are_measured_on_their_y_channel_without_a_classifier(tmp_path):
    """scikit-learn's photographs (colour, unlabelled) with evaluator.extractor=none: PSNR and
    SSIM on the Y channel of the 8 held-out images of 128 px, the baseline's equal to a model
    that is bicubic enlargement; ESPCN trains on them; with the default classifier extractor,
    or with `none` for a model that does not generate from an image, a run is refused before
    it trains."""
    dataset = OmegaConf.create({"_target_": "genlab.data.photos", "image_size": 32})
    evaluator = Evaluator(extractor="none")
    report = evaluator(Bicubic(), dataset, torch.device("cpu"), condition=Lowres(2))
    assert set(report.metrics) == {"psnr", "ssim", "baseline/psnr", "baseline/ssim"}
    assert report.metrics["psnr"] == report.metrics["baseline/psnr"]
    assert 25 < report.metrics["psnr"] < 31  # the pagoda's and the flower's detail
    assert report.protocol["features"] == "none" and report.protocol["num_generated"] == 8
    assert "Y channel" in report.protocol["paired"] and "2 px cropped" in report.protocol["paired"]
    common = ["trainer=smoke", "trainer.eval_every=0", "logger=none", "dataset=photos"]
    values = train(
        make_cfg("model=espcn", "trainer.max_steps=20", "evaluator.extractor=none", *common),
        run_dir=tmp_path / "ok",
    )
    assert abs(values["eval/psnr"] - report.metrics["psnr"]) < 1  # it starts as bicubic
    for overrides, refusal in [
        (["model=espcn"], "extractor=classifier needs a labelled data set.*or none"),
        (["model=dcgan", "evaluator.extractor=none"], "extractor=none measures only"),
    ]:
        with pytest.raises(ConfigError, match=refusal):
            train(make_cfg(*overrides, *common), run_dir=tmp_path / "refused")
        assert not (tmp_path / "refused" / "checkpoints").exists()


def test_sample_upscales_a_folder_of_odd_sizes_and_refuses_an_unreadable_file(tmp_path):
    run = tmp_path / "run"
    result = cli(
        "train",
        "model=espcn",
        "dataset=digits",
        "trainer=smoke",
        "trainer.eval_every=null",
        "logger=none",
        f"hydra.run.dir={run}",
    )
    assert result.returncode == 0, result.stderr
    small = ["evaluator.num_generated=100", "evaluator.kid_subset_size=50"]
    result = cli("eval", f"run={run}", *small)
    assert result.returncode == 0, result.stderr
    (saved,) = (run / "eval").glob("*.json")
    report = json.loads(saved.read_text())
    assert report["protocol"]["baseline"] == "bicubic enlargement of the condition"
    assert report["protocol"]["condition"] == "lowres x2 bicubic"
    assert {"psnr", "baseline/psnr", "baseline/fd"} <= report["metrics"].keys()
    assert "baseline/psnr" in result.stdout and " dB" in result.stdout
    folder = tmp_path / "mine"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, (w, h) in {"wide": (9, 7), "square": (10, 10), "large": (40, 30)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(folder / f"{name}.png")
    result = cli("sample", f"run={run}", f"input={folder}", f"out={tmp_path / 'big'}")
    assert result.returncode == 0, result.stderr
    sizes = {p.stem: Image.open(p).size for p in (tmp_path / "big").glob("*.png")}
    assert sizes == {"wide": (18, 14), "square": (20, 20), "large": (80, 60)}
    tiles = ["tile=8", "tile_overlap=6"]  # ESPCN sees 4 pixels around, its bicubic base 2
    result = cli("sample", f"run={run}", f"input={folder}", f"out={tmp_path / 'tiled'}", *tiles)
    assert result.returncode == 0, result.stderr
    for name in sizes:  # made in tiles of 8 pixels: the same images, to rounding
        whole, parts = (
            np.array(Image.open(tmp_path / d / f"{name}.png"), dtype=int) for d in ("big", "tiled")
        )
        assert np.abs(whole - parts).max() <= 1
    (folder / "broken.png").write_bytes(b"\x89PNG not an image")
    result = cli("sample", f"run={run}", f"input={folder}", f"out={tmp_path / 'again'}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"cannot read image {folder / 'broken.png'}" in result.stderr
    assert not (tmp_path / "again").exists()  # refused before any image was written


def test_sr3_generates_from_its_condition_beside_the_noise():
    """The diffusion family given an image condition (SR3): the U-Net's input is the noisy image
    and the enlarged condition; the same condition and seed give the same images, another
    condition others; class labels and a condition together, and the trajectory mode, are
    refused with what to do instead. Conditions of other sizes are made at their size."""
    from genlab.config import build_model
    from genlab.data import digits

    tiny = ["model.network.features=[8,16]", "model.network.attention=[false,true]"]
    tiny += ["model.network.groups=4", "solver.steps=3"]
    cfg = make_cfg("model=sr3", "dataset=digits", "condition.scale=4", *tiny)
    data = digits(image_size=16)
    model = build_model(cfg, data)
    assert model.network.unet.config.in_channels == 2 and model.condition.shape == (1, 4, 4)
    assert "likelihood" not in model.abilities
    low = torch.rand(3, 1, 4, 4) * 2 - 1
    once = model.generate(3, torch.Generator().manual_seed(0), low)
    again = model.generate(3, torch.Generator().manual_seed(0), low)
    other = model.generate(3, torch.Generator().manual_seed(0), -low)
    assert once.shape == (3, 1, 16, 16) and torch.equal(once, again)
    assert not torch.equal(once, other)
    large = model.generate(2, torch.Generator(), torch.rand(2, 1, 8, 12) * 2 - 1)
    odd = model.generate(1, torch.Generator(), torch.rand(1, 1, 5, 7) * 2 - 1)  # padded to 8 x 8
    assert large.shape == (2, 1, 32, 48) and odd.shape == (1, 1, 20, 28)
    with pytest.raises(ValueError, match="generates from images of shape 1x4x4"):
        model.generate(3, torch.Generator(), None)
    with pytest.raises(ConfigError, match="model.conditional=true generates from class labels"):
        build_model(make_cfg("model=sr3", "model.conditional=true", *tiny), data)
    with pytest.raises(ValueError, match="trajectory draws from noise alone"):
        model.sample_mode("trajectory", None, torch.Generator(), None)


def test_a_cascade_samples_and_is_evaluated_like_a_generator(tmp_path):
    """A 16 px DCGAN and an ESPCN trained x2 on 32 px digits: `sample run=GEN upscaler=SR` draws
    32 px images, `eval run=GEN upscaler=SR` measures them against the upscaler's data set in a
    file of their own; an upscaler whose conditions are another size is one message."""
    quick = ["dataset=digits", "trainer=smoke", "trainer.eval_every=null", "logger=none"]
    runs = {
        "gen": ["model=dcgan", "dataset.image_size=16"],
        "x2": ["model=espcn"],
        "x4": ["model=espcn", "condition.scale=4"],
    }
    for name, args in runs.items():
        result = cli("train", *args, *quick, f"hydra.run.dir={tmp_path / name}")
        assert result.returncode == 0, result.stderr
    gen, x2 = tmp_path / "gen", tmp_path / "x2"
    grid = tmp_path / "cascade.png"
    result = cli("sample", f"run={gen}", f"upscaler={x2}", "sampler.num_images=16", f"out={grid}")
    assert result.returncode == 0, result.stderr
    assert Image.open(grid).size == (4 * 34 + 2, 4 * 34 + 2)  # 16 images of 32 px, 4 x 4
    small = ["evaluator.num_generated=100", "evaluator.kid_subset_size=50"]
    result = cli("eval", f"run={gen}", f"upscaler={x2}", *small)
    assert result.returncode == 0, result.stderr
    (saved,) = (gen / "eval").glob("*.json")
    assert saved.name.startswith("classifier-32px_n100_x2") and saved.name.endswith(
        "_step0000005.json"
    )
    protocol = json.loads(saved.read_text())["protocol"]
    assert protocol["cascade"] == "x2" and protocol["upscaler"].startswith(str(x2))
    assert protocol["feature_dim"] == 128 and protocol["num_real"] == 179  # digits at 32 px
    result = cli(
        "sample", f"run={gen}", f"upscaler={tmp_path / 'x4'}", f"out={tmp_path / 'no.png'}"
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "upscaler= generates from images of shape 1x8x8, and the generator makes images of " in (
        result.stderr
    )
    assert not (tmp_path / "no.png").exists()


@pytest.mark.parametrize("network", NETWORKS)
def test_a_large_image_made_in_tiles_equals_it_made_whole(network):
    """Tiles that see 8 pixels of their neighbours (more than SRCNN's and ESPCN's view) give the
    whole image's output, at any size: memory of one tile for a user's large photographs."""
    from genlab.images import tiled

    net = network(3, 3, 2, residual=False).eval()
    condition = torch.rand(1, 3, 37, 45, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        whole = net(None, condition)
        pieces = tiled(lambda c: net(None, c), condition, 2, tile=16, overlap=8)
    torch.testing.assert_close(pieces, whole, rtol=1e-5, atol=1e-5)
    assert pieces.shape == (1, 3, 74, 90)
