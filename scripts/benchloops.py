"""The loops scripts/benchmark.py times, each in a process of its own (`measure`): genlab's
`Trainer.fit`, the family's bare `train_step`, the reference scripts' and a tuned DataLoader
feeding it, and a diffusion or PixelCNN model's sampling. See benchmark.py for what each is."""

from __future__ import annotations

import multiprocessing as mp
import platform
import tempfile
import time
from dataclasses import dataclass
from queue import Empty


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
# PyTorch examples' super_resolution (ESPCN): input Resize(size // scale) + ToTensor, target
# ToTensor, each from the PIL image in the workers (--threads 4); SRCNN has no script there
REFERENCE["espcn"] = Loading("PyTorch examples super_resolution", False, False, workers=4)
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

    def __init__(self, images, labels, transform, condition=None) -> None:
        self.images, self.labels, self.transform = images, labels, transform
        self.condition = condition  # makes the image's condition, in place of its label

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        image = Image.fromarray(self.images[i, 0].numpy(), mode="L")
        if self.condition is not None:
            return self.transform(image), self.condition(image)
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


def training(variant: str, case: tuple, steps: int, device_name: str, root, queue) -> None:
    import resource

    import torch

    from genlab.config import build, build_model, degradation
    from genlab.data.loader import normalize

    model_name, dataset, size, batch = case
    cfg, data = _build(model_name, dataset, size, batch, device_name, root)
    device = build(cfg.device, "device")
    degrade = degradation(cfg, data.channels, data.image_size)  # an image-conditional model's
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
        degrading = torch.Generator(device=device).manual_seed(0)

        def pair(idx):  # as genlab's loader pairs them: conditions made on the device
            x = normalize(images[idx])
            if degrade is not None:
                return x, degrade(x, degrading)
            return x, None if labels_all is None else labels_all[idx]

        batches = (pair(idx) for idx in order)
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
        condition = None
        if degrade is not None:  # a low-resolution input made from each PIL image
            condition = transforms.Compose(
                [transforms.Resize(size // degrade.scale), *steps_tf[-(1 + how.normalize) :]]
            )
        loader = DataLoader(
            PILImages(raw.images, raw.labels, transforms.Compose(steps_tf), condition),
            batch_size=batch,
            shuffle=True,
            drop_last=True,
            **how.loader_kwargs(device.type == "cuda"),
        )

        def batches():
            while True:  # epochs
                for real, labels in loader:
                    real, labels = real.to(device), labels.to(device)
                    if not how.normalize:
                        real = real * 2 - 1
                        labels = labels * 2 - 1 if labels.is_floating_point() else labels
                    yield real, labels

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


def diffusion_sampling(variant: str, case: tuple, images: int, device_name: str, root, queue):
    """Images per second of a freshly built diffusion or flow model's `generate` with one
    solver (`variant`: name:steps)."""
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


def pixelcnn_sampling(
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
    proc = ctx.Process(target=target or training, args=(variant, case, steps, device, root, queue))
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
