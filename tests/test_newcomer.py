"""A new user's first commands: quiet on a healthy run, errors as one line."""

import json
import os
import re
import stat
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, TINY_NETWORKS, cli, make_cfg, run_cli, tiered


@pytest.mark.slow  # five fresh processes: make test-all and CI
def test_a_healthy_run_s_commands_print_no_warning(tmp_path):
    """train (into the default run folder), eval, sample, export and report, each in a fresh
    process as a user runs them: stderr holds no Python warning (progress bars and genlab's own
    log lines are allowed)."""
    outputs = {}
    outputs["train"] = run_cli("train", "trainer=smoke", "trainer.eval_every=null", cwd=tmp_path)
    (run,) = (tmp_path / "outputs").glob("dcgan_mnist5k/*")
    for command in (
        ["eval", f"run={run}", "evaluator.num_generated=100", "evaluator.num_generated_cheap=100"],
        ["sample", f"run={run}"],
        ["export", f"run={run}"],
        ["report", str(tmp_path / "outputs")],
    ):
        outputs[command[0]] = run_cli(*command, cwd=tmp_path)
    for name, result in outputs.items():
        assert result.returncode == 0, f"{name}: {result.stderr[-2000:]}"
        assert "Warning" not in result.stderr, f"{name}: {result.stderr[-2000:]}"
    assert "Warning" not in (run / "train.log").read_text()

    # a single run's folder is not a report's: refused, naming the folder that holds the runs
    single = run_cli("report", str(run), cwd=tmp_path)
    assert single.returncode == 2 and f"genlab report {run.parent}" in single.stderr
    assert not (run / "report.md").exists()


def test_resume_as_written_continues_a_run_with_its_own_settings(tmp_path):
    """`genlab train trainer.resume=auto hydra.run.dir=RUN`, with nothing of RUN's settings
    retyped: RUN's loss, model and data go on; what is given now applies on top; the end of the
    run says how to continue, evaluate, sample and export it."""
    run = tmp_path / "run"
    quick = ["logger=none", "trainer.eval_every=null", "trainer.sample_every=0"]
    first = cli(
        "train", "model=gan", "loss=hinge", "trainer.max_steps=3", *quick, f"hydra.run.dir={run}"
    )
    assert first.returncode == 0, first.stderr
    assert f"Continue it: genlab train hydra.run.dir={run} trainer.resume=auto" in first.stdout
    assert (
        f"genlab eval run={run} | genlab sample run={run} | genlab export run={run}" in first.stdout
    )

    again = cli("train", "trainer.resume=auto", f"hydra.run.dir={run}", "trainer.max_steps=5")
    assert again.returncode == 0, again.stderr
    assert "Resumed at step 3" in again.stdout
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 5 and "genlab.losses.Hinge" in state["config"]

    # a checkpoint named instead of the folder: the same settings
    last = cli(
        "train",
        f"trainer.resume={run / 'checkpoints' / 'last.pt'}",
        f"hydra.run.dir={run}",
        "trainer.max_steps=6",
    )
    assert last.returncode == 0, last.stderr
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 6

    # what would change the model is refused, as for any resume
    other = cli(
        "train", "trainer.resume=auto", f"hydra.run.dir={run}", "trainer.max_steps=8", "loss=bce"
    )
    assert other.returncode == 1 and "differs from the checkpoint" in other.stderr


@pytest.mark.parametrize(
    ("words", "line", "status"),
    [
        (
            ["train", "trainer.max_step=5"],
            "genlab train: trainer.max_step is not a setting; did you mean trainer.max_steps",
            2,
        ),
        (["train", "model=dcgna"], "model=dcgna is not an option of model; did you mean dcgan", 2),
        (["train", "model=vae", "model.latnt_dim=3"], "did you mean model.latent_dim?", 2),
        (["eval", "run=x", "evaluator.num_generatd=9"], "did you mean evaluator.num_generated", 2),
        (
            ["train", "+trainer.max_step=5"],
            "unknown key for genlab.trainer.Trainer; did you mean max_steps?",
            1,
        ),
        (["train", "trainer.max_steps=-3"], "trainer.max_steps must be >= 1, got -3", 1),
    ],
)
def test_an_error_is_one_line_with_the_nearest_names(words, line, status, tmp_path):
    """genlab's own message, without Hydra's wrapper lines or its advice to add `+`; exit 2 for
    a mistyped key or option (usage), 1 for a value genlab refuses."""
    result = cli(*words, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == status, result.stderr
    assert line in result.stderr
    assert "Error executing job" not in result.stderr and "HYDRA_FULL_ERROR" not in result.stderr
    assert "+trainer" not in result.stderr.replace("+trainer.max_step=5", "")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "run").exists()


def test_an_export_is_readable_by_others_under_the_users_umask(tmp_path):
    """Every file and folder of a diffusion export, the diffusers pipeline's weights too (which
    diffusers writes 0600), has the modes of the user's own files: 0644 and 0755 under 022."""
    run = ROOT / "tests" / "fixtures" / "runs_17b1089" / "ddpm"
    old = os.umask(0o022)
    try:
        result = run_cli("export", f"run={run}", f"out={tmp_path / 'export'}")
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    paths = [tmp_path / "export", *(tmp_path / "export").rglob("*")]
    assert any(p.name == "diffusion_pytorch_model.safetensors" for p in paths)
    modes = {p.relative_to(tmp_path): stat.S_IMODE(p.stat().st_mode) for p in paths}
    assert modes == {p: 0o755 if (tmp_path / p).is_dir() else 0o644 for p in modes}


def test_a_dit_export_says_in_one_sentence_why_it_has_no_pipeline(tmp_path):
    from genlab.config import build_model
    from genlab.data import mnist5k
    from genlab.files import Outputs

    cfg = make_cfg("model=dit", *TINY_NETWORKS["dit"])
    model = build_model(cfg, mnist5k(split="test"))
    exported = model.export_sampler(cfg.model)
    message = exported.extra(Outputs(tmp_path), "")
    assert message == (
        "No diffusers pipeline: diffusers has no class for this network (genlab's export above "
        "samples it)."
    )


@pytest.mark.parametrize("model", tiered(["gan", "vae", "pixelcnn"], fast={"gan"}))
def test_only_a_diffusion_run_imports_diffusers(model, tmp_path):
    """diffusers takes seconds to import: a GAN, VAE or PixelCNN run (a smoke run, with its
    grid and checkpoint) never imports it (-X importtime lists every module imported)."""
    tiny = TINY_NETWORKS.get(model, [])
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "genlab", "train", f"model={model}"]
        + ["trainer=smoke", "logger=none", "trainer.eval_every=null", *tiny]
        + [f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    imported = [line.rpartition("|")[2].strip() for line in result.stderr.splitlines()]
    assert "torch" in imported  # the listing is there
    assert not [m for m in imported if m.split(".")[0] == "diffusers"]
    assert not [m for m in imported if m.split(".")[0] == "torchmetrics"]


def test_a_job_s_log_gets_a_line_per_logging_step_and_no_bar(tmp_path):
    """Output to a file (a cluster job's log): no `\\r` bar; each logging step is a line, in the
    output and in train.log, with the step, the values, images/s and the time left."""
    run = tmp_path / "run"
    result = run_cli(
        "train",
        "model=gan",
        "trainer.max_steps=20",
        "trainer.log_every=10",
        "logger=none",
        "trainer.eval_every=null",
        f"hydra.run.dir={run}",
    )
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr + result.stdout
    lines = [line for line in result.stdout.splitlines() if "] - step " in line]
    assert [line.split("] - ")[1].split(":")[0] for line in lines] == ["step 10/20", "step 20/20"]
    assert "images_per_s" in lines[0] and lines[0].endswith(" left")
    logged = (run / "train.log").read_text()
    assert all(line.split("] - ")[1] in logged for line in lines)


def _scalars(run, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (run / "tb").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


def test_keep_best_keeps_the_best_step_across_a_resume(tmp_path):
    """trainer.keep_best=loss/d: checkpoints/best.pt holds the step where the logged loss/d
    was lowest, also when the run was resumed halfway (the record travels in the checkpoint);
    run.json says which, and best.pt evaluates like any checkpoint."""
    common = ["model=gan", "trainer.log_every=1", "trainer.eval_every=null"]
    common += ["trainer.keep_best=loss/d", "trainer.sample_every=0", "trainer.ckpt_every=3"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert cli("train", *common, "trainer.max_steps=8", f"hydra.run.dir={whole}").returncode == 0
    assert cli("train", *common, "trainer.max_steps=3", f"hydra.run.dir={part}").returncode == 0
    resumed = cli("train", "trainer.resume=auto", f"hydra.run.dir={part}", "trainer.max_steps=8")
    assert resumed.returncode == 0, resumed.stderr

    losses = _scalars(whole, "loss/d")
    step = min(losses, key=losses.get)
    for run in (whole, part):
        best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
        assert best["best"] == {"name": "loss/d", "value": losses[step], "step": step}
        assert best["step"] == step and "config" in best and "optimizers" not in best
    a, b = (
        torch.load(r / "checkpoints" / "best.pt", weights_only=True)["model"] for r in (whole, part)
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    record = json.loads((part / "run.json").read_text())
    assert record["metrics"]["best/step"] == step
    assert f"Best loss/d {losses[step]:.6g} at step {step}" in resumed.stdout

    refused = cli(
        "train",
        "trainer.keep_best=eval/fd",
        "trainer.eval_every=null",
        f"hydra.run.dir={tmp_path / 'x'}",
    )
    assert refused.returncode == 1 and "keep_best=eval/fd needs evaluations" in refused.stderr


def test_likelihoods_print_their_units():
    from genlab.evaluation import Report, format_table

    table = format_table(
        Report({"fd": 2.5, "neg_elbo": 4981.2, "neg_elbo_bits_per_dim": 9.17, "psnr": 30.1}, {})
    )
    lines = dict(line.split(None, 1) for line in table.splitlines() if line.strip())
    assert lines == {
        "fd": "2.5",
        "neg_elbo": "4981.2 nats/image",
        "neg_elbo_bits_per_dim": "9.17 bits/dim",
        "psnr": "30.1 dB",
    }


def test_a_vae_logs_its_objective_apart_from_the_evaluated_bound(tmp_path):
    """The VAE's training terms are `loss/loss`, `loss/recon` and `loss/kl`, never `neg_elbo`
    (the evaluated bound's name), and the log line gives their units. HParams lists the kept
    metric first, then the evaluation's, then the losses (it shows five by default)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from genlab.commands.train import train
    from genlab.progress import log_line

    cfg = make_cfg(
        "model=vae_mlp",
        "dataset=digits",
        "trainer=smoke",
        "trainer.eval_every=0",
        "trainer.keep_best=loss/kl",
        "evaluator.num_generated_cheap=50",
        "logger=tensorboard",
    )
    values = train(cfg, run_dir=tmp_path)
    assert {"loss/loss", "loss/recon", "loss/kl", "eval/neg_elbo"} <= set(values)
    assert not [k for k in values if "elbo" in k and not k.startswith("eval/")]
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/experiment"]
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content).experiment
    tags = [m.name.tag for m in experiment.metric_infos]
    assert tags[0] == "loss/kl" and tags[1].startswith("eval/")
    assert tags[1:] == sorted(tags[1:], key=lambda tag: not tag.startswith("eval/"))
    terms = {k: 1.0 for k in ("loss/loss", "loss/recon", "loss/kl", "loss/bits_per_dim")}
    line = log_line(10, 0, 20, terms, 5.0)
    assert line == (
        "step 10/20: loss 1, recon 1 nats/image, kl 1 nats/image, bits_per_dim 1; 5 s left"
    )


def test_a_run_says_at_its_start_that_its_evaluation_trains_a_classifier(tmp_path):
    """A first evaluation on a data set trains its classifier: the run says so before it
    trains, not at its end; away from a terminal each evaluation phase is a line with counts
    and seconds."""
    result = run_cli(
        "train",
        "model=vae_mlp",
        "dataset=digits",
        "trainer=smoke",
        "trainer.eval_every=0",
        "evaluator.classifier_steps=20",
        "evaluator.num_generated_cheap=50",
        f"hydra.run.dir={tmp_path / 'run'}",
        env={"GENLAB_CACHE": str(tmp_path / "cache")},
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    announced = out.index("The first evaluation trains the evaluation classifier digits-1x32px")
    assert announced < out.index("5 steps of")
    assert re.search(r"classifier: [\d.]+% accuracy on the test split \(trained in \d+ s\)", out)
    assert re.search(r"Evaluation: generated 50 images in [\d.]+ s", out)
    assert re.search(r"Evaluation: features of 50 generated images in [\d.]+ s", out)
    assert re.search(r"Evaluation: likelihood of \d+ held-out images in [\d.]+ s", out)


def test_the_time_left_leaves_out_a_slow_first_step(tmp_path, monkeypatch, caplog):
    """A first step that builds (compile, reflow's pairs) would make the first estimates hours:
    the time left comes from the steps after it."""
    import logging
    import time

    from genlab.commands.train import train
    from genlab.models.vae import VAE

    step = VAE.train_step

    def slow_first(self, *args, **kwargs):
        if not self.__dict__.get("_slowed"):
            self.__dict__["_slowed"] = True
            time.sleep(3.0)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(VAE, "train_step", slow_first)
    cfg = make_cfg("model=vae_mlp", "dataset=digits", "trainer=smoke", "trainer.log_every=5")
    cfg.trainer.update(max_steps=10, eval_every=None, sample_every=0, progress=False)
    with caplog.at_level(logging.INFO, logger="genlab.trainer"):
        train(cfg, run_dir=tmp_path)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step 5/")]
    assert line.endswith("; 0 s left")  # not 3 s: the first step is not in the rate
