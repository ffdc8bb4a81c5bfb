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


def seeds_together(rows: list[Row], root: str) -> dict:
  """Rows that differ only in their seed as one ``launch/sweep.py`` run of a population of
  seeds (``vdrnn.population``: member ``k`` is exactly row ``k``'s single run, trained in the
  same vmapped step), in ``<root>/<row>+<row>...``; ``split_members`` then makes each member
  its row's workdir. On a GPU, where one PTB run at batch 20 leaves the device mostly idle, a
  population of 4 medium runs trained at 1.9x the tokens/s of one on an H100
  (``launch/results/bench/h100_1ab413c.txt``): half the time a run."""
  if len(rows) < 2:
    raise UserError("--seeds_together needs two or more rows")
  shared = {(r.config, tuple((p, v) for p, v in r.overrides if p != "seed")) for r in rows}
  names = ", ".join(r.name for r in rows)
  if len(shared) != 1:
    raise UserError(f"--seeds_together: {names} differ in more than their seed")
  seeds = [dict(r.overrides).get("seed", str(load_config_file(r.config).seed)) for r in rows]
  if len(set(seeds)) != len(seeds):
    raise UserError(f"--seeds_together: {names} share a seed ({', '.join(seeds)})")
  ((config, overrides),) = shared
  name = "+".join(r.name for r in rows)
  return {"name": name, "workdir": os.path.join(root, name), "config": config,
          "point": {**dict(overrides), "population.seed": ",".join(seeds)}}


def split_members(run: dict, rows: list[Row], root: str) -> None:
  """Moves member ``k`` of the finished population ``run`` (``member_XX/``, laid out like a
  single run's workdir) to row ``k``'s workdir, with the population's ``run_info.json`` (its
  device, wall time and command) marked with the member it was. The rows' workdirs must not
  exist (``launch.reproduce`` checks before the population trains)."""
  from launch import run_row  # imports jax: only when a population has run
  from vdrnn import population
  info = run_row.read_info(run["workdir"])
  for k, row in enumerate(rows):
    dst = os.path.join(root, row.name)
    os.rename(os.path.join(run["workdir"], population.member_name(k)), dst)
    run_row.write_info(dst, {**info, "population": {"name": run["name"], "member": k}})
