"""Checkpoints with orbax-checkpoint, in one small module.

A workdir holds two ``CheckpointManager`` directories: ``checkpoints/`` (the latest few)
and ``best/`` (the best by validation metric). Each checkpoint has two items: ``state``
(a pytree of arrays, ``StandardSave``) and ``meta`` (JSON: the config it came from, the
epoch, metric history, anything the loop needs to resume exactly).
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from vdrnn.errors import UserError


def manager(directory: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
  """Saves synchronously (the checkpoint is complete when this returns)."""
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
  dtypes and shardings. A structure or shape mismatch is a ``UserError``."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                          meta=ocp.args.JsonRestore()))
  except (ValueError, KeyError, TypeError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UserError(f"checkpoint {mngr.directory}/{step} does not match this config ({first[:200]}); "
                    f"use a fresh --workdir or the config it was trained with") from None
  return restored.state, restored.meta


def check_compatible(saved: dict, current: dict, keys: list[str], where: str) -> None:
  """Raises a UserError naming the first field of ``keys`` (dotted) that differs."""
  def get(d, dotted):
    for part in dotted.split("."):
      if not isinstance(d, dict) or part not in d:
        return "<absent>"
      d = d[part]
    return d
  for k in keys:
    a, b = get(saved, k), get(current, k)
    if a != b:
      raise UserError(f"{where} holds a checkpoint from an incompatible config ({k}: {a!r} there, {b!r} now); "
                      f"use a fresh --workdir or the original config")
