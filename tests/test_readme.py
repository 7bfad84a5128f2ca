"""The README's tour is a test: each `genlab` line of it runs as written, with run folders
filled in and short settings appended (few steps, small evaluations), so the README cannot
drift from what genlab does."""

import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

# what each command gets on top of the README's words, to run in seconds
SHORT = {
    "train": ["trainer.max_steps=2", "trainer.eval_every=null", "trainer.sample_every=0"],
    "eval": ["evaluator.num_generated=100", "evaluator.nll_samples=1"],
    "sample": ["sampler.num_images=16"],
}


def tour() -> list[str]:
    """The lines of the README's "A tour" block, without their comments."""
    text = (ROOT / "README.md").read_text()
    (block,) = re.findall(r"## A tour\n\n```\n(.*?)```", text, flags=re.S)
    return [line.split("  #")[0].strip() for line in block.strip().splitlines()]


def _newest(folder: Path) -> Path:
    return max(folder.iterdir(), key=lambda p: p.stat().st_mtime)


@pytest.mark.slow
def test_the_readme_tour_runs_as_written(tmp_path):
    # the run `make train` leaves, which the tour continues, evaluates, samples and exports
    made = run_cli("train", "experiment=cdcgan_mnist", *SHORT["train"], cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-3000:]
    current = _newest(tmp_path / "outputs" / "cdcgan_mnist5k")
    ran = []
    for line in tour():
        words = shlex.split(line)
        if words[0] != "genlab":  # tensorboard
            continue
        command = words[1]
        named = re.compile(r"outputs/(cdcgan_mnist5k|multirun)/<date>_<time>")
        args = []
        for word in words[2:]:
            if match := named.search(word):
                folder = tmp_path / "outputs" / match[1]
                target = current if match[1] == "cdcgan_mnist5k" else _newest(folder)
                word = word.replace(match[0], str(target))
            args.append(word.replace("run=...", f"run={current}"))
        extra = list(SHORT.get(command, []))
        if command == "train" and "-m" in args:  # the sweep ranks by eval/fd: a cheap one
            extra = ["trainer.max_steps=2", "evaluator.num_generated_cheap=100"]
        if command == "train" and "trainer.resume=auto" in args:
            extra[0] = "trainer.max_steps=4"  # on from the run's 2 steps
        before = set((tmp_path / "outputs").rglob("run.json"))
        result = run_cli(command, *args, *extra, cwd=tmp_path, timeout=600)
        assert result.returncode == 0, f"{line}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        ran.append(command)
        new = set((tmp_path / "outputs").rglob("run.json")) - before
        if command == "train" and "-m" not in args and "trainer.resume=auto" not in args:
            (record,) = new
            current = record.parent  # `run=...` below names the run made last
        if "trainer.resume=auto" in args:
            assert "Resumed at step 2" in result.stdout
    assert ran.count("train") == 5 and {"report", "eval", "sample", "export"} <= set(ran)
