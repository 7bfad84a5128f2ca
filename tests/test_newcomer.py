"""A new user's first commands: quiet on a healthy run, errors as one line."""

from tests.conftest import run_cli


def test_a_healthy_run_s_commands_print_no_warning(tmp_path):
    """train (into the default run folder), eval, sample, export and report, each in a fresh
    process as a user runs them: stderr holds no Python warning (progress bars and genlab's own
    log lines are allowed)."""
    outputs = {}
    outputs["train"] = run_cli("train", "trainer=smoke", "trainer.eval_every=null", cwd=tmp_path)
    (run,) = (tmp_path / "outputs").glob("dcgan_mnist5k/*")
    for command in (
        ["eval", f"run={run}", "evaluator.num_generated=100", "evaluator.num_generated_cheap=100"],
        ["sample", f"run={run}"],
        ["export", f"run={run}"],
        ["report", str(tmp_path / "outputs")],
    ):
        outputs[command[0]] = run_cli(*command, cwd=tmp_path)
    for name, result in outputs.items():
        assert result.returncode == 0, f"{name}: {result.stderr[-2000:]}"
        assert "Warning" not in result.stderr, f"{name}: {result.stderr[-2000:]}"
    assert "Warning" not in (run / "train.log").read_text()

    # a single run's folder is not a report's: refused, naming the folder that holds the runs
    single = run_cli("report", str(run), cwd=tmp_path)
    assert single.returncode == 2 and f"genlab report {run.parent}" in single.stderr
    assert not (run / "report.md").exists()
