"""`genlab <command> [overrides]`: dispatch to the command's Hydra main."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys

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
        sys.argv = [f"genlab {command}", *solver_settings(command, rest)]
        module.main()
    except KeyboardInterrupt as e:  # outside the training loop, or a second signal in it
        print(f"genlab {command}: interrupted ({str(e) or 'SIGINT'})", file=sys.stderr)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        # Not sys.exit: CPython ends with SIGINT itself, whatever the exit code, when the
        # interrupt landed in code run by exec (dataclasses build their methods so on import).
        os._exit(130)
