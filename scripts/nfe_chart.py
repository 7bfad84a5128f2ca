"""Fréchet distance against network evaluations (NFE): one chart and one table from trained runs.

    python scripts/nfe_chart.py --out docs/nfe \\
        --curve "flow, Euler=outputs/flow:euler" --curve "flow, Heun=outputs/flow:heun" \\
        --curve "diffusion, DDPM=outputs/ddpm:ddpm" --curve "diffusion, DDIM=outputs/ddpm:ddim"

A curve is a run folder and one of its solvers (`genlab eval`'s `solver=`), optionally with the
flow solvers' time shift (`RUN:heun,shift=2`: `solver.shift=2`) and the evaluator's seed
(`RUN:euler,seed=1`: `evaluator.seed=1`). Each of its points,
one per `--nfe`, is the Fréchet distance of `--images` generated images in the evaluator's
classifier features against the held-out split: `genlab eval run=RUN solver=S solver.steps=N
evaluator.num_generated=IMAGES evaluator.nll_samples=0`, whose report the run keeps
(RUN/eval/classifier-*_n<images>_<solver><nfe>[_shift<shift>][_seed<seed>]_step<step>.json). A point
whose report is there with this protocol is read, not measured again, so the script can be
stopped and run again, and curves shared between charts cost nothing. Writes OUT.md (curves
as rows, NFE as columns, with the protocol) and OUT.png (FD against NFE, both axes logarithmic).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from genlab.commands.eval import report_stem
from genlab.commands.report import figure_png
from genlab.files import write_file

NFE = (1, 2, 4, 8, 10, 16, 32, 100)


@dataclass(frozen=True)
class Curve:
    label: str
    run: Path
    solver: str
    shift: float = 1.0
    seed: int = 0

    @classmethod
    def parse(cls, text: str) -> Curve:
        """'LABEL=RUN:SOLVER[,shift=S][,seed=N]'."""
        label, sep, rest = text.partition("=")
        run, colon, spec = rest.rpartition(":")
        solver, *options = spec.split(",")
        settings = dict(option.partition("=")[::2] for option in options)
        if not (sep and colon and label and run and solver) or set(settings) - {"shift", "seed"}:
            raise SystemExit(
                f"--curve must be LABEL=RUN_FOLDER:SOLVER[,shift=S][,seed=N], got {text!r}"
            )
        try:
            shift = float(settings.get("shift", 1))
        except ValueError:
            shift = settings["shift"]
            raise SystemExit(f"--curve {label}: shift must be a number, got {shift!r}") from None
        if not settings.get("seed", "0").isdigit():
            seed = settings["seed"]
            raise SystemExit(f"--curve {label}: seed must be a whole number >= 0, got {seed!r}")
        return cls(label, Path(run), solver, shift, int(settings.get("seed", 0)))


def evaluation(curve: Curve, nfe: int, images: int) -> dict | None:
    """The run's latest report (highest step) of `genlab eval` with this solver, shift, NFE and
    number of images (guidance 1, no eta, clipped), or None."""
    p = {"features": "classifier-*", "num_generated": images, "sampler": curve.solver}
    p |= {"sampler_steps": nfe, "time_shift": curve.shift, "seed": curve.seed}
    found = [
        json.loads(path.read_text())
        for path in (curve.run / "eval").glob(f"{report_stem(p)}_step*.json")
    ]
    return max(found, key=lambda r: r["step"], default=None)


def genlab_eval(curve: Curve, nfe: int, images: int, extra: Sequence[str]) -> None:
    """Measure one point with `genlab eval` (its report lands in the run folder)."""
    command = [sys.executable, "-m", "genlab", "eval", f"run={curve.run}"]
    command += [f"solver={curve.solver}", f"solver.steps={nfe}"]
    command += [f"solver.shift={curve.shift:g}"] if curve.shift != 1 else []
    command += [f"evaluator.seed={curve.seed}"] if curve.seed else []
    command += [f"evaluator.num_generated={images}", "evaluator.nll_samples=0", *extra]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def measure(
    curves: Sequence[Curve],
    nfes: Sequence[int],
    images: int,
    run_eval: Callable[[Curve, int, int], None],
) -> dict[tuple[str, int], dict]:
    """Every curve's report at every NFE, running `run_eval` for those the runs lack."""
    reports = {}
    for curve in curves:
        for nfe in nfes:
            report = evaluation(curve, nfe, images)
            if report is None:
                run_eval(curve, nfe, images)
                report = evaluation(curve, nfe, images)
                if report is None:
                    raise SystemExit(f"genlab eval wrote no report for {curve.label} at {nfe} NFE")
            reports[curve.label, nfe] = report
    return reports


def table(
    curves: Sequence[Curve], nfes: Sequence[int], reports: dict[tuple[str, int], dict], images: int
) -> str:
    """Markdown: one row per curve (its run's training steps), one FD column per NFE."""
    first = next(iter(reports.values()))["protocol"]
    lines = [
        f"Fréchet distance of {images:,} generated images against the {first['num_real']:,} "
        f"held-out images of {first['dataset']}, in {first['features']} features, against the "
        "network evaluations per image (NFE).",
        "",
        "| curve | run | steps | " + " | ".join(f"{n}" for n in nfes) + " |",
        "|---|---|---:|" + "---:|" * len(nfes),
    ]
    for c in curves:
        cells = [f"{reports[c.label, n]['metrics']['fd']:.3g}" for n in nfes]
        step = reports[c.label, nfes[0]]["step"]
        lines.append(f"| {c.label} | `{c.run.name}` | {step:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def chart(
    curves: Sequence[Curve], nfes: Sequence[int], reports: dict[tuple[str, int], dict]
) -> bytes:
    """FD against NFE, log-log, one line per curve, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c in curves:
        ax.plot(nfes, [reports[c.label, n]["metrics"]["fd"] for n in nfes], "o-", label=c.label)
    ax.set(xscale="log", yscale="log", xlabel="network evaluations per image (NFE)")
    ax.set_ylabel("Fréchet distance (classifier features)")
    ax.set_xticks(nfes, [str(n) for n in nfes])
    ax.tick_params(axis="x", which="minor", labelbottom=False)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return figure_png(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--curve",
        action="append",
        required=True,
        type=Curve.parse,
        help="LABEL=RUN_FOLDER:SOLVER[,shift=S][,seed=N] (repeat: one per line of the chart)",
    )
    parser.add_argument("--nfe", type=int, nargs="+", default=NFE)
    parser.add_argument("--images", type=int, default=5000, help="generated images per point")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.md and OUT.png")
    parser.add_argument("eval_args", nargs="*", help="more genlab eval overrides (device=cpu)")
    args = parser.parse_args(argv)
    for curve in args.curve:
        if not (curve.run / "run.json").is_file():
            raise SystemExit(f"--curve {curve.label}: {curve.run} is not a run folder")

    def run_eval(curve: Curve, nfe: int, images: int) -> None:
        genlab_eval(curve, nfe, images, args.eval_args)

    reports = measure(args.curve, args.nfe, args.images, run_eval)
    command = "python scripts/nfe_chart.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    text = table(args.curve, args.nfe, reports, args.images) + f"\nRebuilt by `{command}`.\n"
    write_file(args.out.with_suffix(".md"), text.encode())
    write_file(args.out.with_suffix(".png"), chart(args.curve, args.nfe, reports))
    print(text)


if __name__ == "__main__":
    main()
