"""`genlab report SWEEP_DIR`: rank the runs of a sweep (or any folder of runs) by their objective.

Reads every `run.json` below the folder and writes, into it, `report.csv`, `report.md`,
`report.png` (the objective against each swept parameter) and `best.png` (the best runs' latest
sample grids side by side). Runs that differ only in `trainer.seed` are grouped as mean ± std;
failed runs are listed with their reason. A run's `eval/*` values are those of its latest
`genlab eval` where it has one (RUN/eval/*.json: all metrics, the full protocol), else those of
its end-of-run evaluation; `--columns` adds more values beside the objective (an ablation table).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from genlab.errors import GenlabError, writing
from genlab.files import Outputs
from genlab.record import read_records

log = logging.getLogger(__name__)

SEED_KEYS = ("trainer.seed",)
FILES = ("report.csv", "report.md", "report.png", "best.png")  # what a report writes


def values(record: dict, evaluation: dict[str, Any]) -> dict[str, Any]:
    """What a run logged (`metrics`), its `wall_time_s`, and the metrics of its latest `genlab
    eval` report (`evaluation`) as `eval/NAME`, which replace the end-of-run evaluation's."""
    out = {**record.get("metrics", {}), "wall_time_s": record.get("wall_time_s")}
    if evaluation:
        out = {k: v for k, v in out.items() if not k.startswith("eval/")}
        out.update({f"eval/{k}": v for k, v in evaluation.items()})
    return out


def latest_evaluation(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The metrics and protocol of the newest readable RUN/eval/*.json (`genlab eval`'s
    reports), or ({}, {})."""
    for path in sorted((run_dir / "eval").glob("*.json"), key=_mtime, reverse=True):
        try:
            report = json.loads(path.read_text())
            metrics, protocol = report.get("metrics"), report.get("protocol") or {}
        except (OSError, UnicodeDecodeError, ValueError, AttributeError) as e:
            log.warning("skipping %s: not a readable evaluation (%s)", path, e)
            continue
        if isinstance(metrics, dict) and isinstance(protocol, dict):
            return metrics, protocol
    return {}, {}


def protocol_of(record: dict, protocol: dict[str, Any]) -> str:
    """How a run's eval/* values were measured, in words: from its latest `genlab eval`, or its
    end-of-run evaluation's settings (the run's .hydra/config.yaml)."""
    if protocol:
        return (
            f"{protocol.get('features')} features, {protocol.get('num_generated')} generated "
            f"vs {protocol.get('num_real')} real ({protocol.get('dataset')} "
            f"{protocol.get('real_split')}), genlab eval"
        )
    config = Path(record["run_dir"]) / ".hydra" / "config.yaml"
    try:
        import yaml

        evaluator = (yaml.safe_load(config.read_text()) or {}).get("evaluator") or {}
    except (OSError, ValueError, AttributeError):
        return "the end-of-run evaluation"
    return (
        f"{evaluator.get('extractor', 'classifier')} features, "
        f"{evaluator.get('num_generated_cheap')} generated vs the {evaluator.get('split', 'test')} "
        "split, end of run"
    )


def _mtime(path: Path) -> float:
    return path.stat().st_mtime


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def groups(records: list[dict], metrics: list[str]) -> list[dict[str, Any]]:
    """Finished runs grouped by their parameters other than the seed, with each metric's mean,
    standard deviation (over seeds; 0 for one run) and count (`stats[metric]`) from each run's
    `values`; `mean`, `std` and `n` are the first metric's (the objective's)."""
    by_key: dict[tuple, list[dict]] = {}
    for r in records:
        params = {k: v for k, v in r.get("params", {}).items() if k not in SEED_KEYS}
        by_key.setdefault(tuple(sorted(params.items(), key=lambda kv: kv[0])), []).append(r)
    out = []
    for key, runs in by_key.items():
        stats = {}
        for metric in metrics:
            numbers = [v for v in (_number(r["values"].get(metric)) for r in runs) if v is not None]
            stats[metric] = {
                "mean": statistics.fmean(numbers) if numbers else math.nan,
                "std": statistics.stdev(numbers) if len(numbers) > 1 else 0.0,
                "n": len(numbers),
            }
        out.append({"params": dict(key), **stats[metrics[0]], "stats": stats, "runs": runs})
    return out


def rank(rows: list[dict], direction: str) -> list[dict]:
    """Best first; rows without a value last."""
    sign = 1 if direction == "minimize" else -1
    return sorted(rows, key=lambda g: (math.isnan(g["mean"]), sign * g["mean"] if g["n"] else 0))


def _fmt(g: dict) -> str:
    if not g["n"]:
        return "-"
    return f"{g['mean']:.4g} ± {g['std']:.2g}" if g["n"] > 1 else f"{g['mean']:.4g}"


def table(rows: list[dict], swept: list[str], metrics: list[str]) -> list[list[str]]:
    header = ["rank", *swept, *metrics, "seeds", "steps", "images/s", "run"]
    body = []
    for i, g in enumerate(rows, 1):
        first = g["runs"][0]
        body.append(
            [
                str(i),
                *(str(g["params"].get(k, "")) for k in swept),
                *(_fmt(g["stats"][m]) for m in metrics),
                str(g["n"]),
                str(first.get("steps", "")),
                f"{first['images_per_s']:.0f}" if first.get("images_per_s") else "",
                Path(first["run_dir"]).name,
            ]
        )
    return [header, *body]


def _text(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def _markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]])


def plot(finished: list[dict], swept: list[str], metric: str) -> bytes:
    """The objective of every run against each swept parameter, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(1, len(swept)), figsize=(4 * max(1, len(swept)), 3.2))
    axes = [axes] if not hasattr(axes, "__len__") else list(axes)
    for ax, key in zip(axes, swept or ["run"], strict=False):
        points = [
            (r.get("params", {}).get(key, Path(r["run_dir"]).name), value)
            for r in finished
            if (value := _number(r["values"].get(metric))) is not None
        ]
        xs = [p[0] for p in points]
        if not all(isinstance(x, int | float) for x in xs):
            labels = sorted({str(x) for x in xs})
            xs = [labels.index(str(x)) for x in xs]
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        elif xs and min(xs) > 0 and max(xs) / min(xs) > 10:
            ax.set_xscale("log")  # a learning rate's 1e-4 .. 1e-2
        ax.scatter(xs, [p[1] for p in points])
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    return figure_png(fig)


def best_grids(
    rows: list[dict], swept: list[str], metric: str, protocols: Sequence[str] = (), k: int = 3
) -> bytes | None:
    """The latest sample grid of the best `k` groups' first runs, side by side, as a PNG (None
    when none has a grid), titled with the metric and how it was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    picks = []
    for g in rows[:k]:
        grids = sorted((Path(g["runs"][0]["run_dir"]) / "samples").glob("samples_*.png"))
        if grids and g["n"]:
            try:
                with Image.open(grids[-1]) as im:
                    picks.append((g, im.convert("RGB")))
            except Exception as e:  # unreadable, or a decompression bomb
                log.warning("leaving %s out of best.png: %s", grids[-1], e)
    if not picks:
        return None
    fig, axes = plt.subplots(1, len(picks), figsize=(3.2 * len(picks), 3.6))
    axes = [axes] if len(picks) == 1 else list(axes)
    for i, (ax, (g, image)) in enumerate(zip(axes, picks, strict=True), 1):
        ax.imshow(image)
        title = ", ".join(f"{key}={g['params'].get(key)}" for key in swept)
        ax.set_title(f"#{i} {_fmt(g)}\n{title}", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{metric}" + (f" ({'; '.join(protocols)})" if protocols else ""), fontsize=8)
    return figure_png(fig)


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (closed)."""
    import matplotlib.pyplot as plt

    fig.tight_layout(rect=(0, 0, 1, 0.94) if fig._suptitle is not None else None)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def report(
    folder: Path,
    metric: str | None = None,
    direction: str | None = None,
    columns: Sequence[str] = (),
) -> str:
    """Rank the runs under `folder` by `metric` (default: their objective, else eval/fd), with
    `columns` beside it; write the report files and return the printed text."""
    records = read_records(folder)
    if not records:
        raise SystemExit(f"genlab report: no readable run.json under {folder}")
    finished = [r for r in records if r.get("status") == "finished"]
    for r in finished:  # each run's eval/*.json is read once
        r["evaluation"], protocol = latest_evaluation(Path(r["run_dir"]))
        r["values"] = values(r, r["evaluation"])
        r["protocol"] = protocol_of(r, protocol)
    others = [r for r in records if r.get("status") != "finished"]
    objective = next((r["objective"] for r in records if _objective_name(r)), {})
    metric = metric or objective.get("name") or "eval/fd"
    direction = direction or objective.get("direction") or "minimize"
    logged = sorted({k for r in finished for k, v in r["values"].items() if _number(v) is not None})
    ranked = metric in logged
    keys = sorted({k for r in records for k in r.get("params", {}) if k not in SEED_KEYS})
    varied = [k for k in keys if len({str(r.get("params", {}).get(k)) for r in records}) > 1]
    swept = varied or keys  # the parameters that differ between runs
    metrics = [metric, *(c for c in columns if c != metric)]
    rows = rank(groups(finished, metrics), direction)
    lines = table(rows, swept, metrics)
    out = Outputs(folder)
    out.refuse_foreign(FILES, "move it away, or report into a copy of the folder")
    f = io.StringIO(newline="")
    writer = csv.writer(f)
    stats = [f"{m} {s}" for m in metrics for s in ("mean", "std")]
    writer.writerow([*swept, *stats, "seeds", "run_dirs"])
    for g in rows:
        dirs = ";".join(r["run_dir"] for r in g["runs"])
        numbers = [g["stats"][m][s] for m in metrics for s in ("mean", "std")]
        writer.writerow([*(g["params"].get(k, "") for k in swept), *numbers, g["n"], dirs])
    how = (
        f"ranked by {metric} ({direction})"
        if ranked
        else f"not ranked: no finished run logged {metric}"
        + (f" (--metric NAME ranks by one of: {', '.join(logged)})" if logged else "")
    )
    unfinished = [
        f"{Path(r['run_dir']).name}: {r.get('status')}: {r.get('reason') or ''}".rstrip(": ")
        for r in others
    ]
    evaluated = sum(bool(r["evaluation"]) for r in finished)
    if evaluated:
        how += f"; eval/* from the latest `genlab eval` of {evaluated} of {len(finished)} runs" + (
            ", the end-of-run evaluation of the others" if evaluated < len(finished) else ""
        )
    protocols = sorted({r["protocol"] for r in finished}) if metric.startswith("eval/") else []
    if protocols:
        how += "; measured with " + " | ".join(protocols)
    md = f"# Sweep report: {folder}\n\n{how[0].upper() + how[1:]}.\n\n{_markdown(lines)}\n"
    if unfinished:
        md += "\n## Runs that did not finish\n\n" + "\n".join(f"- {f}" for f in unfinished) + "\n"
    best = best_grids(rows, swept, metric, protocols)
    out.write("report.csv", f.getvalue().encode())
    out.write("report.md", md.encode())
    out.write("report.png", plot(finished, swept, metric))
    if best is not None:
        out.write("best.png", best)
    counts = Counter(r.get("status") for r in others)
    text = ", ".join([f"{len(finished)} finished", *(f"{n} {s}" for s, n in counts.items())])
    text += f"; {how}\n" + _text(lines)
    if unfinished:
        text += "\n\nNot finished:\n" + "\n".join(f"  {f}" for f in unfinished)
    written = [name for name in FILES if name != "best.png" or best is not None]
    return text + f"\n\nWritten to {folder}: {', '.join(written)}"


def _objective_name(record: dict) -> str | None:
    objective = record.get("objective")
    return objective.get("name") if isinstance(objective, dict) else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="genlab report", description="Rank the runs under a folder by their objective."
    )
    parser.add_argument(
        "folder", type=Path, help="a sweep folder (outputs/multirun/...) or any folder of runs"
    )
    parser.add_argument(
        "--metric",
        help="rank by this logged name (default: the runs' optimized_metric, else eval/fd)",
    )
    parser.add_argument("--direction", choices=["minimize", "maximize"])
    parser.add_argument(
        "--columns",
        default="",
        help="more values beside the objective, comma-separated, each mean ± std over seeds "
        "(e.g. eval/kid,eval/density,eval/coverage,eval/classes_covered,wall_time_s)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder")
    if (args.folder / "run.json").is_file():  # its report files would mix with the run's own
        parser.error(
            f"{args.folder} is one run's folder; a report ranks the runs of a folder that holds "
            f"several: genlab report {args.folder.parent}"
        )
    try:
        with writing(None):
            columns = [c for c in args.columns.split(",") if c]
            print(report(args.folder, args.metric, args.direction, columns))
    except GenlabError as e:
        sys.exit(f"genlab report: {e}")
