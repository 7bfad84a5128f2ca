"""No run loses another's data: a folder holds one run at a time (lock), a new run never writes
over an earlier one, a refused command changes no file, `run.json` tells how every run ended,
and a full disk or a read-only folder is one message."""

import errno
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from genlab.checkpoint import load_checkpoint
from genlab.commands.report import report
from genlab.commands.train import train
from genlab.errors import ConfigError, GenlabError, WriteError
from genlab.lock import lock_holder
from genlab.record import read_records, write_record
from genlab.run_folder import RunFolder
from tests.conftest import ROOT, cli, finish, make_cfg, run_cli

SMOKE = ["dataset=digits", "trainer=smoke", "logger=none", "trainer.sample_every=0"]
TINY = ["model=gan", *SMOKE]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones too) and a hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_new_run_never_writes_over_an_earlier_one(tmp_path):
    run = tmp_path / "run"
    train(make_cfg(*TINY, "trainer.ckpt_every=1", "trainer.max_steps=4"), run_dir=run)
    before = snapshot(run)
    with pytest.raises(GenlabError, match="already holds a run") as e:
        train(make_cfg(*TINY, "trainer.max_steps=2"), run_dir=run)
    assert "trainer.resume=auto" in str(e.value) and "trainer.overwrite=true" in str(e.value)
    assert snapshot(run) == before  # nothing written, nothing pruned
    # resuming another run's checkpoint into this folder would overwrite it too
    train(make_cfg(*TINY, "trainer.max_steps=2"), run_dir=tmp_path / "other")
    other = f"trainer.resume={tmp_path / 'other'}"
    with pytest.raises(GenlabError, match="already holds a run"):
        train(make_cfg(*TINY, "trainer.max_steps=3", other), run_dir=run)
    assert snapshot(run) == before
    # the run may continue (a checkpoint inside it), or be replaced on request
    inside = f"trainer.resume={run}/checkpoints/step_0000004.pt"
    train(make_cfg(*TINY, "trainer.max_steps=5", inside), run_dir=run)
    train(make_cfg(*TINY, "trainer.max_steps=2", "trainer.overwrite=true"), run_dir=run)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.pt", "step_0000002.pt"]
    assert json.loads((run / "run.json").read_text())["steps"] == 2


def test_a_refused_command_leaves_every_file_as_it_was(tmp_path):
    """Through the CLI: the run's .hydra/, train.log, run.json, event files and checkpoints."""
    run = tmp_path / "run"
    result = cli("train", "model=gan", "dataset=digits", "trainer=smoke", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr
    before = snapshot(run)
    assert {".hydra/config.yaml", ".hydra/overrides.yaml", "train.log", "run.json"} <= set(before)
    refused = [
        ["trainer.resume=auto", "loss=hinge"],  # a resume that changes what the run means
        [],  # a fresh run into a folder that holds one
    ]
    for extra in refused:
        result = cli(
            "train", "model=gan", "dataset=digits", "trainer=smoke", f"hydra.run.dir={run}", *extra
        )
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert snapshot(run) == before
    assert json.loads((run / "run.json").read_text())["status"] == "finished"


def test_a_refused_run_in_a_new_folder_leaves_nothing(tmp_path):
    with pytest.raises(ConfigError, match="optimizer.lr must be > 0"):
        train(make_cfg(*TINY, "optimizer.lr=-1"), run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_folder_in_use_is_refused_with_the_holders_pid(tmp_path):
    run = tmp_path / "run"
    with RunFolder(run):
        assert lock_holder(run) == os.getpid()
        with pytest.raises(
            GenlabError, match=f"in use by another genlab run \\(pid {os.getpid()}\\)"
        ):
            train(make_cfg(*TINY), run_dir=run)
    assert lock_holder(run) is None
    train(make_cfg(*TINY), run_dir=run)


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    """The lock is the OS's: it ends with the process, even at SIGKILL."""
    run = tmp_path / "run"
    code = (
        "import sys, time; from genlab.run_folder import RunFolder\n"
        f"with RunFolder({str(run)!r}):\n    print('held', flush=True); time.sleep(600)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert lock_holder(run) == holder.pid
        result = run_cli("train", *TINY, f"hydra.run.dir={run}")
        assert result.returncode == 1
        assert f"in use by another genlab run (pid {holder.pid})" in result.stderr
    finally:
        holder.kill()
        holder.wait()
    assert lock_holder(run) is None
    assert train(make_cfg(*TINY), run_dir=run)["step"] == 5


def test_a_changed_learning_rate_is_applied_on_resume(tmp_path, caplog):
    """optimizer.lr=1e-3 on resume trains at 1e-3 on the configured schedule (not at the
    checkpoint's 2e-4): a cosine from 1e-3 over T_max=10 is at 5e-4 after step 5."""
    caplog.set_level(logging.INFO)
    common = ["model=vae_mlp", *SMOKE, "scheduler=cosine", "scheduler.T_max=10"]
    train(make_cfg(*common, "trainer.max_steps=3"), run_dir=tmp_path / "run")
    changed = [*common, "optimizer.lr=1e-3", "optimizer.impl.betas=[0.9,0.99]"]
    train(
        make_cfg(*changed, "trainer.max_steps=5", "trainer.resume=auto"), run_dir=tmp_path / "run"
    )
    resumed = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    group = resumed["optimizers"]["vae"]["param_groups"][0]
    assert group["lr"] == pytest.approx(1e-3 * (1 + torch.cos(torch.tensor(torch.pi / 2))) / 2)
    assert group["initial_lr"] == 1e-3 and tuple(group["betas"]) == (0.9, 0.99)
    assert "lr: 0.0002 -> 0.001 from step 3" in caplog.text
    assert "betas: (0.5, 0.999) -> (0.9, 0.99) from step 3" in caplog.text
    assert "optimizer:\n  _target_: genlab.optim.OptimizerSpec\n  lr: 0.001" in resumed["config"]
    # the same learning rate, to the bit, as a run that had these settings from the start
    train(make_cfg(*changed, "trainer.max_steps=5"), run_dir=tmp_path / "fresh")
    fresh = load_checkpoint(tmp_path / "fresh" / "checkpoints" / "last.pt")
    assert fresh["optimizers"]["vae"]["param_groups"][0]["lr"] == group["lr"]
    assert fresh["schedulers"] == resumed["schedulers"]


def test_a_longer_run_recomputes_its_schedule(tmp_path, caplog):
    """The cosine's T_max follows trainer.max_steps: resuming 3 steps of 3 as 3 of 6 puts the
    learning rate at half, not at the end of the old schedule (0)."""
    caplog.set_level(logging.INFO)
    common = ["model=vae_mlp", *SMOKE, "scheduler=cosine"]
    train(make_cfg(*common, "trainer.max_steps=3"), run_dir=tmp_path)
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["optimizers"]["vae"]["param_groups"][0]["lr"] == 0.0
    train(make_cfg(*common, "trainer.max_steps=6", "trainer.resume=auto"), run_dir=tmp_path)
    assert "schedule changed (T_max: 3 -> 6): learning rate 0.0001 at step 3" in caplog.text


def test_run_json_says_running_then_how_the_run_ended(tmp_path):
    """running while it trains (holding the lock), interrupted at SIGTERM, died when killed."""
    run = tmp_path / "run"

    def start():
        return subprocess.Popen(
            [sys.executable, "-m", "genlab", "train", "model=gan", "logger=none",
             "trainer.max_steps=100000", "trainer.progress=false", "trainer.resume=auto",
             f"hydra.run.dir={run}"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    def status():
        try:
            return json.loads((run / "run.json").read_text())["status"]
        except FileNotFoundError:
            return None

    def wait_running(proc):
        deadline = time.time() + 120
        while status() != "running":
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
            time.sleep(0.05)

    proc = start()
    wait_running(proc)
    assert lock_holder(run) == proc.pid
    log, deadline = run / "train.log", time.time() + 120
    while not log.is_file() or "steps of" not in log.read_text():  # the loop has begun
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    finish(proc)
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "interrupted" and "SIGTERM at step" in record["reason"]
    proc = start()
    wait_running(proc)
    proc.kill()
    proc.wait()
    (record,) = read_records(run)
    assert record["status"] == "died" and "killed" in record["reason"]
    assert "1 died" in report(run)


def test_run_json_is_replaced_atomically(tmp_path, monkeypatch):
    write_record(tmp_path, {"status": "finished", "metrics": {"x": 1.0}})
    from genlab import files

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(WriteError, match="run.json: the disk is full"):
        write_record(tmp_path, {"status": "running"})
    monkeypatch.undo()
    assert json.loads((tmp_path / "run.json").read_text())["metrics"] == {"x": 1.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".genlab-files", "run.json"]  # no temp


def test_report_skips_unreadable_records_naming_them(tmp_path, caplog, monkeypatch):
    """A folder of runs from anywhere: corrupt records and a decompression-bomb grid are left
    out with a warning naming them, and the report is still written."""
    from PIL import Image

    write_record(tmp_path / "good", {"status": "finished", "metrics": {"loss/d": 1.0}})
    for name, text in {"empty": "", "list": "[]", "null": "null", "corrupt": '{"status": '}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(text)
    bomb = tmp_path / "good" / "samples" / "samples_0000005.png"
    bomb.parent.mkdir()
    Image.new("L", (3000, 3000)).save(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    text = report(tmp_path, metric="loss/d")
    assert text.startswith("1 finished; ranked by loss/d (minimize)")
    for name in ("empty", "list", "null", "corrupt"):
        assert f"skipping {tmp_path / name / 'run.json'}" in caplog.text
    assert f"leaving {bomb} out of best.png" in caplog.text
    assert (tmp_path / "report.md").is_file() and not (tmp_path / "best.png").exists()
    assert "not ranked: no finished run logged eval/fd" in report(tmp_path)


def test_a_full_disk_is_one_message(tmp_path, monkeypatch):
    """A checkpoint that cannot be written (written by the background thread) ends the run with
    one message naming the file, and run.json records it."""
    from genlab import files

    replace = files._replace

    def full_disk(fd, name, write, durable=True):
        if name.startswith("step_"):
            raise OSError(errno.ENOSPC, "No space left on device")
        replace(fd, name, write, durable)

    monkeypatch.setattr(files, "_replace", full_disk)
    with pytest.raises(WriteError, match="step_0000002.pt: the disk is full"):
        train(make_cfg(*TINY, "trainer.ckpt_every=2"), run_dir=tmp_path)
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["status"] == "failed" and "the disk is full" in record["reason"]


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True)  # fmt: skip
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB file system (needs root and mount: skipped elsewhere)."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "1m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_real_full_disk_and_a_read_only_folder_are_one_message_each(small_disk):
    run = small_disk / "run"
    result = run_cli("train", "model=gan", "trainer=smoke", f"hydra.run.dir={run}")
    assert result.returncode == 1
    assert "the disk is full" in result.stderr and "Traceback" not in result.stderr
    assert "Exception in thread" not in result.stderr
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    result = run_cli("train", "model=gan", "trainer=smoke", f"hydra.run.dir={small_disk}/new")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"cannot write {small_disk}/new: the file system is read-only" in result.stderr


def test_eval_on_a_read_only_run_prints_its_metrics_then_one_message(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "64m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        cfg = make_cfg("model=vae_mlp", "dataset=digits", "trainer=smoke")
        train(cfg, run_dir=disk / "run")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        result = run_cli(
            "eval", f"run={disk / 'run'}", "device=cpu", "evaluator.num_generated=100",
            "evaluator.kid_subset_size=50", "evaluator.nll_samples=2",
            "evaluator.classifier_steps=50",
        )  # fmt: skip
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "fd " in result.stdout and "neg_elbo" in result.stdout  # the metrics, printed
    assert "the file system is read-only. The metrics above were not saved." in result.stderr
