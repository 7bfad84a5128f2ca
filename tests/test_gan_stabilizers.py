"""GAN stabilizers inside the family's step: lazy R1 / R2 and LeCam's moving averages."""

import pytest
import torch

from genlab.config import build
from genlab.data import DeviceLoader, digits
from genlab.losses import Hinge
from genlab.optim import Updater
from tests.conftest import make_cfg

CPU = torch.device("cpu")


def steps(loss: Hinge, n: int) -> tuple[list[dict], torch.nn.Module]:
    """`n` steps of model=gan on digits at learning rate 0 (the networks never change), with the
    same batches and noise for any loss settings."""
    torch.manual_seed(0)
    cfg = make_cfg("model=gan", "dataset=digits")
    model = build(cfg.model, "model", channels=1, image_size=32, num_classes=10)
    sgd = {
        name: torch.optim.SGD(net.parameters(), lr=0.0)
        for name, net in (("g", model.generator), ("d", model.discriminator))
    }
    update = Updater(sgd, CPU)
    loader = DeviceLoader(digits(), 16, CPU)
    torch.manual_seed(1)
    out = [
        {k: float(v) for k, v in model.train_step(loader, loss, update).items()} for _ in range(n)
    ]
    return out, model


def test_lazy_r1_and_r2_run_every_k_steps_scaled_by_k():
    plain, _ = steps(Hinge(), 3)
    lazy, _ = steps(Hinge(r1=2.0, r2=0.5, reg_every=2), 3)
    assert ["loss/r1" in v for v in lazy] == [True, False, True]
    assert ["loss/r2" in v for v in lazy] == [True, False, True]
    for p, v in zip(plain, lazy, strict=True):
        extra = 2.0 / 2 * 2 * v.get("loss/r1", 0) + 0.5 / 2 * 2 * v.get("loss/r2", 0)
        assert v["loss/d"] == pytest.approx(p["loss/d"] + extra, rel=1e-5)
    assert lazy[0]["loss/r1"] > 0 and lazy[2]["loss/r2"] > 0


def test_lecam_averages_d_outputs_and_adds_its_penalty():
    plain, _ = steps(Hinge(), 2)
    lecam, model = steps(Hinge(lecam=0.5, lecam_decay=0.9), 2)
    # the averages start at 0: after two steps 0.1 * (0.9 * first + second) (lr 0: D is fixed)
    expected = [0.1 * (0.9 * lecam[0][k] + lecam[1][k]) for k in ("D(x)", "D(G(z))")]
    assert model.lecam_anchors.tolist() == pytest.approx(expected, rel=1e-5)
    for p, v in zip(plain, lecam, strict=True):
        assert v["loss/d"] == pytest.approx(p["loss/d"] + 0.5 * v["loss/lecam"], rel=1e-5)


def test_r1_needs_a_discriminator_without_batchnorm():
    cfg = make_cfg("model=dcgan", "loss=hinge", "loss.r1=10")
    model = build(cfg.model, "model", channels=1, image_size=32, num_classes=None)
    with pytest.raises(ValueError, match="loss.r1.*without BatchNorm"):
        model.check_loss(build(cfg.loss, "loss"))
