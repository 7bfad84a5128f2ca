"""scripts/nfe_chart.py: points read from the runs' own `genlab eval` reports, only the missing
ones measured, and the table and chart written from them."""

import json
import sys

import pytest
from PIL import Image

from genlab.commands.eval import report_stem
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import nfe_chart  # noqa: E402


def report(
    solver: str,
    nfe: int,
    fd: float,
    images: int = 100,
    step: int = 50,
    shift: float = 1.0,
    guidance: float = 1.0,
    seed: int = 0,
) -> dict:
    protocol = {"features": "classifier-28px", "dataset": "digits", "num_real": 360}
    protocol |= {"num_generated": images, "sampler": solver, "sampler_steps": nfe}
    protocol |= {"guidance": guidance, "seed": seed}
    protocol |= {"time_shift": shift} if shift != 1 else {}
    return {"step": step, "protocol": protocol, "metrics": {"fd": fd}}


def save(run, r: dict) -> None:
    name = f"{report_stem(r['protocol'])}_step{r['step']:07d}.json"
    (run / "eval").mkdir(parents=True, exist_ok=True)
    (run / "eval" / name).write_text(json.dumps(r))


@pytest.fixture
def runs(tmp_path):
    flow, ddpm = tmp_path / "flow", tmp_path / "ddpm"
    for run in (flow, ddpm):
        run.mkdir()
        (run / "run.json").write_text("{}")
    for nfe, fd in ((1, 40.0), (2, 12.5)):
        save(flow, report("euler", nfe, fd))
    save(flow, report("euler", 1, 99.0, step=10))  # an older checkpoint's: not read
    save(flow, report("euler", 2, 77.0, images=1000, step=60))  # other images: not read
    save(flow, report("euler", 2, 66.0, guidance=2.0, step=60))  # guided: not read
    save(flow, report("euler", 1, 8.0, shift=2.0))  # another time grid: its own curve
    save(flow, report("euler", 2, 55.0, seed=1))  # another evaluator seed: its own curve
    save(ddpm, report("ddim", 1, 150.0))
    return flow, ddpm


def test_only_missing_points_are_measured_and_the_table_has_every_point(runs, tmp_path):
    flow, ddpm = runs
    measured = []

    def fake_eval(curve, nfe, images):
        measured.append((curve.label, nfe, images))
        save(curve.run, report(curve.solver, nfe, 3.25, shift=curve.shift, seed=curve.seed))

    curves = [
        nfe_chart.Curve("flow, Euler", flow, "euler"),
        nfe_chart.Curve.parse(f"flow, Euler, shift 2={flow}:euler,shift=2"),
        nfe_chart.Curve.parse(f"flow, Euler, seed 1={flow}:euler,seed=1"),
        nfe_chart.Curve("DDIM", ddpm, "ddim"),
    ]
    reports = nfe_chart.measure(curves, [1, 2], 100, fake_eval)
    assert measured == [("flow, Euler, shift 2", 2, 100), ("flow, Euler, seed 1", 1, 100)] + [
        ("DDIM", 2, 100)
    ]
    text = nfe_chart.table(curves, [1, 2], reports, 100)
    assert "| flow, Euler | `flow` | 50 | 40 | 12.5 |" in text
    assert "| flow, Euler, shift 2 | `flow` | 50 | 8 | 3.25 |" in text
    assert "| flow, Euler, seed 1 | `flow` | 50 | 3.25 | 55 |" in text
    assert "| DDIM | `ddpm` | 50 | 150 | 3.25 |" in text
    assert "100 generated images against the 360 held-out images of digits" in text


def test_the_script_writes_table_and_chart_and_refuses_a_bad_curve(runs, tmp_path, capsys):
    flow, _ = runs
    out = tmp_path / "docs" / "nfe"
    nfe_chart.main(
        [
            "--curve",
            f"flow, Euler={flow}:euler",
            "--nfe",
            "1",
            "2",
            "--images",
            "100",
            "--out",
            str(out),
        ]
    )
    md = out.with_suffix(".md").read_text()
    assert (
        "| flow, Euler | `flow` | 50 | 40 | 12.5 |" in md and "Rebuilt by `python scripts/nfe" in md
    )
    assert f"--curve 'flow, Euler={flow}:euler'" in md  # as a shell takes it back
    with Image.open(out.with_suffix(".png")) as png:
        assert png.size == (700, 450) and len(png.getcolors(1 << 16)) > 10  # lines, not blank
    for bad, message in [
        (f"{flow}", "LABEL=RUN_FOLDER:SOLVER"),
        (f"x={flow}:ddim,eta=1", "LABEL=RUN_FOLDER:SOLVER\\[,shift=S\\]\\[,seed=N\\]"),
        (f"x={flow}:heun,shift=two", "shift must be a number, got 'two'"),
        (f"x={flow}:euler,seed=-1", "seed must be a whole number >= 0, got '-1'"),
        (f"x={tmp_path}:euler", "is not a run folder"),
    ]:
        with pytest.raises(SystemExit, match=message):
            nfe_chart.main(["--curve", bad, "--out", str(out)])
