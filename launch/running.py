"""Running the rows: each row as a ``launch/sweep.py`` run (its command line, the epochs it is
asked for, whether its workdir already holds that run's end) and the ``--override`` /
``--epochs`` flags that go to every selected row. ``launch/reproduce.py`` hands the runs to
``sweep.run_all``, wrapped by ``launch/run_row.py``.
"""

from __future__ import annotations

import json
import os
import shlex
from typing import Optional

from launch import sweep
from launch.rows import Row
from vdrnn.config import load_config_file
from vdrnn.errors import UserError


def override_flags(overrides: list[str], epochs: int) -> list[str]:
  """``["train.lr=0.5"]`` and ``--epochs N`` ->
  ``["--config.train.lr=0.5", "--config.train.num_epochs=N"]``."""
  out = []
  for o in overrides:
    path, sep, value = o.partition("=")
    if not sep or not path:
      raise UserError(f"--override {o!r}: expected CONFIG.PATH=VALUE, e.g. train.num_epochs=20")
    out.append(f"--config.{path.removeprefix('--config.')}={value}")
  if epochs:
    out.append(f"--config.train.num_epochs={epochs}")
  return out


def as_run(row: Row, root: str) -> dict:
  """The row as a ``launch/sweep.py`` run."""
  return {"name": row.name, "workdir": os.path.join(root, row.name), "config": row.config,
          "point": dict(row.overrides)}


def command(row: Row, root: str, extra: list[str]) -> str:
  """The row's ``python -m vdrnn.train ...`` command line."""
  argv = sweep.train_command(as_run(row, root), row.config, extra)
  return shlex.join(["python", *argv[1:]])


def requested_epochs(row: Row, extra: list[str]) -> int:
  """``train.num_epochs`` the row runs with (its config, then its overrides, then ``extra``)."""
  n = None
  for flag in [f"--config.{p}={v}" for p, v in row.overrides] + list(extra):
    if flag.startswith("--config.train.num_epochs="):
      n = int(flag.split("=", 1)[1])
  if n is None:
    n = int(load_config_file(row.config).train.num_epochs)
  return n


def is_finished(run: dict, epochs: Optional[int] = None) -> bool:
  """A ``results.json`` from a run with ``epochs`` epochs (any number when None)."""
  if not os.path.exists(os.path.join(run["workdir"], "results.json")):
    return False
  if epochs is None:
    return True
  path = os.path.join(run["workdir"], "config.json")
  cfg = {}
  if os.path.exists(path):
    with open(path) as f:
      cfg = json.load(f)
  return int(cfg.get("train", {}).get("num_epochs", -1)) == epochs

