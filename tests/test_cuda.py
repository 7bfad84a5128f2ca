"""The CUDA paths: exact resume, precision, channels_last, compile, the sync-free guard, eval.

Skipped without a GPU (CI has none); run them where one is: `pytest tests/test_cuda.py`.
"""

import os

import pytest
import torch
from torch import nn

from genlab.checkpoint import load_checkpoint
from genlab.commands.eval import evaluate
from genlab.commands.train import train
from genlab.optim import OptimizerSpec, Updater
from tests.conftest import TINY_NETWORKS, make_cfg
from tests.test_eval import SMALL
from tests.test_resume import FAST, R1_LECAM, assert_resume_is_bit_identical

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before the first cuBLAS call
CUDA = ["device=cuda", "trainer.deterministic=true"]
FLOW = ["model=flow", "model.conditional=true", "loss.times=logit_normal", *TINY_NETWORKS["flow"]]
SR3 = ["model=sr3", "condition.scale=4", *TINY_NETWORKS["sr3"]]  # conditioned on an image


@pytest.mark.parametrize(
    "setup",
    [
        ["model=gan"],
        ["model=cgan"],
        ["model=dcgan"],
        ["model=cdcgan"],
        ["model=vae"],
        ["model=dcgan", "loss=wgan_gp", "model.discriminator.norm=layer"],
        ["model=dcgan", "trainer.precision=bf16", "trainer.channels_last=true"],
        ["model=gan", "trainer.precision=16-mixed"],
        ["model=dcgan", "augment=diffaugment", "model.ema_decay=0.9"],
        R1_LECAM,
        ["model=sngan_projection", *TINY_NETWORKS["sngan_projection"]],
        ["model=ddpm", "model.conditional=true", *TINY_NETWORKS["ddpm"]],
        ["model=dit", "trainer.precision=bf16", *TINY_NETWORKS["dit"]],
        ["model=pixelcnn", "model.likelihood=logistic_mixture", *TINY_NETWORKS["pixelcnn"]],
        FLOW,
        SR3,
        ["model=espcn"],
    ],
    ids=[
        "gan",
        "cgan",
        "dcgan",
        "cdcgan",
        "vae",
        "wgan_gp",
        "dcgan_bf16_nhwc",
        "gan_fp16",
        "dcgan_diffaug",
        "gan_r1_lecam",
        "sngan_projection",
        "ddpm_conditional",
        "dit_bf16",
        "pixelcnn",
        "flow_conditional",
        "sr3",
        "espcn",
    ],
)
def test_cuda_resume_is_bit_identical(setup, tmp_path):
    assert_resume_is_bit_identical([*setup, *FAST, *CUDA, "dataset=digits"], tmp_path)


@pytest.mark.parametrize(
    "setup",
    [
        ["model=gan"],
        ["model=dcgan"],
        ["model=cdcgan"],
        ["model=vae"],
        ["model=dcgan", "model.ema_decay=0.9", "model.ema_start=1"],  # starts at the 2nd step
        R1_LECAM,
        ["model=sngan", *TINY_NETWORKS["sngan"]],
        ["model=ddpm", "model.conditional=true", *TINY_NETWORKS["ddpm"]],
        ["model=dit", *TINY_NETWORKS["dit"]],
        ["model=pixelcnn", *TINY_NETWORKS["pixelcnn"]],
        FLOW,
        SR3,
        ["model=espcn"],
    ],
    ids=[
        "gan",
        "dcgan",
        "cdcgan",
        "vae",
        "dcgan_ema",
        "gan_r1_lecam",
        "sngan",
        "ddpm",
        "dit",
        "pixelcnn",
        "flow_conditional",
        "sr3",
        "espcn",
    ],
)
def test_cuda_training_step_never_waits_for_the_gpu(setup):
    """Between logging steps a step queues its kernels without one host sync (guard and EMA
    included: the EMA's first average and the ones after)."""
    from genlab.config import build, build_model, degradation
    from genlab.data.loader import DeviceLoader

    cfg = make_cfg(*setup, "dataset=digits")
    data = build(cfg.dataset, "dataset")
    device = torch.device("cuda")
    net = build_model(cfg, data).to(device)
    update = Updater(net.configure_optimizers(build(cfg.optimizer, "optimizer")), device)
    assert all(update.on_device.values())
    loader = DeviceLoader(
        data, 32, device, degrade=degradation(cfg, data.channels, data.image_size)
    )
    net.train_step(loader, update, metrics=False)  # warm-up: lazy optimizer state
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            net.train_step(loader, update, metrics=False)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert update.collect() == {}


def test_cuda_guard_skips_a_nan_update_on_the_device():
    layer = nn.Linear(4, 1).cuda()
    before = [p.detach().clone() for p in layer.parameters()]
    spec = OptimizerSpec(torch.optim.Adam, lr=0.1)
    update = Updater({"g": spec(layer.parameters())}, torch.device("cuda"))
    x = torch.ones(2, 4, device="cuda")
    update(layer(x).sum() * float("nan"), "g")
    assert all(torch.equal(p, q) for p, q in zip(layer.parameters(), before, strict=True))
    assert update.collect() == {"g": 1} and update.collect() == {}
    update(layer(x).sum(), "g")
    assert all(not torch.equal(p, q) for p, q in zip(layer.parameters(), before, strict=True))


def test_cuda_inductor_compile_bf16_channels_last_trains_and_evaluates(tmp_path):
    cfg = make_cfg(
        "model=dcgan",
        "dataset=digits",
        "device=cuda",
        "trainer=smoke",
        "logger=none",
        "trainer.max_steps=20",
        "trainer.compile=true",
        "trainer.precision=bf16",
        "trainer.channels_last=true",
    )
    values = train(cfg, run_dir=tmp_path)
    assert torch.isfinite(torch.tensor(values["loss/d"])) and values["step"] == 20
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert not any("_orig_mod" in k for k in state["model"])
    report = evaluate(make_cfg(f"run={tmp_path}", "device=cuda", *SMALL, config_name="eval"))
    assert report.metrics["fd"] > 0 and torch.isfinite(torch.tensor(report.metrics["fd"]))
    assert report.protocol["num_generated"] == 200
