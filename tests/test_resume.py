"""Runs that survive: exact resume, refused config changes, pruning, NaN guards, EMA, signals."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from genlab.checkpoint import load_checkpoint
from genlab.commands.train import train
from genlab.errors import ConfigError, GenlabError
from tests.conftest import ROOT, TINY_NETWORKS, cli, finish, make_cfg

FAST = ["trainer=smoke", "logger=none", "trainer.sample_every=0", "trainer.ckpt_every=2"]

# lazy R1 every 2 steps (across a resume at step 3) and LeCam's moving averages
R1_LECAM = ["model=gan", "loss=hinge", "loss.r1=1", "loss.reg_every=2", "loss.lecam=0.1"]


def weights(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")


def assert_identical(a, b):
    assert a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for name in a["optimizers"]:
        for pa, pb in zip(
            a["optimizers"][name]["state"].values(),
            b["optimizers"][name]["state"].values(),
            strict=True,
        ):
            assert all(torch.equal(pa[k], pb[k]) for k in pa)


def assert_resume_is_bit_identical(overrides, tmp_path, total=6, first=3):
    """`total` steps in one run equal `first` steps, a resume, and the rest, to the bit."""
    train(make_cfg(*overrides, f"trainer.max_steps={total}"), run_dir=tmp_path / "whole")
    train(make_cfg(*overrides, f"trainer.max_steps={first}"), run_dir=tmp_path / "split")
    resumed = make_cfg(*overrides, f"trainer.max_steps={total}", "trainer.resume=auto")
    train(resumed, run_dir=tmp_path / "split")
    assert_identical(weights(tmp_path / "whole"), weights(tmp_path / "split"))


@pytest.mark.parametrize(
    "setup",
    [
        ["model=gan"],
        ["model=cgan"],
        ["model=dcgan"],
        ["model=vae"],
        ["model=dcgan", "loss=wgan_gp", "model.discriminator.norm=layer"],
        [
            "model=gan",
            "model.ema_decay=0.9",
            "model.ema_start=1",
            "scheduler=cosine",
            "scheduler.T_max=6",
        ],
        ["model=dcgan", "trainer.precision=bf16", "dataset=digits"],
        ["model=gan", "trainer.precision=16-mixed", "dataset=digits"],
        R1_LECAM,
        ["model=dcgan", "model.spectral_norm=[generator,discriminator]", "dataset=digits"],
        [
            "model=pixelcnn",
            "model.conditional=true",
            "model.likelihood=logistic_mixture",
            "dataset=digits",
            *TINY_NETWORKS["pixelcnn"],
        ],
    ],
    ids=[
        "gan",
        "cgan",
        "dcgan",
        "vae",
        "wgan_gp",
        "gan_ema_cosine",
        "dcgan_bf16",
        "gan_fp16",
        "gan_r1_lecam",
        "dcgan_spectral_norm",
        "pixelcnn",
    ],
)
def test_half_plus_resume_plus_half_is_bit_identical(setup, tmp_path):
    assert_resume_is_bit_identical([*setup, *FAST], tmp_path)


def test_resume_auto_without_checkpoint_starts_fresh_and_says_so(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    train(make_cfg("model=gan", *FAST, "trainer.resume=auto"), run_dir=tmp_path)
    assert weights(tmp_path)["step"] == 5
    assert f"trainer.resume=auto: no checkpoint in {tmp_path}, so training starts at step 0" in (
        caplog.text
    )


def test_resume_from_another_run_folder(tmp_path):
    train(make_cfg("model=vae", *FAST, "trainer.max_steps=3"), run_dir=tmp_path / "a")
    cfg = make_cfg("model=vae", *FAST, "trainer.max_steps=4", f"trainer.resume={tmp_path / 'a'}")
    train(cfg, run_dir=tmp_path / "b")
    assert weights(tmp_path / "b")["step"] == 4
    assert not (tmp_path / "b" / "checkpoints" / "step_0000002.pt").exists()


def test_resume_path_that_does_not_exist(tmp_path):
    with pytest.raises(GenlabError, match="no checkpoint at"):
        train(make_cfg("model=gan", *FAST, f"trainer.resume={tmp_path}/x.pt"), run_dir=tmp_path)


def test_changed_meaning_is_refused_unless_forced(tmp_path):
    train(make_cfg("model=gan", *FAST, "trainer.max_steps=2"), run_dir=tmp_path)
    changed = ["model=gan", "loss=hinge", "dataset.image_size=28", *FAST, "trainer.resume=auto"]
    with pytest.raises(ConfigError) as error:
        train(make_cfg(*changed), run_dir=tmp_path)
    message = str(error.value)
    assert "loss._target_: genlab.losses.NonSaturating -> genlab.losses.Hinge" in message
    assert "trainer.force_resume=true" in message
    assert weights(tmp_path)["step"] == 2  # nothing written
    train(make_cfg(*changed, "trainer.force_resume=true"), run_dir=tmp_path)
    assert weights(tmp_path)["step"] == 5


def test_a_checkpoint_for_another_model_is_refused_clearly(tmp_path):
    train(make_cfg("model=gan", *FAST, "trainer.max_steps=2"), run_dir=tmp_path)
    cfg = make_cfg(
        "model=gan", "model.latent_dim=7", *FAST, "trainer.resume=auto", "trainer.force_resume=true"
    )
    with pytest.raises(GenlabError, match="does not fit this model"):
        train(cfg, run_dir=tmp_path)


def test_keep_last_prunes_periodic_checkpoints(tmp_path):
    cfg = make_cfg("model=gan", *FAST, "trainer.ckpt_every=1", "trainer.keep_last=2")
    train(cfg, run_dir=tmp_path)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["last.pt", "step_0000004.pt", "step_0000005.pt"]


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = make_cfg("model=gan", *FAST, "loss._target_=tests.helpers.NaNAt", "+loss.steps=[3]")
    with pytest.raises(GenlabError, match="step 3: 1 non-finite generator update") as e:
        train(cfg, run_dir=tmp_path)
    assert "last good checkpoint is" in str(e.value) and "trainer.on_nan=skip" in str(e.value)
    state = weights(tmp_path)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_nan_between_logging_steps_is_reported_at_the_next_one(tmp_path):
    """Between logging steps the guard skips on the device; the check at step 4 names the steps
    since the last one (the checkpoint at step 2), and the weights never saw the NaN."""
    nan_at_3 = ["loss._target_=tests.helpers.NaNAt", "+loss.steps=[3]", "trainer.log_every=4"]
    with pytest.raises(GenlabError, match="steps 3-4: 1 non-finite generator update"):
        train(make_cfg("model=gan", *FAST, *nan_at_3), run_dir=tmp_path)
    state = weights(tmp_path)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_nan_skip_counts_and_goes_on(tmp_path, caplog):
    cfg = make_cfg(
        "model=gan",
        *FAST,
        "loss._target_=tests.helpers.NaNAt",
        "+loss.steps=[2,4]",
        "trainer.on_nan=skip",
    )
    train(cfg, run_dir=tmp_path)
    state = weights(tmp_path)
    assert state["step"] == 5 and state["skipped"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert "2 non-finite updates were skipped in this run" in caplog.text


NAN_IMAGES = ["model=dcgan", "model.generator._target_=tests.helpers.NaNGenerator"]


@pytest.mark.parametrize("optimizer", ["sgd", "rmsprop"], ids=["on the device", "on the host"])
def test_a_skipped_update_skips_everything(optimizer, tmp_path):
    """on_nan=skip: a step whose fakes are NaN (the discriminator's BatchNorm statistics see them
    first) leaves every floating-point tensor of the model (BatchNorm statistics, EMA copy) and
    of the optimizers as before it; a skipped first step leaves SGD's momentum zero, not unset."""
    cfg = make_cfg(
        *NAN_IMAGES,
        "+model.generator.nan_at=[1,3]",
        "model.ema_decay=0.5",
        f"optimizer={optimizer}",
        *FAST,
        "trainer.on_nan=skip",
        "trainer.max_steps=4",
        "trainer.ckpt_every=1",
        "trainer.keep_last=null",
    )
    train(cfg, run_dir=tmp_path)
    step = {s: load_checkpoint(tmp_path / "checkpoints" / f"step_{s:07d}.pt") for s in (1, 2, 3)}
    # on the device D's and G's updates are skipped; on the host the refused D update ends the step
    assert step[3]["skipped"] == (4 if optimizer == "sgd" else 2)
    for s in step.values():
        tensors = [*s["model"].values()]
        tensors += [v for o in s["optimizers"].values() for p in o["state"].values()
                    for v in p.values()]  # fmt: skip
        assert all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())
    before, after = step[2], step[3]
    for key, value in before["model"].items():
        if value.is_floating_point():
            assert torch.equal(value, after["model"][key]), key
    for name, optimizer_state in before["optimizers"].items():
        for p, state in optimizer_state["state"].items():
            for k, v in state.items():
                assert torch.equal(v, after["optimizers"][name]["state"][p][k]), (name, p, k)
    momentum = [p.get("momentum_buffer") for p in step[1]["optimizers"]["g"]["state"].values()]
    if optimizer == "sgd":  # the first update was skipped
        assert momentum and all(torch.equal(m, torch.zeros_like(m)) for m in momentum)


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"], ids=["on the device", "on the host"])
def test_a_run_whose_last_window_skipped_every_update_has_failed(optimizer, tmp_path):
    """on_nan=skip with every generator update of the last logging window non-finite: the run
    does not report `finished`."""
    cfg = make_cfg(
        "model=gan",
        *FAST,
        f"optimizer={optimizer}",
        "loss._target_=tests.helpers.NaNAt",
        "+loss.steps=[4,5,6]",
        "trainer.on_nan=skip",
        "trainer.max_steps=6",
        "trainer.log_every=3",
    )
    with pytest.raises(GenlabError, match="every generator update of steps 4-6 was non-finite"):
        train(cfg, run_dir=tmp_path)
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["status"] == "failed" and "steps 4-6" in record["reason"]


def test_ema_generator_is_checkpointed_and_samples(tmp_path):
    cfg = make_cfg("model=dcgan", "model.ema_decay=0.5", *FAST, "trainer.sample_every=5")
    train(cfg, run_dir=tmp_path)
    model = weights(tmp_path)["model"]
    ema = {k: v for k, v in model.items() if k.startswith("generator_ema.module.")}
    assert ema and int(model["generator_ema.n_averaged"]) == 5
    first = "net.0.weight"
    assert not torch.equal(ema[f"generator_ema.module.{first}"], model[f"generator.{first}"])


def test_gradient_norms_are_reported(tmp_path):
    values = train(make_cfg("model=gan", *FAST), run_dir=tmp_path)
    assert values["grad_norm/d"] > 0 and values["grad_norm/g"] > 0
    assert 0 < values["gan/diversity"] < 10


def _sigint_as_at_a_terminal() -> None:
    """In the child: Ctrl-C's default action. A suite started in the background by a shell
    without job control (`cmd &` in a script, as some CI runners do) has SIGINT ignored, and
    children inherit that; Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(run_dir, *extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "genlab",
            "train",
            "model=dcgan",
            "logger=none",
            "trainer.progress=false",
            "trainer.sample_every=0",
            f"hydra.run.dir={run_dir}",
            *extra,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_sigint_as_at_a_terminal,
    )


def _wait_for(path, proc, text="", timeout=120):
    """Until `path` exists (and holds `text`), failing if the process ends first."""
    deadline = time.time() + timeout
    while not path.exists() or (text and text not in path.read_text()):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline
        time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_and_tells_how_to_resume(signum, tmp_path):
    proc = _start(tmp_path, "trainer.max_steps=100000", "trainer.ckpt_every=0")
    _wait_for(tmp_path / "train.log", proc, text="steps of")  # training has begun
    time.sleep(1)
    proc.send_signal(signum)
    out, _ = finish(proc)
    assert proc.returncode == 128 + signum, out
    assert "checkpoint saved to" in out and "trainer.resume=auto" in out
    step = weights(tmp_path)["step"]
    record = json.loads((tmp_path / "run.json").read_text())
    name = signal.Signals(signum).name
    assert record["status"] == "interrupted" and record["reason"].startswith(f"{name} at step")
    assert 0 < step < 100000
    result = cli(
        "train",
        "model=dcgan",
        "logger=none",
        "trainer.sample_every=0",
        f"trainer.max_steps={step + 2}",
        "trainer.eval_every=null",
        f"hydra.run.dir={tmp_path}",
        "trainer.resume=auto",
    )
    assert result.returncode == 0, result.stderr
    assert f"Resumed at step {step}" in result.stdout
    assert weights(tmp_path)["step"] == step + 2


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_start_up_is_one_line(signum, tmp_path):
    """Before the training loop (here: once the model is built) a signal ends the command with
    one line, exit status 130, and leaves no folder behind."""
    proc = _start(tmp_path / "run", "trainer.max_steps=100000")
    for line in proc.stdout:
        if "parameters)" in line:  # the model is built; the loop has not begun
            break
    proc.send_signal(signum)
    out, _ = finish(proc)
    name = signal.Signals(signum).name
    if "checkpoint saved to" in out:  # the loop had begun after all: it saved and stopped
        assert proc.returncode == 128 + signum, out
    else:
        assert proc.returncode == 130 and f"genlab train: interrupted ({name})" in out, out
        assert not (tmp_path / "run").exists()
    assert "Traceback" not in out


def test_sigterm_during_the_end_of_run_evaluation_stops_it(tmp_path):
    """The final checkpoint is written before the evaluation, which a signal then cuts short
    (here while it trains its classifier, in a new cache) without a traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "genlab", "train", "model=vae_mlp", "dataset=digits",
         "trainer=smoke", "trainer.eval_every=0", "evaluator.classifier_steps=100000",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT, env={**os.environ, "GENLAB_CACHE": str(tmp_path / "cache")},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    _wait_for(tmp_path / "run" / "train.log", proc, text="Evaluation: training a classifier")
    proc.send_signal(signal.SIGTERM)
    out, _ = finish(proc)
    assert proc.returncode == 0 and "Traceback" not in out, out
    assert "step 5: SIGTERM stopped the evaluation" in out
    assert weights(tmp_path / "run")["step"] == 5
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_sigkill_while_saving_leaves_loadable_checkpoints(tmp_path):
    """Checkpoints every step, killed at several moments: every file left loads."""
    for kill in range(3):
        proc = _start(
            tmp_path,
            "trainer.max_steps=100000",
            "trainer.ckpt_every=1",
            "model.generator.features=64",
            "trainer.resume=auto",
        )
        _wait_for(tmp_path / "checkpoints" / "last.pt", proc)
        time.sleep(0.5 + 0.37 * kill)
        proc.kill()
        proc.wait()
        for path in (tmp_path / "checkpoints").glob("*.pt"):
            load_checkpoint(path)  # raises on a corrupt or truncated file
    last = weights(tmp_path)["step"]
    result = cli(
        "train",
        "model=dcgan",
        "logger=none",
        "model.generator.features=64",
        "trainer.sample_every=0",
        "trainer.eval_every=null",  # what is checked is the resume, not the evaluation
        f"trainer.max_steps={last + 1}",
        f"hydra.run.dir={tmp_path}",
        "trainer.resume=auto",
    )
    assert result.returncode == 0, result.stderr
    assert weights(tmp_path)["step"] == last + 1
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))


@pytest.mark.parametrize("kind", ["truncated", "malicious"])
def test_bad_checkpoint_through_the_cli(kind, tmp_path):
    path = tmp_path / "bad.pt"
    if kind == "truncated":
        path.write_bytes(b"PK\x03\x04 not a whole checkpoint")
    else:

        class Payload:
            def __reduce__(self):
                return (os.system, ("true",))

        torch.save({"model": {}, "x": Payload()}, path)
    result = cli(
        "train",
        "model=gan",
        "trainer=smoke",
        f"trainer.resume={path}",
        f"hydra.run.dir={tmp_path}/run",
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert str(path) in result.stderr
    assert ("was refused" if kind == "malicious" else "is truncated, or not") in result.stderr


def test_linear_schedule_decays_to_zero_over_the_run(tmp_path):
    train(make_cfg("model=vae", *FAST, "trainer.max_steps=4", "scheduler=linear"), run_dir=tmp_path)
    state = weights(tmp_path)
    assert state["schedulers"]["vae"]["last_epoch"] == 4
    assert state["optimizers"]["vae"]["param_groups"][0]["lr"] == 0.0
    assert state["optimizers"]["vae"]["param_groups"][0]["initial_lr"] == 2e-4


def test_streamed_image_folder_resumes_bit_identically(tmp_path):
    """Batches read by DataLoader workers: the position is the batches taken, not prefetched."""
    from tests.test_data import _random_folder

    root = _random_folder(tmp_path / "images", per_class=12, size=(16, 16))
    common = [
        "model=dcgan",
        "dataset=image_folder",
        f"dataset.root={root}",
        "dataset.image_size=16",
        "dataset.stream=true",
        "trainer.num_workers=2",
        "trainer.batch_size=8",  # 21 training images: 2 batches per epoch
        *FAST,
    ]
    assert_resume_is_bit_identical(common, tmp_path, total=5)


def test_a_checkpoint_holds_its_step_while_a_slow_disk_writes_it(tmp_path, monkeypatch):
    """Checkpoints are written while training goes on: the file of step 2 holds step 2's weights
    although the disk takes a second to start writing it (steps 3 and 4 run meanwhile)."""
    from genlab.files import Outputs

    write = Outputs.write

    def write_late(self, rel, data):
        if rel.startswith("checkpoints/"):
            time.sleep(1)
        return write(self, rel, data)

    monkeypatch.setattr(Outputs, "write", write_late)
    train(make_cfg("model=gan", *FAST, "trainer.max_steps=4"), run_dir=tmp_path / "long")
    monkeypatch.undo()
    train(make_cfg("model=gan", *FAST, "trainer.max_steps=2"), run_dir=tmp_path / "short")
    early = load_checkpoint(tmp_path / "long" / "checkpoints" / "step_0000002.pt")
    assert_identical(early, weights(tmp_path / "short"))
    assert weights(tmp_path / "long")["step"] == 4


def test_a_signal_whose_interrupt_was_lost_before_the_loop_stops_it_at_once():
    """Python code may swallow the KeyboardInterrupt a start-up signal raises (an exception in a
    `__del__` is only printed): the loop entered after all holds the signal, and stops."""
    from genlab import interrupts

    try:
        interrupts.before_the_loop(signal.SIGTERM, None)
    except KeyboardInterrupt as e:
        assert str(e) == "SIGTERM"  # what the command prints: interrupted (SIGTERM)
    with interrupts.CaughtSignals() as stop:
        assert stop.signal == signal.SIGTERM and len(stop) == 1
    with interrupts.CaughtSignals() as stop:  # held once, for that loop only
        assert not stop
