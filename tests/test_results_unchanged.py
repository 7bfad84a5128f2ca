"""Users' results do not change under a refactoring: every conf/model and every experiment preset,
trained 30 steps on mnist5k in one thread, gives the weights (sha256 of the model's state) that
the code of the recording gave. `python -m tests.test_results_unchanged` records them anew (only
when a change of results is intended, and said in its commit)."""

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from genlab.commands.train import train
from genlab.config import CONF_DIR
from tests.conftest import make_cfg
from tests.test_resume import weights

RECORD = Path(__file__).with_name("results_unchanged.json")
# presets that start from another trained run (model.init_from): tests/test_reflow.py
NEED_A_RUN = {"model=reflow", "experiment=reflow_mnist"}
CHOICES = [f"model={p.stem}" for p in sorted((CONF_DIR / "model").glob("*.yaml"))] + [
    f"experiment={p.relative_to(CONF_DIR / 'experiment').with_suffix('').as_posix()}"
    for p in sorted((CONF_DIR / "experiment").rglob("*.yaml"))
]
CHOICES = [c for c in CHOICES if c not in NEED_A_RUN]
STEPS = [
    "dataset=mnist5k",
    "trainer.max_steps=30",
    "trainer.eval_every=null",
    "trainer.sample_every=0",
    "trainer.ckpt_every=0",
    "logger=none",
    "trainer.progress=false",
]


def machine() -> dict[str, str]:
    """What float results depend on besides the code: torch's version and its CPU kernels."""
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability()}


def weights_sha256(choice: str) -> str:
    """sha256 over the model's state (names and bytes, in name order) after 30 steps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the sums of several threads may round otherwise
    try:
        with tempfile.TemporaryDirectory() as folder:
            train(make_cfg(choice, *STEPS), run_dir=Path(folder) / "run")
            state = weights(Path(folder) / "run")["model"]
    finally:
        torch.set_num_threads(threads)
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("choice", CHOICES)
def test_thirty_steps_give_the_recorded_weights(choice):
    record = json.loads(RECORD.read_text())
    if record["machine"] != machine():
        pytest.skip(f"recorded with {record['machine']}, this machine has {machine()}")
    assert choice in record["sha256"], f"{choice} is new: record it (see the module docstring)"
    assert weights_sha256(choice) == record["sha256"][choice]


if __name__ == "__main__":
    hashes = {}
    for choice in CHOICES:
        hashes[choice] = weights_sha256(choice)
        print(choice, hashes[choice], file=sys.stderr)
    RECORD.write_text(json.dumps({"machine": machine(), "sha256": hashes}, indent=2) + "\n")
