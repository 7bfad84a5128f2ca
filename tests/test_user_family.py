"""A model family of the user's own, with no edit to genlab: the code and config blocks of
docs/adding-a-model-family.md are written to a folder, and its commands (train, eval, sample,
export, then loading the export) run as a user would run them; without trust, its runs are
refused."""

import re
import shlex
import subprocess
import sys

import pytest
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


@pytest.mark.parametrize("shorter", [SHORTER, pytest.param({}, marks=pytest.mark.slow)])
def test_a_family_of_ones_own_runs_every_command(shorter, user_folder):
    (commands,) = blocks("bash")
    env: dict[str, str] = {}
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
        if words[:2] == ["genlab", "eval"]:
            assert "fd " in result.stdout and "classes_covered" in result.stdout
    assert result.stdout.strip() == "torch.Size([4, 1, 32, 32])"  # the export, loaded
    run = user_folder / "runs" / "ae"
    with Image.open(run / "samples" / "reconstruct_seed0.png") as grid:
        assert grid.size == (2 + 8 * 34, 2 + 16 * 34)  # 8 rows of test images and their pairs
    assert (run / "export" / "generator.safetensors").is_file()

    # its run folder names my_family's classes: genlab builds them only when trusted
    result = run_cli("sample", f"run={run}", cwd=user_folder, env={"PYTHONPATH": str(user_folder)})
    assert result.returncode == 1
    assert "model._target_ is 'my_family.RegularisedAE'" in result.stderr
    assert "GENLAB_TRUSTED_TARGETS" in result.stderr
