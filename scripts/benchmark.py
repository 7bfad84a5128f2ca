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
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from queue import Empty

import benchstats as bs  # scripts/benchstats.py, beside this file

MODELS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "model").glob("*.yaml"))
CASES = {  # name: (model, dataset, image size, batch size): every conf/model, and DCGAN at 64 px
    **{m: (m, "mnist5k", 28, 64) for m in MODELS},
    "dcgan64": ("dcgan", "mnist5k", 64, 64),
}


@dataclass(frozen=True)
class Loading:
    """How a training script reads MNIST: torchvision transforms on each PIL image, batched by a
    shuffling `DataLoader`."""

    script: str
    resize: bool  # `Resize(size)` even at the stored size, as PyTorch-GAN and the DCGAN example do
    normalize: bool  # `Normalize((0.5,), (0.5,))` per image; else the batch is mapped to [-1, 1]
    workers: int
    cuda_workers: int | None = None  # and pinned memory, for scripts that add them on CUDA

    def loader_kwargs(self, cuda: bool) -> dict:
        kwargs = {"num_workers": self.workers}
        if cuda and self.cuda_workers is not None:
            kwargs = {"num_workers": self.cuda_workers, "pin_memory": True}
        if kwargs["num_workers"] and platform.system() == "Linux":
            # forked, as from a script's main process (this measurement runs in a spawned one)
            kwargs["multiprocessing_context"] = "fork"
        return kwargs


REFERENCE = {  # model: how its reference script loads MNIST
    "gan": Loading("PyTorch-GAN gan.py", resize=True, normalize=True, workers=0),
    "cgan": Loading("PyTorch-GAN cgan.py", resize=True, normalize=True, workers=0),
    "dcgan": Loading("PyTorch examples dcgan", resize=True, normalize=True, workers=2),
    "vae": Loading(
        "PyTorch examples vae", resize=False, normalize=False, workers=0, cuda_workers=1
    ),
}
REFERENCE["vae_mlp"] = REFERENCE["vae"]  # the example's own (fully connected) network
# diffusers' examples/unconditional_image_generation/train_unconditional.py: Resize, CenterCrop,
# ToTensor, Normalize([0.5], [0.5]); --dataloader_num_workers defaults to 0
REFERENCE["ddpm"] = Loading("diffusers train_unconditional.py", True, True, workers=0)
REFERENCE["dit"] = REFERENCE["ddpm"]  # the same recipe, another network
DIFFUSION = ("ddpm", "dit")
SOLVERS = (("ddpm", None), ("ddim", 50), ("ddim", 20), ("dpm_solver", 20), ("dpm_solver", 10))
TUNED = Loading("DataLoader (no reference script)", resize=False, normalize=True, workers=2)
# what `genlab-no-<feature>` turns off in genlab's loop, to measure each feature's cost
FEATURES = ("logging", "grids", "checkpoints", "guards")


def _switch_off(feature: str, cfg) -> None:
    """Turn one of genlab's per-step features off, in this measurement's process only."""
    from genlab import trainer as trainer_module

    if feature == "logging":  # no event files; metrics and the logging sync on the last step only
        cfg.logger = {"_target_": "genlab.logger.NullLogger"}
        cfg.trainer.log_every = cfg.trainer.max_steps
    elif feature == "grids":
        trainer_module.Trainer._sample = lambda self, run, step: None
    elif feature == "checkpoints":
        trainer_module._Run.save = lambda self, step: None
    elif feature == "guards":
        trainer_module.NonFiniteGuard.check = lambda self, step, window_end=False: None
    else:
        raise SystemExit(f"unknown feature {feature!r}; features: {', '.join(FEATURES)}")


def _build(
    model_name: str,
    dataset: str,
    size: int,
    batch: int,
    device: str,
    root: str | None,
    extra: tuple | list = (),
):
    from hydra import compose, initialize_config_dir

    from genlab.config import CONF_DIR, build, fold

    overrides = [
        f"model={model_name}",
        f"dataset={dataset}",
        f"dataset.image_size={size}",
        f"trainer.batch_size={batch}",
        f"device={device}",
        "trainer.eval_every=null",
        "trainer.progress=false",
    ]
    if root:
        overrides.append(f"dataset.root={root}")
    overrides += extra
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = fold(compose("train", overrides=overrides))
    return cfg, build(cfg.dataset, "dataset")


class PILImages:
    """A map-style data set of PIL images through torchvision transforms, as reference scripts
    read MNIST."""

    def __init__(self, images, labels, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        image = Image.fromarray(self.images[i, 0].numpy(), mode="L")
        return self.transform(image), int(self.labels[i]) if self.labels is not None else 0


class PlainUpdate:
    """An update as a reference script writes it: zero_grad, backward, step; no guards, clipping
    or loss scaling (what a family's `train_step` asks of genlab's `Updater`)."""

    def __init__(self, optimizers: dict) -> None:
        self.optimizers = optimizers

    def autocast(self):
        import contextlib

        return contextlib.nullcontext()

    def loss_scale(self, name: str) -> float:
        return 1.0

    def __call__(self, loss, name: str, measure: bool = True) -> None:
        optimizer = self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def _measure(variant: str, case: tuple, steps: int, device_name: str, root, queue) -> None:
    import resource

    import torch

    from genlab.config import build, build_model
    from genlab.data.loader import normalize

    model_name, dataset, size, batch = case
    cfg, data = _build(model_name, dataset, size, batch, device_name, root)
    device = build(cfg.device, "device")
    torch.manual_seed(0)
    model = build_model(cfg, data).to(device).train()
    update = PlainUpdate(model.configure_optimizers(build(cfg.optimizer, "optimizer")))
    per_step = model.batches_per_step()

    def bare(batches) -> None:
        """`steps` steps of the family's own training step, fed from `batches`."""
        for _ in range(steps):
            model.train_step(batches, update, metrics=False)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.backends.cudnn.benchmark = device.type == "cuda"  # as genlab sets it (not deterministic)
    loop: dict[str, float] = {}  # genlab on the CPU: its time outside and inside the steps

    if variant.startswith("genlab"):
        from genlab.commands.train import train

        cfg.trainer.max_steps = steps
        for feature in variant.split("-no-")[1:]:
            _switch_off(feature, cfg)
        timing = {}
        from genlab import trainer as trainer_module

        fit, train_step = trainer_module.Trainer.fit, trainer_module.Trainer._train_step

        def timed_fit(self, *args, **kwargs):
            start, cpu = time.perf_counter(), time.process_time()
            out = fit(self, *args, **kwargs)
            sync()
            timing["s"], timing["cpu"] = time.perf_counter() - start, time.process_time() - cpu
            return out

        def timed_step(self, *args, **kwargs):  # the family's step, in the fit's own process
            start = time.perf_counter()
            try:
                return train_step(self, *args, **kwargs)
            finally:
                timing["in_steps"] = timing.get("in_steps", 0.0) + time.perf_counter() - start

        trainer_module.Trainer.fit = timed_fit
        trainer_module.Trainer._train_step = timed_step
        with tempfile.TemporaryDirectory() as run_dir:
            train(cfg, run_dir=run_dir)
        seconds, cpu_seconds = timing["s"], timing["cpu"]
        if device.type == "cpu":  # a GPU's steps return before their kernels finish
            loop["loop_ms"] = 1000 * (seconds - timing["in_steps"]) / steps
            loop["in_steps_ms"] = 1000 * timing["in_steps"] / steps
    elif variant.startswith("bare"):
        images = data.images.to(device)
        labels_all = data.labels.to(device) if data.labels is not None else None
        gen = torch.Generator().manual_seed(0)
        order = torch.randint(len(images), (steps * per_step, batch), generator=gen).to(device)
        batches = (
            (normalize(images[idx]), None if labels_all is None else labels_all[idx])
            for idx in order
        )
        start, cpu = time.perf_counter(), time.process_time()
        bare(batches)
        sync()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    else:  # DataLoader + torchvision transforms
        from torch.utils.data import DataLoader
        from torchvision import transforms

        how = REFERENCE.get(model_name, TUNED) if variant == "reference" else TUNED
        _, raw = _build(model_name, dataset, 28, batch, device_name, root)  # decoded at 28 px
        steps_tf = [transforms.ToTensor()]
        if how.resize or raw.image_size != size:
            steps_tf.insert(0, transforms.Resize(size))
        if how.normalize:
            steps_tf.append(transforms.Normalize((0.5,), (0.5,)))
        loader = DataLoader(
            PILImages(raw.images, raw.labels, transforms.Compose(steps_tf)),
            batch_size=batch,
            shuffle=True,
            drop_last=True,
            **how.loader_kwargs(device.type == "cuda"),
        )

        def batches():
            while True:  # epochs
                for real, labels in loader:
                    real, labels = real.to(device), labels.to(device)
                    yield (real if how.normalize else real * 2 - 1), labels

        start, cpu = time.perf_counter(), time.process_time()
        bare(batches())
        sync()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu  # no workers'
    peak = (
        torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    queue.put(
        {
            "ms": 1000 * seconds / steps,
            "cpu_ms": 1000 * cpu_seconds / steps,  # this process's user + system time, all threads
            "images_per_s": steps * batch / seconds,
            "peak_mb": peak,
            **loop,
        }
    )


def _measure_sampling(variant: str, case: tuple, images: int, device_name: str, root, queue):
    """Images per second of a freshly built diffusion model's `generate` with one solver
    (`variant`: name:steps)."""
    import torch

    from genlab.config import build, build_model

    name, steps = variant.split(":")
    cfg, data = _build(case[0], case[1], case[2], case[3], device_name, root, [f"solver={name}"])
    if steps != "None":
        cfg.model.sampler.steps = int(steps)
    device = build(cfg.device, "device")
    torch.manual_seed(0)
    model = build_model(cfg, data).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    model.generate(2, gen)  # warm-up
    start = time.perf_counter()
    model.generate(images, gen)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    queue.put({"images_per_s": images / (time.perf_counter() - start)})


def _measure_pixelcnn_sampling(
    variant: str, case: tuple, images: int, device_name: str, root, queue
) -> None:
    """Images per second of a freshly built PixelCNN: `cached`, its own sampler (the vertical
    stack at each row alone, the horizontal stack at each pixel alone, each from the features it
    kept); `uncached`, the whole network on the rows done so far for every sub-pixel, the usual
    way."""
    import torch

    from genlab.config import build, build_model
    from genlab.losses import LEVELS, from_levels

    cfg, data = _build(case[0], case[1], case[2], case[3], device_name, root)
    device = build(cfg.device, "device")
    torch.manual_seed(0)
    model = build_model(cfg, data).to(device).eval()
    gen = torch.Generator(device=device).manual_seed(0)

    @torch.no_grad()
    def uncached(n: int) -> torch.Tensor:
        c, s = model.shape["channels"], model.shape["image_size"]
        u = torch.rand(n, c, s, s, device=device, generator=gen)
        x = torch.zeros_like(u)
        for i in range(s):
            for j in range(s):
                for k in range(c):
                    out = model.network(x[:, :, : i + 1])[:, :, k, i, j]
                    cdf = model.value_log_probs(out).softmax(1).cumsum(1)
                    level = torch.searchsorted(cdf, u[:, k, i, j, None].contiguous())
                    x[:, k, i, j] = from_levels(level.clamp(max=LEVELS - 1)[:, 0])
        return x

    run = uncached if variant == "uncached" else lambda n: model.generate(n, gen)
    run(1)  # warm-up
    start = time.perf_counter()
    run(images)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    queue.put({"images_per_s": images / (time.perf_counter() - start)})


def measure(
    variant: str, case: tuple, steps: int, device: str, root: str | None = None, target=None
) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target or _measure, args=(variant, case, steps, device, root, queue))
    proc.start()
    while True:  # a child that dies (an error, out of memory) ends the benchmark, not hangs it
        try:
            result = queue.get(timeout=5)
            break
        except Empty:
            if not proc.is_alive():
                raise SystemExit(f"{variant} {case} failed (exit code {proc.exitcode})") from None
    proc.join()
    return result


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
    on_cpu = args.device == "cpu"  # where genlab's runs time their own steps (`_measure`)
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
    sampled = [c for c in cases.values() if c[0] in DIFFUSION]
    if sampled and args.sample_images:
        table = [
            "",
            f"Diffusion sampling, images/s ({args.sample_images} images in one batch):",
            "",
            "| model | " + " | ".join(f"{n} {s or 'all'}" for n, s in SOLVERS) + " |",
            "|---|" + "---|" * len(SOLVERS),
        ]
        print("\n".join(table), flush=True)
        for case in sampled:
            speeds = [
                measure(
                    f"{n}:{s}", case, args.sample_images, args.device, args.root, _measure_sampling
                )["images_per_s"]
                for n, s in SOLVERS
            ]
            table.append(f"| {case[0]} | " + " | ".join(f"{v:.2f}" for v in speeds) + " |")
            print(table[-1], flush=True)
        lines += table
    for case in [c for c in cases.values() if c[0] == "pixelcnn"] if args.sample_images else ():
        speeds = {
            v: measure(
                v, case, args.sample_images, args.device, args.root, _measure_pixelcnn_sampling
            )["images_per_s"]
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
