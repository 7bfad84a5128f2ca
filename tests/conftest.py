"""Shared helpers: compose configs with Hydra's compose API, run the real CLI in a subprocess."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from genlab.config import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]
# Classifiers and reference statistics are cached per process that imports this module, never in
# the user's ~/.cache, and removed when that process ends.
os.environ["GENLAB_CACHE"] = tempfile.mkdtemp(prefix="genlab-test-cache-")
atexit.register(shutil.rmtree, os.environ["GENLAB_CACHE"], ignore_errors=True)
# Nothing is downloaded: diffusers and huggingface_hub may read only local files.
os.environ["HF_HUB_OFFLINE"] = "1"

# Overrides for networks of a few thousand parameters and few solver steps: tests that run
# every conf/model stay short.
TINY_NETWORKS = {
    "sngan": ["model.generator.features=16", "model.discriminator.features=16"],
    "sngan_projection": ["model.generator.features=16", "model.discriminator.features=16"],
    "ddpm": [
        "model.network.features=[8,16]",
        "model.network.attention=[false,true]",
        "model.network.groups=4",
        "solver.steps=4",
    ],
    # sampling costs a network pass per sub-pixel: small images and grids
    "pixelcnn": [
        "model.network.features=8",
        "model.network.layers=2",
        "model.grid_images=4",
        "dataset.image_size=12",
    ],
    "dit": [
        "model.network.width=16",
        "model.network.depth=1",
        "model.network.heads=2",
        "solver.steps=4",
    ],
}


def make_cfg(*overrides: str, config_name: str = "train") -> DictConfig:
    """A command's composed config (train, sample, eval), as `genlab CMD OVERRIDES` sees it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name, overrides=list(overrides))


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 300):
    """`genlab ARGS` in a fresh process (the installed console script's code path)."""
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "genlab", *args],
        cwd=cwd or ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def cfg_factory():
    return make_cfg


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[str, str]:
    """`proc.communicate(timeout)`, killing the process if it times out, so that a failed test
    leaves no training run behind to slow the rest of the suite."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
