"""The one dispatch on a config's ``task``: ``train_and_evaluate(config, workdir)`` and
``evaluate_workdir(config, workdir, ...)`` of the task module that owns it.

* ``ptb``: the Penn Treebank language model (``vdrnn.lm``), or a population of them
  (``vdrnn.population``) when any ``population.*`` field is set;
* ``sentiment`` (Pang & Lee regression) and ``imdb`` (classification): ``vdrnn.sentiment``.

``python -m vdrnn.train`` and ``python -m vdrnn.evaluate`` call these; call them from Python
to train or evaluate without the command line.
"""

from __future__ import annotations

import os
from types import ModuleType

from vdrnn import lm, population, sentiment
from vdrnn.errors import UserError

TASKS = {"ptb": lm, "sentiment": sentiment, "imdb": sentiment}


def task_module(config) -> ModuleType:
  """The module of ``config.task`` (a population's: ``vdrnn.population``)."""
  task = config.get("task", "ptb")
  if task not in TASKS:
    raise UserError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
  if task == "ptb" and population.is_population(config):
    return population
  return TASKS[task]


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains ``config`` in ``workdir`` (resuming what is there); returns the final results."""
  return task_module(config).train_and_evaluate(config, workdir)


def evaluate_workdir(config, workdir: str, **kwargs) -> dict:
  """Evaluates a finished (or checkpointed) workdir; ``kwargs``: ``checkpoint``, ``split``,
  ``progress`` (see ``lm.evaluate_workdir`` / ``sentiment.evaluate_workdir``)."""
  module = task_module(config)
  if module is population:
    raise UserError(f"{workdir} holds a population run; evaluate a member's workdir instead, "
                    f"e.g. {os.path.join(workdir, 'member_00')}")
  return module.evaluate_workdir(config, workdir, **kwargs)


def default_workdir(config_spec: str) -> str:
  """``workdirs/<config file stem>[_<arg>]`` for ``path/to/config.py[:arg]`` (commas in the
  arg become underscores)."""
  path, _, arg = (config_spec or "run").partition(":")
  stem = os.path.splitext(os.path.basename(path))[0]
  return os.path.join("workdirs", stem + (f"_{arg.replace(',', '_')}" if arg else ""))
