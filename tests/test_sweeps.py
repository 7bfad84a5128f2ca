"""Sweeps: run records, failed trials, `genlab report`, HParams, Optuna and launcher presets."""

import csv
import json
import shutil
import time

import pytest
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from genlab.checkpoint import load_checkpoint
from genlab.commands.eval import save_report
from genlab.commands.report import report
from genlab.config import CONF_DIR
from genlab.evaluation import Report
from tests.conftest import cli, run_cli

TINY = ["model=gan", "dataset=digits", "trainer=smoke", "trainer.sample_every=5"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """lr in {1e-4, 2e-4, -1 (fails)} x seed in {0, 1}, ranked by the logged lr (known answer)."""
    folder = tmp_path_factory.mktemp("sweep")
    result = cli(
        "train",
        "-m",
        *TINY,
        "optimizer.lr=2e-4,1e-4,-1",
        "trainer.seed=0,1",
        "optimized_metric=lr/g",
        f"hydra.sweep.dir={folder}",
    )
    # every job ran; the two that failed make the sweep exit non-zero, and it says which
    assert result.returncode == 1, result.stderr[-3000:]
    assert "2 of 6 jobs did not finish:" in result.stderr
    assert "failed: optimizer.lr must be > 0, got -1" in result.stderr
    return folder


def test_every_job_writes_a_record(sweep):
    records = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/run.json"))]
    assert len(records) == 6
    finished = [r for r in records if r["status"] == "finished"]
    assert len(finished) == 4
    r = finished[0]
    assert (
        r["objective"]["name"] == "lr/g" and r["objective"]["value"] == r["params"]["optimizer.lr"]
    )
    assert r["steps"] == 5 and r["wall_time_s"] > 0 and r["images_per_s"] > 0
    assert r["peak_memory"]["host_mb"] > 0 and r["versions"]["torch"]
    assert r["choices"]["model"] == "gan" and "trainer.seed" in r["params"]
    failed = [r for r in records if r["status"] == "failed"]
    assert len(failed) == 2 and all("optimizer.lr must be > 0" in r["reason"] for r in failed)


def test_report_ranks_groups_seeds_and_lists_failures(sweep):
    text = report(sweep)
    lines = text.splitlines()
    assert lines[0] == "4 finished, 2 failed; ranked by lr/g (minimize)"
    assert lines[2].split()[:4] == ["1", "0.0001", "0.0001", "±"]  # best: lr 1e-4, 2 seeds
    assert lines[3].split()[:2] == ["2", "0.0002"]
    assert "optimizer.lr must be > 0, got -1" in text
    rows = list(csv.DictReader((sweep / "report.csv").read_text().splitlines()))
    assert [float(r["optimizer.lr"]) for r in rows] == [1e-4, 2e-4]
    assert [r["seeds"] for r in rows] == ["2", "2"] and float(rows[0]["lr/g std"]) == 0
    assert "## Runs that did not finish" in (sweep / "report.md").read_text()
    for png in ("report.png", "best.png"):
        assert (sweep / png).stat().st_size > 1000
    text = report(sweep, metric="eval/fd")
    assert "not ranked: no finished run logged eval/fd (--metric NAME ranks by one of: " in text


def test_report_columns_take_each_runs_latest_evaluation(sweep, tmp_path):
    """`--columns` adds mean ± std over seeds; a run's `genlab eval` report replaces its
    end-of-run eval/* values (here: an older and a newer report of one run, none of another)."""
    folder = tmp_path / "sweep"
    shutil.copytree(sweep, folder)
    runs = {}
    for path in folder.glob("*/run.json"):
        record = json.loads(path.read_text())
        if record["status"] == "finished":
            runs[(record["params"]["optimizer.lr"], record["params"]["trainer.seed"])] = path.parent
    protocol = {"features": "classifier-8px", "num_generated": 50, "num_real": 179}
    protocol.update(dataset="digits", real_split="test")
    # lr 1e-4: seed 0 evaluated twice (the newer counts), seed 1 once
    save_report(Report({"fd": 99.0, "kid": 9.0}, protocol), runs[(1e-4, 0)], 4, "a.pt")
    time.sleep(0.01)
    save_report(Report({"fd": 2.0, "kid": 0.5}, protocol), runs[(1e-4, 0)], 5, "b.pt")
    save_report(Report({"fd": 4.0, "kid": 0.25}, protocol), runs[(1e-4, 1)], 5, "b.pt")
    save_report(Report({"fd": 1.0, "kid": 0.125}, protocol), runs[(2e-4, 0)], 5, "b.pt")
    text = report(folder, metric="eval/fd", columns=["eval/kid", "wall_time_s"])
    assert "ranked by eval/fd (minimize); eval/* from the latest `genlab eval` of 3 of 4 runs" in (
        text
    )
    # the metric's protocol, each kind once: three genlab evals, one end-of-run evaluation
    assert (
        "measured with classifier features, 1000 generated vs the test split, end of run | " in text
    )
    assert "classifier-8px features, 50 generated vs 179 real (digits test), genlab eval" in text
    rows = list(csv.DictReader((folder / "report.csv").read_text().splitlines()))
    by_lr = {float(r["optimizer.lr"]): r for r in rows}
    assert float(by_lr[1e-4]["eval/fd mean"]) == 3.0  # (2 + 4) / 2
    assert float(by_lr[1e-4]["eval/fd std"]) == pytest.approx(2**0.5)  # sample std of 2 and 4
    assert float(by_lr[1e-4]["eval/kid mean"]) == 0.375
    # lr 2e-4: one evaluated seed; the other seed's end-of-run record has no eval/fd
    assert float(by_lr[2e-4]["eval/fd mean"]) == 1.0 and float(by_lr[2e-4]["eval/fd std"]) == 0
    walls = [json.loads((runs[(1e-4, s)] / "run.json").read_text())["wall_time_s"] for s in (0, 1)]
    assert float(by_lr[1e-4]["wall_time_s mean"]) == pytest.approx(sum(walls) / 2)
    assert [float(r["optimizer.lr"]) for r in rows] == [2e-4, 1e-4]  # ranked by eval/fd
    header = (folder / "report.md").read_text().splitlines()[4]
    assert header.split(" | ")[2:4] == ["eval/fd", "eval/kid"]


def test_a_sweep_into_a_folder_of_runs_is_refused(sweep):
    before = sorted(p.stat().st_mtime_ns for p in sweep.rglob("*") if p.is_file())
    result = cli("train", "-m", *TINY, "optimizer.lr=1e-4", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"the sweep folder {sweep} already holds runs" in result.stderr
    assert sorted(p.stat().st_mtime_ns for p in sweep.rglob("*") if p.is_file()) == before


def test_tensorboard_run_names_and_hparams(sweep):
    (events,) = [p for p in sweep.glob("*/tb/*") if "optimizer.lr=0.0001" in p.name][:1]
    # the run name shows the settings the sweep varies, not those every job shares
    assert events.name in (
        "optimizer.lr=0.0001,trainer.seed=0",
        "optimizer.lr=0.0001,trainer.seed=1",
    )
    assert "model=gan" not in events.name
    acc = EventAccumulator(str(events))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["optimizer.lr"].number_value == pytest.approx(1e-4)
    assert start.hparams["model"].string_value == "gan"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    experiment = experiment.experiment
    tags = [m.name.tag for m in experiment.metric_infos]
    assert tags == ["loss/d", "loss/g"]  # no evaluation: the losses (test_newcomer: the order)
    differ = {h.name for h in experiment.hparam_infos if h.differs}
    assert differ == {"optimizer.lr", "trainer.seed"}
    # the dashboard shows five by default, in TensorBoard's own order: those that differ first
    from tensorboard.plugins.hparams.backend_context import _sort_and_reduce_to_hparams_limit

    _sort_and_reduce_to_hparams_limit(experiment, 5)
    assert [h.name for h in experiment.hparam_infos][:2] == ["optimizer.lr", "trainer.seed"]


def test_optuna_sweep_finishes_and_reports_its_best(tmp_path):
    pytest.importorskip("optuna")
    result = cli(
        "train",
        "hparams_search=vae_optuna",
        "dataset=digits",
        "trainer=smoke",
        "logger=none",
        "trainer.eval_every=null",
        "optimized_metric=loss/loss",
        "hydra.sweeper.n_trials=3",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Best trial" in result.stdout + result.stderr
    best = (tmp_path / "optimization_results.yaml").read_text()
    assert "model.latent_dim" in best and "best_value" in best
    assert len(list(tmp_path.glob("*/run.json"))) == 3


def test_a_bad_objective_is_refused_before_training(tmp_path):
    result = cli("train", *TINY, "optimized_metric=eval/fd", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 1
    assert "optimized_metric=eval/fd needs an evaluation" in result.stderr
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_a_sweep_on_the_joblib_launcher_runs_its_jobs_in_processes(tmp_path):
    """The real launcher: two jobs at once, each a finished run folder with its own settings."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    result = run_cli(
        "train",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "model=gan,vae",
        "trainer=smoke",
        "logger=none",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for job, model in (("0", "gan"), ("1", "vae")):
        assert json.loads((tmp_path / job / "run.json").read_text())["status"] == "finished"
        assert f"model={model}" in (tmp_path / job / ".hydra" / "overrides.yaml").read_text()
        assert load_checkpoint(tmp_path / job / "checkpoints" / "last.pt")["step"] == 5


@pytest.mark.parametrize(
    ("launcher", "target"),
    [("slurm", "SlurmLauncher"), ("joblib", "JoblibLauncher"), ("basic", "BasicLauncher")],
)
def test_launcher_presets_compose(launcher, target):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", [f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "slurm":
        assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.timeout_min == 240


@pytest.mark.parametrize(
    ("preset", "metric", "model"),
    [("dcgan_optuna", "eval/fd", "dcgan"), ("vae_optuna", "eval/neg_elbo", "vae")],
)
def test_search_presets_set_their_objective(preset, metric, model):
    pytest.importorskip("optuna")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", [f"hparams_search={preset}"], return_hydra_config=True)
    assert cfg.optimized_metric == metric and cfg.trainer.eval_every == 500
    assert cfg.hydra.sweeper.direction == "minimize"
    assert cfg.hydra.sweeper.pruner._target_ == "optuna.pruners.MedianPruner"
    assert cfg.hydra.runtime.choices.model == model
