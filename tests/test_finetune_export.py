"""Fine-tuning from another run's weights, freezing parts, and exported generators."""

import pytest
import torch

from genlab.checkpoint import load_checkpoint
from genlab.commands.train import train
from genlab.errors import ConfigError, GenlabError
from genlab.export import export, load_generator
from genlab.files import Outputs
from genlab.loading import load_run
from tests.conftest import cli, make_cfg

FAST = ["dataset=digits", "trainer=smoke", "logger=none", "trainer.sample_every=0"]


def last(run):
    return load_checkpoint(run / "checkpoints" / "last.pt")


@pytest.mark.parametrize("model", ["gan", "vae"])
def test_init_from_copies_weights_and_freeze_keeps_them(model, tmp_path):
    train(make_cfg(f"model={model}", *FAST), run_dir=tmp_path / "base")
    frozen = "discriminator" if model == "gan" else "encoder"
    cfg = make_cfg(
        f"model={model}",
        *FAST,
        "trainer.max_steps=3",
        f"model.init_from={tmp_path / 'base'}",
        f"model.freeze=[{frozen}]",
    )
    train(cfg, run_dir=tmp_path / "tuned")
    base, tuned = last(tmp_path / "base")["model"], last(tmp_path / "tuned")["model"]
    weights = [k for k in base if k.endswith("weight")]
    for key in weights:
        if key.startswith(frozen):
            assert torch.equal(base[key], tuned[key]), key  # frozen: exactly the source's
    trained = [k for k in weights if not k.startswith(frozen)]
    assert trained and any(not torch.equal(base[k], tuned[k]) for k in trained)
    assert f"init_from: {tmp_path / 'base'}" in last(tmp_path / "tuned")["config"]


def test_fine_tune_bad_inputs_are_clear(tmp_path):
    with pytest.raises(GenlabError, match="model.init_from=.*no checkpoint"):
        train(make_cfg("model=gan", *FAST, f"model.init_from={tmp_path}"), run_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match="freeze: 'critic' is not a part of this model; parts: "):
        train(make_cfg("model=gan", *FAST, "model.freeze=[critic]"), run_dir=tmp_path / "b")


@pytest.mark.parametrize("model", ["cgan", "vae", "dcgan"])
def test_exported_generator_gives_the_same_images(model, tmp_path):
    extra = {
        "cgan": ["model.ema_decay=0.9", "model.ema_start=1"],
        "dcgan": ["model.spectral_norm=[generator,discriminator]"],  # exported as a plain G
    }.get(model, [])
    cfg = make_cfg(f"model={model}", *FAST, *extra)
    train(cfg, run_dir=tmp_path / "run")
    net, run_cfg, state = load_run(str(tmp_path / "run"), torch.device("cpu"))
    export(net, run_cfg, {"step": state["step"]}, Outputs(tmp_path / "export"))
    g = load_generator(tmp_path / "export")
    z = torch.randn(10, g.latent_dim)
    labels = torch.arange(10) if model == "cgan" else None
    with torch.no_grad():
        net.eval()
        expected = net.decode_latents(z, labels)
    assert torch.equal(g(z, labels), expected)
    assert g(z, labels).shape == (10, 1, 32, 32)


def test_export_command_writes_safetensors(tmp_path):
    train(make_cfg("model=dcgan", *FAST), run_dir=tmp_path / "run")
    result = cli("export", f"run={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "export" / "generator.safetensors").is_file()
    assert load_generator(tmp_path / "run" / "export")(torch.randn(2, 100)).shape == (2, 1, 32, 32)


def test_an_export_from_before_the_family_contract_still_loads(tmp_path):
    """Exports written before `Family.export_sampler` held the whole VAE and named its
    likelihood (`output: bernoulli`): they load, and sample through the decoder."""
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    train(make_cfg("model=vae_mlp", *FAST), run_dir=tmp_path / "run")
    net, run_cfg, _ = load_run(str(tmp_path / "run"), torch.device("cpu"))
    node = OmegaConf.to_container(run_cfg.model)
    node.update(channels=1, image_size=32, num_classes=None)
    for key in ("init_from", "freeze"):
        node.pop(key, None)
    old = {"network": node, "latent_dim": net.latent_dim, "num_classes": 0, "output": "bernoulli"}
    (tmp_path / "old").mkdir()
    OmegaConf.save(OmegaConf.create(old), tmp_path / "old" / "generator.yaml")
    weights = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(weights, str(tmp_path / "old" / "generator.safetensors"))
    z = torch.randn(3, net.latent_dim)
    with torch.no_grad():
        expected = net.eval().decode_latents(z)
    assert torch.equal(load_generator(tmp_path / "old")(z), expected)
