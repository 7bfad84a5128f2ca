"""Benchmark genlab's trainer against a bare PyTorch loop and DataLoader + torchvision loops.

    python scripts/benchmark.py --models gan,cgan,dcgan,vae,vae_mlp --no-scaling --out bench.md
    python scripts/benchmark.py --models dcgan --steps 400 --features   # what each feature costs
    python scripts/benchmark.py --device cuda --out benchmark.md
    python scripts/benchmark.py --root ~/data          # also full MNIST, if ~/data holds it
    python scripts/benchmark.py --models ddpm,dit --no-training --no-scaling  # sampling alone

Four loops train the identical model (built from genlab's config), optimizer and batch size:

- genlab: `Trainer.fit` with its default logging, sample and checkpoint intervals, guards, EMA
  off. Only the fit is timed, not the setup.
- bare: the floor, the family's own `train_step` in a plain loop over the same device-resident
  uint8 images with random indices, each update a plain zero_grad/backward/step (`PlainUpdate`):
  no logging, guards, grids or checkpoints.
- reference: the bare step fed the way each model's reference script reads MNIST: a shuffling
  `DataLoader` over PIL images through torchvision transforms, with that script's transforms and
  workers (`REFERENCE`): PyTorch-GAN's gan.py and cgan.py (`Resize`, `ToTensor`, `Normalize`, no
  workers), the PyTorch examples' dcgan (the same transforms, 2 workers) and vae (`ToTensor` only,
  no workers; 1 worker with pinned memory on CUDA), diffusers' train_unconditional.py for the
  diffusion models (`Resize`, `ToTensor`, `Normalize`, no workers).
- dataloader: a tuned version of that loop, the same for every model: 2 forked workers, `ToTensor`
  and `Normalize` (and `Resize` where the model size differs from 28 px).

For the diffusion models a second table gives sampling throughput (images/s, `--sample-images`
per solver) for each solver and step count; for PixelCNN, genlab's sampler (which keeps the
features of the rows and columns done) against the whole network per sub-pixel.

genlab, bare and the bare loop again run in alternating rounds (scripts/benchstats.py): ms/step
are medians over rounds, ratios are medians of per-round ratios with their quartiles, and the bare
loop against itself gives the noise floor that genlab's overhead must clear to count, in wall time
and in process CPU time (user + system: less sensitive to other load on a shared machine). With
`--features`, genlab also runs with logging, grids, checkpoints and guards each turned off, so
each feature's cost is a measured line. On the CPU genlab's runs also time their own steps, so a
second table splits genlab's time into its loop outside the family's steps (as a share of the
steps of the same run: no noise between processes) and the steps themselves.

Each measurement runs in its own process, so its peak memory (resident set, or CUDA allocation) is
its own. The ratios come from one run on one machine. Compare them, not absolute times, across
machines.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
from pathlib import Path

import benchstats as bs  # scripts/benchstats.py, beside this file
from benchloops import (  # scripts/benchloops.py
    FEATURES,
    REFERENCE,
    TUNED,
    diffusion_sampling,
    measure,
    pixelcnn_sampling,
)

MODELS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "model").glob("*.yaml"))
MODELS.remove("reflow")  # flow's step, on pairs its teacher drew first (a trained run)
CASES = {  # name: (model, dataset, image size, batch size): every conf/model, and DCGAN at 64 px
    **{m: (m, "mnist5k", 28, 64) for m in MODELS},
    "dcgan64": ("dcgan", "mnist5k", 64, 64),
}


SOLVERS = (("ddpm", None), ("ddim", 50), ("ddim", 20), ("dpm_solver", 20), ("dpm_solver", 10))
FLOW_SOLVERS = (
    ("euler", 1),
    ("euler", 10),
    ("heun", 10),
    ("midpoint", 10),
    ("flow_dpm_solver", 10),
)
SAMPLED = {  # the sampling tables: family, its models, their solvers and steps (None: all)
    "Diffusion": (("ddpm", "dit"), SOLVERS),
    "Flow": (("flow",), FLOW_SOLVERS),
}


def run_rounds(case: tuple, steps: int, args, variants: list[str]) -> dict[str, list[dict]]:
    """Alternating rounds of every variant (`benchstats.round_order`) until the genlab / bare
    ratios settle (`--tolerance`) after at least `--rounds` rounds, or `--max-rounds` is reached."""
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.max_rounds):
        for variant in bs.round_order(variants, r):
            same = variant.replace("bare again", "bare")  # the identical loop, measured again
            runs[variant].append(measure(same, case, steps, args.device, args.root))
        wall = bs.ratios(*(ms(runs[v]) for v in ("genlab", "bare")))
        if bs.settled(wall, args.tolerance, args.rounds):
            break
    return runs


def ms(results: list[dict], key: str = "ms") -> list[float]:
    return [m[key] for m in results]


def overhead_cells(runs: dict[str, list[dict]], key: str) -> tuple[str, str, str]:
    """genlab / bare (median [quartiles]), the noise floor, and the verdict, for wall time
    (`ms`) or CPU time (`cpu_ms`)."""
    ratio = bs.spread(bs.ratios(ms(runs["genlab"], key), ms(runs["bare"], key)))
    floor = bs.noise_floor(ms(runs["bare"], key), ms(runs["bare again"], key))
    return (
        ratio.cell(),
        f"±{100 * floor:.1f}%",
        bs.verdict(ratio, floor),
    )


def loop_row(name: str, steps: int, runs: dict[str, list[dict]]) -> str:
    """genlab's time outside the family's steps against its time in them (the same runs), and
    its time in the steps against the bare loop's (paired rounds): medians [quartiles]."""
    genlab = runs["genlab"]
    outside = bs.spread(bs.ratios(ms(genlab, "loop_ms"), ms(genlab, "in_steps_ms")))
    in_steps = bs.spread(bs.ratios(ms(genlab, "in_steps_ms"), ms(runs["bare"])))
    return (
        f"| {name} | {steps} | {bs.spread(ms(genlab, 'loop_ms')).median:.2f} "
        f"| {outside.cell('.1f', 100, '%')} "
        f"| {bs.spread(ms(genlab, 'in_steps_ms')).median:.2f} | {in_steps.cell()} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(CASES))
    parser.add_argument(
        "--steps",
        default="400,1000",
        help="comma-separated steps per measurement (dcgan64: a fifth), each its own rows; the "
        "default intervals (log 50, grid 250, checkpoint 500) weigh as in a real run from ~1000",
    )
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds, at least")
    parser.add_argument("--max-rounds", type=int, default=9, help="rounds at most")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.02,
        help="stop adding rounds once half the IQR of the genlab / bare ratios is this small",
    )
    parser.add_argument(
        "--features",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also measure genlab with logging, grids, checkpoints and guards each turned off",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--root", help="a folder holding torchvision's MNIST: also benchmark full MNIST"
    )
    parser.add_argument(
        "--training",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the training comparison (--no-training: only the sampling tables)",
    )
    parser.add_argument("--scaling", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--sample-images", type=int, default=64, help="images per sampling measurement"
    )
    parser.add_argument("--out", type=Path, help="also write the tables to this Markdown file")
    args = parser.parse_args()
    if args.rounds < 3 or args.max_rounds < args.rounds:
        parser.error("--rounds must be >= 3 and --max-rounds >= --rounds")

    import torch

    cases = {k: CASES[k] for k in args.models.split(",")}
    if args.root:
        cases.update({f"{k}-mnist": (m, "mnist", s, b) for k, (m, _, s, b) in list(cases.items())})
    step_counts = [int(n) for n in args.steps.split(",")]
    cuda = args.device.startswith("cuda")
    on_cpu = args.device == "cpu"  # where genlab's runs time their own steps (`training`)
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {mp.cpu_count()} CPU cores, "
        f"device {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if cuda else "")
        + f"; torch {torch.__version__}."
    ]
    if args.training:
        lines[0] += (
            f" genlab, bare and bare again alternate in {args.rounds} to {args.max_rounds} rounds "
            f"(until half the IQR of genlab / bare is at most {100 * args.tolerance:.0f}%); "
            "ms/step are medians, ratios are medians of per-round ratios [quartiles]. The noise "
            "floor is bare again / bare: its distance from 1 plus half its IQR; an overhead counts "
            "only outside it. CPU time is the process's user + system time."
        )
        lines += [
            "",
            "| model | steps | rounds | genlab ms/step | bare ms/step | genlab / bare, wall "
            "| floor | wall | genlab / bare, CPU | floor | CPU | reference script's loading "
            "| reference ms/step | DataLoader, 2 workers ms/step | genlab speed-up vs reference "
            "| vs 2 workers | peak MB genlab / bare / reference / 2 workers |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
    print("\n".join(lines), flush=True)
    features = [
        "",
        "What each of genlab's features costs: genlab with it turned off, in the same rounds; the "
        "cost is the median over rounds of (genlab - genlab without it) / bare.",
        "",
        "| model | steps | feature | genlab without it, ms/step | cost (share of bare) |",
        "|---|---|---|---|---|",
    ]
    inside = [
        "",
        "Where genlab's time goes, timed inside its own runs (CPU only: on a GPU a step "
        "returns before its kernels finish): its loop outside the family's steps (logging, grids, "
        "checkpoints, setup and the last write), as a share of the time in the steps of the "
        "same run, which no other load on the machine tilts; and the steps (with genlab's "
        "update and its non-finite check, the schedulers, the guard's sync at logging steps) "
        "against the bare loop's, across processes like the table above.",
        "",
        "| model | steps | outside the steps, ms/step | share of its steps | in the steps, "
        "ms/step | / bare |",
        "|---|---|---|---|---|---|",
    ]
    variants = ["genlab", "bare", "bare again"]
    if args.features:
        variants += [f"genlab-no-{f}" for f in FEATURES]
    for name, case in cases.items() if args.training else ():
        for count in step_counts:
            steps = count // 5 if case[2] >= 64 else count
            runs = run_rounds(case, steps, args, variants)
            median = {v: bs.spread(ms(results)).median for v, results in runs.items()}
            r = {v: min(runs[v], key=lambda m: m["ms"]) for v in ("genlab", "bare")}
            for variant in ("reference", "dataloader"):
                r[variant] = measure(variant, case, steps, args.device, args.root)
            how = REFERENCE.get(case[0], TUNED)  # without a reference script: the tuned loop
            workers = how.loader_kwargs(cuda)["num_workers"]
            wall, cpu = overhead_cells(runs, "ms"), overhead_cells(runs, "cpu_ms")
            row = (
                f"| {name} | {steps} | {len(runs['genlab'])} | {median['genlab']:.2f} "
                f"| {median['bare']:.2f} | {' | '.join(wall)} | {' | '.join(cpu)} "
                f"| {how.script}, {workers} worker{'s' * (workers != 1)} "
                f"| {r['reference']['ms']:.2f} | {r['dataloader']['ms']:.2f} "
                f"| {r['reference']['ms'] / median['genlab']:.2f}x "
                f"| {r['dataloader']['ms'] / median['genlab']:.2f}x "
                f"| {' / '.join(str(round(m['peak_mb'])) for m in r.values())} |"
            )
            lines.append(row)
            print(row, flush=True)
            if on_cpu:
                inside.append(loop_row(name, steps, runs))
            for feature in FEATURES if args.features else ():
                without = ms(runs[f"genlab-no-{feature}"])
                cost = bs.spread(
                    [
                        (g - w) / b
                        for g, w, b in zip(
                            ms(runs["genlab"]), without, ms(runs["bare"]), strict=True
                        )
                    ]
                )
                features.append(
                    f"| {name} | {steps} | {feature} | {bs.spread(without).median:.2f} "
                    f"| {cost.cell('+.1f', 100, '%')} |"
                )
    if on_cpu and args.training:
        print("\n".join(inside), flush=True)
        lines += inside
    if args.features and args.training:
        print("\n".join(features), flush=True)
        lines += features
    for family, (models, solvers) in SAMPLED.items():
        sampled = [c for c in cases.values() if c[0] in models]
        if not (sampled and args.sample_images):
            continue
        table = [
            "",
            f"{family} sampling, images/s ({args.sample_images} images in one batch):",
            "",
            "| model | " + " | ".join(f"{n} {s or 'all'}" for n, s in solvers) + " |",
            "|---|" + "---|" * len(solvers),
        ]
        print("\n".join(table), flush=True)
        for case in sampled:
            speeds = [
                measure(
                    f"{n}:{s}", case, args.sample_images, args.device, args.root, diffusion_sampling
                )["images_per_s"]
                for n, s in solvers
            ]
            table.append(f"| {case[0]} | " + " | ".join(f"{v:.2f}" for v in speeds) + " |")
            print(table[-1], flush=True)
        lines += table
    for case in [c for c in cases.values() if c[0] == "pixelcnn"] if args.sample_images else ():
        speeds = {
            v: measure(v, case, args.sample_images, args.device, args.root, pixelcnn_sampling)[
                "images_per_s"
            ]
            for v in ("cached", "uncached")
        }
        table = [
            "",
            f"PixelCNN sampling, images/s ({args.sample_images} images in one batch):",
            "",
            "| model | genlab (features kept) | whole network per sub-pixel | speed-up |",
            "|---|---|---|---|",
            f"| {case[0]} | {speeds['cached']:.2f} | {speeds['uncached']:.2f} "
            f"| {speeds['cached'] / speeds['uncached']:.1f}x |",
        ]
        print("\n".join(table), flush=True)
        lines += table
    if args.scaling:
        scale = [
            "",
            "genlab DCGAN step time by batch and image size:",
            "",
            "| image size | batch | ms/step | images/s |",
            "|---|---|---|---|",
        ]
        print("\n".join(scale), flush=True)
        for size, batch in ((28, 32), (28, 64), (28, 128), (32, 64), (64, 64)):
            steps = step_counts[-1] // 5 if size >= 64 else step_counts[-1] // 2
            r = measure("genlab", ("dcgan", "mnist5k", size, batch), steps, args.device, args.root)
            row = f"| {size} | {batch} | {r['ms']:.2f} | {r['images_per_s']:.0f} |"
            scale.append(row)
            print(row, flush=True)
        lines += scale
    if args.out:
        from genlab.files import write_file

        write_file(args.out, ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
