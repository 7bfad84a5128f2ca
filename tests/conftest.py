"""Shared helpers: compose configs with Hydra's compose API, run the real CLI in a subprocess."""

from __future__ import annotations

import atexit
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from genlab.config import CONF_DIR, fold

ROOT = Path(__file__).resolve().parents[1]
# Decoded data sets, classifiers and reference statistics are cached once per test session (never
# in the user's ~/.cache): pytest-xdist's workers and the `genlab` processes of the tests inherit
# the folder from the process that started them, which removes it when it ends.
if "GENLAB_TEST_CACHE" not in os.environ:
    os.environ["GENLAB_TEST_CACHE"] = tempfile.mkdtemp(prefix="genlab-test-cache-")
    atexit.register(shutil.rmtree, os.environ["GENLAB_TEST_CACHE"], ignore_errors=True)
os.environ["GENLAB_CACHE"] = os.environ["GENLAB_TEST_CACHE"]
if "PYTEST_XDIST_WORKER" in os.environ:  # one core per worker (and per process it starts)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
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
    "flow": [
        "model.network.features=[8,16]",
        "model.network.attention=[false,true]",
        "model.network.groups=4",
        "solver.steps=4",
    ],
    "sr3": [
        "model.network.features=[8,16]",
        "model.network.attention=[false,true]",
        "model.network.groups=4",
        "solver.steps=4",
    ],
    "dit": [
        "model.network.width=16",
        "model.network.depth=1",
        "model.network.heads=2",
        "solver.steps=4",
    ],
}
# settings that keep a model's training quick whatever its network (reflow's pairs from its teacher)
QUICK = {"reflow": ["model.pairs=16", "model.teacher.steps=2"]}
TINY_NETWORKS["reflow"] = [*TINY_NETWORKS["flow"], *QUICK["reflow"]]


def tiered(values: list[str], fast: set[str]) -> list:
    """`values` as parameters: those in `fast` run in `make test`, the others in `make test-all`
    only (marked slow), so that the full matrices run there and each value at least once here."""
    return [v if v in fast else pytest.param(v, marks=pytest.mark.slow) for v in values]


def make_cfg(*overrides: str, config_name: str = "train") -> DictConfig:
    """A command's composed config (train, sample, eval), as `genlab CMD OVERRIDES` sees it (a
    run config with the loss and solver in the model node, `config.fold`)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides))
    return fold(cfg) if config_name == "train" else cfg


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


def cli(*args: str, cwd: Path | None = None, env: dict | None = None):
    """`genlab ARGS` in this process: the dispatch, Hydra app, output and exit status of
    `run_cli` without a new interpreter's seconds of imports, for tests where neither a signal
    nor the end of the process is the point. `env` sets variables for the command's duration."""
    import hydra._internal.utils as hydra_utils
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from genlab.cli import main

    out, err, code = io.StringIO(), io.StringIO(), 0
    argv, folder, environ = sys.argv[:], os.getcwd(), dict(os.environ)
    on_term = signal.getsignal(signal.SIGTERM)
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    handlers = {id(lg): (lg.handlers[:], lg.level) for lg in loggers if hasattr(lg, "handlers")}
    os.environ.pop("HYDRA_FULL_ERROR", None)
    os.environ.update(env or {})
    os.chdir(cwd or ROOT)
    # Hydra shows a user's error as a traceback under a debugger, which it detects by a trace
    # function: coverage's (`make coverage`) is not one
    under_debugger = hydra_utils.is_under_debugger
    hydra_utils.is_under_debugger = lambda: False
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                main(list(args))
            except SystemExit as e:  # as the interpreter ends: a message is printed, status 1
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
                if e.code is not None and not isinstance(e.code, int):
                    print(e.code, file=sys.stderr)
    finally:  # the test process as it was: arguments, folder, variables, signals, logging
        hydra_utils.is_under_debugger = under_debugger
        sys.argv[:] = argv
        os.chdir(folder)
        os.environ.clear()
        os.environ.update(environ)
        signal.signal(signal.SIGTERM, on_term)
        for lg in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
            if not hasattr(lg, "handlers"):
                continue
            kept, level = handlers.get(id(lg), ([], logging.NOTSET))
            for handler in lg.handlers:
                if handler not in kept:
                    handler.close()
            lg.handlers[:] = kept
            lg.setLevel(level)
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None  # so choice() names no group of this command
    return subprocess.CompletedProcess(["genlab", *args], code, out.getvalue(), err.getvalue())


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
