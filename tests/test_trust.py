"""Files from strangers run no code: configs stored in checkpoints and exports build only
allow-listed targets, and their YAML is bounded. Each attack is shown to work without the check
(a marker file appears), then refused by genlab (the marker never appears)."""

import base64
import io
import os
import zipfile

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from genlab.checkpoint import load_checkpoint, save_checkpoint
from genlab.commands.train import train
from genlab.errors import GenlabError
from genlab.export import export, load_generator
from genlab.files import Outputs
from genlab.loading import load_run
from genlab.trust import TRUSTED_ENV, UntrustedConfigError, allowed, read_config, shipped_targets
from tests.conftest import cli, make_cfg, run_cli

CPU = torch.device("cpu")


class Touch:
    """A pickle that creates a file when loaded."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def code_chain(marker) -> dict:
    """`torch.load(io.BytesIO(base64.b64decode(...)), weights_only=False)`: a config that runs a
    pickled payload when Hydra instantiates it."""
    buffer = io.BytesIO()
    torch.save(Touch(marker), buffer)
    payload = base64.b64encode(buffer.getvalue()).decode()
    return {
        "_target_": "torch.load",
        "f": {
            "_target_": "io.BytesIO",
            "initial_bytes": {"_target_": "base64.b64decode", "s": payload},
        },
        "weights_only": False,
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    cfg = make_cfg("model=vae_mlp", "dataset=digits", "trainer=smoke", "trainer.max_steps=2")
    train(cfg, run_dir=folder)
    return folder


def tampered(run, tmp_path, group: str, node: dict):
    """A copy of `run`'s checkpoint whose stored config has `group` replaced by `node`."""
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    cfg = OmegaConf.create(state["config"])
    cfg[group] = node
    state["config"] = OmegaConf.to_yaml(cfg)
    path = tmp_path / "evil" / "checkpoints" / "last.pt"
    save_checkpoint(state, path)
    return path


def test_the_attack_works_when_a_config_is_instantiated_unchecked(tmp_path):
    marker = tmp_path / "pwned"
    instantiate(OmegaConf.create(code_chain(marker)))
    assert marker.exists()  # what genlab must never do with a config from a file


@pytest.mark.parametrize("group", ["dataset", "model", "loss"])
def test_a_checkpoint_config_that_runs_code_is_refused(run, tmp_path, group):
    marker = tmp_path / "pwned"
    path = tampered(run, tmp_path, group, code_chain(marker))
    key = {"loss": "model.objective"}.get(group, group)  # a stored loss is the model's
    with pytest.raises(UntrustedConfigError, match=f"{key}._target_ is 'torch.load'"):
        load_run(path, CPU)
    assert not marker.exists()


def test_nested_targets_are_checked_before_anything_is_built(run, tmp_path):
    """An allowed outer target does not let an inner one through."""
    marker = tmp_path / "pwned"
    node = OmegaConf.to_container(
        OmegaConf.create(load_checkpoint(run / "checkpoints" / "last.pt")["config"]).model
    )
    node["encoder"]["hidden"] = code_chain(marker)
    path = tampered(run, tmp_path, "model", node)
    with pytest.raises(UntrustedConfigError, match=r"model.encoder.hidden._target_"):
        load_run(path, CPU)
    assert not marker.exists()


def test_eval_sample_and_export_refuse_it_through_the_cli(run, tmp_path):
    marker = tmp_path / "pwned"
    path = tampered(run, tmp_path, "dataset", code_chain(marker))
    for command in ("eval", "sample", "export"):
        result = cli(command, f"run={path}", "device=cpu" if command != "export" else "out=x")
        assert result.returncode == 1, result.stderr
        assert "dataset._target_ is 'torch.load'" in result.stderr
        assert "trust_code=true" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


def test_a_users_own_targets_load_when_trusted(tmp_path, monkeypatch):
    """A run with a target of the user's own code evaluates once they say they trust it."""
    cfg = make_cfg(
        "model=gan",
        "dataset=digits",
        "trainer=smoke",
        "trainer.max_steps=1",
        "loss._target_=tests.helpers.NaNAt",
        "+loss.steps=[]",
    )
    train(cfg, run_dir=tmp_path / "own")
    with pytest.raises(UntrustedConfigError, match="objective._target_ is 'tests.helpers.NaNAt'"):
        load_run(tmp_path / "own", CPU)
    assert type(load_run(tmp_path / "own", CPU, trust_code=True)[0].objective).__name__ == "NaNAt"
    monkeypatch.setenv(TRUSTED_ENV, "mypkg, tests.helpers")
    assert type(load_run(tmp_path / "own", CPU)[0].objective).__name__ == "NaNAt"


def test_a_trusted_prefix_does_not_reach_through_imported_modules(monkeypatch):
    monkeypatch.setenv(TRUSTED_ENV, "tests.helpers,genlab")
    assert allowed("tests.helpers.NaNAt")
    assert not allowed("tests.helpers.bce_g_loss")  # defined in genlab.losses, imported there
    assert not allowed("genlab.checkpoint.os.system")  # os.system through genlab's module
    assert not allowed("genlab.checkpoint.torch.load")
    assert not allowed("tests.helpersevil.X")


def test_the_allow_list_is_genlabs_own_config_tree():
    targets = shipped_targets()
    assert {"genlab.models.GAN", "genlab.models.vae.ConvEncoder", "torch.optim.Adam"} <= targets
    assert {"genlab.data.mnist5k", "torch.optim.lr_scheduler.CosineAnnealingLR"} <= targets
    assert not {"torch.load", "builtins.open", "os.system", "optuna.samplers.TPESampler"} & targets


def test_an_export_builds_only_allow_listed_networks(run, tmp_path):
    model, run_cfg, state = load_run(run, CPU)
    folder = tmp_path / "export"
    export(model, run_cfg, {"step": 2}, Outputs(folder))
    assert load_generator(folder)(torch.randn(2, model.latent_dim)).shape == (2, 1, 32, 32)
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    marker = tmp_path / "pwned"
    spec = OmegaConf.load(folder / "generator.yaml")
    for network, where in (
        ({"_target_": "builtins.open", "file": str(victim), "mode": "w"}, "network._target_"),
        (
            {**OmegaConf.to_container(spec.network), "encoder": code_chain(marker)},
            "network.encoder",
        ),
    ):
        spec.network = network
        OmegaConf.save(spec, folder / "generator.yaml")
        with pytest.raises(UntrustedConfigError, match=where):
            load_generator(folder)
    assert victim.read_text() == "keep me" and not marker.exists()


def test_an_export_is_refused_where_its_network_is_no_network(run, tmp_path):
    """A data set (which could download or write anywhere) or a partial in generator.yaml."""
    model, run_cfg, state = load_run(run, CPU)
    folder = tmp_path / "export"
    export(model, run_cfg, {"step": 2}, Outputs(folder))
    spec = OmegaConf.load(folder / "generator.yaml")
    own = OmegaConf.to_container(spec.network)
    nowhere = tmp_path / "nowhere"
    spec.network = {"_target_": "genlab.data.mnist", "root": str(nowhere), "download": True}
    OmegaConf.save(spec, folder / "generator.yaml")
    with pytest.raises(
        UntrustedConfigError, match=r"'genlab.data.mnist'.*\(conf/model/ or conf/lo"
    ):
        load_generator(folder)
    assert not nowhere.exists()
    spec.network = {**own, "_partial_": True}
    OmegaConf.save(spec, folder / "generator.yaml")
    with pytest.raises(GenlabError, match="its network builds a .*, not a torch module"):
        load_generator(folder)


def test_a_stored_data_set_is_never_downloaded(run, tmp_path):
    """torchvision's MNIST with `root` anywhere and `download=true` in a run's stored config:
    one message, and no folder made there."""
    anywhere = tmp_path / "anywhere" / "data"
    node = {"_target_": "genlab.data.mnist", "root": str(anywhere), "download": True}
    path = tampered(run, tmp_path, "dataset", {**node, "image_size": 32})
    result = cli("export", f"run={path}", f"out={tmp_path / 'x'}")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "is never downloaded" in result.stderr
    assert not (tmp_path / "anywhere").exists() and not (tmp_path / "x").exists()


def test_trusting_genlab_by_prefix_trusts_none_of_its_writers(run, tmp_path, monkeypatch):
    """`GENLAB_TRUSTED_TARGETS=genlab` adds nothing: genlab's functions that write files, built
    from a stored config, would write where the file says (shown first), and are refused; a
    stored config may name only its own group's targets."""
    shown = tmp_path / "shown.pt"
    writer = {"_target_": "genlab.checkpoint.save_checkpoint", "state": {"model": {}}}
    instantiate({**writer, "path": str(shown)})
    assert shown.is_file()  # what building it would do
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    monkeypatch.setenv(TRUSTED_ENV, "genlab")
    for target in ("genlab.checkpoint.save_checkpoint", "genlab.files.write_file"):
        path = tampered(run, tmp_path, "loss", {**writer, "_target_": target, "path": str(victim)})
        with pytest.raises(UntrustedConfigError, match=f"objective._target_ is '{target}'"):
            load_run(path, CPU)
    assert victim.read_text() == "keep me"
    assert not allowed("genlab.files.Outputs") and allowed("genlab.models.VAE")
    path = tampered(run, tmp_path, "dataset", {"_target_": "genlab.models.VAE"})
    with pytest.raises(UntrustedConfigError, match=r"for their group \(conf/dataset/\)"):
        load_run(path, CPU)


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)


def test_yaml_from_files_is_bounded():
    assert len(ALIAS_BOMB) < 500  # 9**9 nodes once expanded
    with pytest.raises(UntrustedConfigError, match="anchors or aliases"):
        read_config(ALIAS_BOMB, "x.pt")
    deep = "a: " + "[" * 40 + "]" * 40
    with pytest.raises(UntrustedConfigError, match="nests deeper than 32"):
        read_config(deep, "x.pt")
    with pytest.raises(UntrustedConfigError, match="at most 1048576"):
        read_config("a: " + "x" * (1 << 20), "x.pt")
    with pytest.raises(UntrustedConfigError, match=r"model.root holds an interpolation"):
        read_config("model:\n  root: ${oc.env:HOME}\n", "x.pt")
    with pytest.raises(UntrustedConfigError, match="not text"):
        read_config({"a": 1}, "x.pt")
    with pytest.raises(UntrustedConfigError, match="not valid YAML"):
        read_config("a: [", "x.pt")
    assert read_config("model:\n  lr: 1e-4\n", "x.pt").model.lr == 1e-4


def test_an_alias_bomb_in_a_checkpoint_is_one_message(run, tmp_path):
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    state["config"] = ALIAS_BOMB
    path = tmp_path / "bomb.pt"
    save_checkpoint(state, path)
    result = run_cli("eval", f"run={path}", timeout=60)  # without the check: minutes, GBs
    assert result.returncode == 1 and "anchors or aliases" in result.stderr


def test_a_text_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("model: 1\n")
    with pytest.raises(GenlabError, match="not a checkpoint at all") as e:
        load_checkpoint(path)
    assert "run code" not in str(e.value)


def test_compressed_archive_entries_are_refused(run, tmp_path):
    """torch.save stores entries uncompressed; a deflated one could inflate without bound."""
    src = run / "checkpoints" / "last.pt"
    path = tmp_path / "deflated.pt"
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as b:
        for info in a.infolist():
            b.writestr(info.filename, a.read(info))
    with pytest.raises(GenlabError, match="compressed entries"):
        load_checkpoint(path)
