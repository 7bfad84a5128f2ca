"""The real command line: help, config printing, a run folder, user config dirs, multirun and
one clear error (no traceback, non-zero exit) for each kind of bad input."""

import re
import subprocess
import sys
import zipfile

import pytest
from hydra.errors import HydraException
from PIL import Image

from genlab.commands.train import train
from genlab.errors import GenlabError
from tests.conftest import ROOT, cli, make_cfg, run_cli


def test_genlab_help_lists_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "train" in result.stdout and "usage: genlab" in result.stdout


def test_a_renamed_key_says_its_new_name():
    result = run_cli("eval", "run=x", "evaluator.num_samples=10")
    assert result.returncode == 2
    assert "evaluator.num_samples is now evaluator.num_generated" in result.stderr


def test_unknown_command_is_refused():
    result = run_cli("trian")
    assert result.returncode == 2 and "unknown command 'trian'" in result.stderr


def test_train_help_lists_groups_and_options():
    out = cli("train", "--help").stdout
    models = "cdcgan, cgan, dcgan, ddpm, dit, espcn, flow, gan, pixelcnn, reflow, sngan"
    assert f"model: {models}, sngan_projection, sr3, srcnn, vae, vae_mlp" in out
    assert "model/network: dit, unet" in out
    solvers = "autoregressive, ddim, ddpm, dopri5, dpm_solver, euler, flow_dpm_solver, heun"
    assert f"solver: {solvers}, midpoint" in out
    assert "loss: bce, denoising, elbo, flow_matching, hinge, lsgan, nll, pixel, wgan_gp" in out
    assert "dataset: cifar10, digits, fashion_mnist, image_folder, mnist, mnist5k, photos" in out
    assert "optimizer: adam, adamw, rmsprop, sgd" in out
    assert "device: auto, cpu, cuda, mps" in out


def test_cfg_job_shows_the_model_default_loss():
    out = cli("train", "model=vae", "--cfg", "job").stdout
    assert "_target_: genlab.models.VAE" in out and "_target_: genlab.losses.ELBO" in out
    out = cli("train", "model=gan", "loss=hinge", "--cfg", "job").stdout
    assert "_target_: genlab.losses.Hinge" in out


def test_a_run_through_the_cli_writes_its_folder(tmp_path):
    run_dir = tmp_path / "run"
    result = cli("train", "model=dcgan", "trainer=smoke", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    assert f"Run folder: {run_dir}" in result.stdout
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert "Finished 5 steps" in (run_dir / "train.log").read_text()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    with Image.open(run_dir / "samples" / "samples_0000005.png") as grid:
        assert grid.size == (122, 122)  # 4 x (28 + 2) + 2


def test_default_run_folder_is_under_outputs(tmp_path):
    result = cli("train", "trainer=smoke", "model=gan", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "outputs").glob("gan_mnist5k/*")
    assert (run_dir / "checkpoints" / "last.pt").is_file()


def test_user_config_dir_adds_options(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "tiny_gan.yaml").write_text(
        "defaults:\n  - gan\n  - _self_\nlatent_dim: 8\ngenerator:\n  hidden: [32]\n"
    )
    run_dir = tmp_path / "run"
    result = cli(
        "train",
        "--config-dir",
        str(tmp_path),
        "model=tiny_gan",
        "trainer=smoke",
        f"hydra.run.dir={run_dir}",
        "--cfg",
        "job",
    )
    assert result.returncode == 0, result.stderr
    assert "latent_dim: 8" in result.stdout and "- 32" in result.stdout


def test_multirun_sweeps_models(tmp_path):
    result = cli(
        "train",
        "-m",
        "model=gan,vae",
        "trainer=smoke",
        "logger=none",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr
    for job in ("0", "1"):
        assert (tmp_path / job / "checkpoints" / "last.pt").is_file()
    assert "model=vae" in (tmp_path / "1" / ".hydra" / "overrides.yaml").read_text()


ERRORS = [
    (["model=foo"], "Could not find 'model/foo'"),
    (["trainer.max_stepz=5"], "Could not override 'trainer.max_stepz'"),
    (["optimizer.lr=-1"], "optimizer.lr must be > 0, got -1"),
    (["optimizer.lr=abc"], "optimizer.lr: expected float, got 'abc'"),
    (["trainer.batch_size=0"], "trainer.batch_size must be >= 1, got 0"),
    (["trainer.batch_size=1.5"], "trainer.batch_size: expected int, got 1.5"),
    (["trainer.batch_size=6000"], "batch_size=6000 is larger than the data set (4500 images)"),
    (["dataset.image_size=30"], "DCGAN cannot work at image_size=30"),
    (
        ["model=vae", "loss=hinge"],
        "(genlab.losses.Hinge) does not fit genlab.models.VAE; it takes loss=elbo",
    ),
    (
        ["model=gan", "loss=elbo"],
        "(genlab.losses.ELBO) does not fit genlab.models.GAN; "
        "it takes loss=bce | hinge | lsgan | wgan_gp",
    ),
    (["loss=wgan_gp"], "set model.discriminator.norm=layer"),
    (["model.discriminator.norm=bn"], "expected one of 'batch', 'layer', 'none', got 'bn'"),
    (["model.latent_dim=0"], "model.latent_dim must be >= 1"),
    (["device=cuda"], "CUDA is not available"),
    (["dataset=image_folder"], "dataset.root is required"),
    (["+model.generator.colour=red"], "model.generator.colour: unknown key"),
    (["trainer.seed=4294967296"], "trainer.seed must be < 2**32 (4294967296), got 4294967296"),
    (["trainer.grid_images=5000"], "trainer.grid_images must be <= 1024"),
]
# Through the CLI's dispatch and Hydra's app: Hydra's composition errors and one of genlab's.
CLI_ERRORS = [
    (["model=foo"], "model=foo is not an option of model"),
    (
        ["trainer.max_stepz=5"],
        "trainer.max_stepz is not a setting; did you mean trainer.max_steps",
    ),
    (["model=vae", "loss=hinge"], "loss=hinge (genlab.losses.Hinge) does not fit model=vae"),
]


@pytest.mark.parametrize(("overrides", "message"), ERRORS, ids=[" ".join(o) for o, _ in ERRORS])
def test_config_errors_name_the_key(overrides, message, tmp_path):
    with pytest.raises(Exception, match=re.escape(message)) as caught:
        train(make_cfg(*overrides, "trainer=smoke"), run_dir=tmp_path / "run")
    if not isinstance(caught.value, HydraException):
        assert isinstance(caught.value, GenlabError)  # one message, no traceback at the CLI
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    ("overrides", "message"), CLI_ERRORS, ids=[" ".join(o) for o, _ in CLI_ERRORS]
)
def test_config_errors_are_one_clear_message(overrides, message, tmp_path):
    result = cli("train", *overrides, "trainer=smoke", f"hydra.run.dir={tmp_path}/run")
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_run_folder_that_cannot_be_made_is_one_message(tmp_path):
    """A name too long for the file system, or a path through a file: before Hydra tries."""
    (tmp_path / "file").write_text("")
    for run_dir, reason in (
        (tmp_path / ("x" * 300), "the name is too long"),
        (tmp_path / "file" / "run", "a part of the path is a file, not a folder"),
    ):
        result = cli("train", "trainer=smoke", f"hydra.run.dir={run_dir}")
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert f"cannot write {run_dir}: {reason}" in result.stderr


def test_data_set_missing_offline(tmp_path):
    result = cli(
        "train",
        "dataset=fashion_mnist",
        f"dataset.root={tmp_path}",
        "dataset.download=false",
        "trainer=smoke",
        f"hydra.run.dir={tmp_path}/run",
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"FashionMNIST was not found under {tmp_path}" in result.stderr


def test_cgan_on_unlabelled_images(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.new("L", (28, 28), 255).save(images / f"{i}.png")
    # a genlab error through a real process: exit status 1, no traceback
    result = run_cli(
        "train",
        "model=cgan",
        "dataset=image_folder",
        f"dataset.root={images}",
        "dataset.image_size=28",
        "dataset.channels=1",
        "trainer=smoke",
        "trainer.batch_size=2",
        f"hydra.run.dir={tmp_path}/run",
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "needs class labels" in result.stderr


def test_full_error_env_still_shows_the_traceback(tmp_path):
    result = run_cli(
        "train",
        "optimizer.lr=-1",
        "trainer=smoke",
        f"hydra.run.dir={tmp_path}",
        env={"HYDRA_FULL_ERROR": "1"},
    )
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_wheel_carries_the_config_tree(tmp_path):
    """A non-editable install finds conf/ inside the package, from any directory."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("genlab-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        assert "genlab/conf/train.yaml" in zf.namelist()
        assert "genlab/conf/model/dcgan.yaml" in zf.namelist()
        zf.extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = "import sys, genlab.cli; print(genlab.__file__, file=sys.stderr); genlab.cli.main()"
    result = subprocess.run(
        [sys.executable, "-c", code, "train", "model=vae", "--cfg", "job"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert str(site) in result.stderr
    assert "_target_: genlab.models.VAE" in result.stdout
