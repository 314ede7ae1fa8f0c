"""Training progress for people (console: step, loss, tokens/s, ETA) and for TensorBoard.

TensorBoard event files under a gs:// MODEL_DIR go through etils.epath (gcsfs, like every
other gs:// path of flan_jax; see `flan_jax.paths`): importing this module registers that
writer for tensorboardX's `gs` prefix in place of its own, which needs google-cloud-storage
and uploads again from `__del__` at interpreter exit.
"""

from __future__ import annotations

import datetime
import io
import os
import time
from collections.abc import Mapping

import jax
import tensorboardX
from etils import epath
from tensorboardX import record_writer

from flan_jax import paths


class _ObjectRecordWriter:
    """One event file on object storage: objects cannot be appended to, so every flush
    writes the whole file again (what tensorboardX's own GCS writer does)."""

    def __init__(self, path: str):
        self.path = epath.Path(path)
        self.buffer = io.BytesIO()

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        self.path.write_bytes(self.buffer.getvalue())

    def close(self) -> None:
        self.flush()


class _ObjectRecordWriterFactory:
    def open(self, path: str) -> _ObjectRecordWriter:
        return _ObjectRecordWriter(path)

    def directory_check(self, path: str) -> None:
        """Object storage has no directories to create."""


record_writer.register_writer_factory("gs", _ObjectRecordWriterFactory())


class ProgressWriter:
    """Prints a step's progress line and writes scalars under `model_dir` (from process 0
    only, so hosts of one run do not write the same event files)."""

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        total_steps: int,
        start_step: int,
        tokens_per_step: int,
        flops_per_step: float,
        peak_flops: float | None,
    ):
        self.total_steps = total_steps
        self.tokens_per_step = tokens_per_step
        self.flops_per_step = flops_per_step
        self.peak_flops = peak_flops
        self._writers = {}
        self._model_dir = paths.path(model_dir, "MODEL_DIR")
        self._last = (start_step, time.perf_counter())

    def _writer(self, name: str) -> tensorboardX.SummaryWriter:
        if name not in self._writers:
            logdir = os.fspath(self._model_dir / name)
            self._writers[name] = tensorboardX.SummaryWriter(logdir)
        return self._writers[name]

    def train(self, step: int, metrics: Mapping[str, jax.Array]) -> dict[str, float]:
        """Logs the metrics of the step that just finished (`step` counts completed steps)."""
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        last_step, last_time = self._last
        now = time.perf_counter()
        seconds_per_step = (now - last_time) / max(1, step - last_step)
        self._last = (step, now)
        values["tokens_per_second"] = self.tokens_per_step / seconds_per_step
        values["seconds_per_step"] = seconds_per_step
        values["tflops_per_second"] = self.flops_per_step / seconds_per_step / 1e12
        mfu = ""
        if self.peak_flops:
            values["mfu"] = self.flops_per_step / seconds_per_step / self.peak_flops
            mfu = f"  MFU {values['mfu']:.1%}"
        eta = datetime.timedelta(seconds=round(seconds_per_step * (self.total_steps - step)))
        print(
            f"step {step}/{self.total_steps}  loss {values['loss']:.4f}  "
            f"token_acc {values['accuracy']:.3f}  {values['tokens_per_second']:,.0f} tokens/s  "
            f"{values['tflops_per_second']:.3g} TFLOP/s{mfu}  ETA {eta}",
            flush=True,
        )
        self.scalars("train", step, values)
        return values

    def scalars(self, name: str, step: int, values: Mapping[str, float]) -> None:
        if jax.process_index() != 0:
            return
        writer = self._writer(name)
        for key, value in values.items():
            writer.add_scalar(key, value, step)
        writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
