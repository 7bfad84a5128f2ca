"""Reflow: the student starts from the teacher's moving average, trains on the teacher's own
noise-image pairs (checked against the teacher's sampler), resumes exactly, and warns without a
teacher."""

import logging
import re

import pytest
import torch

from genlab.commands.train import train
from genlab.config import build, build_model
from genlab.loading import load_run
from genlab.models.flow_solvers import Heun
from genlab.models.reflow import pair_stream
from tests.conftest import TINY_NETWORKS, make_cfg
from tests.test_resume import FAST, assert_resume_is_bit_identical, weights

CPU = torch.device("cpu")
TINY = [*TINY_NETWORKS["flow"], "dataset=digits", "model.conditional=true", *FAST]
REFLOW = ["model=reflow", "model.pairs=12", "model.pair_batch=5", "model.teacher.steps=3"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    run = tmp_path_factory.mktemp("teacher")
    cfg = make_cfg("model=flow", "model.ema_start=1", "trainer.max_steps=4", *TINY)
    train(cfg, run_dir=run)
    return run


def test_the_student_starts_from_the_teachers_average_and_learns_its_pairs(teacher, caplog):
    cfg = make_cfg(*REFLOW, *TINY, f"model.init_from={teacher}")
    model = build_model(cfg, build(cfg.dataset, "dataset"))
    ckpt = weights(teacher)["model"]
    assert int(ckpt["network_ema.n_averaged"]) == 3  # updates 2..4 averaged, not the network's
    for name, value in model.network.state_dict().items():
        assert torch.equal(value, ckpt[f"network_ema.module.{name}"]), name
    with caplog.at_level(logging.INFO, logger="genlab.models.reflow"):
        images, noise, labels = model.draw_pairs(CPU)
    assert images.shape == noise.shape and len(images) == 12 and labels.shape == (12,)
    # the wait is announced, then its length, then its end
    said = [r.getMessage() for r in caplog.records if r.name == "genlab.models.reflow"]
    assert len(said) == 3 and said[1].startswith("Reflow: 12 pairs from the teacher (heun, 3 NFE)")
    assert re.fullmatch(r".*\): about \d+\.\d min left", said[1]) and " drawn in " in said[2]

    # the teacher's own sampler, from the pairs' stream's noise and labels, 5 at a time
    sampler, _, _ = load_run(teacher, CPU)
    gen, expected = pair_stream(0, CPU), []
    for n in (5, 5, 2):
        z = torch.randn(n, *images.shape[1:], generator=gen)
        y = torch.randint(10, (n,), generator=gen)
        assert torch.equal(z, noise[len(expected) * 5 :][:n])
        assert torch.equal(y, labels[len(expected) * 5 :][:n])
        expected.append(sampler.solve(z, y, None, solver=Heun(3))[0])
    assert torch.allclose(images, torch.cat(expected), atol=1e-6)
    assert model._teacher is None  # its work is done
    # an evaluation or `genlab sample` at the pairs' seed draws other noise than they hold
    sampled = model._noise(12, torch.Generator().manual_seed(0))
    assert torch.cdist(sampled.flatten(1), noise.flatten(1)).min() > 1  # none is a pair's


def test_reflow_resumes_bit_identically(teacher, tmp_path):
    """With experiment=reflow_mnist's objective: U-shaped times, the pseudo-Huber distance."""
    setup = [*REFLOW, "loss.times=u_shaped", "loss.distance=pseudo_huber", *TINY]
    assert_resume_is_bit_identical([*setup, f"model.init_from={teacher}"], tmp_path)


def test_reflow_without_a_teacher_says_what_to_name(tmp_path, caplog):
    train(make_cfg(*REFLOW, *TINY, "trainer.max_steps=1"), run_dir=tmp_path / "r")
    warned = [r.message for r in caplog.records if r.levelname == "WARNING"]
    assert any("model.init_from is null" in m and "model.init_from=PATH" in m for m in warned)
