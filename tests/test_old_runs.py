"""Runs and exports written by an earlier genlab keep working: the fixture runs under
tests/fixtures/ (made by the commit in their folder's name, with the commands in its README)
evaluate, sample, export and resume with today's code, and their exports load."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from genlab.export import load_generator
from tests.conftest import cli
from tests.test_eval import SMALL
from tests.test_resume import weights

FIXTURES = Path(__file__).with_name("fixtures") / "runs_17b1089"
RUNS = ["cgan", "ddpm", "pixelcnn", "vae"]


@pytest.fixture
def run(request, tmp_path) -> Path:
    """A copy of a fixture run (genlab writes into its runs; the fixture stays as it was)."""
    copy = tmp_path / request.param
    shutil.copytree(FIXTURES / request.param, copy)
    return copy


def _noise(g) -> tuple[torch.Tensor, torch.Tensor | None]:
    z = torch.randn(4, g.latent_dim, generator=torch.Generator().manual_seed(0))
    return z, (torch.arange(4) if g.num_classes else None)


@pytest.mark.parametrize("run", RUNS, indirect=True)
def test_an_old_run_evaluates_samples_and_exports(run, tmp_path):
    result = cli("eval", f"run={run}", *SMALL, "evaluator.num_generated=20")
    assert result.returncode == 0, result.stderr
    (report,) = (run / "eval").glob("*.json")
    assert json.loads(report.read_text())["metrics"]["fd"] > 0

    out = tmp_path / "grid.png"
    result = cli("sample", f"run={run}", "sampler.num_images=4", f"out={out}")
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size[0] > 16

    result = cli("export", f"run={run}", f"out={tmp_path / 'export'}")
    assert result.returncode == 0, result.stderr
    old, new = load_generator(run / "export"), load_generator(tmp_path / "export")
    z, labels = _noise(old)
    images = old(z, labels)
    assert images.shape == (4, 1, 16, 16) and images.abs().max() <= 1
    assert torch.equal(images, new(z, labels))  # the same weights, sampled the same way


@pytest.mark.parametrize("run", RUNS, indirect=True)
def test_an_old_run_resumes(run):
    before = weights(run)
    overrides = json.loads((run / "run.json").read_text())["overrides"]
    args = [*overrides, "trainer.max_steps=6", "trainer.resume=auto", f"hydra.run.dir={run}"]
    result = cli("train", *args)
    assert result.returncode == 0, result.stderr
    after = weights(run)
    assert (before["step"], after["step"]) == (4, 6)
    assert any(not torch.equal(before["model"][k], after["model"][k]) for k in before["model"])
