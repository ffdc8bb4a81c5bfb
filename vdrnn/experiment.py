"""``train_and_evaluate(config, workdir)``: trains whatever the config names, by the one loop.

The config's ``task`` picks it: the PTB language model (``vdrnn.lm``; a population of them
when any ``population.*`` field is set, ``vdrnn.population``), Pang & Lee sentiment
regression or IMDB classification (``vdrnn.sentiment``). This is what ``python -m
vdrnn.train`` calls; call it from Python to train without the command line.
"""

from __future__ import annotations

import os

from vdrnn import lm, population, sentiment
from vdrnn.errors import UserError


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains ``config`` in ``workdir`` (resuming what is there); returns the final results."""
  if config.task == "ptb":
    if population.is_population(config):
      return population.train_population(config, workdir)
    return lm.train_lm(config, workdir)
  if config.task in ("sentiment", "imdb"):
    return sentiment.train_and_evaluate(config, workdir)
  raise UserError(f"unknown task {config.task!r}; use ptb, sentiment or imdb")


def default_workdir(config_spec: str) -> str:
  """``workdirs/<config file stem>[_<arg>]`` for ``path/to/config.py[:arg]`` (commas in the
  arg become underscores)."""
  path, _, arg = (config_spec or "run").partition(":")
  stem = os.path.splitext(os.path.basename(path))[0]
  return os.path.join("workdirs", stem + (f"_{arg.replace(',', '_')}" if arg else ""))
