"""Batched augmentation: DiffAugment on real and fake alike, data augmentation in the loader."""

import re

import pytest
import torch

from genlab.augment import Augment, diff_augment
from genlab.checkpoint import load_checkpoint
from genlab.commands.train import train
from genlab.errors import ConfigError
from tests.conftest import make_cfg

FAST = ["dataset=digits", "trainer=smoke", "logger=none", "trainer.sample_every=0"]


def test_diff_augment_is_the_same_transform_for_the_same_random_state():
    torch.manual_seed(0)
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    torch.manual_seed(1)
    a = diff_augment(x)
    torch.manual_seed(1)
    b = diff_augment(x.clone())
    assert torch.equal(a, b) and a.shape == x.shape and not torch.equal(a, x)
    # cutout zeroes a quarter of each image (an 8x8 square, clipped at the borders)
    torch.manual_seed(2)
    cut = diff_augment(torch.ones(64, 1, 16, 16), ("cutout",))
    assert ((cut == 0).flatten(1).sum(1) <= 64).all() and (cut == 0).any()
    # differentiable: the generator learns through it
    y = x.clone().requires_grad_(True)
    diff_augment(y).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


def test_the_discriminator_sees_augmented_real_and_fake(monkeypatch):
    from genlab.config import build
    from genlab.data import DeviceLoader, digits
    from genlab.optim import Updater

    cfg = make_cfg("model=gan", "dataset=digits")
    model = build(cfg.model, "model", channels=1, image_size=32, num_classes=10)
    seen = []

    def spy(x):
        seen.append((x.requires_grad, x.shape))
        return x

    model.d_input = spy
    update = Updater(
        model.configure_optimizers(build(cfg.optimizer, "optimizer")), torch.device("cpu")
    )
    model.train_step(DeviceLoader(digits(), 8, torch.device("cpu")), update)
    # D step: real (no grad), fake (detached); G step: fake with its graph
    assert [grad for grad, _ in seen] == [False, False, True]
    assert all(shape == (8, 1, 32, 32) for _, shape in seen)


def test_data_augmentation_changes_real_batches_only_within_range():
    torch.manual_seed(0)
    x = torch.rand(16, 1, 8, 8) * 2 - 1
    out = Augment(flip=True, translate=0.1, rotate=10, jitter=0.2).data(x)
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    assert not torch.equal(out, x)
    flipped = Augment(flip=True).data(x)
    assert all(
        torch.equal(f, o) or torch.equal(f, o.flip(-1)) for f, o in zip(flipped, x, strict=True)
    )


def test_augmented_runs_resume_exactly(tmp_path):
    setup = ["model=gan", "augment=diffaugment", *FAST, "trainer.ckpt_every=2"]
    train(make_cfg(*setup, "trainer.max_steps=4"), run_dir=tmp_path / "whole")
    train(make_cfg(*setup, "trainer.max_steps=2"), run_dir=tmp_path / "split")
    train(
        make_cfg(*setup, "trainer.max_steps=4", "trainer.resume=auto"), run_dir=tmp_path / "split"
    )
    a, b = (
        load_checkpoint(tmp_path / r / "checkpoints" / "last.pt")["model"]
        for r in ("whole", "split")
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=vae", "augment=diffaugment"], "DiffAugment (augment.diff) is for GANs"),
        (["augment=basic", "augment.rotate=400"], "augment.rotate must be between 0 and 180"),
        (["augment=diffaugment", "augment.diff=blur"], "unknown policy ['blur']"),
    ],
)
def test_bad_augmentation_is_refused(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=re.escape(message)):
        train(make_cfg(*FAST, *overrides), run_dir=tmp_path)
