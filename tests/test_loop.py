"""The one training loop and the entry points around it: workdir names, damaged checkpoints,
error lines, process-0-only writes."""

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from configs import ptb_tiny, sentiment_lstm
from vdrnn import checkpoint, lm, loop, sharding, tasks, train
from vdrnn.config import load_config_file
from vdrnn.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TINY = os.path.join(os.path.dirname(__file__), "data")
CONFIG_ARGS = {  # every config file and the arguments its docstring names
    "ptb_small": [""], "ptb_tiny": ["", "variational_tied", "naive", "none"],
    "ptb_medium": ["", "variational_untied", "variational_tied", "naive", "none"],
    "ptb_large": ["", "untied", "tied", "zaremba"],
    "sentiment_lstm": ["", "naive", "none", "naive,paper", "naive,released"],
    "sentiment_gru": ["", "none,paper", "variational,released"],
    "imdb_lstm": ["", "naive", "keras", "keras,tiny"],
}


def cli(*args, cwd=ROOT, module="vdrnn.train"):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", module, *args],
                        cwd=cwd,
                        env=env,
                        capture_output=True,
                        text=True,
                        timeout=300)


@pytest.mark.parametrize("name", sorted(CONFIG_ARGS))
def test_every_config_arg_loads_and_names_its_workdir(name):
  for arg in CONFIG_ARGS[name]:
    spec = f"configs/{name}.py" + (f":{arg}" if arg else "")
    load_config_file(spec)  # raises on an arg the file does not know
    want = name + ("_" + arg.replace(",", "_") if arg else "")
    assert train.default_workdir(spec) == os.path.join("workdirs", want)
  with pytest.raises(ValueError, match="unknown arg"):
    load_config_file(f"configs/{name}.py:no_such_arg")


def test_train_cli_writes_to_the_documented_workdir(tmp_path):
  """``--config configs/ptb_medium.py:naive`` writes to ``workdirs/ptb_medium_naive``
  (it once wrote to ``workdirs/ptb_medium_naive:naive``)."""
  p = cli("--config", str(ROOT / "configs/ptb_medium.py") + ":naive", "--config.data_limit=2000",
          "--config.train.num_epochs=1", "--config.model.hidden=8", "--config.model.emb_dim=8",
          "--config.train.progress=False", cwd=tmp_path)
  assert p.returncode == 0, p.stderr[-2000:]
  assert sorted(os.listdir(tmp_path / "workdirs")) == ["ptb_medium_naive"]
  assert (tmp_path / "workdirs/ptb_medium_naive/results.json").exists()


def test_unknown_field_is_named_after_other_overrides(tmp_path):
  p = cli("--config", "configs/ptb_tiny.py", f"--config.data_dir={tmp_path}",
          "--config.model.p_hh=0.3", "--workdir", str(tmp_path / "w"))
  lines = p.stderr.strip().splitlines()
  assert p.returncode == 2 and len(lines) == 1, p.stderr
  assert "--config.model.p_hh" in lines[0] and "p_hh" in lines[0] and "data_dir" not in lines[0]


def test_non_finite_before_any_checkpoint_says_so(tmp_path, monkeypatch):
  monkeypatch.setattr(lm, "lr_for_epoch", lambda t, e: float("nan"))
  config = ptb_tiny.get_config()
  config.train.progress = False
  with pytest.raises(UserError) as e:
    lm.train_and_evaluate(config, str(tmp_path))
  assert "non-finite loss or gradient at step 1 (epoch 1)" in str(e.value)
  assert "No checkpoint had been saved" in str(e.value) and "step None" not in str(e.value)


def _tiny_ptb_args(workdir, epochs):
  return [
      "--config", "configs/ptb_tiny.py", "--config.data_limit=2000",
      "--config.train.progress=False", f"--config.train.num_epochs={epochs}",
      "--config.train.checkpoint_every_steps=2", "--workdir",
      str(workdir)
  ]


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
  """A finished one-epoch tiny PTB workdir (checkpoints every 2 steps), trained once for the
  checkpoint tests, which damage copies of it."""
  w = tmp_path_factory.mktemp("loop") / "one_epoch"
  p = cli(*_tiny_ptb_args(w, 1))
  assert p.returncode == 0, p.stderr[-2000:]
  return w


def test_damaged_newest_checkpoint_resumes_from_the_previous_one(tmp_path, one_epoch):
  full, damaged = tmp_path / "full", tmp_path / "damaged"
  assert cli(*_tiny_ptb_args(full, 2)).returncode == 0
  shutil.copytree(one_epoch, damaged)
  steps = sorted(int(d) for d in os.listdir(damaged / "checkpoints") if d.isdigit())
  assert len(steps) >= 2, steps
  newest = damaged / "checkpoints" / str(steps[-1])
  for f in glob.glob(str(newest / "**" / "*"), recursive=True):  # cut every file short
    if os.path.isfile(f):
      with open(f, "r+b") as fh:
        fh.truncate(max(0, os.path.getsize(f) // 3))
  p = cli(*_tiny_ptb_args(damaged, 2))
  assert p.returncode == 0, p.stderr[-2000:]
  assert f"checkpoint {steps[-1]} in" in p.stderr and "is damaged" in p.stderr
  assert f"resuming from step {steps[-2]}" in p.stderr
  assert (damaged / "checkpoints_damaged" / str(steps[-1])).is_dir()
  a = json.loads((full / "results.json").read_text())
  b = json.loads((damaged / "results.json").read_text())
  assert a == b  # the run redid the lost steps exactly


def test_no_readable_checkpoint_is_one_line_and_nothing_moves(tmp_path, one_epoch):
  w = tmp_path / "w"
  shutil.copytree(one_epoch, w)
  for f in glob.glob(str(w / "checkpoints" / "*" / "**" / "*"), recursive=True):
    if os.path.isfile(f):
      with open(f, "wb") as fh:
        fh.write(b"overwritten")
  before = sorted(os.listdir(w / "checkpoints"))
  p = cli(*_tiny_ptb_args(w, 2))
  lines = p.stderr.strip().splitlines()
  assert p.returncode == 2 and len(lines) == 1 and "no checkpoint in" in lines[0], p.stderr
  assert sorted(os.listdir(w / "checkpoints")) == before


def test_sentiment_loop_writes_files_on_process_0_only(tmp_path, monkeypatch):
  """Under jax.distributed every process runs the loop; a process other than 0 writes no
  metrics, results, config or figures (the checkpoints are orbax's, written collectively).
  ``sharding.is_primary`` is the one place that decides; tests/test_multihost.py runs two real
  processes."""
  c = sentiment_lstm.get_config("variational,tiny")
  c.data_dir, c.verify_checksums, c.train.num_epochs = TINY, False, 1
  monkeypatch.setattr(sharding, "is_primary", lambda: False)  # as on process 1 of 2
  r = tasks.train_and_evaluate(c, str(tmp_path))
  assert np.isfinite(r["test_rmse"])
  written = sorted(f for f in os.listdir(tmp_path) if f != "checkpoints")
  assert written == [], written


def test_progress_bar_values_are_short_for_one_run_and_a_population():
  assert loop._short(598.4321) == "598.4"
  assert loop._short([905.1728515625, 927.3117065429688]) == "[905.2, 927.3]"
  assert loop._short("x") == "x"


def test_a_field_added_since_the_checkpoint_reads_as_its_default():
  """A checkpoint from before ``model.lua_biases`` existed resumes when the run keeps the
  field's default; any other difference is named field by field."""
  saved = tasks.with_defaults({"task": "ptb", "model": {"hidden": 16}})
  assert saved["model"]["hidden"] == 16 and saved["model"]["lua_biases"] is False
  assert saved["train"]["seq_length"] == lm.base_config().train.seq_length  # a whole group it lacks
  now = {"task": "ptb", "model": {**saved["model"]}}
  checkpoint.check_compatible(saved, now, ["task", "model"], "w")
  changed = {"task": "ptb", "model": {**saved["model"], "lua_biases": True}}
  with pytest.raises(UserError, match=r"\(model.lua_biases: False there, True now\)"):
    checkpoint.check_compatible(saved, changed, ["task", "model"], "w")
  wider = {"task": "ptb", "model": {**saved["model"], "hidden": 32}}
  with pytest.raises(UserError, match=r"\(model.hidden: 16 there, 32 now\)"):
    checkpoint.check_compatible(saved, wider, ["task", "model"], "w")
  # unfilled, the first field it lacks is named absent (model.concrete, alphabetically)
  with pytest.raises(UserError, match=r"\(model.concrete: '<absent>' there, False now\)"):
    checkpoint.check_compatible({"task": "ptb", "model": {"hidden": 16}}, now, ["model"], "w")
  # a sentiment run's fields come from the sequence models' base
  assert tasks.with_defaults({"task": "sentiment"})["train"]["weight_decay_scope"] == "all"
