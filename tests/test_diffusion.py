"""The diffusion family: schedules against their formulas, the loss against a hand computation,
prediction targets that convert exactly, solvers that reach the data with an exact denoiser,
guidance as defined, EMA sampling, the diffusers export loaded offline, and the bound."""

import math
import socket

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from genlab.config import build, build_model
from genlab.files import Outputs
from genlab.losses import DenoisingLoss
from genlab.models import Diffusion, denoising
from genlab.models.common import guidance_labels
from genlab.models.solvers import DDIM, DDPM, DPMSolver
from genlab.optim import Updater
from tests.conftest import TINY_NETWORKS, make_cfg

T = 1000


class Oracle(nn.Module):
    """The exact denoiser of a data set holding one image (`image`): what it predicts at x_t
    follows from x_0 = image. A class label shifts the image by `label`."""

    def __init__(self, channels: int, image_size: int, num_classes: int = 0) -> None:
        super().__init__()
        self.image = nn.Parameter(
            torch.linspace(-0.9, 0.9, channels * image_size**2).view(
                1, channels, image_size, image_size
            )
        )
        self.num_classes = num_classes
        self.prediction = "eps"
        self.alpha_bar: torch.Tensor | None = None

    def forward(self, x, t, labels=None):
        x0 = self.image.expand_as(x)
        if labels is not None:  # class c draws the image shifted by c/10 (null: by 0)
            shift = torch.where(labels == self.num_classes, 0, labels).float() / 10
            x0 = x0 + shift.view(-1, 1, 1, 1)
        a = self.alpha_bar[t].view(-1, 1, 1, 1)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return denoising.target(self.prediction, x0, eps, t, self.alpha_bar)


def model_with(network=Oracle, solver=None, **kwargs) -> Diffusion:
    model = Diffusion(
        lambda **shape: network(**shape),
        solver or DDIM(steps=20),
        channels=1,
        image_size=4,
        num_classes=kwargs.pop("num_classes", None),
        **kwargs,
    )
    if isinstance(model.network, Oracle):
        model.network.alpha_bar = model.alpha_bar
        model.network.prediction = model.prediction
        model.network_ema = None
    return model


def test_schedules_follow_their_formulas():
    linear = model_with(schedule="linear").alpha_bar.double()
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    torch.testing.assert_close(linear, torch.cumprod(1 - betas, 0), rtol=1e-6, atol=0)

    cosine = model_with(schedule="cosine").alpha_bar.double()
    f = [math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(T + 1)]
    betas = torch.tensor([min(1 - f[t + 1] / f[t], 0.999) for t in range(T)], dtype=torch.float64)
    torch.testing.assert_close(cosine, torch.cumprod(1 - betas, 0), rtol=1e-5, atol=1e-7)

    a = linear[[0, 500, 999]]
    torch.testing.assert_close(denoising.snr(a), a / (1 - a))
    assert (denoising.snr(linear)[1:] < denoising.snr(linear)[:-1]).all()  # noise only grows


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_each_prediction_target_converts_to_the_others(prediction):
    gen = torch.Generator().manual_seed(0)
    alpha_bar = model_with().alpha_bar.double()
    x0, eps = torch.randn(6, 1, 4, 4, generator=gen).double(), torch.randn(6, 1, 4, 4).double()
    t = torch.tensor([0, 1, 10, 500, 998, 999])
    x_t = denoising.add_noise(x0, eps, t, alpha_bar)
    out = denoising.target(prediction, x0, eps, t, alpha_bar)
    torch.testing.assert_close(denoising.to_x0(prediction, out, x_t, t, alpha_bar), x0)
    torch.testing.assert_close(denoising.to_eps(prediction, out, x_t, t, alpha_bar), eps)
    v = denoising.target("v", x0, eps, t, alpha_bar)
    a = alpha_bar[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(v, a.sqrt() * eps - (1 - a).sqrt() * x0)  # Salimans & Ho eq.


class Scale(nn.Module):
    """out = w * x_t: one weight, for hand computations."""

    def __init__(self, channels: int, image_size: int, num_classes: int = 0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.5))

    def forward(self, x, t, labels=None):
        return self.w * x


@pytest.mark.parametrize(
    ("prediction", "weighting"), [("eps", "uniform"), ("eps", "min_snr"), ("v", "min_snr")]
)
def test_the_training_loss_is_the_hand_computed_one(prediction, weighting):
    model = model_with(Scale, prediction=prediction, ema_decay=None)
    loss = DenoisingLoss(weighting, gamma=5.0)
    update = Updater({"model": torch.optim.SGD(model.parameters(), lr=0.0)}, torch.device("cpu"))
    x0 = torch.tensor([[0.2, -0.4], [1.0, -1.0]]).view(1, 1, 2, 2).repeat(1, 1, 2, 2)
    torch.manual_seed(3)
    model.objective = loss
    values = model.train_step(iter([(x0, None)]), update)
    torch.manual_seed(3)  # the step's own draws: a timestep, then the noise
    t = int(torch.randint(0, T, (1,)))
    eps = torch.randn(1, 1, 4, 4)
    beta = [1e-4 + (0.02 - 1e-4) * i / (T - 1) for i in range(T)]
    a = math.prod(1 - b for b in beta[: t + 1])
    x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
    target = eps if prediction == "eps" else math.sqrt(a) * eps - math.sqrt(1 - a) * x0
    snr = a / (1 - a)
    weight = {"uniform": 1.0, "eps": min(snr, 5) / snr, "v": min(snr, 5) / (snr + 1)}
    w = weight["uniform" if weighting == "uniform" else prediction]
    expected = w * float(((0.5 * x_t - target) ** 2).mean())
    assert float(values["loss/denoising"]) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize(
    "solver",
    [
        DDPM(),
        DDPM(steps=100),
        DDIM(steps=20),
        DDIM(steps=20, eta=1.0),
        DDIM(steps=20, clip=False),
        DPMSolver(10),
        DPMSolver(10, clip=False),
    ],
)
def test_every_solver_reaches_the_data_with_an_exact_denoiser(prediction, solver):
    """A data set of one image: the exact denoiser's samples are that image."""
    model = model_with(prediction=prediction, solver=solver)
    images = model.generate(3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        images, model.network.image.detach().expand(3, -1, -1, -1), atol=2e-3, rtol=0
    )


@pytest.mark.parametrize("solver", [DDPM(steps=50), DDIM(steps=10, eta=0.5), DPMSolver(5)])
def test_a_seed_gives_the_same_images_twice(solver):
    torch.manual_seed(0)
    model = model_with(lambda **s: nn.Sequential(), solver=solver, ema_decay=None)
    model.network = _Noisy()
    first = model.generate(3, torch.Generator().manual_seed(7))
    torch.manual_seed(1)  # the global stream plays no part
    assert torch.equal(first, model.generate(3, torch.Generator().manual_seed(7)))
    assert not torch.equal(first, model.generate(3, torch.Generator().manual_seed(8)))


@pytest.mark.parametrize("clip", [True, False])
def test_ddim_in_two_steps_by_hand_with_and_without_clipping(clip):
    """DDIM with eta 0 from timestep 999 to 499 to the data: with `clip` each step's clean-image
    prediction is clipped to [-1, 1] and the noise re-derived from it (GLIDE's)."""
    model = model_with(lambda **s: nn.Sequential(), ema_decay=None)
    model.network = _Noisy()
    noise = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    out, _ = model.solve(noise, None, None, DDIM(steps=2, clip=clip))

    alpha_bar = model.noise_schedule.alphas_cumprod
    x = noise
    for t, t_prev in ((999, 499), (499, None)):
        a = alpha_bar[t]
        a_prev = alpha_bar[t_prev] if t_prev is not None else torch.tensor(1.0)
        eps = model.network(x, torch.full((2,), t))
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        if clip:
            x0 = x0.clamp(-1, 1)
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    torch.testing.assert_close(out, x.clamp(-1, 1))
    other, _ = model.solve(noise, None, None, DDIM(steps=2, clip=not clip))
    assert not torch.allclose(out, other)


class _Noisy(nn.Module):
    def forward(self, x, t, labels=None):
        return torch.tanh(x * 0.3 + t.float().view(-1, 1, 1, 1) / 1000)


def test_guidance_zero_is_unconditional_one_conditional_and_more_extrapolates():
    model = model_with(num_classes=10, conditional=True)
    labels = torch.tensor([3, 7])
    x, t = torch.randn(2, 1, 4, 4), torch.tensor([500, 500])
    net = model.network
    cond, uncond = net(x, t, labels), net(x, t, torch.full_like(labels, 10))
    torch.testing.assert_close(model.denoiser(labels, 1.0)(x, t), cond)
    torch.testing.assert_close(model.denoiser(labels, 0.0)(x, t), uncond)
    torch.testing.assert_close(model.denoiser(labels, 2.5)(x, t), uncond + 2.5 * (cond - uncond))
    # sampled: guidance 1 gives the class's image, 0 the null label's, 2 twice the shift
    base = net.image.detach()
    for guidance, shift in ((1.0, 0.3), (0.0, 0.0), (2.0, 0.6)):
        model.sampler = DDIM(steps=20, guidance=guidance)
        images = model.generate(1, torch.Generator().manual_seed(0), torch.tensor([3]))
        torch.testing.assert_close(images, (base + shift).clamp(-1, 1), atol=3e-3, rtol=0)


def test_guidance_labels_per_scale():
    labels = torch.tensor([3, 7])
    assert guidance_labels(None, 10, 2.0) is None  # an unconditional model
    assert guidance_labels(labels, 10, 1.0).tolist() == [3, 7]
    assert guidance_labels(labels, 10, 0.0).tolist() == [10, 10]
    assert guidance_labels(labels, 10, 2.0).tolist() == [3, 7, 10, 10]  # conditional, then null


def test_dit_long_skips_and_final_conv_reduce_to_the_plain_dit_when_neutral():
    """U-ViT's options: a skip layer that passes its block's own tokens and drops the skip, and a
    3x3 convolution with an identity kernel, give back the plain DiT's output exactly; with the
    skip taken, the output changes."""
    from genlab.models.dit import DiT

    torch.manual_seed(0)
    shape = dict(channels=1, image_size=8, patch=2, width=16, depth=4, heads=2)
    plain, uvit = DiT(**shape), DiT(**shape, long_skips=True, final_conv=True)
    for m in [*plain.blocks, plain.final_modulation, plain.out]:  # adaLN-Zero: away from zero
        for p in m.parameters():
            nn.init.normal_(p, std=0.1)
    uvit.load_state_dict(plain.state_dict(), strict=False)
    assert len(uvit.skips) == 2
    with torch.no_grad():
        for skip in uvit.skips:  # [tokens, skipped] -> tokens
            skip.weight.copy_(torch.cat([torch.eye(16), torch.zeros(16, 16)], dim=1))
            skip.bias.zero_()
        uvit.conv.weight.zero_()
        uvit.conv.weight[0, 0, 1, 1] = 1.0
        uvit.conv.bias.zero_()
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0, 10, 999])
    torch.testing.assert_close(uvit(x, t), plain(x, t))
    with torch.no_grad():
        uvit.skips[0].weight[:, 16:] = torch.eye(16)
    assert not torch.allclose(uvit(x, t), plain(x, t))


def test_guidance_is_refused_for_an_unconditional_model():
    with pytest.raises(ValueError, match="guidance=2.0 needs a class-conditional model"):
        model_with(solver=DDIM(guidance=2.0))


def test_grids_hold_at_most_grid_images_one_row_per_class_when_conditional():
    examples = (torch.zeros(64, 1, 4, 4), None)
    unconditional = model_with(grid_images=9).fixed_inputs(64, examples, seed=0)
    assert unconditional.latents.shape == (9, 1, 4, 4) and unconditional.condition is None
    assert model_with(grid_images=9).fixed_inputs(4, examples, seed=0).latents.shape[0] == 4
    conditional = model_with(conditional=True, num_classes=3, grid_images=7)
    assert conditional.fixed_inputs(64, examples, seed=0).condition.tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="grid_images"):
        model_with(grid_images=0)


def test_samples_come_from_the_ema():
    """The EMA (on by default) samples: changing the trained network changes nothing."""
    cfg = make_cfg("model=ddpm", "dataset=digits", "solver.steps=3", "model.ema_start=0")
    data = build(cfg.dataset, "dataset")
    model = build_model(cfg, data)
    update = Updater(
        model.configure_optimizers(build(cfg.optimizer, "optimizer")), torch.device("cpu")
    )
    batches = iter([(torch.rand(8, 1, 8, 8) * 2 - 1, None)] * 3)
    for _ in range(3):
        model.train_step(batches, update)
    before = model.generate(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in model.network.parameters():
            p.add_(1.0)
    assert torch.equal(before, model.generate(2, torch.Generator().manual_seed(0)))
    assert model.sampling_network() is model.network_ema.module


def test_the_bound_is_exact_with_every_timestep_and_estimated_without_bias():
    """With the exact denoiser of one image, every KL term is 0 but the decoder's and the
    prior's: the bound is their sum; a stratified estimate from fewer timesteps agrees."""
    model = model_with()
    x0 = model.network.image.detach()
    exact = model.likelihood(x0, T, seed=0)[0]
    a = model.alpha_bar
    prior = float(denoising.prior_kl(x0, a)[0])
    logvar = denoising.reverse_log_variance(torch.tensor([0]), a, x0)
    decoder = float(denoising.discretized_gaussian_nll(x0, x0, 0.5 * logvar).sum())
    assert exact["neg_elbo"] == pytest.approx(prior + decoder, rel=1e-3)
    assert exact["neg_elbo_bits_per_dim"] == pytest.approx(exact["neg_elbo"] / (16 * math.log(2)))
    assert model.likelihood(x0, 50, seed=1)[0]["neg_elbo"] == pytest.approx(
        exact["neg_elbo"], rel=1e-3
    )


def test_the_discretized_decoder_is_a_distribution_over_256_values():
    values = torch.arange(256).float() / 127.5 - 1
    mean, log_scale = torch.tensor(0.13), torch.tensor(math.log(0.05))
    p = torch.exp(-denoising.discretized_gaussian_nll(values, mean, log_scale))
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-5)


def load_offline(folder, monkeypatch):
    """diffusers' DDPMPipeline from an exported `folder`, with the network refused."""
    from diffusers import DDPMPipeline

    def refuse(*args, **kwargs):
        raise AssertionError("diffusers tried to reach the network")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return DDPMPipeline.from_pretrained(str(folder))


def test_the_export_loads_in_diffusers_offline_and_samples_as_genlab(tmp_path, monkeypatch):
    from genlab.export import export

    cfg = make_cfg("model=ddpm", "dataset=digits", "solver=ddpm", "solver.steps=5")
    data = build(cfg.dataset, "dataset")
    torch.manual_seed(0)
    model = build_model(cfg, data).eval()
    messages = export(model, cfg, {"step": 0}, Outputs(tmp_path))
    assert "DDPMPipeline.from_pretrained" in messages[1]
    pipe = load_offline(tmp_path / "diffusers", monkeypatch)
    out = pipe(
        batch_size=2,
        generator=torch.Generator().manual_seed(4),
        num_inference_steps=5,
        output_type="np",
    ).images
    ours = model.generate(2, torch.Generator().manual_seed(4))
    torch.testing.assert_close(
        torch.from_numpy(out).permute(0, 3, 1, 2), (ours + 1) / 2, atol=1e-5, rtol=0
    )


def test_train_eval_sample_and_export_a_diffusion_run_with_another_solver(tmp_path):
    """A run trains with its solver (grids: samples and the denoising trajectory); eval and
    sample take another from the command line and name it in the protocol; export follows."""
    from genlab.commands.eval import evaluate
    from genlab.commands.sample import sample
    from genlab.commands.train import train
    from genlab.errors import ConfigError
    from genlab.export import export, load_generator
    from genlab.loading import load_run

    def read_png(path):
        return np.asarray(Image.open(path))

    run = tmp_path / "run"
    cfg = make_cfg(
        "model=ddpm",
        *TINY_NETWORKS["ddpm"],
        "dataset=digits",
        "trainer=smoke",
        "logger=none",
        "solver.steps=3",
        "model.conditional=true",
        "trainer.grid_images=20",
        "model.grid_images=20",
        "evaluator.classifier_steps=20",
        "evaluator.num_generated_cheap=20",
    )
    train(cfg, run_dir=run)
    grids = {p.name.split("_")[0] for p in (run / "samples").glob("*.png")}
    assert grids == {"samples", "trajectory"}
    trajectory = read_png(next((run / "samples").glob("trajectory_*.png")))
    assert trajectory.shape[0] > trajectory.shape[1]  # a row per kept timestep: 4 rows of 2

    report = evaluate(
        make_cfg(
            f"run={run}",
            "solver=dpm_solver",
            "solver.steps=2",
            "solver.guidance=2",
            "evaluator.num_generated=20",
            "evaluator.nll_samples=3",
            "evaluator.kid_subset_size=10",
            "evaluator.classifier_steps=20",
            "tensorboard=false",
            config_name="eval",
        )
    )
    assert report.protocol["sampler"] == "dpm_solver" and report.protocol["sampler_steps"] == 2
    # settings alone change the run's own solver (the CLI adds them: solver.guidance=0)
    from genlab.cli import solver_settings

    assert solver_settings("eval", ["run=x", "solver.guidance=0"]) == [
        "run=x",
        "+solver.guidance=0",
    ]
    assert solver_settings("eval", ["solver=ddim", "solver.eta=1"]) == [
        "solver=ddim",
        "solver.eta=1",
    ]
    assert solver_settings("train", ["solver.steps=5"]) == ["solver.steps=5"]
    own = ["+solver.guidance=0", "evaluator.num_generated=20", "evaluator.kid_subset_size=10"]
    own += ["evaluator.classifier_steps=20", "evaluator.nll_samples=3"]
    unguided = evaluate(make_cfg(f"run={run}", *own, "tensorboard=false", config_name="eval"))
    assert unguided.protocol["sampler"] == "ddim" and unguided.protocol["sampler_steps"] == 3
    assert unguided.protocol["guidance"] == 0.0
    with pytest.raises(ConfigError, match="solver.guidance must be >= 0"):
        evaluate(make_cfg(f"run={run}", "+solver.guidance=-1", config_name="eval"))
    assert report.protocol["guidance"] == 2.0 and "class_accuracy" in report.metrics
    assert report.metrics["neg_elbo_bits_per_dim"] > 0
    assert "3 of 999" in report.protocol["bound_timesteps"]
    assert (run / "eval" / "classifier-32px_n20_dpm_solver2_g2_step0000005.json").is_file()
    # another solver setting keeps a file of its own
    from genlab.commands.eval import save_report
    from genlab.evaluation import Report

    protocol = {**report.protocol, "sampler": "ddim", "sampler_steps": 50, "eta": 1.0}
    out = save_report(Report(report.metrics, protocol), run, 5, "x")
    assert out.name == "classifier-32px_n20_ddim50_eta1_g2_step0000005.json"
    out = save_report(Report(report.metrics, {**protocol, "clip": False}), run, 5, "x")
    assert out.name == "classifier-32px_n20_ddim50_eta1_g2_noclip_step0000005.json"
    out = save_report(Report(report.metrics, {**protocol, "num_generated": 1000}), run, 5, "x")
    assert out.name == "classifier-32px_n1000_ddim50_eta1_g2_step0000005.json"
    out = save_report(Report(report.metrics, {**protocol, "seed": 3}), run, 5, "x")
    assert out.name == "classifier-32px_n20_ddim50_eta1_g2_seed3_step0000005.json"

    out = sample(
        make_cfg(
            f"run={run}",
            "sampler.mode=trajectory",
            "sampler.label=4",
            "sampler.num_images=2",
            "solver=ddim",
            "solver.steps=2",
            config_name="sample",
        )
    )
    image = read_png(out)
    assert image.shape[0] > image.shape[1]  # columns: 2 images; rows: 3 timesteps
    assert out == run / "samples" / "trajectory_ddim2_label4_seed0.png"  # names its solver

    from diffusers import UNet2DModel

    model, run_cfg, _ = load_run(run, torch.device("cpu"))
    messages = export(model, run_cfg, {"step": 5}, Outputs(tmp_path / "export"))
    labels = torch.tensor([1, 2])
    assert "class_labels=labels" in messages[1]
    unet = UNet2DModel.from_pretrained(str(tmp_path / "export" / "diffusers" / "unet"))
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([10, 900])
    torch.testing.assert_close(
        unet(x, t, class_labels=labels).sample, model.sampling_network()(x, t, labels)
    )
    g = load_generator(tmp_path / "export")
    z = torch.randn(2, g.latent_dim)
    torch.testing.assert_close(g(z, labels), model.decode_latents(z, labels))


def test_a_solver_for_a_model_without_one_and_bad_solver_settings_are_one_message(tmp_path):
    from genlab.commands.train import train
    from genlab.errors import ConfigError

    base = ["dataset=digits", "trainer=smoke", "logger=none"]
    cases = {
        (
            "model=dcgan",
            "+solver=ddim",
        ): r"solver does not fit genlab.models.GAN: genlab.models.GAN takes no sampler",
        (
            "model=ddpm",
            "solver=autoregressive",
        ): r"solver \(genlab.models.autoregressive.Autoregressive\) does not fit "
        r"genlab.models.Diffusion; it takes solver=ddim \| ddpm \| dpm_solver",
        (
            "model=pixelcnn",
            "solver=ddim",
        ): r"solver \(genlab.models.solvers.DDIM\) does not fit genlab.models.PixelCNN; it takes "
        "solver=autoregressive",
        ("model=ddpm", "solver.steps=0"): "solver.steps must be >= 1",
        ("model=ddpm", "solver.guidance=3"): "solver.guidance=3.0 needs a class-conditional",
        ("model=ddpm", "solver.clip=maybe"): "solver.clip: expected bool, got 'maybe'",
        ("model=ddpm", "model.prediction=noise"): "model.prediction: expected one of 'eps'",
        ("model=dit", "model.network.patch=5"): "patch must divide the image size 32",
    }
    for overrides, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            train(make_cfg(*base, *overrides), run_dir=tmp_path / "run")
        assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("model.network.layers=-1", "model.network.layers must be >= 1, got -1"),
        ("model.network.features=[0,8]", "model.network.features must be >= 1, got 0"),
        ("model.network.dropout=1.5", r"model.network.dropout must be in \[0, 1\), got 1.5"),
    ],
)
def test_network_settings_diffusers_asserts_on_are_refused_first(tmp_path, setting, message):
    """One message before the run starts (diffusers would raise an AssertionError inside its
    U-Net), and no run folder left."""
    from genlab.commands.train import train
    from genlab.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        train(make_cfg("model=ddpm", "dataset=digits", "trainer=smoke", setting), tmp_path / "r")
    assert not (tmp_path / "r").exists()
