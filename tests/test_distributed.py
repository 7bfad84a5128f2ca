"""Multi-process training on CPU with gloo: sharded data, DDP steps, rank-0 files, resume."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from genlab.checkpoint import load_checkpoint
from genlab.config import build
from genlab.data import DeviceLoader, digits
from genlab.distributed import wrapper
from genlab.errors import GenlabError
from genlab.losses import ELBO
from genlab.models import VAE
from genlab.models.base import check_replicas, distribute
from genlab.models.mlp import MLPDecoder, MLPEncoder
from genlab.optim import OptimizerSpec, Updater
from tests.conftest import ROOT, finish, make_cfg, run_cli
from tests.test_data import _toy

CPU = torch.device("cpu")


def test_each_process_draws_its_own_shard_of_the_epoch():
    data = _toy(11)  # 11 images, 2 processes: 5 each, one left out
    shards = [DeviceLoader(data, 5, CPU, seed=3, rank=r, world=2) for r in range(2)]
    order = shards[0].permutation(0)
    seen = [next(loader)[0][:, 0, 0, 0] for loader in shards]
    firsts = (data.images[order[:10], 0, 0, 0].float() / 127.5 - 1).tolist()
    assert sorted(torch.cat(seen).tolist()) == sorted(firsts)  # disjoint, cover the epoch
    assert seen[0].tolist() == firsts[0::2] and seen[1].tolist() == firsts[1::2]


def test_loader_position_carries_over_to_another_number_of_processes():
    two = DeviceLoader(_toy(40), 4, CPU, rank=0, world=2)  # 8 images per step
    for _ in range(3):
        next(two)
    one = DeviceLoader(_toy(40), 4, CPU)
    one.load_state_dict(two.state_dict())
    assert (one.epoch, one.index) == (0, 6)  # 24 images into the epoch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_steps(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = make_cfg("model=dcgan", "dataset=digits")
        data = build(cfg.dataset, "dataset")
        torch.manual_seed(0)
        model = build(cfg.model, "model", channels=1, image_size=32, num_classes=10)
        update = Updater(model.configure_optimizers(build(cfg.optimizer, "optimizer")), CPU)
        loader = DeviceLoader(data, 8, CPU, seed=0, rank=rank, world=world)
        torch.manual_seed(rank)  # each process draws its own noise
        distribute(model, wrapper(CPU))
        for _ in range(2):
            model.train_step(loader, update)
        check_replicas(model)  # both networks ran through their wrappers
        torch.save(model.state_dict(), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


class Careless(VAE):
    """A VAE whose step runs the model itself, not `self.trained()`: without gradient sync."""

    def train_step(self, batches, update, metrics=True):
        x, _ = next(batches)
        decoded, mu, logvar = self(x)
        terms = self.objective(decoded, x, mu, logvar)
        update(terms["loss"], "vae")
        return {}


def _careless_step(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = Careless(MLPEncoder, MLPDecoder, ELBO(), latent_dim=2, channels=1, image_size=8)
        distribute(model, wrapper(CPU))
        update = Updater(model.configure_optimizers(OptimizerSpec(torch.optim.Adam, lr=1e-3)), CPU)
        model.train_step(DeviceLoader(digits(image_size=8), 4, CPU, rank=rank, world=world), update)
        try:
            check_replicas(model)
        except GenlabError as e:
            (Path(out) / f"rank{rank}.txt").write_text(str(e))
    finally:
        dist.destroy_process_group()


def test_a_family_that_trains_around_its_ddp_wrapper_is_one_clear_error(tmp_path):
    mp.start_processes(_careless_step, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    for rank in range(2):
        message = (tmp_path / f"rank{rank}.txt").read_text()
        assert message.startswith("Careless.train_step ran its networks without self.trained()")
        assert "gradients would not be averaged" in message


def test_ddp_steps_keep_the_processes_in_sync_with_batchnorm(tmp_path):
    """DCGAN (BatchNorm in G and D) under DDP: weights equal on both ranks after each update,
    BatchNorm statistics each rank's own (no in-place buffer broadcast during the G step)."""
    mp.start_processes(_ddp_steps, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    init = make_cfg("model=dcgan", "dataset=digits")
    torch.manual_seed(0)
    start = build(init.model, "model", channels=1, image_size=32, num_classes=10).state_dict()
    weights = [k for k in a if k.endswith("weight")]
    stats = [k for k in a if k.endswith("running_mean")]
    assert weights and stats
    for key in weights:
        assert torch.equal(a[key], b[key]), key
    assert any(not torch.equal(a[k], start[k]) for k in weights)  # they did train
    assert any(not torch.equal(a[k], b[k]) for k in stats)


def _torchrun(*args: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*command, "-m", "genlab", "train", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_torchrun_two_processes_then_resume_in_one(tmp_path):
    run = tmp_path / "run"
    common = ["trainer=smoke", "dataset=digits", "model=dcgan", "trainer.ckpt_every=2"]
    _torchrun(*common, "trainer.max_steps=4", f"hydra.run.dir={run}")
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["step"] == 4 and len(state["rng_ranks"]) == 2
    assert state["loader"]["images_per_batch"] == 2 * 16
    assert len(list((run / "tb").glob("events.*"))) == 1  # rank 0 alone writes
    log = (run / "train.log").read_text()
    assert log.count("Finished 4 steps") == 1 and "rank 0 of 2" in log

    one = run_cli(
        "train",
        *common,
        "trainer.max_steps=6",
        f"trainer.resume={run}",
        f"hydra.run.dir={tmp_path / 'one'}",
    )
    assert one.returncode == 0, one.stderr[-3000:]
    assert "Resumed at step 4 of 6" in one.stderr + one.stdout
    assert load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt")["step"] == 6


def test_two_submitit_slurm_tasks_train_as_one_run(tmp_path):
    """hydra/launcher=slurm_multigpu's tasks, as SLURM starts them (no torchrun): genlab joins
    them into one process group from SLURM's variables (the port: drawn from the job's id)."""
    run = tmp_path / "run"
    common = ["trainer=smoke", "dataset=digits", "model=dcgan", "trainer.max_steps=4"]
    base = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "WORLD_SIZE")}
    slurm = {
        "SUBMITIT_EXECUTOR": "slurm",
        "SLURM_JOB_ID": str(os.getpid()),
        "SLURM_NTASKS": "2",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_JOB_NODELIST": "127.0.0.1",
    }
    tasks = [
        subprocess.Popen(
            [sys.executable, "-m", "genlab", "train", *common, f"hydra.run.dir={run}"],
            cwd=ROOT,
            env={**base, **slurm, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        for task in tasks:
            _, err = finish(task, timeout=300)
            assert task.returncode == 0, err[-3000:]
    finally:  # a task whose partner failed would wait for it
        for task in tasks:
            task.kill()
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["step"] == 4 and len(state["rng_ranks"]) == 2
    assert state["loader"]["images_per_batch"] == 2 * 16
    assert "rank 0 of 2" in (run / "train.log").read_text()


def test_the_multigpu_slurm_preset_asks_one_task_per_gpu(tmp_path, monkeypatch):
    """The sbatch script submitit writes from hydra/launcher=slurm_multigpu (as Hydra's submitit
    launcher passes its keys): one task per GPU on each node."""
    submitit = pytest.importorskip("submitit")
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", staticmethod(lambda: 1))  # no srun
    from hydra import compose, initialize_config_dir

    from genlab.config import CONF_DIR

    overrides = ["hydra/launcher=slurm_multigpu", "hydra.launcher.nodes=2"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides, return_hydra_config=True)
    params = {k: v for k, v in cfg.hydra.launcher.items() if not k.startswith("_")}
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    generic = {"timeout_min", "nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "mem_gb"}
    skip = {"submitit_folder", "max_num_timeout", "name", "partition", "qos", "comment"}
    skip |= {"constraint", "exclude", "gres", "cpus_per_gpu", "gpus_per_task", "mem_per_gpu"}
    skip |= {"mem_per_cpu", "account", "signal_delay_s", "array_parallelism", "setup"}
    skip |= {"additional_parameters", "srun_args", "stderr_to_stdout"}
    executor.update_parameters(
        **{k if k in generic else f"slurm_{k}": v for k, v in params.items() if k not in skip}
    )
    script = executor._executor._make_submission_file_text("genlab", "0")
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--cpus-per-task=8"):
        assert f"#SBATCH {line}" in script


@pytest.mark.slow
@pytest.mark.parametrize(
    "family", ["gan", "vae", "ddpm", "flow", "pixelcnn", "espcn"], ids=lambda f: f
)
def test_every_family_resumes_exactly_under_torchrun(family, tmp_path):
    """Two gloo processes: 4 steps in one run equal 2 steps, a resume and 2 more, to the bit
    (every process's random state and data position are in the checkpoint)."""
    from tests.conftest import TINY_NETWORKS
    from tests.test_resume import assert_identical

    common = [f"model={family}", "dataset=digits", "trainer=smoke", "logger=none"]
    common += ["trainer.sample_every=0", "trainer.ckpt_every=2", *TINY_NETWORKS.get(family, [])]
    _torchrun(*common, "trainer.max_steps=4", f"hydra.run.dir={tmp_path / 'whole'}")
    _torchrun(*common, "trainer.max_steps=2", f"hydra.run.dir={tmp_path / 'split'}")
    _torchrun(
        *common, "trainer.max_steps=4", "trainer.resume=auto", f"hydra.run.dir={tmp_path / 'split'}"
    )
    whole, split = (
        load_checkpoint(tmp_path / r / "checkpoints" / "last.pt") for r in ("whole", "split")
    )
    assert len(whole["rng_ranks"]) == 2
    assert_identical(whole, split)
