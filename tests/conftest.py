"""Shared helpers: compose configs with Hydra's compose API, run the real CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from genlab.config import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]


def make_cfg(*overrides: str) -> DictConfig:
    """The composed `train` config, as `genlab train OVERRIDES` would see it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


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
