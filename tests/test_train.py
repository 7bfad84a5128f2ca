"""Every model with its default loss trains a few steps on the offline data sets and leaves a
checkpoint, PNG grids of the right size and TensorBoard scalars (read back)."""

import io
import math

import pytest
import torch
from hydra.utils import get_object
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from genlab.checkpoint import load_checkpoint
from genlab.commands.train import train
from genlab.config import CONF_DIR
from genlab.models.base import Family
from tests.conftest import QUICK, make_cfg, tiered

SIZES = {"mnist5k": 28, "digits": 32}
MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def grid_side(count: int, image: int) -> int:
    """Pixels along one side of a torchvision grid with padding 2."""
    return count * (image + 2) + 2


def scalars(run_dir):
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return acc, {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


@pytest.mark.parametrize("dataset", tiered(list(SIZES), fast={"mnist5k"}))  # digits: contract
@pytest.mark.parametrize("model", MODELS)
def test_model_trains_and_leaves_a_run(model, dataset, tmp_path):
    setup = [f"model={model}", f"dataset={dataset}", *QUICK.get(model, [])]
    cfg = make_cfg(*setup, "trainer=smoke", "trainer.max_steps=4")
    values = train(cfg, run_dir=tmp_path)
    size = SIZES[dataset]
    family = get_object(cfg.model._target_)

    assert all(math.isfinite(v) for v in values.values())
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["step"] == 4
    assert (tmp_path / "checkpoints" / "step_0000004.pt").is_file()
    assert f"_target_: {cfg.model._target_}" in state["config"]
    assert state["optimizers"].keys() == family.roles.keys()

    with Image.open(tmp_path / "samples" / "samples_0000004.png") as grid:
        if cfg.model.get("conditional"):  # one row per class, 16 // 10 = 1 sample per row
            assert grid.size == (grid_side(1, size), grid_side(10, size))
        elif cfg.get("condition") is not None:  # 2 x 8 conditions, outputs, images: 6 rows
            assert grid.size == (grid_side(8, size), grid_side(6, size))
        else:  # 16 samples in a 4 x 4 grid
            assert grid.size == (grid_side(4, size), grid_side(4, size))

    acc, logged = scalars(tmp_path)
    key = next(k for k in values if k.startswith("loss/"))
    assert [e.step for e in logged[key]] == [1, 2, 3, 4]
    assert logged[key][-1].value == pytest.approx(values[key], rel=1e-6)
    assert logged["perf/images_per_s"][-1].value > 0
    for role in family.roles:
        assert logged[f"lr/{role}"][-1].value == pytest.approx(2e-4)  # optimizer=adam
    grids = sorted(p.name.removesuffix("_0000004.png") for p in (tmp_path / "samples").glob("*"))
    assert sorted(acc.Tags()["images"]) == grids  # every grid, in the run folder and TensorBoard
    logged_grid = acc.Images("samples")[-1]  # the PNG of the run folder, grey for grey data
    with (
        Image.open(io.BytesIO(logged_grid.encoded_image_string)) as tb_grid,
        Image.open(tmp_path / "samples" / "samples_0000004.png") as png_grid,
    ):
        assert logged_grid.step == 4 and tb_grid.size == png_grid.size
        assert tb_grid.mode == png_grid.mode == "L" and tb_grid.tobytes() == png_grid.tobytes()


def test_training_learns(tmp_path):
    """A few hundred VAE steps cut the negative ELBO well below its start."""
    cfg = make_cfg(
        "model=vae",
        "dataset=digits",
        "trainer=smoke",
        "trainer.max_steps=150",
        "trainer.batch_size=64",
        "trainer.log_every=10",
        "logger=tensorboard",
    )
    train(cfg, run_dir=tmp_path)
    _, logged = scalars(tmp_path)
    objective = [e.value for e in logged["loss/loss"]]
    assert objective[-1] < 0.7 * objective[0]


def test_same_seed_same_weights(tmp_path):
    cfg = make_cfg("model=gan", "trainer=smoke", "logger=none")
    train(cfg, run_dir=tmp_path / "a")
    train(cfg, run_dir=tmp_path / "b")
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_max_epochs_bounds_the_steps(tmp_path):
    # digits: 1797 images // 600 = 2 batches per epoch; wgan_gp uses 5 batches per step
    cfg = make_cfg(
        "model=gan",
        "dataset=digits",
        "loss=wgan_gp",
        "trainer=smoke",
        "trainer.max_steps=100",
        "trainer.max_epochs=5",
        "trainer.batch_size=600",
        "logger=none",
    )
    train(cfg, run_dir=tmp_path)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 2


@pytest.mark.parametrize("loss", ["hinge", "lsgan", "wgan_gp"])
def test_other_gan_losses_train(loss, tmp_path):
    extra = ["model.discriminator.norm=layer"] if loss == "wgan_gp" else []
    cfg = make_cfg("model=dcgan", f"loss={loss}", "trainer=smoke", "logger=none", *extra)
    values = train(cfg, run_dir=tmp_path)
    assert math.isfinite(values["loss/d"]) and math.isfinite(values["loss/g"])
    if loss == "wgan_gp":
        assert values["loss/gp"] >= 0


@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "rmsprop"])
def test_optimizers_and_two_learning_rates(optimizer, tmp_path):
    cfg = make_cfg(
        "model=gan",
        f"optimizer={optimizer}",
        "optimizer.lr=0.001",
        "optimizer.d_lr=0.004",
        "trainer=smoke",
        "logger=tensorboard",
    )
    train(cfg, run_dir=tmp_path)
    _, logged = scalars(tmp_path)
    assert logged["lr/g"][-1].value == pytest.approx(0.001)
    assert logged["lr/d"][-1].value == pytest.approx(0.004)


def test_image_folder_rgb_classes_train_dcgan_and_cgan(tmp_path):
    gen = torch.Generator().manual_seed(0)
    for cls in ("a", "b", "c"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(6):
            pixels = torch.randint(0, 256, (40, 48, 3), generator=gen, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(tmp_path / "images" / cls / f"{i}.png")
    common = [
        "dataset=image_folder",
        f"dataset.root={tmp_path / 'images'}",
        "dataset.image_size=32",
        "trainer=smoke",
        "trainer.batch_size=6",
        "logger=none",
    ]
    train(make_cfg("model=dcgan", *common), run_dir=tmp_path / "dcgan")
    with Image.open(tmp_path / "dcgan" / "samples" / "samples_0000005.png") as grid:
        assert grid.mode == "RGB" and grid.size == (grid_side(4, 32), grid_side(4, 32))
    train(make_cfg("model=cgan", *common, "trainer.grid_images=6"), run_dir=tmp_path / "cgan")
    with Image.open(tmp_path / "cgan" / "samples" / "samples_0000005.png") as grid:
        assert grid.size == (grid_side(2, 32), grid_side(3, 32))  # 3 classes x 2 samples


PRESETS = sorted(
    p.relative_to(CONF_DIR / "experiment").with_suffix("").as_posix()
    for p in (CONF_DIR / "experiment").rglob("*.yaml")
)


@pytest.mark.parametrize("preset", PRESETS)
def test_experiment_presets_compose_and_check(preset):
    from genlab.commands.train import GROUPS
    from genlab.config import check_config

    cfg = make_cfg(f"experiment={preset}")
    check_config(cfg, GROUPS)
    assert issubclass(get_object(cfg.model._target_), Family)
    if preset == "wgan_gp_cifar10":
        assert cfg.model.objective._target_ == "genlab.losses.WassersteinGP"
        assert cfg.model.discriminator.norm == "layer"


@pytest.mark.parametrize(
    ("shape", "nrow"),
    [((7, 1, 5, 6), 3), ((16, 3, 4, 4), 4), ((10, 3, 8, 8), 10), ((2, 1, 3, 3), 8)],
)
def test_grids_are_torchvisions_make_grid(shape, nrow):
    """genlab's grid (its own, to keep torchvision's import out of every command's start) equals
    torchvision's make_grid to the bit: padding, rows, blank cells, values clamped from [-1, 1]."""
    from torchvision.utils import make_grid

    from genlab.images import to_grid

    images = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2.4 - 1.2
    expected = make_grid(images, nrow=nrow, padding=2, normalize=True, value_range=(-1, 1))
    assert torch.equal(to_grid(images, nrow), expected[: shape[1]])
