"""The task registry (``vdrnn.tasks``): a task from outside the package (``tests/toy_task.py``,
named by its module path) trains, resumes and evaluates through ``python -m vdrnn.train`` and
``python -m vdrnn.evaluate`` with no change to ``vdrnn``; unknown names are one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import toy_task
from vdrnn import tasks
from vdrnn.errors import UserError

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}


def run(module: str, *args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        cwd=REPO, env=ENV, timeout=600)


def train(workdir, *overrides) -> dict:
  p = run("vdrnn.train", "--config", "tests/toy_task.py", f"--workdir={workdir}", *overrides)
  assert p.returncode == 0, p.stderr
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


def test_a_task_outside_the_package_trains_resumes_and_evaluates(tmp_path):
  whole = train(tmp_path / "whole")
  assert whole["acc"] > 0.9  # chance is 1/6: it learned to copy
  # One epoch, then the rest on the same workdir: the resumed run equals the whole one.
  train(tmp_path / "split", "--config.train.num_epochs=1")
  resumed = train(tmp_path / "split")
  assert resumed == whole
  # (the one-epoch run's own final "test" record stays in its log)
  lines = lambda d: [r for r in map(json.loads, open(d / "metrics.jsonl")) if r["event"] != "test"]
  drop = lambda r: {k: v for k, v in r.items() if k not in ("time_s", "items_per_s",
                                                             "eval_time_s", "wall_time")}
  assert ([drop(r) for r in lines(tmp_path / "split")] ==
          [drop(r) for r in lines(tmp_path / "whole")])
  p = run("vdrnn.evaluate", f"--workdir={tmp_path / 'whole'}")
  assert p.returncode == 0, p.stderr
  assert json.loads(p.stdout)["acc"] == whole["acc"]
  assert p.stderr.strip().splitlines()[-1].startswith("copy accuracy ")


def test_register_and_unknown_names():
  tasks.register("copy", toy_task)
  assert tasks.get("copy") is toy_task
  assert tasks.get("toy_task") is toy_task  # by its module path
  assert {"ptb", "sentiment", "imdb", "copy"} <= set(tasks.names())
  with pytest.raises(UserError, match="unknown task 'nope'"):
    tasks.get("nope")
  with pytest.raises(UserError, match="'json' is not a task: it lacks base_config"):
    tasks.get("json")


def test_with_defaults_reads_the_tasks_own_base():
  saved = tasks.with_defaults({"task": "toy_task", "hidden": 8})
  assert saved["hidden"] == 8 and saved["train"]["lr"] == toy_task.base_config().train.lr
