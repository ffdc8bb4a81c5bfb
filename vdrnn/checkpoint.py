"""Checkpoints with orbax-checkpoint, in one small module.

A run's ``checkpoints/`` directory is one ``CheckpointManager`` whose preservation policy
keeps the two latest checkpoints and the best one. Each checkpoint has two items: ``state``
(a pytree of arrays) and ``meta`` (JSON: the config it came from, the metric history and
whatever else the loop needs to resume exactly; ``meta["best"]["step"]`` names the best
checkpoint, and that record, read back with the state on a resume, is what keeps it).

Resuming takes the newest checkpoint that restores. One whose files are damaged (cut short,
overwritten) is reported in one line and moved to ``checkpoints_damaged/``; the run goes
on from the one before it. A checkpoint from another config stops the run with one line
and nothing is moved.

A long evaluation pass saves its own state as ``.npz`` files (``save_npz``, never half a file),
valid for the parameters whose ``params_checksum`` it records.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import weakref
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as policies

from vdrnn.errors import UserError


class _NamedBest(policies.PreservationPolicy):
  """Preserves the checkpoint at ``step``: the best one, as named by the ``meta["best"]`` that
  ``save`` is writing. (orbax's ``BestN`` reads metrics that, without a ``best_fn``, live only
  in the manager that saved them: a resumed run, a new manager, lost its best checkpoint.)"""

  def __init__(self):
    self.step: Optional[int] = None

  def should_preserve(self, checkpoints, *, context) -> list[bool]:
    return [info.step == self.step for info in checkpoints]


_BEST: "weakref.WeakKeyDictionary[ocp.CheckpointManager, _NamedBest]" = (
    weakref.WeakKeyDictionary())


def manager(directory: str, keep_latest: int = 2) -> ocp.CheckpointManager:
  """The ``keep_latest`` newest checkpoints plus the best one (``meta["best"]["step"]``)."""
  best = _NamedBest()
  policy = policies.AnyPreservationPolicy([policies.LatestN(n=keep_latest), best])
  options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False,
                                         preservation_policy=policy)
  with _quiet():  # it reads every step's metadata: a damaged one is reported by the resume
    mngr = ocp.CheckpointManager(os.path.abspath(directory), options=options)
  _BEST[mngr] = best
  return mngr


@contextlib.contextmanager
def _quiet():
  """orbax logs (at ERROR) each file it cannot parse; resuming reports damage in one line."""
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.FATAL)
  try:
    yield
  finally:
    logging.set_verbosity(verbosity)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
  """Saves synchronously (complete when this returns), then deletes the checkpoints that are
  neither among the latest nor the one ``meta["best"]`` names. A checkpoint already at
  ``step`` (left by a run stopped between two saves of that step) is replaced."""
  _BEST[mngr].step = (meta.get("best") or {}).get("step")
  if int(step) in mngr.all_steps():
    mngr.delete(int(step))
  mngr.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 meta=ocp.args.JsonSave(meta)), force=True)
  mngr.wait_until_finished()


def read_meta(mngr: ocp.CheckpointManager, step: Optional[int] = None) -> Optional[dict]:
  step = mngr.latest_step() if step is None else step
  if step is None:
    return None
  return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta


def restore(mngr: ocp.CheckpointManager, step: int, target: Any) -> tuple[Any, dict]:
  """Restores ``(state, meta)`` at ``step``; ``target`` gives the structure, shapes,
  dtypes and shardings (device arrays, or host ones: NumPy arrays and scalars). A structure or
  shape mismatch is a ``UserError``."""
  host = lambda x: np.asarray(x) if isinstance(x, np.generic) else x  # noqa: E731
  abstract = jax.tree.map(lambda x: ocp.utils.to_shape_dtype_struct(host(x)), target)
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
  except (ValueError, KeyError, TypeError) as e:
    raise UserError(f"checkpoint {mngr.directory}/{step} does not match this config "
                    f"({_first_line(e)}); use a fresh --workdir or the config it was trained "
                    f"with") from None
  return restored.state, restored.meta


def restore_newest_good(mngr: ocp.CheckpointManager, target: Any,
                        check: Callable[[dict], None]) -> Optional[tuple[Any, dict, int]]:
  """``(state, meta, step)`` of the newest checkpoint that restores, or None when there is
  none. ``check(meta)`` raises a ``UserError`` for a checkpoint of another config (the run
  stops there; nothing is moved). Newer checkpoints that fail to read are damaged: each is
  reported in one line and, once an older one restored, moved to ``checkpoints_damaged/``
  beside the directory (so new checkpoints can take their steps). With none readable, a
  ``UserError`` and nothing moved."""
  steps = sorted(mngr.all_steps(), reverse=True)
  damaged = []
  with _quiet():
    found = _first_good(mngr, steps, target, check, damaged)
  if found is None:
    if damaged:
      step, e = damaged[0]
      raise UserError(f"no checkpoint in {mngr.directory} can be read (newest, step {step}: "
                      f"{_first_line(e)[:160]}); use a fresh --workdir")
    return None
  state, meta, step = found
  for bad, e in damaged:
    print(f"checkpoint {bad} in {mngr.directory} is damaged ({_first_line(e)[:120]}); moved "
          f"to checkpoints_damaged/, resuming from step {step}", file=sys.stderr)
    _move_aside(mngr, bad)
  if damaged:
    mngr.reload()
  return state, meta, step


def _first_good(mngr, steps, target, check, damaged: list):
  """``(state, meta, step)`` of the first of ``steps`` that restores; appends the unreadable
  ones to ``damaged`` as ``(step, exception)``."""
  for step in steps:
    try:
      meta = read_meta(mngr, step)
    except Exception as e:  # noqa: BLE001 - any read failure of a saved file is damage
      damaged.append((step, e))
      continue
    check(meta)
    try:
      state, meta = restore(mngr, step, target)
    except Exception as e:  # noqa: BLE001 - a UserError (shape mismatch) or a damaged file
      damaged.append((step, e))
      continue
    return state, meta, step
  return None


def _move_aside(mngr: ocp.CheckpointManager, step: int) -> None:
  src = os.path.join(str(mngr.directory), str(step))
  dst = os.path.join(os.path.dirname(str(mngr.directory)), "checkpoints_damaged", str(step))
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  shutil.rmtree(dst, ignore_errors=True)
  shutil.move(src, dst)


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


def check_compatible(saved: dict, current: dict, keys: list[str], where: str) -> None:
  """Raises a UserError naming the first field of ``keys`` (dotted) that differs.

  ``saved``: the checkpoint's config with the fields it predates filled in
  (``vdrnn.tasks.with_defaults``)."""
  absent = "<absent>"

  def get(d, dotted):
    for part in dotted.split("."):
      if not isinstance(d, dict) or part not in d:
        return absent
      d = d[part]
    return d

  for k in keys:
    a, b = get(saved, k), get(current, k)
    if a == b:
      continue
    if isinstance(a, dict) and isinstance(b, dict):  # name the field inside, e.g. model.hidden
      f = next(f for f in sorted({*a, *b}) if a.get(f, absent) != b.get(f, absent))
      k, a, b = f"{k}.{f}", a.get(f, absent), b.get(f, absent)
    raise UserError(f"{where} holds a checkpoint from an incompatible config ({k}: {a!r} there, "
                    f"{b!r} now); use a fresh --workdir or the original config")


def find(workdir: str, which: str = "latest") -> tuple[ocp.CheckpointManager, int]:
  """``(manager, step)`` of a training workdir's checkpoint ``which``: ``latest``, ``best``
  (the step the run's metadata names as best) or a step number."""
  directory = os.path.join(workdir, "checkpoints")
  mngr = manager(directory) if os.path.isdir(directory) else None
  latest = None if mngr is None else mngr.latest_step()
  if latest is None:
    raise UserError(f"no checkpoint in {workdir} (looked in {directory}); train first")
  which = str(which)
  if which == "latest":
    return mngr, latest
  if which == "best":
    best = (read_meta(mngr, latest) or {}).get("best")
    if not best:
      raise UserError(f"{workdir} has no best checkpoint (no epoch has finished with a metric)")
    if best["step"] not in mngr.all_steps():  # resumed by a vdrnn that did not keep it
      raise UserError(f"{workdir}: the best checkpoint (epoch {best['epoch']}, step "
                      f"{best['step']}) was deleted when the run resumed; train it again in a "
                      f"fresh --workdir")
    return mngr, best["step"]
  if not which.isdigit():
    raise UserError(f"--checkpoint must be latest, best or a step number, got {which!r}")
  if int(which) not in mngr.all_steps():
    raise UserError(f"no checkpoint at step {which} in {workdir}; available: "
                    f"{sorted(mngr.all_steps())}")
  return mngr, int(which)


def save_npz(path: str, **arrays) -> None:
  """Writes ``arrays`` to ``path`` (``.npz``) through a temporary file renamed into place: a
  reader finds the old file or the new one, never half a file."""
  tmp = path + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def load_npz(path: str) -> Optional[dict]:
  """The arrays of a ``save_npz`` file, or None where there is none or it cannot be read: a
  damaged file is reported in one line, and the pass that saved it starts afresh."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path) as saved:
      return {k: saved[k] for k in saved.files}
  except Exception as e:  # noqa: BLE001 - whatever makes it unreadable, it is only saved work
    print(f"warning: {path} cannot be read ({type(e).__name__}: {e}); the pass starts afresh",
          file=sys.stderr)
    return None


def params_checksum(params) -> list[float]:
  """One float64 sum per leaf of ``params``: what tells a saved evaluation state of these
  parameters from another model's."""
  return [float(np.asarray(a, np.float64).sum()) for a in jax.tree.leaves(jax.device_get(params))]
