"""The `logger` config group: where scalars and sample grids go besides the run folder's PNGs."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence, Set
from pathlib import Path
from secrets import token_hex
from typing import Any

from genlab.errors import require_at_least, writing
from genlab.files import Outputs


class NullLogger:
    """Logs nothing (`logger=none`)."""

    def __init__(self, *, run_dir: str | Path, name: str | None = None) -> None:
        self.run_dir = Path(run_dir)

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        pass

    def log_png(self, tag: str, png: bytes, shape: Sequence[int], step: int) -> None:
        pass

    def log_hparams(
        self,
        params: Mapping[str, Any],
        metrics: Mapping[str, float],
        varied: Set[str] = frozenset(),
    ) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger(NullLogger):
    """TensorBoard event files under `<run_dir>/<subdir>` (or `<run_dir>/<subdir>/<name>`: in a
    sweep, the name shows the job's overrides): `tensorboard --logdir outputs`."""

    def __init__(
        self,
        subdir: str = "tb",
        flush_secs: int = 30,
        *,
        run_dir: str | Path,
        name: str | None = None,
    ) -> None:
        super().__init__(run_dir=run_dir)
        require_at_least(1, flush_secs=flush_secs)
        self.subdir = f"{subdir}/{name}" if name else subdir
        self.folder = Outputs(self.run_dir).path(self.subdir)  # a ValueError if not inside
        self.flush_secs = flush_secs
        self._writer = None
        # imported here, not at the first value logged: inside the loop its ~0.1 s (more from a
        # cold disk) would stall the first logging step, and the GPU's queue with it
        from torch.utils.tensorboard import SummaryWriter

        self._writer_class = SummaryWriter

    @property
    def writer(self):
        """The event file writer, made at the first value logged (a run refused before it starts
        writes no file)."""
        if self._writer is None:
            _quiet_event_thread()
            run = Outputs(self.run_dir)
            folder = run.folder(self.subdir)  # refused where a link is planted
            with writing(self.folder):  # a random suffix: no name a link could be planted at
                self._writer = self._writer_class(
                    str(folder), flush_secs=self.flush_secs, filename_suffix=f".{token_hex(4)}"
                )
            event_file = Path(self._writer.file_writer.event_writer._file_name)
            run.record([event_file.relative_to(self.run_dir).as_posix()])
        return self._writer

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        with writing(self.folder):
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def log_png(self, tag: str, png: bytes, shape: Sequence[int], step: int) -> None:
        """An image already encoded as PNG, of (C, H, W) `shape`: the run folder's own sample grid
        (`add_image` would encode it again, several times slower)."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        channels, height, width = shape
        image = Summary.Image(
            height=height, width=width, colorspace=channels, encoded_image_string=png
        )
        with writing(self.folder):
            self.writer.file_writer.add_summary(
                Summary(value=[Summary.Value(tag=tag, image=image)]), step
            )

    def log_hparams(
        self,
        params: Mapping[str, Any],
        metrics: Mapping[str, float],
        varied: Set[str] = frozenset(),
    ) -> None:
        """This run's hyperparameters and final metrics for TensorBoard's HParams dashboard (in
        the run's own event file, so a sweep folder compares its runs). The metrics are scalar
        tags the run already logged; the dashboard shows the first five of each by default, the
        metrics in the order given and the hyperparameters `varied` (a sweep's) before the rest
        (TensorBoard sorts those that differ between runs first, then by name)."""
        from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
        from torch.utils.tensorboard.summary import hparams

        simple = {
            k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in params.items()
        }
        experiment, start, end = hparams(simple, dict(metrics))
        data = experiment.value[0].metadata.plugin_data
        content = HParamsPluginData.FromString(data.content)
        for info in content.experiment.hparam_infos:
            info.differs = info.name in varied
        data.content = content.SerializeToString()
        with writing(self.folder):
            for summary in (experiment, start, end):
                self.writer.file_writer.add_summary(summary)

    def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            with writing(self.folder):
                writer.close()


def _quiet_event_thread() -> None:
    """TensorBoard's event writer thread re-raises a failed write (a full disk), which Python
    prints as a traceback; the same error reaches the training thread at its next write, which
    reports it once. Such a thread's error is therefore not printed."""
    previous = threading.excepthook
    if getattr(previous, "genlab", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if type(args.thread).__name__ != "_AsyncWriterThread":
            previous(args)

    hook.genlab = True  # type: ignore[attr-defined]
    threading.excepthook = hook
