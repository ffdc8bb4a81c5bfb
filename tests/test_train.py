"""PTB training: schedule, data-parallel equivalence, exact resume after SIGKILL, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ptb_tiny
from vdrnn import checkpoint, lm, models, sharding
from vdrnn.data import ptb

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, devices=1, **popen):
  env = dict(os.environ,
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu")
  return subprocess.Popen([sys.executable, "-m", "vdrnn.train", *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def test_lr_schedule_matches_lua_boundary():
  t = ptb_tiny.get_config().train
  t.lr, t.max_epoch, t.lr_decay = 1.0, 10, 1.15
  lrs = [lm.lr_for_epoch(t, e) for e in range(14)]
  assert lrs[:11] == [1.0] * 11  # epochs 1..11 (after finishing epoch 11 > 10 the rate drops)
  assert lrs[11] == pytest.approx(1 / 1.15) and lrs[13] == pytest.approx(1 / 1.15 ** 3)


def test_ptb_reader_and_batching():
  splits, vocab = ptb.load()
  assert {k: len(v) for k, v in splits.items()} == {"train": 929589, "valid": 73760, "test": 82430}
  assert len(vocab) == 10000 and "<eos>" in vocab and "<unk>" in vocab
  s = ptb.batchify(np.arange(103), 4)
  assert s.shape == (4, 25) and s[1, 0] == 25
  x, y = ptb.window(s, 1, 5)
  np.testing.assert_array_equal(x[0], np.arange(5, 10))
  np.testing.assert_array_equal(y[0], np.arange(6, 11))
  assert ptb.num_windows(s, 5) == 4
  xs, ys, ws = ptb.eval_windows(np.arange(12)[None], 5, full=True)
  assert xs.shape == (3, 1, 5) and ws.sum() == 11  # all N-1 predictions, padding weighted 0


def _steps(config, mesh, n=3):
  B, T = config.train.batch_size, config.train.seq_length
  state = lm.init_state(config, B)
  sh = lm.shardings(mesh, state)
  state = jax.device_put(state, sh)
  bat = sharding.batch_sharding(mesh)
  step = jax.jit(lm.make_train_step(config), in_shardings=(sh, bat, bat, None), out_shardings=sh)
  rng = np.random.default_rng(0)
  for _ in range(n):
    x = rng.integers(0, config.model.vocab_size, (B, T)).astype(np.int32)
    y = rng.integers(0, config.model.vocab_size, (B, T)).astype(np.int32)
    state = step(state, sharding.put_batch(x, mesh), sharding.put_batch(y, mesh), 1.0)
  return jax.device_get(state)


@pytest.mark.parametrize("arg", ["variational_untied", "naive"])
def test_data_parallel_8_devices_matches_single_device(arg):
  assert len(jax.devices()) == 8, "conftest sets 8 simulated CPU devices"
  config = ptb_tiny.get_config(arg)
  config.model.vocab_size = 100
  one = _steps(config, sharding.make_mesh(jax.devices()[:1]))
  eight = _steps(config, sharding.make_mesh(jax.devices()))
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(eight)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
  # and something was actually learned
  init = lm.init_state(config, 8)["params"]
  assert not np.allclose(init["embed"], one["params"]["embed"])


def test_batch_not_divisible_by_devices_is_a_user_error():
  from vdrnn.errors import UserError
  with pytest.raises(UserError, match="not divisible by the 8 devices"):
    sharding.check_batch(20, sharding.make_mesh())


def _final_params(workdir):
  mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"))
  meta = checkpoint.read_meta(mngr)
  from ml_collections import ConfigDict
  config = ConfigDict(meta["config"])
  state, _ = checkpoint.restore(mngr, mngr.latest_step(),
                                lm.init_state(config, config.train.batch_size))
  return state


def _epoch_records(workdir):
  recs = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return [{
      k: v for k, v in r.items() if k not in ("time_s", "eval_time_s", "items_per_s")
  } for r in recs if r["event"] in ("epoch", "test")]


def test_sigkill_and_resume_equals_uninterrupted(tmp_path):
  args = [
      "--config", "configs/ptb_tiny.py", "--config.data_limit=20000",
      "--config.train.checkpoint_every_steps=40"
  ]
  full, resumed = tmp_path / "full", tmp_path / "resumed"
  p = run_cli(*args, "--workdir", str(full))
  out, err = p.communicate(timeout=300)
  assert p.returncode == 0, err[-2000:]

  p = run_cli(*args, "--workdir", str(resumed))
  ckpts = resumed / "checkpoints"
  deadline = time.time() + 240
  while time.time() < deadline and p.poll() is None:
    if ckpts.is_dir() and any(d.name.isdigit() for d in ckpts.iterdir()):
      break
    time.sleep(0.005)
  assert p.poll() is None, "the run finished before it could be killed"
  p.send_signal(signal.SIGKILL)
  p.wait()
  assert not (resumed / "results.json").exists()
  killed_at = max(int(d.name) for d in ckpts.iterdir() if d.name.isdigit())
  final_step = json.loads((full / "results.json").read_text())["step"]
  assert 0 < killed_at < final_step

  p = run_cli(*args, "--workdir", str(resumed))
  out, err = p.communicate(timeout=300)
  assert p.returncode == 0, err[-2000:]
  assert "resuming from step" in err
  assert json.loads((full / "results.json").read_text()) == json.loads(
      (resumed / "results.json").read_text())
  assert _epoch_records(full) == _epoch_records(resumed)
  a, b = _final_params(full), _final_params(resumed)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("args,message", [
    (["--config.model.p_h=1.5"], "model.p_h must be a dropout probability in [0, 1), got 1.5"),
    (["--config.train.batch_size=7"], "not divisible by the 2 devices"),
    (["--config.data_dir=/nonexistent"], "data_dir='/nonexistent' has no ptb/ptb.train.txt"),
    (["--config.model.scheme=gal"], "model.scheme must be one of"),
    (["--config.model.p_weight_drop=1.0"],
     "model.p_weight_drop must be a dropout probability in [0, 1), got 1.0"),
    (["--config.model.zoneout_h=1.5"], "model.zoneout_h must be a probability in [0, 1], got 1.5"),
])
def test_bad_input_is_one_line_and_nonzero(tmp_path, args, message):
  p = run_cli("--config", "configs/ptb_tiny.py", "--workdir", str(tmp_path / "w"), *args, devices=2)
  out, err = p.communicate(timeout=120)
  assert p.returncode != 0
  lines = [l for l in err.strip().splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


def test_unknown_config_field_and_file_fail_cleanly(tmp_path):
  for args in (["--config", "configs/ptb_tiny.py", "--config.model.no_such_field=1"],
               ["--config", "configs/no_such_config.py"]):
    p = run_cli(*args, "--workdir", str(tmp_path / "w"))
    out, err = p.communicate(timeout=120)
    assert p.returncode != 0 and "Traceback" not in err, err
    assert len([l for l in err.strip().splitlines() if l.strip()]) <= 2, err


def test_corrupt_data_and_incompatible_checkpoint(tmp_path):
  bad = tmp_path / "data" / "ptb"
  bad.mkdir(parents=True)
  for f in ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"):
    (bad / f).write_text("a b c\n")
  p = run_cli("--config", "configs/ptb_tiny.py", "--workdir", str(tmp_path / "w"),
              f"--config.data_dir={tmp_path / 'data'}")
  err = p.communicate(timeout=120)[1]
  assert p.returncode != 0 and "wrong sha256" in err and len(err.strip().splitlines()) == 1, err

  w = tmp_path / "w2"
  p = run_cli("--config", "configs/ptb_tiny.py", "--workdir", str(w), "--config.train.num_epochs=1")
  assert p.wait(timeout=300) == 0
  before = sorted(os.listdir(w / "checkpoints"))
  p = run_cli("--config", "configs/ptb_tiny.py", "--workdir", str(w), "--config.model.hidden=32")
  err = p.communicate(timeout=120)[1]
  assert p.returncode != 0 and "incompatible config (model" in err and len(
      err.strip().splitlines()) == 1, err
  assert sorted(os.listdir(w / "checkpoints")) == before  # nothing lost


def test_non_finite_loss_stops_and_names_the_step(tmp_path, monkeypatch):
  """A NaN learning rate from epoch 2 on poisons the first step of epoch 2: the run stops
  naming that step, and the epoch-1 checkpoint stays intact and restorable."""
  from vdrnn.errors import UserError
  config = ptb_tiny.get_config()
  monkeypatch.setattr(lm, "lr_for_epoch", lambda t, e: 1.0 if e == 0 else float("nan"))
  monkeypatch.setattr(sharding,
                      "make_mesh",
                      lambda devices=None: sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",)))
  with pytest.raises(UserError) as e:
    lm.train_and_evaluate(config, str(tmp_path))
  epoch_size = ptb.num_windows(ptb.batchify(np.zeros(config.data_limit), config.train.batch_size),
                               config.train.seq_length)
  # step epoch_size (0-based) is the first with the NaN rate; its loss is finite, its update is not,
  # so the first non-finite loss is at the next step.
  assert f"non-finite loss or gradient at step {epoch_size + 1} (epoch 2)" in str(e.value)
  assert f"checkpoint (step {epoch_size})" in str(e.value)
  state = _final_params(str(tmp_path))
  assert all(np.isfinite(np.asarray(l)).all() for l in jax.tree.leaves(state["params"]))


@pytest.mark.parametrize("clip,lr", [(5.0, 0.7),
                                     (1e-3, 50.0)])  # unclipped; clipped (the norm sets the step)
def test_sparse_embedding_step_equals_a_dense_autodiff_step(clip, lr):
  """The step updates only the looked-up embedding rows (no dense [V, E] gradient) and
  computes the clipping norm without forming it; a plain dense autodiff step is the reference.
  Repeated tokens make several rows share one embedding row. (The embedding's share of the
  norm is tiny here; ``embedding_grad_sq`` itself is checked below.)"""
  config = ptb_tiny.get_config("variational_untied")
  config.model.vocab_size = 50
  config.train.max_grad_norm = clip
  config.train.weight_decay = 1e-3
  m, t = config.model, config.train
  state = lm.init_state(config, t.batch_size)
  x = jax.random.randint(jax.random.key(1), (t.batch_size, t.seq_length), 0, 12)  # many repeats
  y = jax.random.randint(jax.random.key(2), (t.batch_size, t.seq_length), 0, m.vocab_size)
  new = jax.jit(lm.make_train_step(config))(state, x, y, lr)

  masks = models.lm_masks(jax.random.fold_in(jax.random.key(config.seed), 0), m, x)
  loss = lambda p: models.lm_nll(p, state["carry"], x, y, masks)[0].mean(axis=1).sum()
  grads = jax.grad(loss)(state["params"])
  assert float(jnp.abs(grads["embed"][12:]).max()) == 0.0 and float(
      jnp.abs(grads["embed"][:12]).max()) > 0
  norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads)))
  scale = jnp.minimum(1.0, clip / norm)
  assert (clip < norm) == (clip == 1e-3)
  ref = jax.tree.map(lambda p, g: (p - lr * scale * g) * (1 - 1e-3), state["params"], grads)
  for a, b in zip(jax.tree.leaves(new["params"]), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)


def test_embedding_grad_sq_sums_rows_of_repeated_tokens():
  ids = jnp.array([3, 1, 3, 0, 1, 3])
  g = jax.random.normal(jax.random.key(0), (6, 5))
  dense = jnp.zeros((4, 5)).at[ids].add(g)
  np.testing.assert_allclose(lm.embedding_grad_sq(ids, g), jnp.sum(dense * dense), rtol=1e-6)


def test_a_diverged_run_stops_with_the_non_finite_line_not_an_overflow(tmp_path):
  """lr=1e30 without clipping: the loss stays finite in float32 but its mean NLL (~1e29 nats)
  is beyond any float's perplexity. This once ended in ``OverflowError: math range error``
  from the validation perplexity (exit 1, a traceback); the step whose perplexity is infinite
  is now a non-finite step, and the run stops with the loop's one line, naming it."""
  p = run_cli("--config", "configs/ptb_tiny.py", "--workdir", str(tmp_path / "w"),
              "--config.train.lr=1e30", "--config.train.max_grad_norm=1e30")
  out, err = p.communicate(timeout=300)
  lines = err.strip().splitlines()
  assert p.returncode == 2, err[-2000:]
  assert "Traceback" not in err and "Overflow" not in err, err[-2000:]
  assert [l for l in lines if l.startswith("error:")] == lines[-1:], err
  want = "error: non-finite loss or gradient at step 1 (epoch 1); stopped. No checkpoint"
  assert lines[-1].startswith(want), err
  assert not (tmp_path / "w" / "results.json").exists()


def test_perplexity_of_a_huge_mean_nll_is_inf_not_an_exception():
  from vdrnn import metrics
  assert metrics.perplexity(1.0) == pytest.approx(np.e)
  assert metrics.perplexity(1e30) == float("inf") and metrics.perplexity(np.float32(800)) == np.inf
  assert np.isnan(metrics.perplexity(float("nan"))) and metrics.perplexity(-1e30) == 0.0
  assert metrics.lua_valid_ppl_from_sum(1e35, batch=2, rows=8, seq_length=3) == float("inf")
  assert metrics.lua_valid_ppl([1e30, 1.0], rows=8, seq_length=3) == float("inf")
