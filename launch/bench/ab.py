"""A/B timing of two revisions of vdrnn, interleaved: is a change faster, on a noisy machine?

  python -m launch.bench.ab --base HEAD~1 [--new WORKTREE] [--what train|mc|sentiment] \
      [--shape medium] [--gates untied] [--dtype float32] [--samples 1000] [--rounds 12] \
      [--config configs/sentiment_lstm.py:variational,released]
  python -m launch.bench.ab --base HEAD~1 --what seq_mc --config configs/imdb_lstm.py:variational

Each revision (``--base`` and ``--new``: a git revision, or ``WORKTREE`` for the files as they
are) runs in its own worker process over its own copy of ``vdrnn/`` and ``configs/``; the
driver asks them in turn for one timed repetition (a training step, or one MC chunk), so a
drift in the machine's speed (1.5x within minutes on a shared VM) hits both alike. Prints
each revision's min and median and the median of the per-round ratios new / base (< 1: the
new revision is faster), and checks the two compute the same thing (max abs difference of
the parameters after one step, or of the MC sums). ``--what sentiment`` times the training
step of the sentiment config ``--config`` on one batch of its shape (random tokens, 38% of
rows left-padded as in the Pang & Lee segments) and also compares the losses of three steps;
``--what seq_mc`` one chunk of MC samples (``eval.mc_chunk``) of a sentiment or IMDB config's
evaluation (``vdrnn.seq_eval.make_predict_fns``) on one evaluation batch of its shape.
The worker finds the functions it times under their current names or, for revisions before
the one-loop layout, their old ones.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_BASE = flags.DEFINE_string("base", None, "Git revision to compare against, or WORKTREE.")
_NEW = flags.DEFINE_string("new", "WORKTREE", "Git revision, or WORKTREE (the files as they are).")
_WHAT = flags.DEFINE_enum("what", "train", ["train", "mc", "sentiment", "seq_mc"],
                          "A PTB training step, a PTB MC chunk, a sentiment training step or "
                          "a sentiment / IMDB MC chunk.")
_CONFIG = flags.DEFINE_string("config", "configs/sentiment_lstm.py:variational,released",
                              "The sentiment or IMDB config (--what sentiment, seq_mc).")
_OVERRIDE = flags.DEFINE_multi_string(
    "override", [], "PATH=VALUE set in the config of both revisions (repeatable), e.g. "
    "model.lua_biases=False to give a newer revision an older one's model; a field the "
    "revision does not know is added and ignored by it.")
_SHAPE = flags.DEFINE_string("shape", "medium", "tiny | small | medium | large.")
_GATES = flags.DEFINE_string("gates", "untied", "tied | untied.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "float32 | bfloat16.")
_SAMPLES = flags.DEFINE_integer("samples", 1000, "MC samples in the chunk (--what mc).")
_ROUNDS = flags.DEFINE_integer("rounds", 12, "Interleaved rounds.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: the JSON spec of a worker.")


def _api():
  """``(lm_config, train module, MC module)`` of the ``vdrnn`` on ``sys.path`` (any layout)."""
  import importlib  # noqa: PLC0415 - the revision's modules, found at run time
  for where in ("launch.bench.common", "vdrnn.bench.common"):  # the benchmark's home, its old one
    try:
      lm_config = importlib.import_module(where).lm_config
      return (lm_config, importlib.import_module("vdrnn.lm"),
              importlib.import_module("vdrnn.lm_eval"))
    except ImportError:
      pass
  # revisions before the one-loop layout
  return (importlib.import_module("vdrnn.bench").lm_config,
          importlib.import_module("vdrnn.train"), importlib.import_module("vdrnn.evaluate"))


def worker(spec: dict) -> None:
  """Builds the measured function from the ``vdrnn`` on ``sys.path``, then answers each stdin
  line with the seconds one repetition took."""
  import jax  # noqa: PLC0415 - imported in the worker, after PYTHONPATH picked the revision
  import jax.numpy as jnp  # noqa: PLC0415
  lm_config, train_mod, mc_mod = _api()
  cfg = _override(lm_config(spec["shape"], spec["gates"], spec["dtype"]), spec["overrides"])
  if spec["what"] == "train":
    f = jax.jit(train_mod.make_train_step(cfg))
    B, T = cfg.train.batch_size, cfg.train.seq_length
    toks = np.random.RandomState(0).randint(0, cfg.model.vocab_size, (B, T + 1)).astype(np.int32)
    x, y = jnp.asarray(toks[:, :-1]), jnp.asarray(toks[:, 1:])
    state = train_mod.init_state(cfg, B)
    out = jax.block_until_ready(f(state, x, y, 1.0))
    check = np.concatenate([np.ravel(a) for a in jax.tree.leaves(out["params"])])
    run = lambda: jax.block_until_ready(f(state, x, y, 1.0))
  elif spec["what"] == "sentiment":
    run, check = _sentiment_step(spec["config"], spec.get("overrides", []))
  elif spec["what"] == "seq_mc":
    run, check = _seq_mc_chunk(spec["config"], spec.get("overrides", []))
  else:
    import vdrnn.models as models  # noqa: PLC0415
    fn = mc_mod.make_mc_chunk_fn(cfg, mc_mod.mc_rates(cfg))
    params = models.init_lm(jax.random.key(0), cfg.model)
    T = cfg.eval.seq_length
    ids = np.random.RandomState(1).randint(0, cfg.model.vocab_size, T + 1)
    xs, ys, ws = (jnp.asarray(a) for a in mc_mod.stream_windows(ids, T))
    acc = jnp.full(xs.shape, -jnp.inf, jnp.float32)
    sid = jnp.arange(spec["samples"], dtype=jnp.uint32)
    check = np.asarray(jax.block_until_ready(fn(params, acc, sid, xs, ys, ws))[1])
    run = lambda: jax.block_until_ready(fn(params, acc, sid, xs, ys, ws))
  np.save(spec["check_path"], check)
  print(json.dumps({"ready": True}), flush=True)
  for _ in sys.stdin:
    t0 = time.perf_counter()
    run()
    print(json.dumps({"s": time.perf_counter() - t0}), flush=True)


def _override(c, overrides: list):
  """``c`` with each ``PATH=VALUE`` of ``overrides`` set (a Python literal, else a string)."""
  import ast  # noqa: PLC0415
  for o in overrides:
    path, _, value = o.partition("=")
    *parents, name = path.split(".")
    node = c
    for p in parents:
      node = node[p]
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass  # a string
    node[name] = value
  return c


def _sentiment_step(config: str, overrides: list):
  """``(run, check)`` for the sentiment training step of ``config`` (with ``overrides``,
  ``PATH=VALUE``): ``check`` holds the losses of three steps and the parameters after them."""
  import importlib  # noqa: PLC0415 - the revision's modules, found at run time
  import jax  # noqa: PLC0415
  c = _override(importlib.import_module("vdrnn.config").load_config_file(config), overrides)
  sentiment = importlib.import_module("vdrnn.sentiment")
  f = jax.jit(sentiment.make_train_step(c))
  B = c.train.batch_size
  rng = np.random.RandomState(0)
  x = _seq_batch(c, B, rng)
  y, w = rng.randn(B).astype(np.float32), np.ones(B, np.float32)
  init_state = getattr(sentiment, "init_state", None)  # before the task registry (c797b20)
  if init_state is None:
    init_state = importlib.import_module("vdrnn.seq_task").init_state
  state, losses = init_state(c), []
  for _ in range(3):
    before = float(state["acc"]["loss_sum"])
    state = jax.block_until_ready(f(state, x, y, w))
    losses.append(float(state["acc"]["loss_sum"]) - before)
  check = np.concatenate([np.asarray(losses)] +
                         [np.ravel(a) for a in jax.tree.leaves(state["params"])])
  return (lambda: jax.block_until_ready(f(state, x, y, w))), check


def _seq_batch(c, B: int, rng) -> np.ndarray:
  """``[B, data.maxlen]`` random tokens of ``c``'s vocabulary drawn from ``rng``, 38% of the
  rows left-padded, as in the last segment of a Pang & Lee review."""
  x = rng.randint(3, c.model.vocab_size, (B, c.data.maxlen)).astype(np.int32)
  for b in range(B * 38 // 100):
    x[b, :rng.randint(1, c.data.maxlen)] = 0
  return x


def _seq_mc_chunk(config: str, overrides: list):
  """``(run, check)`` for one chunk of MC samples (``eval.mc_chunk``) of ``config``'s
  evaluation on one batch of ``eval.batch_size`` rows; ``check`` holds its outputs."""
  import importlib  # noqa: PLC0415 - the revision's modules, found at run time
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  c = _override(importlib.import_module("vdrnn.config").load_config_file(config), overrides)
  models = importlib.import_module("vdrnn.models")
  mc = importlib.import_module("vdrnn.seq_eval").make_predict_fns(c)[1]
  params = models.init_seq(jax.random.key(0), c.model)
  x = jnp.asarray(_seq_batch(c, c.eval.batch_size, np.random.RandomState(0)))
  key, ids = jax.random.key(1), jnp.arange(c.eval.mc_chunk, dtype=jnp.uint32)
  check = np.asarray(jax.block_until_ready(mc(params, x, key, ids)))
  return (lambda: jax.block_until_ready(mc(params, x, key, ids))), check


def checkout(rev: str, into: str) -> str:
  """The tree holding ``vdrnn/``, ``configs/`` and ``launch/`` of ``rev`` (``WORKTREE``: this
  checkout)."""
  if rev == "WORKTREE":
    return REPO
  os.makedirs(into)
  archive = subprocess.run(["git", "-C", REPO, "archive", rev, "vdrnn", "configs", "launch"],
                           check=True, capture_output=True)
  subprocess.run(["tar", "-x", "-C", into], input=archive.stdout, check=True)
  return into


def start(tree: str, spec: dict):
  env = {**os.environ, "PYTHONPATH": tree}
  proc = subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), f"--worker={json.dumps(spec)}"],
      cwd=tree,
      env=env,
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      text=True)
  for line in proc.stdout:
    if line.startswith("{"):
      return proc
  sys.exit(f"the worker for {tree} failed (exit {proc.wait()})")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if _WORKER.value:
    return worker(json.loads(_WORKER.value))
  if not _BASE.value:
    raise app.UsageError("--base is required")
  spec = {"what": _WHAT.value, "shape": _SHAPE.value, "gates": _GATES.value, "dtype": _DTYPE.value,
          "samples": _SAMPLES.value, "config": _CONFIG.value, "overrides": _OVERRIDE.value}
  with tempfile.TemporaryDirectory() as tmp:
    procs, checks = {}, {}
    for name, rev in (("base", _BASE.value), ("new", _NEW.value)):
      checks[name] = os.path.join(tmp, f"{name}.npy")
      procs[name] = start(checkout(rev, os.path.join(tmp, name)), {
          **spec, "check_path": checks[name]
      })
    check = {name: np.load(path) for name, path in checks.items()}
    diff = float(np.max(np.abs(check["new"] - check["base"])))
    times = {name: [] for name in procs}
    for _ in range(_ROUNDS.value):
      for name, proc in procs.items():
        proc.stdin.write("1\n")
        proc.stdin.flush()
        times[name].append(json.loads(proc.stdout.readline())["s"])
    for proc in procs.values():
      proc.stdin.close()
      proc.wait()
  base = np.array(times["base"])
  what = (f"{_WHAT.value} {_CONFIG.value} {' '.join(_OVERRIDE.value)}".rstrip()
          if _WHAT.value in ("sentiment", "seq_mc") else
          f"{_WHAT.value} {_SHAPE.value} {_GATES.value} {_DTYPE.value}")
  print(f"{what}: max |new - base| of the results {diff:.2e}")
  if _WHAT.value == "sentiment":  # the summed losses of the first three steps
    for name in ("base", "new"):
      print(f"  {name} losses: " + ", ".join(f"{v:.6f}" for v in check[name][:3]))
  for name, rev in (("base", _BASE.value), ("new", _NEW.value)):
    t = np.array(times[name])
    print(f"  {name} ({rev}): min {1e3 * t.min():.1f} ms, median {1e3 * np.median(t):.1f} ms")
  print(f"  new / base, median of per-round ratios: {np.median(np.array(times['new']) / base):.3f}")


if __name__ == "__main__":
  app.run(main)
