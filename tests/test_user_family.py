"""Model families of the user's own, with no edit to genlab: the code and config blocks of
docs/adding-a-model-family.md are written to a folder, and its commands (train, eval, sample,
export, then loading the export) run as a user would run them; without trust, its runs are
refused. The second family generates from an image: it is evaluated by PSNR and SSIM, and
restores a folder of the user's images."""

import math
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import ROOT, run_cli

DOC = ROOT / "docs" / "adding-a-model-family.md"


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture
def user_folder(tmp_path):
    """The page's files, each at the path its first line names (`# my_family.py`)."""
    folder = tmp_path / "user"
    for block in blocks("python") + blocks("yaml"):
        first, _, _ = block.partition("\n")
        path = folder / first.removeprefix("# ").strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block)
    return folder


# `make test` trains the model and the evaluation's classifier for fewer steps than the page
# says; `make test-all` runs it as written
CLASSIFIER = "evaluator.classifier_steps=200"  # the evaluations' (at the end of training, eval)
SHORTER = {"train": ["trainer.max_steps=100", CLASSIFIER], "eval": [CLASSIFIER]}


def run_block(commands: str, shorter: dict, user_folder) -> dict[str, str]:
    """Run a bash block's lines as a user would; return each command's output by its line."""
    env: dict[str, str] = {}
    outputs = {}
    for line in commands.strip().splitlines():
        words = shlex.split(line.replace("$PWD", str(user_folder)))
        if words[0] == "export":
            env.update(word.split("=", 1) for word in words[1:])
            continue
        if words[0] == "genlab":
            result = run_cli(*words[1:], *shorter.get(words[1], []), cwd=user_folder, env=env)
        else:
            assert words[0] == "python"
            result = subprocess.run(
                [sys.executable, *words[1:]],
                cwd=user_folder,
                env={**__import__("os").environ, **env},
                capture_output=True,
                text=True,
                timeout=120,
            )
        assert result.returncode == 0, f"{line}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        outputs[" ".join(words[:2])] = result.stdout
    return outputs


@pytest.mark.parametrize("shorter", [SHORTER, pytest.param({}, marks=pytest.mark.slow)])
def test_a_family_of_ones_own_runs_every_command(shorter, user_folder):
    outputs = run_block(blocks("bash")[0], shorter, user_folder)
    assert "fd " in outputs["genlab eval"] and "classes_covered" in outputs["genlab eval"]
    assert outputs["python -c"].strip() == "torch.Size([4, 1, 32, 32])"  # the export, loaded
    run = user_folder / "runs" / "ae"
    with Image.open(run / "samples" / "reconstruct_seed0.png") as grid:
        assert grid.size == (2 + 8 * 34, 2 + 16 * 34)  # 8 rows of test images and their pairs
    assert (run / "export" / "generator.safetensors").is_file()

    # its run folder names my_family's classes: genlab builds them only when trusted
    result = run_cli("sample", f"run={run}", cwd=user_folder, env={"PYTHONPATH": str(user_folder)})
    assert result.returncode == 1
    assert "model._target_ is 'my_family.RegularisedAE'" in result.stderr
    assert "GENLAB_TRUSTED_TARGETS" in result.stderr


def _psnr(image: np.ndarray, clean: np.ndarray) -> float:
    return 10 * math.log10(255**2 / ((image.astype(float) - clean.astype(float)) ** 2).mean())


def _clean_digits() -> list[np.ndarray]:
    """The digits make_noisy.py adds noise to, without it."""
    from sklearn.datasets import load_digits

    return [
        np.asarray(
            Image.fromarray(np.uint8(d * 255 / 16)).resize((32, 32), Image.Resampling.BICUBIC)
        )
        for d in load_digits().images[-4:]
    ]


@pytest.mark.parametrize("shorter", [SHORTER, pytest.param({}, marks=pytest.mark.slow)])
def test_a_family_that_generates_from_an_image_runs_every_command(
    shorter, user_folder, monkeypatch
):
    outputs = run_block(blocks("bash")[1], shorter, user_folder)
    table = dict(
        line.split(None, 1) for line in outputs["genlab eval"].splitlines() if len(line.split()) > 1
    )
    noisy_psnr = 20 * math.log10(255 / 25)  # the conditions' own, before clipping: 20.2 dB
    assert table["psnr"].endswith(" dB") and float(table["psnr"].split()[0]) > noisy_psnr + 5
    assert 0 < float(table["ssim"]) <= 1
    assert table["condition"].strip() == "noise sigma 25/255"
    assert "held-out pairs" in table["paired"]
    assert outputs["python -c"].strip() == "torch.Size([4, 1, 32, 32])"

    run = user_folder / "runs" / "denoise"
    from genlab.export import load_generator

    monkeypatch.syspath_prepend(str(user_folder))  # my_restorer, as PYTHONPATH gives it
    g = load_generator(run / "export", trust_code=True)
    clean = _clean_digits()
    for i in range(4):  # each of the user's images, restored at its size, as the export does
        with Image.open(user_folder / "noisy" / f"digit{i}.png") as im:
            noisy = np.asarray(im)
        with Image.open(run / "samples" / "noisy_seed0" / f"digit{i}.png") as im:
            restored = np.asarray(im)
        assert restored.shape == noisy.shape == (32, 32)
        assert _psnr(restored, clean[i]) > _psnr(noisy, clean[i]) + 3
        exported = g(None, torch.from_numpy(noisy.copy())[None, None].float() / 127.5 - 1)
        pixels = ((exported[0, 0] + 1) * 127.5).round().to(torch.uint8).numpy()
        assert np.abs(pixels.astype(int) - restored.astype(int)).max() <= 1


@pytest.mark.slow  # three runs in fresh processes: make test-all and CI
def test_an_image_conditional_run_resumes_bit_for_bit(user_folder):
    """Random masks drawn per batch from the batch's place in the run: a resumed run draws the
    same ones, and ends with the weights of an uninterrupted one."""
    env = {"PYTHONPATH": str(user_folder), "GENLAB_TRUSTED_TARGETS": "my_restorer"}
    common = [
        "train",
        "--config-dir",
        "conf",
        "model=restorer",
        "condition=mask",
        "condition.where=random",
        "dataset=digits",
        "trainer.eval_every=null",
        "trainer.batch_size=16",
    ]
    runs = {"whole": ["trainer.max_steps=6"], "part": ["trainer.max_steps=3"]}
    runs["resumed"] = ["trainer.max_steps=6", "trainer.resume=auto"]
    for name, extra in runs.items():
        folder = "part" if name == "resumed" else name
        result = run_cli(*common, *extra, f"hydra.run.dir=runs/{folder}", cwd=user_folder, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
    whole, resumed = (
        torch.load(user_folder / "runs" / f / "checkpoints" / "last.pt", weights_only=True)
        for f in ("whole", "part")
    )
    assert resumed["step"] == whole["step"] == 6
    assert all(torch.equal(whole["model"][k], v) for k, v in resumed["model"].items())
