"""The training loop of every task (``vdrnn.lm``, ``vdrnn.sentiment``, ``vdrnn.population``).

A task describes itself with a ``Task``: its initial state, a jitted pure ``train_step``,
the arguments of each step, what to reset at an epoch's start, what to evaluate at its end
and what to report at the end of training. ``run`` owns the rest, the same for every task:

* resume from the newest readable checkpoint (a damaged one is reported and skipped; one
  from another config stops the run) and continue from its step: data position, carried
  state, accumulators and metric history all come from the checkpoint, so a resumed run
  equals an uninterrupted one;
* a progress bar that moves every couple of seconds (it waits for the device only then);
* a log record every ``train.log_every_steps`` steps and at each epoch's end;
* checkpoints every ``train.checkpoint_every_steps`` steps and at each epoch's end (the two
  latest and the best one by the task's selection metric are kept, ``vdrnn.checkpoint``);
* a non-finite loss or gradient stops the run, naming the step, before any checkpoint or
  log line past it is written;
* under ``jax.distributed`` every process runs the loop and only process 0 writes files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from vdrnn import checkpoint, sharding
from vdrnn.errors import UserError
from vdrnn.metrics import MetricsWriter

SYNC_SECONDS = 2.0  # the progress bar waits for the device at most this often


@dataclasses.dataclass
class Task:
  """What a task gives the loop. ``state`` is a pytree with ``"step"`` (int32; a leading
  member axis is allowed) and ``"acc"`` (on-device running sums with ``"bad_step"``, -1
  until a non-finite step) among its leaves."""
  state: Any                                   # the initial train state, on the devices
  train_step: Callable[..., Any]               # jitted ``(state, *batch) -> state``
  steps_per_epoch: int
  batch: Callable[[int, int], tuple]           # ``(epoch, i) -> batch`` of step i of epoch
  start_epoch: Callable[[Any, int], Any]       # the state at step 0 of an epoch
  running: Callable[[dict, int], dict]         # ``(host acc, epoch) -> train metrics``
  evaluate: Callable[[Any, int, dict], dict]   # ``(state, epoch, meta) -> eval metrics``
  finish: Callable[[Any, dict], dict]          # ``(state, meta) -> results.json``
  resume_keys: Sequence[str]                   # config fields a resumed run must share
  resume_defaults: Optional[dict] = None       # base config: values of fields added since
  meta: dict = dataclasses.field(default_factory=dict)  # saved with every checkpoint
  select: Optional[str] = None                 # epoch-record key of the best checkpoint (lower)
  items_per_step: int = 1                      # for the rate in the logs
  rate_name: str = "items_per_s"
  nonfinite_hint: str = ""
  stop_on_nonfinite: bool = True               # False: the task reports divergence itself
  describe: str = ""                           # printed once at the start
  epoch_line: Callable[[dict], str] = lambda r: json.dumps(r)
  after_epoch: Callable[[dict], None] = lambda meta: None  # e.g. a learning-curve plot


class _NoWriter:
  """Stands in for ``MetricsWriter`` on processes other than 0."""

  def write(self, *args, **kwargs):
    pass

  def close(self):
    pass


def current_step(state) -> int:
  return int(np.max(jax.device_get(state["step"])))


def finite(record: dict) -> dict:
  return {k: v for k, v in record.items() if not (isinstance(v, float) and not math.isfinite(v))}


def run(task: Task, config, workdir: str) -> dict:
  """Trains ``task`` for ``config.train.num_epochs`` epochs in ``workdir``; returns (and,
  on process 0, writes to ``results.json``) the task's final results."""
  t = config.train
  primary = sharding.is_primary()
  say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if primary else (lambda msg: None)
  os.makedirs(workdir, exist_ok=True)
  ckpts = checkpoint.manager(os.path.join(workdir, "checkpoints"))
  cfg_dict = json.loads(config.to_json())
  meta = {"config": cfg_dict, "history": [], "best": None, **task.meta}

  def compatible(saved: dict) -> None:
    checkpoint.check_compatible(saved["config"], cfg_dict, task.resume_keys, workdir,
                                task.resume_defaults)
    for k, v in task.meta.items():
      if saved.get(k) != json.loads(json.dumps(v)):  # as it reads back from the JSON
        raise UserError(f"{workdir} holds a checkpoint made with {k}={saved.get(k)!r}, now "
                        f"{v!r}; use a fresh --workdir or the original config and data")

  state = task.state
  found = checkpoint.restore_newest_good(ckpts, state, compatible)
  if found is not None:
    state, meta, step = found
    meta["config"] = cfg_dict
    say(f"resuming from step {step} in {workdir}")
  step = current_step(state)
  if primary:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))
  writer = MetricsWriter(workdir, truncate_after_step=step) if primary else _NoWriter()
  say(task.describe)
  spe = task.steps_per_epoch

  def stop_if_nonfinite(acc, epoch: int, bar) -> None:
    bad = np.asarray(acc["bad_step"])
    if task.stop_on_nonfinite and bad.max() >= 0:
      bar.close()
      writer.close()
      kept = ckpts.latest_step()
      where = (f"the last good checkpoint (step {kept}) in {workdir} is intact"
               if kept is not None else f"no checkpoint had been saved in {workdir} yet")
      raise UserError(f"non-finite loss or gradient at step {int(bad.max())} (epoch {epoch}); "
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
        stop_if_nonfinite(acc, epoch + 1, bar)
        synced = time.time()
        bar.update(i + 1 - bar.n)
      elif time.time() - synced > SYNC_SECONDS:  # the bar shows steps done, not dispatched
        jax.block_until_ready(state["step"])
        synced = time.time()
        bar.update(i + 1 - bar.n)
      if log:
        train = task.running(acc, epoch)
        rate = done * task.items_per_step / (time.time() - t0)
        bar.set_postfix({k: _short(v) for k, v in train.items()})
        writer.write("train", step, epoch=epoch + 1, **train, **{task.rate_name: rate})
      if save:
        checkpoint.save(ckpts, step, state, meta)
    bar.close()
    elapsed = time.time() - t0
    record = {"epoch": epoch + 1, **task.running(jax.device_get(state["acc"]), epoch),
              "time_s": elapsed, task.rate_name: done * task.items_per_step / elapsed}
    record.update(task.evaluate(state, epoch, meta))
    meta["history"].append(record)
    writer.write("epoch", step, **finite(record))
    say(task.epoch_line(record))
    value = record.get(task.select) if task.select else None
    metric = value if value is not None and math.isfinite(value) else None
    if metric is not None and (meta["best"] is None or metric < meta["best"]["value"]):
      meta["best"] = {"epoch": epoch + 1, "step": step, "metric": task.select, "value": metric}
    checkpoint.save(ckpts, step, state, meta, metric=metric)
    if primary:
      task.after_epoch(meta)

  results = task.finish(state, meta)
  writer.write("test", step, **finite({k: v for k, v in results.items() if isinstance(v, float)}))
  writer.close()
  if primary:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=2)
    print(json.dumps({k: v for k, v in results.items() if k != "data"}), flush=True)
  logging.info("finished %s at step %d", workdir, step)
  return results


def _short(v):
  """A progress-bar value: floats to 4 digits, a population's list as ``[a, b, ...]``."""
  if isinstance(v, (list, tuple)):
    return "[" + ", ".join(str(_short(x)) for x in v) + "]"
  return f"{v:.4g}" if isinstance(v, float) else v
