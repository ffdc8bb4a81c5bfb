"""Metrics to the workdir: JSON lines (``metrics.jsonl``, one record per event) and
TensorBoard event files (``tb/``, written with tensorboardX: no TensorFlow needed)."""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Optional

from tensorboardX import SummaryWriter


def _finite_or_none(v):
  if isinstance(v, float) and not math.isfinite(v):
    return None
  return v


class MetricsWriter:
  """Appends ``{"event": ..., "step": ..., **values}`` records; scalars also go to TensorBoard."""

  def __init__(self,
               workdir: str,
               *,
               tensorboard: bool = True,
               truncate_after_step: Optional[int] = None):
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
    record = {
        "event": event,
        "step": int(step),
        **{
            k: _finite_or_none(v) for k, v in values.items()
        }
    }
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


# The largest mean NLL (nats per token) whose perplexity is a finite float64, about 709.78: a
# training step whose mean NLL reaches it has diverged as surely as a NaN loss (vdrnn.lm).
MAX_MEAN_NLL = math.log(sys.float_info.max)


def perplexity(mean_nll) -> float:
  """``exp(mean_nll)`` as a float: ``inf`` when it overflows (a diverged model's mean NLL can be
  finite yet far above ``log(float max)``, about 709.78), ``nan`` for a ``nan``. ``math.exp``
  would raise ``OverflowError`` and ``np.exp`` would warn; a perplexity is a metric, and a
  non-finite one is the training loop's to report (``vdrnn.loop``), not a crash."""
  try:
    return math.exp(float(mean_nll))
  except OverflowError:
    return math.inf


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]


def lua_valid_ppl(window_mean_nll, rows: int, seq_length: int) -> float:
  """Validation perplexity as the released Lua code computes it (``run_valid`` in
  LM_code/main_new_dropout_SOTA_v3.lua and Zaremba's main.lua; configs/PAPER.md)::

    local len = (state_valid.data:size(1) - 1) / params.seq_length  -- fractional
    for i = 1, len do perp = perp + fp(state_valid) end   -- floor(len) whole windows
    print(torch.exp(perp / len))                            -- divided by the fraction

  where ``fp`` returns a window's mean NLL over its T steps and B rows. The tokens after the
  last whole window are never evaluated but count in the divisor, so the value is below the
  exact perplexity (about 1% at PTB's sizes). The paper's validation numbers are these.

  Args:
    window_mean_nll: ``[n]`` mean NLL (natural log) of each whole window, in order;
      ``n = (rows - 1) // seq_length``.
    rows: tokens per stream of the batched split (``data:size(1)``, i.e. ``N // B``).
    seq_length: the window length T (the training ``seq_length`` in the Lua code).
  """
  nll = [float(v) for v in window_mean_nll]
  if rows < 2 or seq_length < 1:
    raise ValueError(f"need rows >= 2 and seq_length >= 1, got {rows}, {seq_length}")
  if len(nll) != (rows - 1) // seq_length:
    raise ValueError(f"expected (rows - 1) // seq_length = {(rows - 1) // seq_length} whole "
                     f"windows, got {len(nll)}")
  return perplexity(sum(nll) / ((rows - 1) / seq_length))


def lua_valid_ppl_from_sum(nll_sum: float, batch: int, rows: int, seq_length: int) -> float:
  """``lua_valid_ppl`` from the total NLL of the whole windows' ``n * B * T`` tokens: each
  window's mean is its sum over ``B * T``, so the result is ``exp(nll_sum / (B * (rows - 1)))``."""
  if rows < 2 or seq_length < 1 or batch < 1:
    raise ValueError(f"need rows >= 2, seq_length >= 1 and batch >= 1, got {rows}, {seq_length}, "
                     f"{batch}")
  return perplexity(float(nll_sum) / (batch * seq_length) / ((rows - 1) / seq_length))
