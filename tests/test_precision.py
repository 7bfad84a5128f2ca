"""Mixed precision, channels_last and torch.compile switches."""

import pytest
import torch
from torch import nn

from genlab.checkpoint import load_checkpoint
from genlab.commands.train import train
from genlab.errors import ConfigError
from genlab.losses import gradient_penalty
from genlab.optim import NonFiniteError, OptimizerSpec, Updater, autocast_dtype
from tests.conftest import make_cfg

CPU = torch.device("cpu")
FAST = ["trainer=smoke", "logger=none", "dataset=digits", "trainer.sample_every=0"]


class Critic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, 2, 1), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(8 * 4 * 4, 1)
        )

    def forward(self, x, labels=None):
        return self.net(x).squeeze(1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gradient_penalty_under_autocast_is_finite_and_matches_float32(dtype):
    torch.manual_seed(0)
    critic, real, fake = Critic(), torch.randn(16, 1, 8, 8), torch.randn(16, 1, 8, 8)
    torch.manual_seed(1)
    exact = gradient_penalty(critic, real, fake)
    torch.manual_seed(1)  # same interpolation weights
    with torch.autocast("cpu", dtype=dtype):
        scale = 65536.0 if dtype is torch.float16 else 1.0
        mixed = gradient_penalty(critic, real, fake, loss_scale=scale)
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed)
    torch.testing.assert_close(mixed, exact, rtol=0.05, atol=1e-3)
    mixed.backward()  # the penalty's own gradient (double backward) is finite too
    grads = [p.grad for p in critic.parameters() if p.grad is not None]  # not the last bias
    assert len(grads) == 3 and all(torch.isfinite(g).all() for g in grads)


def test_float16_update_matches_float32_and_is_unscaled():
    """The loss is scaled by 2^16 before backward and the gradient unscaled before the step."""
    torch.manual_seed(0)
    a, b = nn.Linear(4, 1), nn.Linear(4, 1)
    b.load_state_dict(a.state_dict())
    x = torch.randn(8, 4)
    fp16 = Updater({"g": torch.optim.SGD(a.parameters(), lr=0.1)}, CPU, "16-mixed")
    fp32 = Updater({"g": torch.optim.SGD(b.parameters(), lr=0.1)}, CPU, "32")
    assert fp16.loss_scale("g") == 65536.0 and fp32.loss_scale("g") == 1.0
    norm16 = fp16(a(x).pow(2).mean(), "g")
    norm32 = fp32(b(x).pow(2).mean(), "g")
    torch.testing.assert_close(norm16, norm32)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q)


BAD_UPDATES = {  # a non-finite loss, gradient, or both
    "nan loss": lambda out: out.sum() * float("nan"),
    "inf loss, finite gradient": lambda out: out.sum() + float("inf"),
    "finite loss, inf gradient": lambda out: (out - out.detach()).sqrt().sum(),  # d sqrt at 0
}


@pytest.mark.parametrize("measure", [True, False])
@pytest.mark.parametrize("bad", BAD_UPDATES)
def test_fused_updates_skip_non_finite_steps_with_or_without_the_norm(bad, measure):
    """Between logging steps (`measure=False`) the guard checks the gradients with GradScaler's
    kernel instead of the norm; both skip the same updates and leave good ones identical."""
    torch.manual_seed(0)
    layer, twin = nn.Linear(4, 1), nn.Linear(4, 1)
    twin.load_state_dict(layer.state_dict())
    spec = OptimizerSpec(torch.optim.Adam, lr=0.1)
    update, reference = (
        Updater({"g": spec(layer.parameters())}, CPU),
        Updater({"g": spec(twin.parameters())}, CPU),
    )
    assert update.on_device["g"]
    x = torch.randn(8, 4)
    before = [p.detach().clone() for p in layer.parameters()]
    norm = update(BAD_UPDATES[bad](layer(x)), "g", measure=measure)
    assert (norm is not None) == measure
    assert all(torch.equal(p, q) for p, q in zip(layer.parameters(), before, strict=True))
    assert update.collect() == {"g": 1}
    for _ in range(2):  # good steps: the same weights whether or not the norm is measured
        update(layer(x).pow(2).mean(), "g", measure=measure)
        reference(twin(x).pow(2).mean(), "g", measure=True)
    assert update.collect() == {}
    for p, q, b in zip(layer.parameters(), twin.parameters(), before, strict=True):
        assert torch.equal(p, q) and not torch.equal(p, b)


def test_float16_overflow_halves_the_scale_until_it_is_a_real_nan():
    layer = nn.Linear(2, 1)
    before = [p.detach().clone() for p in layer.parameters()]
    optimizers = {"g": torch.optim.SGD(layer.parameters(), lr=0.1)}
    update = Updater(optimizers, CPU, "16-mixed", names={"g": "generator"})
    for i in range(16):  # 65536 -> 1: each non-finite step is taken for an overflow
        update(layer(torch.ones(1, 2)).sum() * float("inf"), "g")
        assert update.overflows == i + 1
    assert update.loss_scale("g") == 1.0
    with pytest.raises(NonFiniteError, match="generator"):
        update(layer(torch.ones(1, 2)).sum() * float("nan"), "g")
    assert all(torch.equal(p, q) for p, q in zip(layer.parameters(), before, strict=True))


def test_loss_scale_is_restored_from_a_checkpoint():
    layer = nn.Linear(2, 1)
    update = Updater({"g": torch.optim.SGD(layer.parameters(), lr=0.1)}, CPU, "16-mixed")
    for _ in range(2):
        update(layer(torch.ones(1, 2)).sum() * float("inf"), "g")
    fresh = Updater({"g": torch.optim.SGD(layer.parameters(), lr=0.1)}, CPU, "16-mixed")
    fresh.load_state_dict(update.state_dict())
    assert fresh.loss_scale("g") == update.loss_scale("g") == 16384.0


def test_precision_needs_autocast_on_the_device():
    assert autocast_dtype("bf16", CPU) is torch.bfloat16
    assert autocast_dtype(32, CPU) is None
    with pytest.raises(ValueError, match="no autocast for meta"):
        autocast_dtype("16-mixed", torch.device("meta"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.precision=fp8", "trainer.precision: expected one of 32, '32', 'bf16'"),
        ("trainer.compile=nonsense", "trainer.compile must be true, false or a torch.compile"),
        ("trainer.channels_last=maybe", "trainer.channels_last: expected bool"),
    ],
)
def test_bad_speed_switches_are_refused(override, message, tmp_path):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        train(make_cfg(*FAST, override), run_dir=tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_mixed_precision_run_checkpoints_its_loss_scale(tmp_path):
    train(make_cfg(*FAST, "model=gan", "trainer.precision=16-mixed"), run_dir=tmp_path)
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert set(state["updater"]["scalers"]) == {"g", "d"}
    assert state["updater"]["scalers"]["g"]["scale"] > 1


def test_channels_last_trains_like_contiguous(tmp_path):
    runs = {}
    for flag in ("false", "true"):
        run = tmp_path / flag
        # SGD: a weight moves by lr x its gradient, so layout rounding stays at rounding size
        # (Adam's first steps move near-zero gradients by +-lr whatever their size)
        cfg = make_cfg(
            *FAST,
            "model=dcgan",
            "optimizer=sgd",
            "trainer.max_steps=2",
            f"trainer.channels_last={flag}",
        )
        train(cfg, run_dir=run)
        runs[flag] = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    conv = "generator.net.0.weight"
    assert runs["true"].keys() == runs["false"].keys()
    for key in runs["false"]:
        torch.testing.assert_close(runs["true"][key], runs["false"][key], rtol=1e-3, atol=1e-4)
    assert runs["true"][conv].is_contiguous(memory_format=torch.channels_last)
    assert not runs["false"][conv].is_contiguous(memory_format=torch.channels_last)


def test_compiled_networks_keep_their_state_dict_keys(tmp_path):
    """`trainer.compile` compiles the networks in place: checkpoints load into plain models."""
    pytest.importorskip("torch._dynamo")
    cfg = make_cfg(*FAST, "model=gan", "trainer.max_steps=2", "trainer.compile=eager")
    train(cfg, run_dir=tmp_path / "compiled")
    plain = make_cfg(*FAST, "model=gan", "trainer.max_steps=2")
    train(plain, run_dir=tmp_path / "plain")
    a, b = (
        load_checkpoint(tmp_path / r / "checkpoints" / "last.pt")["model"]
        for r in ("compiled", "plain")
    )
    assert a.keys() == b.keys() and not any("_orig_mod" in k for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key])


@pytest.mark.slow
def test_inductor_compile_trains(tmp_path):
    """The real compiler (needs a C++ compiler on CPU; about a minute here)."""
    cfg = make_cfg(*FAST, "model=vae", "trainer.max_steps=3", "trainer.compile=true")
    assert train(cfg, run_dir=tmp_path)["loss/recon"] > 0
