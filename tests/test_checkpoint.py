"""Checkpoints are written atomically, in the background, and loaded without running code from
the file."""

import errno
import os
import time

import pytest
import torch

from genlab.background import BackgroundWriter
from genlab.checkpoint import checkpoint_bytes, load_checkpoint, rng_state, save_checkpoint
from genlab.errors import GenlabError, WriteError
from genlab.files import MANIFEST, Outputs


def test_round_trip_and_copy(tmp_path):
    state = {"step": 3, "model": {"w": torch.arange(4.0)}, "config": "a: 1"}
    run = Outputs(tmp_path)
    run.write("c/step.pt", checkpoint_bytes(state))
    run.copy("c/step.pt", "c/last.pt")
    loaded = load_checkpoint(tmp_path / "c" / "last.pt")
    assert loaded["step"] == 3 and torch.equal(loaded["model"]["w"], torch.arange(4.0))
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["last.pt", "step.pt"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {}, "step": 1}, path)

    def half_then_full(f):
        f.write(b"PK" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteError, match=f"cannot write {path}: the disk is full"):
        Outputs(tmp_path, manifest=False).write("last.pt", half_then_full)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_missing_file(tmp_path):
    with pytest.raises(GenlabError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_file(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.randn(100)}}, path)
    path.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    with pytest.raises(GenlabError, match=f"{path} is truncated, or not a checkpoint at all"):
        load_checkpoint(path)


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_with_a_payload_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "x": Payload()}, path)
    with pytest.raises(GenlabError, match="was refused"):
        load_checkpoint(path)


def test_foreign_file(tmp_path):
    path = tmp_path / "other.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(GenlabError, match="not a genlab checkpoint"):
        load_checkpoint(path)


def test_a_zip_after_other_bytes_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "prefixed.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}, "step": 1}, path)
    path.write_bytes(b"JUNK" * 100 + path.read_bytes())  # zipfile itself reads past such bytes
    with pytest.raises(GenlabError, match="zip archive from the file's first byte"):
        load_checkpoint(path)


def _rng_with_a_billion_keys():
    state = rng_state()
    state["numpy"]["keys"] = torch.zeros(1, dtype=torch.int64).expand(10**9)  # 8 bytes on disk
    return state


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("model", "abc", "its model is not a mapping of names to tensors"),
        ("model", {"w": [1, 2]}, "its model is not a mapping of names to tensors"),
        ("step", [1, 2], "its step is not a whole number >= 0"),
        ("optimizers", "x", "its optimizers is not a mapping"),
        ("rng", "_rng_with_a_billion_keys", "its rng is not the random states genlab saves"),
    ],
)
def test_malformed_fields_are_one_message_naming_the_field(tmp_path, field, value, message):
    if value == "_rng_with_a_billion_keys":
        value = _rng_with_a_billion_keys()
    path = tmp_path / "odd.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}, "step": 1, field: value}, path)
    assert path.stat().st_size < 100_000
    with pytest.raises(GenlabError, match=f"{path} is not a checkpoint genlab can use: {message}"):
        load_checkpoint(path)


def test_last_is_a_hard_link_that_survives_pruning(tmp_path):
    """`last.pt` costs no second write, and deleting the step file leaves it intact."""
    step = tmp_path / "step_0000001.pt"
    run = Outputs(tmp_path)
    run.write(step.name, checkpoint_bytes({"model": {"w": torch.ones(3)}}))
    run.copy(step.name, "last.pt")
    assert (tmp_path / MANIFEST).read_text().split() == ["step_0000001.pt", "last.pt"]
    assert os.stat(step).st_ino == os.stat(tmp_path / "last.pt").st_ino
    step.unlink()
    assert torch.equal(load_checkpoint(tmp_path / "last.pt")["model"]["w"], torch.ones(3))
    assert not list(tmp_path.glob(".*.tmp"))


def test_background_writer_runs_jobs_in_order_and_waits_on_exit():
    done = []
    with BackgroundWriter(pending=1) as writer:
        for i in range(5):
            writer.submit(lambda i=i: (time.sleep(0.01), done.append(i)))
    assert done == [0, 1, 2, 3, 4]


def test_background_failure_is_raised_in_the_caller_and_later_jobs_are_dropped():
    done = []
    with pytest.raises(OSError, match="disk full"), BackgroundWriter() as writer:
        writer.submit(lambda: (_ for _ in ()).throw(OSError("disk full")))
        writer.submit(lambda: done.append("after"))
        writer.wait()
    assert done == []


def test_leaving_on_an_exception_still_writes_what_was_submitted():
    done = []
    with pytest.raises(KeyboardInterrupt), BackgroundWriter() as writer:
        writer.submit(lambda: (time.sleep(0.2), done.append("saved")))
        raise KeyboardInterrupt
    assert done == ["saved"]
