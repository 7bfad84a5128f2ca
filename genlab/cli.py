"""`genlab <command> [overrides]`: dispatch to the command's Hydra main."""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from genlab import interrupts

COMMANDS = {
    "train": "Train a model: genlab train model=dcgan dataset=mnist5k trainer.max_steps=2000",
    "sample": "Sample grids from trained models: genlab sample run=PATH sampler.num_images=64",
    "export": "The generator as safetensors + config: genlab export run=PATH",
    "eval": "Metrics of a trained model: genlab eval run=outputs/dcgan_mnist5k/<date>_<time>",
    "report": "Rank the runs of a sweep: genlab report outputs/multirun/<date>_<time>",
}

# keys that were renamed so that each name means one thing: old -> new
RENAMED = {
    "trainer.num_samples": "trainer.grid_images",
    "evaluator.num_samples": "evaluator.num_generated",
    "evaluator.cheap_samples": "evaluator.num_generated_cheap",
    "evaluator.features": "evaluator.extractor",
    "sampler.num": "sampler.num_images",
}

USAGE = """usage: genlab <command> [Hydra overrides and flags]

commands:
{commands}

train, sample, eval and export are Hydra apps: `genlab train --help` lists the config groups
and options, `genlab train --cfg job` prints the composed config, `genlab train -m a=1,2` sweeps.
`genlab report --help` explains the report.
"""


def solver_settings(command: str, overrides: list[str]) -> list[str]:
    """`solver.guidance=2` on an eval, sample or export command line without `solver=...`
    changes the run's own solver: the keys are added (`+solver.guidance=2`) and `load_run` merges
    them onto the solver stored in the run."""
    if command not in ("eval", "sample", "export"):
        return overrides
    if any(w.lstrip("+~").partition("=")[0] == "solver" for w in overrides):
        return overrides  # a solver chosen anew: its group's keys exist
    return [f"+{w}" if w.startswith("solver.") else w for w in overrides]


def _key(override: str) -> str:
    """The key an override sets (`+trainer.x=1` -> `trainer.x`, `model=vae` -> `model`)."""
    return override.lstrip("+~").partition("=")[0]


def resumed_settings(command: str, overrides: list[str]) -> list[str]:
    """`genlab train trainer.resume=auto hydra.run.dir=RUN` continues RUN as it was made: the
    overrides RUN's command line gave (`RUN/.hydra/overrides.yaml`), then those given now, which
    replace theirs key by key (`trainer.max_steps=3000`). So does `trainer.resume=PATH` for a
    run folder or one of its checkpoints. What would change the model is refused afterwards, as
    for any resume (`config.MEANING`). A sweep's jobs (`-m`) resume with the sweep's settings."""
    if command != "train" or {"-m", "--multirun"} & set(overrides):
        return overrides
    given = {_key(o): o.partition("=")[2] for o in overrides if "=" in o}
    resume = given.get("trainer.resume")
    if resume in (None, "", "null"):
        return overrides
    if resume in ("auto", "last"):
        if "hydra.run.dir" not in given:
            return overrides  # a new timestamped folder: nothing to continue
        run = Path(given["hydra.run.dir"])
    else:
        from genlab.loading import run_of  # here: it imports torch, which `genlab --help` skips

        run = Path(resume) if Path(resume).is_dir() else run_of(Path(resume))
    try:
        earlier = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return overrides  # no run there yet, or not one genlab wrote: the command as it is
    if not isinstance(earlier, list) or not all(isinstance(o, str) for o in earlier):
        return overrides
    kept = [o for o in earlier if _key(o) not in given and _key(o) not in ("trainer.overwrite",)]
    return [*kept, *overrides]


class HydraErrors:
    """stderr while a command's Hydra app runs: Hydra's wrapper lines around an error (`Error
    executing job with overrides: ...`, the HYDRA_FULL_ERROR advice) are left out, and its
    messages for a mistyped key or option become one line naming the nearest valid ones, never
    the advice to add `+` (a usage error: `usage` is set, and the command exits 2). With
    HYDRA_FULL_ERROR=1 Hydra's own output is left alone."""

    def __init__(self, stream: Any, command: str, overrides: list[str]) -> None:
        self.stream, self.command, self.overrides = stream, command, overrides
        self.usage, self._cause = False, False

    def write(self, text: str) -> int:
        if text.startswith("Error executing job with overrides:") or "HYDRA_FULL_ERROR=1" in text:
            return len(text)
        if self._cause:  # the OmegaConf error under a message rewritten below
            self._cause = False
            return len(text)
        if key := re.match(r"Could not override '([^']+)'\.", text):
            self.usage = self._cause = True
            text = f"genlab {self.command}: {key[1]} is not a setting{self._nearest_key(key[1])}\n"
        elif option := re.search(r"Could not find '([^']+)/([^'/]+)'", text):
            self.usage = True
            group, name = option[1], option[2]
            options = re.findall(r"^\t(\S+)$", text, flags=re.M)
            near = difflib.get_close_matches(name, options, n=2, cutoff=0.7)
            hint = f"; did you mean {' or '.join(near)}?" if near else ""
            text = (
                f"genlab {self.command}: {group}={name} is not an option of {group}{hint} "
                f"(options: {', '.join(options)})\n"
            )
        return self.stream.write(text)

    def _nearest_key(self, key: str) -> str:
        """`; did you mean trainer.max_steps?`, from the keys of the command's config composed
        with the groups chosen on its command line."""
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra
        from omegaconf import OmegaConf

        from genlab import CONF_DIR

        groups = [o for o in self.overrides if "=" in o and "." not in o.partition("=")[0]]
        for chosen in (groups, []):
            GlobalHydra.instance().clear()
            try:
                with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
                    cfg = compose(self.command, overrides=[o.lstrip("+") for o in chosen])
                break
            except Exception:
                continue
        else:
            return ""
        keys = list(_leaves(OmegaConf.to_container(cfg)))
        near = difflib.get_close_matches(key, keys, n=2, cutoff=0.8)
        if not near:
            return f" (genlab {self.command} --cfg job lists them)"
        return f"; did you mean {' or '.join(near)}?"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _leaves(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k != "hydra":
                yield from _leaves(v, f"{prefix}{k}.")
    elif prefix:
        yield prefix[:-1]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        width = max(map(len, COMMANDS))
        lines = "\n".join(f"  {name:<{width}}  {text}" for name, text in COMMANDS.items())
        print(USAGE.format(commands=lines))
        sys.exit(0 if argv else 2)
    if argv[0] in ("-V", "--version"):
        from genlab import __version__

        print(f"genlab {__version__}")
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(
            f"genlab: unknown command '{command}'; commands: {', '.join(COMMANDS)}", file=sys.stderr
        )
        sys.exit(2)
    for word in rest:
        key = word.lstrip("+~").partition("=")[0]
        if key in RENAMED:
            print(f"genlab {command}: {key} is now {RENAMED[key]}", file=sys.stderr)
            sys.exit(2)
    # the training loop catches both signals itself; before it, they end the command
    signal.signal(signal.SIGTERM, interrupts.before_the_loop)
    try:
        module = importlib.import_module(f"genlab.commands.{command}")
        rest = resumed_settings(command, solver_settings(command, rest))
        sys.argv = [f"genlab {command}", *rest]
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or command == "report":
            module.main()
        else:
            _run(module.main, HydraErrors(sys.stderr, command, rest))
    except KeyboardInterrupt as e:  # outside the training loop, or a second signal in it
        print(f"genlab {command}: interrupted ({str(e) or 'SIGINT'})", file=sys.stderr)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        # Not sys.exit: CPython ends with SIGINT itself, whatever the exit code, when the
        # interrupt landed in code run by exec (dataclasses build their methods so on import).
        os._exit(130)


def _run(app: Callable[[], object], errors: HydraErrors) -> None:
    """Run a Hydra app with `errors` as stderr; a usage error exits 2."""
    real, sys.stderr = sys.stderr, errors
    try:
        app()
    except SystemExit as e:
        if errors.usage and e.code == 1:
            raise SystemExit(2) from None
        raise
    finally:
        sys.stderr = real
