"""`run.json`: what a run is or was, for `genlab report` and other tools.

Its `status` is `running` from the moment a run starts writing its folder, then `finished`,
`failed` or `interrupted` (with the `reason`). A run killed outright (SIGKILL, a lost node) stays
`running` without holding its folder's lock: readers report it as `died`. The file is replaced
atomically, so a crash or a full disk never leaves half of it.
"""

from __future__ import annotations

import json
import logging
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from genlab.files import Outputs
from genlab.lock import lock_holder

log = logging.getLogger(__name__)

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
    """Replace `run_dir/run.json` atomically with `record`, stamped with the time (`updated`)."""
    record = {**record, "updated": time.time()}
    return Outputs(run_dir).write(RECORD, json.dumps(record, indent=2, default=str).encode())


def read_records(folder: Path) -> list[dict[str, Any]]:
    """Every readable run.json under `folder`, with its run folder; an unreadable one (empty,
    corrupt, not a JSON object) is skipped with a warning naming it. A `running` run whose
    folder lock nobody holds has died (killed, or its machine lost): its status says so."""
    records = []
    for path in sorted(Path(folder).rglob(RECORD)):
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            log.warning("skipping %s: not a readable run record (%s)", path, e)
            continue
        if not isinstance(record, dict):
            log.warning("skipping %s: not a run record (a JSON %s)", path, type(record).__name__)
            continue
        for key in ("params", "metrics", "objective", "choices"):
            if not isinstance(record.get(key, {}), dict):
                record[key] = {}
        record["run_dir"] = str(path.parent)
        if record.get("status") == "running" and lock_holder(path.parent) is None:
            record.update(
                status="died", reason="ended without a word (killed, or its machine lost)"
            )
        records.append(record)
    return records
