"""Observing a run never changes it: sample grids and evaluations (which may first train the
evaluator's classifier) run on random streams of their own, in eval mode, for every model."""

import pytest

from genlab.commands.train import train
from genlab.config import CONF_DIR
from tests.conftest import TINY_NETWORKS, make_cfg, tiered
from tests.test_resume import assert_identical, weights

MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
BASE = [
    "dataset=digits",
    "trainer=smoke",
    "logger=none",
    "trainer.ckpt_every=0",
    "trainer.log_every=5",
    "evaluator.classifier_steps=20",
    "evaluator.num_generated_cheap=100",
]


# a model of each family, and conditional GANs (make test-all: every model)
@pytest.mark.parametrize("model", tiered(MODELS, fast={"cgan", "dcgan", "dit", "pixelcnn", "vae"}))
def test_grids_and_evaluations_do_not_change_the_weights(model, tmp_path):
    """30 steps with no observation, with an evaluation every 10 steps (the first one trains
    the classifier: a new cache) and with a grid every 5 steps: the same weights and optimizer
    states, to the bit."""
    observed = {
        "none": ["trainer.eval_every=null", "trainer.sample_every=0"],
        "evaluated": ["trainer.eval_every=10", "trainer.sample_every=0"],
        "sampled": ["trainer.eval_every=null", "trainer.sample_every=5"],
    }
    for name, extra in observed.items():
        cfg = make_cfg(
            f"model={model}",
            *TINY_NETWORKS.get(model, []),
            *BASE,
            *extra,
            "trainer.max_steps=30",
            f"evaluator.cache_dir={tmp_path / 'cache'}",
        )
        train(cfg, run_dir=tmp_path / name)
    for name in ("evaluated", "sampled"):
        assert_identical(weights(tmp_path / "none"), weights(tmp_path / name))


@pytest.mark.parametrize(
    "model", tiered(MODELS, fast=set(MODELS) - {"sr3", "flow"})
)  # ddpm's family
def test_a_finished_run_resumed_equals_one_run(model, tmp_path):
    """20 steps that finish normally (a grid and an evaluation at the end), resumed to 40, give
    the weights of 40 steps in one go."""
    common = [
        f"model={model}",
        *TINY_NETWORKS.get(model, []),
        *BASE,
        "trainer.eval_every=0",
        f"evaluator.cache_dir={tmp_path / 'cache'}",
    ]
    train(make_cfg(*common, "trainer.max_steps=40"), run_dir=tmp_path / "whole")
    train(make_cfg(*common, "trainer.max_steps=20"), run_dir=tmp_path / "split")
    more = make_cfg(*common, "trainer.max_steps=40", "trainer.resume=auto")
    train(more, run_dir=tmp_path / "split")
    assert_identical(weights(tmp_path / "whole"), weights(tmp_path / "split"))
