"""genlab's Optuna search (genlab.search, hydra/sweeper=optuna): the search space by value, shared
studies run by real worker processes, a killed worker's trial, pruning, and the report."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from genlab.errors import ConfigError
from genlab.search import storage
from genlab.search_space import search_space
from tests.conftest import ROOT, cli, finish

optuna = pytest.importorskip("optuna")

TRIAL = ["model=gan", "dataset=digits", "trainer=smoke", "logger=none", "trainer.eval_every=null"]


def test_the_search_space_by_value():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    params = {
        "optimizer.lr": "tag(log, interval(1e-5, 1e-3))",
        "model.latent_dim": "int(interval(8, 64))",
        "loss.beta": "interval(1, 2)",
        "loss": "choice(bce, hinge)",
        "trainer.batch_size": "range(16, 64, 16)",
    }
    space, keys, fixed = search_space(params, ["trainer.seed=0,1", "+extra.key=3", "model=gan"])
    assert space == {
        "optimizer.lr": FloatDistribution(1e-5, 1e-3, log=True),
        "model.latent_dim": IntDistribution(8, 64),
        "loss.beta": FloatDistribution(1.0, 2.0),
        "loss": CategoricalDistribution(["bce", "hinge"]),
        "trainer.batch_size": IntDistribution(16, 48, step=16),  # range: the end excluded
        "trainer.seed": CategoricalDistribution([0, 1]),
    }
    assert keys["loss"] == "loss" and fixed == ["+extra.key=3", "model=gan"]
    with pytest.raises(ConfigError, match="hydra.sweeper.params is empty"):
        search_space({}, ["model=gan"])


def test_storage_by_its_name(tmp_path):
    assert storage(None) is None
    assert storage("postgresql://db/genlab") == "postgresql://db/genlab"
    assert storage(str(tmp_path / "s.db")) == f"sqlite:///{tmp_path / 's.db'}"
    journal = storage(str(tmp_path / "new" / "study.log"))
    assert isinstance(journal, optuna.storages.JournalStorage)
    assert (tmp_path / "new").is_dir()


def test_seeded_workers_draw_apart(tmp_path):
    """Each worker of a study's folder has a number; a seeded sampler draws from seed + it:
    the first as the seed says, the others elsewhere (N workers of one config would otherwise
    run the same trials)."""
    from omegaconf import OmegaConf
    from optuna.distributions import FloatDistribution

    from genlab.search import _worker_number
    from genlab.search_space import sampler as _sampler

    assert [_worker_number(tmp_path) for _ in range(3)] == [0, 1, 2]  # one worker after another
    cfg = OmegaConf.create({"_target_": "optuna.samplers.RandomSampler", "seed": 7})
    space = {"x": FloatDistribution(0, 1)}

    def first(sampler) -> float:
        return optuna.create_study(sampler=sampler).ask(space).params["x"]

    assert first(_sampler(cfg, space, 0)) == first(optuna.samplers.RandomSampler(seed=7))
    assert first(_sampler(cfg, space, 1)) == first(optuna.samplers.RandomSampler(seed=8))
    assert first(_sampler(cfg, space, 1)) != first(_sampler(cfg, space, 0))


def _worker(folder, *args: str, n_trials: int = 9) -> subprocess.Popen:
    """One `genlab train` worker of the journal study in `folder`, in a process of its own."""
    command = [
        *("train", "-m", *TRIAL, "hydra/sweeper=optuna", "optimized_metric=loss/g"),
        f"hydra.sweep.dir={folder / 'runs'}",
        f"hydra.sweeper.storage={folder / 'study.log'}",
        "hydra.sweeper.study_name=test",
        f"hydra.sweeper.n_trials={n_trials}",
        *args,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "genlab", *command],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _load(folder):
    return optuna.load_study(
        study_name="test", storage=storage(str(folder / "study.log"))
    ).get_trials()


@pytest.mark.slow
def test_three_workers_share_one_study_of_nine_trials(tmp_path):
    """Three processes, one journal file, a 3 x 3 grid: nine trials, each point once, each a
    finished run folder named by its trial number."""
    grid = [
        "hydra.sweeper.sampler._target_=optuna.samplers.GridSampler",
        "optimizer.lr=choice(1e-4, 2e-4, 3e-4)",
        "trainer.seed=choice(0, 1, 2)",
    ]
    workers = [_worker(tmp_path, *grid) for _ in range(3)]
    for proc in workers:
        out, err = finish(proc, timeout=300)
        assert proc.returncode == 0, err[-3000:]
    trials = _load(tmp_path)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 9
    points = {(t.params["optimizer.lr"], t.params["trainer.seed"]) for t in trials}
    assert len(points) == 9  # no point run twice
    for t in trials:
        record = json.loads((tmp_path / "runs" / str(t.number) / "run.json").read_text())
        assert record["status"] == "finished"
        assert record["params"]["trainer.seed"] == t.params["trainer.seed"]
        assert math.isclose(record["objective"]["value"], t.value)


@pytest.mark.slow
@pytest.mark.parametrize(("launcher", "db"), [("basic", None), ("submitit_local", "study.db")])
def test_n_jobs_starts_workers_in_processes_of_their_own(launcher, db, tmp_path):
    """hydra.sweeper.n_jobs=2: two worker processes (joblib's on this machine, or submitit
    jobs, as a SLURM array would run them) share a journal file in the sweep folder (or a SQLite
    file whose tables the first makes) and run the 4 points of a grid once each."""
    if launcher != "basic":
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    named = (
        [f"hydra.sweeper.storage={tmp_path / db}", "hydra.sweeper.study_name=search"] if db else []
    )
    result = cli(
        *("train", "-m", *TRIAL, "hydra/sweeper=optuna", "optimized_metric=loss/g"),
        *named,
        f"hydra/launcher={launcher}",
        "hydra.sweeper.sampler._target_=optuna.samplers.GridSampler",
        "optimizer.lr=choice(1e-4, 2e-4)",
        "trainer.seed=choice(0, 1)",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=4",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    shared = storage(str(tmp_path / (db or ".study/study.log")))
    trials = optuna.load_study(study_name="search", storage=shared).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert len({tuple(t.params.values()) for t in trials}) == 4
    first, second = sorted(trials, key=lambda t: t.datetime_start)[:2]
    assert second.datetime_start < first.datetime_complete  # two at once
    assert all((tmp_path / str(t.number) / "run.json").is_file() for t in trials)


@pytest.mark.slow
def test_a_killed_workers_trial_is_run_again_when_a_worker_restarts(tmp_path):
    """SIGKILL during trial 0: the study holds it as running until a worker starts again,
    which records it failed, runs its parameters again (retry_failed=1), and completes."""
    common = ["optimizer.lr=choice(1e-4, 2e-4)", "hydra.sweeper.retry_failed=1"]
    proc = _worker(tmp_path, *common, "trainer.max_steps=100000", "trainer.log_every=1", n_trials=2)
    record = tmp_path / "runs" / "0" / "run.json"
    deadline = time.time() + 120
    while not (record.is_file() and '"running"' in record.read_text()):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    [killed] = _load(tmp_path)
    assert killed.state.name == "RUNNING"

    again = _worker(tmp_path, *common, n_trials=2)
    out, err = finish(again, timeout=300)
    assert again.returncode == 0, err[-3000:]
    assert "trial 0: its worker died; recorded failed" in out
    trials = _load(tmp_path)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[1].params == killed.params and trials[1].user_attrs["retry_of"] == 0
    assert json.loads(record.read_text())["status"] == "running"  # report: died
    result = cli("report", str(tmp_path / "runs"))
    assert "0: died" in result.stdout + result.stderr


def test_a_diverging_learning_rate_is_pruned_before_its_last_step(tmp_path):
    """The median pruner on the VAE's in-training negative ELBO: the run at lr 0.01 scores
    worse than the run at 1e-3 at its first evaluation and stops there, recorded pruned by
    Optuna, by its run.json and by genlab report; the study loads in another process."""
    journal = storage(str(tmp_path / "study.log"))
    study = optuna.create_study(study_name="test", storage=journal)
    study.enqueue_trial({"optimizer.lr": 1e-3})
    study.enqueue_trial({"optimizer.lr": 0.01})
    result = cli(
        *("train", "-m", "model=vae", *TRIAL[1:], "hydra/sweeper=optuna"),
        "optimized_metric=eval/neg_elbo",
        "trainer.max_steps=30",
        "trainer.eval_every=10",
        "evaluator.num_generated_cheap=200",
        "optimizer.lr=choice(1e-3, 0.01)",
        "hydra.sweeper.pruner={_target_: optuna.pruners.MedianPruner, n_startup_trials: 1}",
        f"hydra.sweep.dir={tmp_path / 'runs'}",
        f"hydra.sweeper.storage={tmp_path / 'study.log'}",
        "hydra.sweeper.study_name=test",
        "hydra.sweeper.n_trials=2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    good, bad = _load(tmp_path)
    assert (good.state.name, bad.state.name) == ("COMPLETE", "PRUNED")
    assert sorted(good.intermediate_values) == [10, 20, 30]
    assert list(bad.intermediate_values) == [10]
    record = json.loads((tmp_path / "runs" / "1" / "run.json").read_text())
    assert record["status"] == "pruned"
    assert record["reason"].startswith("stopped by the study's pruner at step")
    assert (
        "1: pruned: stopped by the study's pruner" in cli("report", str(tmp_path / "runs")).stdout
    )
    path = str(tmp_path / "study.log")
    code = f"from genlab.search import storage; import optuna; s = storage({path!r}); " + (
        "print([t.state.name for t in optuna.load_study(study_name='test', storage=s).trials])"
    )
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == (
        "['COMPLETE', 'PRUNED']"
    )


def test_a_search_that_cannot_run_is_one_message_and_writes_no_run(tmp_path):
    search = [*TRIAL, "hydra/sweeper=optuna", "optimizer.lr=choice(1e-4, 2e-4)"]
    result = cli("train", "-m", *search, "hydra.sweeper.n_jobs=0", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 1
    assert "hydra.sweeper.n_jobs must be at least 1, got 0" in result.stderr
    result = cli("train", "-m", *search, "hydra/launcher=joblib", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 1
    assert "hydra/launcher=JoblibLauncher: the Optuna sweeper starts its" in result.stderr
    named = [f"hydra.sweeper.storage={tmp_path / 'study.log'}", f"hydra.sweep.dir={tmp_path}"]
    result = cli("train", "-m", *search, *named)
    assert result.returncode == 1
    assert "needs hydra.sweeper.study_name: the name other workers join the study by" in (
        result.stderr
    )
    assert not list(tmp_path.rglob("run.json"))
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "run.json").write_text('{"status": "finished"}')
    result = cli("train", "-m", *search, f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 1
    assert f"the sweep folder {tmp_path} holds runs ({tmp_path / '0'})" in result.stderr
    assert (tmp_path / "0" / "run.json").read_text() == '{"status": "finished"}'
