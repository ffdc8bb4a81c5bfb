"""The training loop of every task (``vdrnn.lm``, ``vdrnn.seq_task``, ``vdrnn.population``).

A task is a subclass of ``Task``: its initial state, the batch and the jitted pure step of every
training step, what to reset when an epoch starts, its running training metrics, its
evaluation at the end of an epoch and its final results, and (optionally) hooks at the start,
at a non-finite step and at each epoch's end. ``run`` owns everything else, the same for every
task:

* resume from the newest readable checkpoint (a damaged one is reported and skipped; one
  from another config stops the run) and continue from its step: data position, carried
  state, accumulators and metric history all come from the checkpoint, so a resumed run
  equals an uninterrupted one;
* a progress bar that moves every couple of seconds (it waits for the device only then);
* a log record every ``train.log_every_steps`` steps and at each epoch's end;
* checkpoints every ``train.checkpoint_every_steps`` steps and at each epoch's end (the two
  latest and the best one by the task's ``select`` metric are kept, ``vdrnn.checkpoint``);
* a non-finite loss or gradient stops the run, naming the step, before any checkpoint or
  log line past it is written (``Task.stop_step`` says which step stops it: a population
  reports each of its runs and goes on);
* the best epoch by ``Task.select`` (``meta["best"]``, the one record of it: every checkpoint
  carries it, it names the checkpoint that is kept, and ``Task.finish`` reads it from ``meta``);
* under ``jax.distributed`` every process runs the loop and only process 0 writes files.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm import tqdm

from vdrnn import checkpoint, sharding
from vdrnn.config import fill_defaults
from vdrnn.errors import UserError
from vdrnn.metrics import MetricsWriter
from vdrnn.workdir import locked

SYNC_SECONDS = 2.0  # the progress bar waits for the device at most this often
BOOKKEEPING = ("epoch", "time_s", "eval_time_s", "items_per_s")  # not shown in the epoch line


class Task:
  """What a task gives ``run``: a subclass sets the attributes and implements the methods that
  raise here; the hooks have defaults. The state is a pytree with ``"step"`` (int32) and
  ``"acc"`` (on-device running sums with ``"bad_step"``, -1 until a non-finite step: see
  ``mark_bad``); a population's leaves have a leading axis, one entry per run."""

  steps_per_epoch: int         # training steps (windows, batches) per epoch
  items_per_step: int          # tokens or examples a step trains on (for the logged rate)
  select: Optional[str] = None  # epoch-record key (lower is better) of the best checkpoint
  resume_keys: Sequence[str] = ()  # config fields a resumed run must share
  meta: dict = {}              # facts saved with every checkpoint that a resume must match
  nonfinite_hint: str = ""     # what to do after a non-finite loss
  summary: str = ""            # one line on the run (sizes, devices), printed when it starts
  workdir: str                 # where the run writes

  def base_config(self):
    """The task's base config (a run saved before a field existed reads it from here)."""
    raise NotImplementedError

  def init_state(self) -> Any:
    """The initial train state, on the devices."""
    raise NotImplementedError

  def start_epoch(self, state: Any, epoch: int) -> Any:
    """The state at step 0 of ``epoch`` (e.g. a zero carry, fresh accumulators)."""
    raise NotImplementedError

  def batch(self, epoch: int, i: int) -> tuple:
    """The arguments after the state of step ``i`` of ``epoch``."""
    raise NotImplementedError

  def train_step(self, state: Any, *batch) -> Any:
    """One jitted training step."""
    raise NotImplementedError

  def train_metrics(self, acc: dict, epoch: int) -> dict:
    """Running training metrics from the host copy of ``state["acc"]``."""
    raise NotImplementedError

  def evaluate(self, state: Any, epoch: int) -> dict:
    """Evaluation metrics at the end of ``epoch`` (0-based)."""
    raise NotImplementedError

  def finish(self, state: Any, meta: dict) -> dict:
    """The final results (``results.json``); ``meta["history"]`` holds the epoch records and
    ``meta["best"]`` the best epoch."""
    raise NotImplementedError

  def plot(self, history: list[dict], results: Optional[dict] = None) -> None:
    """Figures of the history so far into the workdir (process 0 only)."""

  # Hooks.

  def start(self, step: int) -> None:
    """Called once the run has resumed (at ``step``) and before its first step."""

  def stop_step(self, acc: dict) -> int:
    """The non-finite step that stops the run, or -1 to go on (``acc``: the host copy)."""
    return int(np.max(acc["bad_step"]))

  def end_epoch(self, state: Any, meta: dict, step: int) -> None:
    """Called after each epoch's record is in ``meta["history"]``, before its checkpoint."""


def mark_bad(acc: dict, step, finite) -> jax.Array:
  """``acc["bad_step"]`` after ``step``: the first step whose loss (and gradient) was not
  ``finite``, or -1 (inside the jitted step)."""
  return jnp.where((acc["bad_step"] < 0) & ~finite, step, acc["bad_step"])


def num_params(init_params) -> int:
  """The number of parameters ``init_params()`` makes (shapes only: nothing is allocated)."""
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(jax.eval_shape(init_params)))


def current_step(state) -> int:
  return int(np.max(jax.device_get(state["step"])))


def finite(record: dict) -> dict:
  return {k: v for k, v in record.items() if not (isinstance(v, float) and not math.isfinite(v))}


def _short(v):
  """A displayed value: floats to 4 digits, a population's list as ``[a, b, ...]``."""
  if isinstance(v, (list, tuple)):
    return "[" + ", ".join(str(_short(x)) for x in v) + "]"
  return f"{v:.4g}" if isinstance(v, float) else v


def epoch_line(record: dict) -> str:
  """``epoch N  key value ...  Ts``: every metric of an epoch record, then its time."""
  shown = "  ".join(f"{k} {_short(v)}" for k, v in record.items() if k not in BOOKKEEPING)
  return (f"epoch {record['epoch']:3d}  {shown}  {record['time_s']:.0f}s"
          f" (+{record.get('eval_time_s', 0.0):.0f}s eval)")


class NoWriter:
  """Stands in for ``MetricsWriter`` on processes other than 0."""

  def write(self, *args, **kwargs):
    pass

  def close(self):
    pass


def _resume(task: Task, ckpts, state, cfg_dict: dict, workdir: str):
  """``(state, meta)`` from the newest compatible checkpoint, or the initial ones."""
  meta = {"config": cfg_dict, "history": [], "best": None, **task.meta}

  def compatible(saved: dict) -> None:
    old = fill_defaults(saved["config"], json.loads(task.base_config().to_json()))
    checkpoint.check_compatible(old, cfg_dict, task.resume_keys, workdir)
    for k, v in task.meta.items():
      if saved.get(k) != json.loads(json.dumps(v)):  # as it reads back from the JSON
        raise UserError(f"{workdir} holds a checkpoint made with {k}={saved.get(k)!r}, now "
                        f"{v!r}; use a fresh --workdir or the original config and data")

  found = checkpoint.restore_newest_good(ckpts, state, compatible)
  if found is None:
    return state, meta, False
  state, meta, _ = found
  meta["config"] = cfg_dict
  return state, meta, True


@locked  # one run per workdir: a second one stops naming the first (vdrnn.workdir)
def run(task: Task, config, workdir: str) -> dict:
  """Trains ``task`` for ``config.train.num_epochs`` epochs in ``workdir``; returns (and,
  on process 0, writes to ``results.json``) the task's final results."""
  t = config.train
  primary = sharding.is_primary()
  say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if primary else (lambda msg: None)
  os.makedirs(workdir, exist_ok=True)
  ckpts = checkpoint.manager(os.path.join(workdir, "checkpoints"))
  state, meta, resumed = _resume(task, ckpts, task.init_state(), json.loads(config.to_json()),
                                 workdir)
  step = current_step(state)
  if resumed:
    say(f"resuming from step {step} in {workdir}")
  say(task.summary)
  if primary:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))
  writer = MetricsWriter(workdir, truncate_after_step=step) if primary else NoWriter()
  task.start(step)
  spe = task.steps_per_epoch

  def check_finite(acc, epoch: int, bar) -> None:
    bad = task.stop_step(acc)
    if bad >= 0:
      bar.close()
      writer.close()
      kept = ckpts.latest_step()
      where = (f"the last good checkpoint (step {kept}) in {workdir} is intact"
               if kept is not None else f"no checkpoint had been saved in {workdir} yet")
      raise UserError(f"non-finite loss or gradient at step {bad} (epoch {epoch}); "
                      f"stopped. {where[0].upper() + where[1:]}; {task.nonfinite_hint}")

  for epoch in range(step // spe, t.num_epochs):
    start = step % spe
    if start == 0:
      state = task.start_epoch(state, epoch)
    bar = tqdm(total=spe, initial=start, desc=f"epoch {epoch + 1}/{t.num_epochs}",
               disable=not (t.progress and primary), dynamic_ncols=True, file=sys.stderr)
    t0, done, synced = time.time(), 0, time.time()
    for i in range(start, spe):
      state = task.train_step(state, *task.batch(epoch, i))
      step, done = step + 1, done + 1
      last = i == spe - 1
      log = step % t.log_every_steps == 0 or last
      save = bool(t.checkpoint_every_steps) and step % t.checkpoint_every_steps == 0 and not last
      if log or save:  # never log or save past a non-finite step
        acc = jax.device_get(state["acc"])
        check_finite(acc, epoch + 1, bar)
        synced = time.time()
        bar.update(i + 1 - bar.n)
      elif time.time() - synced > SYNC_SECONDS:  # the bar shows steps done, not dispatched
        jax.block_until_ready(state["step"])
        synced = time.time()
        bar.update(i + 1 - bar.n)
      if log:
        train = task.train_metrics(acc, epoch)
        rate = done * task.items_per_step / (time.time() - t0)
        bar.set_postfix({k: _short(v) for k, v in train.items()})
        writer.write("train", step, epoch=epoch + 1, **train, items_per_s=rate)
      if save:
        checkpoint.save(ckpts, step, state, meta)
    bar.close()
    elapsed = time.time() - t0
    record = {"epoch": epoch + 1, **task.train_metrics(jax.device_get(state["acc"]), epoch),
              "time_s": elapsed, "items_per_s": done * task.items_per_step / elapsed}
    t_eval = time.time()
    record.update(task.evaluate(state, epoch))
    record["eval_time_s"] = time.time() - t_eval
    meta["history"].append(record)
    writer.write("epoch", step, **finite(record))
    say(epoch_line(record))
    value = record.get(task.select) if task.select else None
    metric = value if isinstance(value, float) and math.isfinite(value) else None
    if metric is not None and (meta["best"] is None or metric < meta["best"]["value"]):
      meta["best"] = {"epoch": epoch + 1, "step": step, "metric": task.select, "value": metric}
    task.end_epoch(state, meta, step)
    checkpoint.save(ckpts, step, state, meta)
    if primary:
      task.plot(meta["history"])

  results = task.finish(state, meta)
  writer.write("test", step, **finite({k: v for k, v in results.items() if isinstance(v, float)}))
  writer.close()
  if primary:
    task.plot(meta["history"], results)
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=2)
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, (dict, list))}),
          flush=True)
  logging.info("finished %s at step %d", workdir, step)
  return results
