"""`run.json`: what a finished (or failed) run was, for `genlab report` and other tools."""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

RECORD = "run.json"


def git_commit() -> str | None:
    """The commit of the genlab checkout this code runs from (None for an installed wheel)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions() -> dict[str, str]:
    import hydra

    from genlab import __version__

    return {
        "genlab": __version__,
        "torch": torch.__version__,
        "hydra": hydra.__version__,
        "python": platform.python_version(),
    }


def peak_host_memory_mb() -> float:
    """Peak resident memory of this process (the device's peak is in the run's metrics)."""
    scale = 1024 if sys.platform != "darwin" else 1024 * 1024  # ru_maxrss: KiB (Linux), B (macOS)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Hydra `key=value` overrides as typed values (`optimizer.lr=1e-4` -> 0.0001)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params: dict[str, Any] = {}
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if not key.startswith("hydra") and not override.is_delete():
            value = override.value()
            params[key] = value if isinstance(value, int | float | str | bool) else str(value)
    return params


def write_record(run_dir: Path, record: dict[str, Any]) -> Path:
    path = Path(run_dir) / RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str))
    return path


def read_records(folder: Path) -> list[dict[str, Any]]:
    """Every run.json under `folder`, with its run folder."""
    records = []
    for path in sorted(Path(folder).rglob(RECORD)):
        record = json.loads(path.read_text())
        record["run_dir"] = str(path.parent)
        records.append(record)
    return records
