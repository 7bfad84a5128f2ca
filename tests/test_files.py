"""genlab writes only its own files: atomically, never through a link, and in its output folders
(run, export, report) it replaces or deletes only the files it listed in `.genlab-files`. Each
writer is tried with a link planted where it writes: the link's target (the victim) stays as it
was. `trainer.overwrite=true` deletes genlab's files only, and refuses, with the list, a folder
holding anything else."""

import os
import shutil
from pathlib import Path

import pytest
import torch

from genlab.commands.eval import save_report
from genlab.commands.export import export_run
from genlab.commands.report import report
from genlab.commands.sample import sample
from genlab.commands.train import train
from genlab.errors import GenlabError
from genlab.evaluation import Report
from genlab.files import MANIFEST, NotOursError, Outputs
from genlab.record import write_record
from tests.conftest import TINY_NETWORKS, make_cfg

TINY = ["model=gan", "dataset=digits", "trainer=smoke", "trainer.max_steps=2", "logger=none"]
WITH_FILES = [*TINY, "trainer.ckpt_every=2", "trainer.sample_every=2", "logger=tensorboard"]


def tree(folder: Path) -> dict[str, object]:
    """Every entry under `folder`: a link's target, a file's bytes, or a folder."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                found[rel] = "folder"
            else:
                found[rel] = path.read_bytes()
    return found


@pytest.fixture
def victim(tmp_path):
    """Someone else's folder with a file in it."""
    folder = tmp_path / "victim"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    return folder


def intact(victim: Path) -> bool:
    return tree(victim) == {"precious.txt": b"keep me"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-step run with a checkpoint, a grid and an event file."""
    run = tmp_path_factory.mktemp("finished") / "run"
    train(make_cfg(*WITH_FILES), run_dir=run)
    return run


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run", symlinks=True))


# --- the writing function ------------------------------------------------------------------------


def test_a_write_replaces_a_link_and_never_writes_through_it(tmp_path, victim):
    out = Outputs(tmp_path / "out")
    out.write("a/grid.png", b"genlab's")
    (tmp_path / "out" / "a" / "grid.png").unlink()
    (tmp_path / "out" / "a" / "grid.png").symlink_to(victim / "precious.txt")  # at genlab's name
    out.write("a/grid.png", b"new")
    assert (tmp_path / "out" / "a" / "grid.png").read_bytes() == b"new" and intact(victim)
    assert (tmp_path / "out" / MANIFEST).read_text() == "a/grid.png\n"


def test_a_file_genlab_did_not_write_is_not_replaced(tmp_path, victim):
    out = Outputs(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "link.png").symlink_to(victim / "precious.txt")
    for name in ("notes.txt", "link.png"):
        with pytest.raises(NotOursError, match=f"{tmp_path / name} exists and genlab did not"):
            out.write(name, b"x")
    assert (tmp_path / "notes.txt").read_text() == "mine" and intact(victim)


def test_no_folder_below_an_output_folder_may_be_a_link(tmp_path, victim):
    out = Outputs(tmp_path / "run")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "samples").symlink_to(victim)
    for write in (
        lambda: out.write("samples/x.png", b"x"),
        lambda: out.append("samples/x.log"),
        lambda: out.folder("samples/tb"),
    ):
        with pytest.raises(NotOursError, match=f"{tmp_path / 'run' / 'samples'} is a link"):
            write()
    assert intact(victim)


def test_the_list_itself_is_never_written_through_a_link(tmp_path, victim):
    (tmp_path / MANIFEST).symlink_to(victim / "precious.txt")
    with pytest.raises(NotOursError, match="is a link"):
        Outputs(tmp_path).write("run.json", b"{}")
    assert intact(victim) and not (tmp_path / "run.json").exists()


def test_an_output_folder_reached_through_the_users_own_link_is_used(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "latest").symlink_to(tmp_path / "real")
    Outputs(tmp_path / "latest").write("samples/x.png", b"x")
    assert (tmp_path / "real" / "samples" / "x.png").read_bytes() == b"x"


def test_clear_deletes_only_listed_files_and_refuses_a_folder_with_others(tmp_path, victim):
    folder = tmp_path / "run"
    out = Outputs(folder)
    for name in ("checkpoints/last.pt", "samples/a.png", "run.json"):
        out.write(name, b"x")
    (folder / "samples" / ".last.pt.genlab-0a1b2c3d.tmp").write_bytes(b"killed")  # a temp
    (folder / "samples" / "holiday.jpg").write_bytes(b"mine")
    (folder / "link").symlink_to(victim)
    before = tree(folder)
    with pytest.raises(NotOursError, match=r"holds files that genlab did not write \(link, "):
        out.clear()
    assert tree(folder) == before
    (folder / "samples" / "holiday.jpg").unlink()
    (folder / "link").unlink()
    assert out.clear() == 4  # its three and the temporary file
    assert tree(folder) == {MANIFEST: b""} and intact(victim)


# --- every writer, with a link planted where it writes -------------------------------------------


@pytest.mark.parametrize(
    "planted",
    ["checkpoints/step_0000004.pt", "samples/samples_0000004.png", "tb", "checkpoints"],
)
def test_a_resumed_run_never_writes_through_a_planted_link(finished, tmp_path, victim, planted):
    """Checkpoints, grids and TensorBoard events of a run continued in its folder."""
    run = copy_of(finished, tmp_path)
    target = victim / "precious.txt" if "." in planted else victim
    if planted == "checkpoints":  # the whole folder, its checkpoint copied along
        shutil.copy(run / "checkpoints" / "last.pt", victim / "last.pt")
        target = victim
    if (run / planted).is_dir():
        shutil.rmtree(run / planted)
    (run / planted).symlink_to(target)
    expected = tree(victim)
    with pytest.raises(GenlabError, match=f"{run / planted} (is a link|exists and genlab did)"):
        train(make_cfg(*WITH_FILES, "trainer.max_steps=4", "trainer.resume=auto"), run_dir=run)
    assert tree(victim) == expected


@pytest.mark.parametrize("planted", ["run.json", "train.log", ".hydra", ".lock"])
def test_a_new_run_never_writes_through_a_planted_link(tmp_path, victim, planted):
    """run.json, train.log, .hydra/ and the lock: refused before anything is written."""
    run = tmp_path / "run"
    run.mkdir()
    (run / planted).symlink_to(victim / "precious.txt" if planted != ".hydra" else victim)
    if planted == ".hydra":
        (victim / "config.yaml").write_text("mine")
    expected, before = tree(victim), tree(run)
    with pytest.raises(GenlabError, match=f"{run}"):
        train(make_cfg(*TINY), run_dir=run)
    assert tree(victim) == expected and tree(run) == before


def test_sample_never_replaces_a_planted_link_nor_a_file_it_did_not_write(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    grid = run / "samples" / "samples_seed0.png"
    grid.symlink_to(victim)
    cfg = make_cfg(f"run={run}", "sampler.num_images=4", config_name="sample")
    with pytest.raises(NotOursError, match=f"{grid} exists and genlab did not write it"):
        sample(cfg)
    assert victim.read_text() == "keep me"
    grid.unlink()
    assert sample(cfg) == grid and not grid.is_symlink()  # then its own grid is replaced
    grid.unlink()
    grid.symlink_to(victim)  # a link where genlab's own grid was: replaced, not followed
    assert sample(cfg) == grid and not grid.is_symlink() and victim.read_text() == "keep me"


def test_runs_must_be_a_list(finished):
    cfg = make_cfg(f"run={finished}", "runs=abc", config_name="sample")
    with pytest.raises(GenlabError, match="runs='abc': give a list of run folders"):
        sample(cfg)


def test_eval_never_writes_through_a_planted_link(finished, tmp_path, victim):
    run = copy_of(finished, tmp_path)
    (run / "eval").symlink_to(victim)
    report = Report(metrics={"fd": 1.0}, protocol={"features": "classifier", "num_generated": 9})
    with pytest.raises(NotOursError, match=f"{run / 'eval'} is a link"):
        save_report(report, run, 2, "x")
    assert intact(victim)
    (run / "eval").unlink()
    out = save_report(report, run, 2, "x")
    assert (
        out.parent == run / "eval"
        and "eval/classifier_n9_step0000002.json" in (run / MANIFEST).read_text().splitlines()
    )


@pytest.mark.parametrize("planted", ["export", "export/generator.yaml"])
def test_export_never_writes_through_a_planted_link(finished, tmp_path, victim, planted):
    run = copy_of(finished, tmp_path)
    if planted != "export":
        (run / "export").mkdir()
    (run / planted).symlink_to(victim if planted == "export" else victim / "precious.txt")
    with pytest.raises(NotOursError, match=f"{run / planted}"):
        export_run(make_cfg(f"run={run}", config_name="export"))
    assert intact(victim)


@pytest.fixture(scope="module")
def ddpm(tmp_path_factory):
    run = tmp_path_factory.mktemp("ddpm") / "run"
    train(make_cfg("model=ddpm", *TINY_NETWORKS["ddpm"], *TINY[1:]), run_dir=run)
    return run


def test_the_diffusers_export_deletes_no_folder_it_did_not_write(ddpm, tmp_path):
    """A user's own `diffusers/` in the export folder, or a `generator.yaml` of theirs, is refused
    before anything is written; genlab's own pipeline is replaced by the next export."""
    proj = tmp_path / "proj"
    (proj / "diffusers" / "src").mkdir(parents=True)
    (proj / "diffusers" / "src" / "mine.py").write_text("print('mine')")
    before = tree(proj)
    cfg = make_cfg(f"run={ddpm}", f"out={proj}", config_name="export")
    with pytest.raises(NotOursError, match=r"diffusers holds files that genlab did not write"):
        export_run(cfg)
    assert tree(proj) == before
    shutil.rmtree(proj / "diffusers")
    (proj / "generator.yaml").write_text("mine: true")
    with pytest.raises(NotOursError, match="generator.yaml exists and genlab did not write it"):
        export_run(cfg)
    assert tree(proj) == {"generator.yaml": b"mine: true"}
    (proj / "generator.yaml").unlink()
    export_run(cfg)
    first = tree(proj)
    assert "diffusers/model_index.json" in first and "diffusers/unet" in first
    assert oct((proj / "diffusers").stat().st_mode & 0o777) == oct(0o777 & ~_umask())
    export_run(cfg)  # again: genlab's own files replaced, nothing left over
    assert tree(proj).keys() == first.keys()
    listed = set((proj / MANIFEST).read_text().split())
    assert listed == {k for k, v in first.items() if v != "folder"} - {MANIFEST}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_report_never_writes_through_a_planted_link(tmp_path, victim):
    sweep = tmp_path / "sweep"
    write_record(sweep / "0", {"status": "finished", "metrics": {"loss/d": 1.0}, "params": {}})
    (sweep / "report.csv").symlink_to(victim / "precious.txt")
    with pytest.raises(NotOursError, match="report.csv exists and genlab did not write it"):
        report(sweep, metric="loss/d")
    assert intact(victim) and not (sweep / "report.md").exists()
    (sweep / "report.csv").unlink()
    (sweep / "report.md").write_text("my notes")
    with pytest.raises(NotOursError, match="report.md exists and genlab did not write it"):
        report(sweep, metric="loss/d")
    (sweep / "report.md").unlink()
    report(sweep, metric="loss/d")
    report(sweep, metric="loss/d")  # its own files are replaced
    assert (sweep / "report.md").read_text().startswith("# Sweep report")


# --- overwrite -----------------------------------------------------------------------------------


def test_overwrite_deletes_only_genlabs_files_and_refuses_with_the_others(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    mine = {
        "samples/holiday.jpg": b"jpg",
        "export/taxes.pdf": b"pdf",
        ".hydra/my.yaml": b"a: 1",
        "notes.txt": b"mine",
    }
    for name, data in mine.items():
        (run / name).parent.mkdir(exist_ok=True)
        (run / name).write_bytes(data)
    before = tree(run)
    overwrite = [*TINY, "trainer.overwrite=true"]
    with pytest.raises(GenlabError, match="trainer.overwrite=true: .* holds files") as e:
        train(make_cfg(*overwrite), run_dir=run)
    assert all(name in str(e.value) for name in mine)
    assert tree(run) == before
    for name in mine:
        (run / name).unlink()
    old = set((run / MANIFEST).read_text().split())
    train(make_cfg(*overwrite, "trainer.max_steps=1"), run_dir=run)
    now = tree(run)
    assert "checkpoints/step_0000002.pt" in old and "checkpoints/step_0000002.pt" not in now
    assert not any(name.startswith("tb/") for name in now)  # logger=none this time
    listed = set((run / MANIFEST).read_text().split())
    assert listed == {k for k, v in now.items() if v != "folder"} - {MANIFEST, ".lock"}


def test_overwrite_in_a_project_folder_deletes_nothing(finished, tmp_path):
    """`hydra.run.dir=.` with overwrite, in a folder of the user's that also holds a run."""
    here = copy_of(finished, tmp_path)
    (here / "pyproject.toml").write_text("[project]")
    (here / "src").mkdir()
    (here / "src" / "main.py").write_text("print()")
    before = tree(here)
    with pytest.raises(GenlabError, match=r"holds files that genlab did not write \(pyproject"):
        train(make_cfg(*TINY, "trainer.overwrite=true"), run_dir=here)
    assert tree(here) == before


def test_a_refused_run_leaves_no_lock_behind(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    (run / ".lock").unlink()
    before = tree(run)
    with pytest.raises(GenlabError, match="already holds a run"):
        train(make_cfg(*TINY), run_dir=run)
    assert tree(run) == before


def test_a_run_folder_from_before_the_list_is_continued_as_its_own(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    (run / MANIFEST).unlink()
    train(make_cfg(*WITH_FILES, "trainer.max_steps=4", "trainer.resume=auto"), run_dir=run)
    listed = set((run / MANIFEST).read_text().split())
    assert {"checkpoints/step_0000002.pt", "checkpoints/step_0000004.pt", "run.json"} <= listed
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 4


def test_a_run_folder_may_be_the_users_own_link(finished, tmp_path):
    real = copy_of(finished, tmp_path)
    (tmp_path / "latest").symlink_to(real)
    cfg = make_cfg(*WITH_FILES, "trainer.max_steps=3", "trainer.resume=auto")
    train(cfg, run_dir=tmp_path / "latest")
    assert (real / "checkpoints" / "step_0000003.pt").is_file()
    grid = sample(
        make_cfg(f"run={tmp_path / 'latest'}", "sampler.num_images=4", config_name="sample")
    )
    assert grid.resolve().parent == (real / "samples").resolve()


def test_a_refused_run_keeps_an_empty_folder_of_the_users(tmp_path):
    (tmp_path / "mine").mkdir()
    with pytest.raises(GenlabError, match="optimizer.lr must be > 0"):
        train(make_cfg(*TINY, "optimizer.lr=-1"), run_dir=tmp_path / "mine")
    assert tree(tmp_path) == {"mine": "folder"}
