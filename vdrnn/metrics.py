"""Metrics to the workdir: JSON lines (``metrics.jsonl``, one record per event) and
TensorBoard event files (``tb/``, written with tensorboardX: no TensorFlow needed)."""

from __future__ import annotations

import json
import math
import os
from typing import Optional

from tensorboardX import SummaryWriter


def _finite_or_none(v):
  if isinstance(v, float) and not math.isfinite(v):
    return None
  return v


class MetricsWriter:
  """Appends ``{"event": ..., "step": ..., **values}`` records; scalars also go to TensorBoard."""

  def __init__(self, workdir: str, *, tensorboard: bool = True, truncate_after_step: Optional[int] = None):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, "metrics.jsonl")
    if truncate_after_step is not None and os.path.exists(self.path):
      # A resumed run drops the records written after the checkpoint it resumes from,
      # so the file reads as if the run had never been interrupted.
      keep = [l for l in read_jsonl(self.path) if l.get("step", 0) <= truncate_after_step]
      with open(self.path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in keep)
    self._file = open(self.path, "a")
    self._tb = None
    if tensorboard:
      self._tb = SummaryWriter(os.path.join(workdir, "tb"))

  def write(self, event: str, step: int, **values) -> None:
    record = {"event": event, "step": int(step), **{k: _finite_or_none(v) for k, v in values.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in values.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
          self._tb.add_scalar(f"{event}/{k}", v, int(step))

  def close(self) -> None:
    self._file.close()
    if self._tb is not None:
      self._tb.close()


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]
