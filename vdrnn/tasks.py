"""Which tasks exist: the one registry of task names, and the dispatch on a config's ``task``.

A task is a module (or any object) with

* ``base_config() -> ConfigDict``: the defaults every config of the task starts from (a config
  saved before a field existed reads that field from here: ``with_defaults``);
* ``train_and_evaluate(config, workdir) -> dict``: trains in ``workdir`` (resuming what is
  there; usually ``vdrnn.loop.run`` over a ``vdrnn.loop.Task``) and returns the final results;
* ``evaluate_workdir(config, workdir, *, checkpoint, split, progress) -> dict``: evaluates a
  finished (or checkpointed) workdir;
* ``summary(result) -> str``: one human-readable line on such an evaluation.

Built in: ``ptb`` (``vdrnn.lm``), ``sentiment`` (Pang & Lee regression, ``vdrnn.sentiment``)
and ``imdb`` (classification, ``vdrnn.imdb``). When any ``population.*`` field is set, a
population of runs (``vdrnn.population``) trains instead: of PTB, or of a sequence task (a
module with ``HEAD``, its ``vdrnn.seq_eval.Head``). A task of your own needs no change to this
package: ``register`` it from Python, or name it by its module path (``config.task =
"mypkg.mytask"``, importable where the commands run): that module is then the task, for
``python -m vdrnn.train`` and, from the workdir's ``config.json``, ``python -m vdrnn.evaluate``
(which call ``train_and_evaluate`` / ``evaluate_workdir`` here).
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any

import ml_collections

from vdrnn import imdb, lm, population, sentiment
from vdrnn.config import fill_defaults
from vdrnn.errors import UserError

_TASKS: dict[str, Any] = {"ptb": lm, "sentiment": sentiment, "imdb": imdb}
INTERFACE = ("base_config", "train_and_evaluate", "evaluate_workdir", "summary")


def register(name: str, task: Any) -> None:
  """Makes ``config.task == name`` train and evaluate with ``task`` (see the module
  docstring for what it provides); a name already taken is replaced."""
  _TASKS[name] = task


def names() -> list[str]:
  return list(_TASKS)


def get(name: str) -> Any:
  """The task registered as ``name``, else the module of that import path (registered then);
  a one-line ``UserError`` for an unknown name or a module that is no task."""
  if name not in _TASKS:
    try:
      module = importlib.import_module(name) if name else None
    except ImportError:
      module = None
    if module is None:
      raise UserError(f"unknown task {name!r}; use one of {', '.join(_TASKS)} or the import "
                      f"path of a task module")
    missing = [a for a in INTERFACE if not hasattr(module, a)]
    if missing:
      raise UserError(f"module {name!r} is not a task: it lacks {', '.join(missing)}")
    register(name, module)
  return _TASKS[name]


def of(config) -> Any:
  """The task of ``config`` (``config.task``; configs without the field are PTB's)."""
  return get(config.get("task", "ptb"))


def with_defaults(saved: dict) -> dict:
  """A config an older run saved, with every field it lacks from its task's base config."""
  base = json.loads(get(saved.get("task", "ptb")).base_config().to_json())
  return fill_defaults(saved, base)


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """A training run's config, from ``<workdir>/config.json``; a field the file lacks (the run
  was written before the field existed) takes its default (``with_defaults``), so an older run
  is evaluated as it was trained."""
  if not os.path.isdir(workdir):
    raise UserError(f"workdir {workdir} does not exist")
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise UserError(f"{path} not found; is {workdir} a training workdir?")
  with open(path) as f:
    return ml_collections.ConfigDict(with_defaults(json.load(f)))


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains ``config`` in ``workdir`` (resuming what is there); returns the final results."""
  task = of(config)
  if population.is_population(config):
    if task is lm:
      return population.train_and_evaluate(config, workdir)
    if not hasattr(task, "HEAD"):
      raise UserError(f"task {config.task!r} has no population training (PTB and the sequence "
                      "tasks have)")
    return population.train_and_evaluate(config, workdir, head=task.HEAD)
  return task.train_and_evaluate(config, workdir)


def evaluate_workdir(config, workdir: str, **kwargs) -> dict:
  """Evaluates a finished (or checkpointed) workdir with its task's ``evaluate_workdir``;
  ``config``: the workdir's (``load_run_config``, overrides applied); ``kwargs``:
  ``checkpoint``, ``split``, ``progress``."""
  task = of(config)
  if population.is_population(config):
    raise UserError(f"{workdir} holds a population run; evaluate a member's workdir instead, "
                    f"e.g. {os.path.join(workdir, 'member_00')}")
  return task.evaluate_workdir(config, workdir, **kwargs)
