"""Every model family keeps the contract of `genlab.models.base.Family`: each conf/model/*.yaml,
built from the composed config on both offline data sets, trains a step, generates, draws its
grids, survives a checkpoint, exports, and is evaluated. A new family gets all of this by adding
its yaml."""

import math

import pytest
import torch

from genlab.checkpoint import load_checkpoint, save_checkpoint
from genlab.config import CONF_DIR, build, build_model, degradation
from genlab.data.loader import DeviceLoader, normalize
from genlab.export import export, load_generator
from genlab.files import Outputs
from genlab.models.base import ABILITIES, Family, require
from genlab.models.common import eval_mode
from genlab.optim import Updater
from tests.conftest import TINY_NETWORKS, make_cfg, tiered

MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
CPU = torch.device("cpu")


@pytest.fixture(scope="module", params=tiered(["mnist5k", "digits"], fast={"digits"}))
def dataset(request):
    cfg = make_cfg(f"dataset={request.param}")
    return cfg.dataset, build(cfg.dataset, "dataset")


@pytest.mark.parametrize("name", MODELS)
def test_every_family_keeps_the_contract(name, dataset, tmp_path):
    node, data = dataset
    cfg = make_cfg(
        f"model={name}",
        f"dataset={data.name}",
        "evaluator.num_generated_cheap=100",
        "evaluator.classifier_steps=20",
        *TINY_NETWORKS.get(name, []),
    )
    torch.manual_seed(0)
    model = build_model(cfg, data)
    assert isinstance(model, Family) and model.abilities <= set(ABILITIES)
    shape = (data.channels, data.image_size, data.image_size)
    assert model.shape == {"channels": shape[0], "image_size": shape[1]}

    # one training step, every update through the Updater under the family's roles
    optimizers = model.configure_optimizers(build(cfg.optimizer, "optimizer"))
    assert optimizers.keys() == model.roles.keys()
    update = Updater(optimizers, CPU, names=model.roles)
    degrade = degradation(cfg, data.channels, data.image_size)  # an image-conditional model's
    loader = DeviceLoader(data, 16, CPU, degrade=degrade)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    values = model.train_step(loader, update, metrics=True)
    assert values and all(torch.isfinite(v).all() for v in values.values())
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(update.attempted[k] > 0 for k in optimizers)

    # samples: in [-1, 1], the same for the same seed, of the requested classes (or images)
    condition = torch.arange(4) % model.num_classes if model.num_classes else None
    if degrade is not None:
        condition = degrade(normalize(data.images[:4]), torch.Generator().manual_seed(2))
    images = model.generate(4, torch.Generator().manual_seed(1), condition)
    assert images.shape == (4, *shape) and images.min() >= -1 and images.max() <= 1
    again = model.generate(4, torch.Generator().manual_seed(1), condition)
    assert torch.equal(images, again)
    shots = normalize(loader.examples(16))
    examples = (shots, None if degrade is None else degrade(shots, torch.Generator()))
    grids = model.sample_grids(model.fixed_inputs(16, examples, seed=0))
    assert grids and all(g.dim() == 3 and g.min() >= 0 and g.max() <= 1 for g in grids.values())

    # a checkpoint rebuilds the same model
    save_checkpoint({"model": model.state_dict()}, tmp_path / "model.pt")
    torch.manual_seed(123)
    twin = build_model(cfg, data)
    twin.load_state_dict(load_checkpoint(tmp_path / "model.pt")["model"])
    assert torch.equal(twin.generate(4, torch.Generator().manual_seed(1), condition), images)

    # the export samples as the model does, without genlab's trainer
    folder = tmp_path / "export"
    export(model, cfg, {"step": 1}, Outputs(folder))
    exported = load_generator(folder)
    assert (exported.latent_dim, exported.num_classes) == (model.latent_dim, model.num_classes)
    if "interpolate" in model.abilities:  # latents to images, as decode_latents maps them
        z = torch.randn(4, model.latent_dim)
        with eval_mode(model):
            expected = model.decode_latents(z, condition)
    else:  # latents drawn as generate draws them give its images
        z = torch.randn(4, model.latent_dim, generator=torch.Generator().manual_seed(1))
        expected = images
    torch.testing.assert_close(exported(z, condition), expected)

    # abilities it declares work; those it lacks are one clear error
    real = normalize(data.images[:4])
    for ability in ABILITIES:
        if ability not in model.abilities:
            with pytest.raises(ValueError, match=f"needs a model that {ABILITIES[ability]}"):
                require(model, ability, f"sampler.mode={ability}")
    if "reconstruct" in model.abilities:
        assert model.reconstruct(real).shape == real.shape

    # the cheap metrics of trainer.eval_every
    evaluator = build(cfg.evaluator, "evaluator")
    report = evaluator(model, node, CPU, cheap=True, condition=degrade)
    assert report.metrics["fd"] > 0
    if "likelihood" in model.abilities:
        bound, how = model.likelihood(real, 2, seed=0)
        assert "likelihood" in how
        in_bits = [k for k in bound if k.endswith("_bits_per_dim")]
        assert in_bits  # each number in nats per image, and in bits per dimension
        for key in in_bits:
            nats = bound[key.removesuffix("_bits_per_dim")]
            assert nats > 0 and nats == pytest.approx(bound[key] * real[0].numel() * math.log(2))
