"""A/B timing of two revisions of vdrnn, interleaved: is a change faster, on a noisy machine?

  python benchmarks/ab_revisions.py --base HEAD~1 [--new WORKTREE] [--what train|mc] \
      [--shape medium] [--gates untied] [--dtype float32] [--samples 1000] [--rounds 12]

Each revision (``--base`` and ``--new``: a git revision, or ``WORKTREE`` for the files as they
are) runs in its own worker process over its own copy of ``vdrnn/`` and ``configs/``; the
driver asks them in turn for one timed repetition (a training step, or one MC chunk), so a
drift in the machine's speed (1.5x within minutes on a shared VM) hits both alike. Prints
each revision's min and median and the median of the per-round ratios new / base (< 1: the
new revision is faster), and checks the two compute the same thing (max abs difference of
the parameters after one step, or of the MC sums).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(spec: dict) -> None:
  """Builds the measured function from the ``vdrnn`` on ``sys.path``, then answers each stdin
  line with the seconds one repetition took."""
  import jax
  import jax.numpy as jnp
  from vdrnn import bench
  cfg = bench.lm_config(spec["shape"], spec["gates"], spec["dtype"])
  if spec["what"] == "train":
    from vdrnn import train
    f = jax.jit(train.make_train_step(cfg))
    x, y = bench._random_batches(cfg, 1)[0]
    state = train.init_state(cfg, cfg.train.batch_size)
    out = jax.block_until_ready(f(state, x, y, 1.0))
    check = np.concatenate([np.ravel(a) for a in jax.tree.leaves(out["params"])])
    run = lambda: jax.block_until_ready(f(state, x, y, 1.0))
  else:
    from vdrnn import evaluate, models
    fn = evaluate.make_mc_chunk_fn(cfg, evaluate.mc_rates(cfg))
    params = models.init_lm(jax.random.key(0), cfg.model)
    T = cfg.eval.seq_length
    ids = np.random.RandomState(1).randint(0, cfg.model.vocab_size, T + 1)
    xs, ys, ws = (jnp.asarray(a) for a in evaluate.stream_windows(ids, T))
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


def checkout(rev: str, into: str) -> str:
  """The tree holding ``vdrnn/`` and ``configs/`` of ``rev`` (``WORKTREE``: this checkout)."""
  if rev == "WORKTREE":
    return REPO
  os.makedirs(into)
  archive = subprocess.run(["git", "-C", REPO, "archive", rev, "vdrnn", "configs"], check=True, capture_output=True)
  subprocess.run(["tar", "-x", "-C", into], input=archive.stdout, check=True)
  return into


def start(tree: str, spec: dict):
  env = {**os.environ, "PYTHONPATH": tree}
  proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)], cwd=tree,
                          env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  for line in proc.stdout:
    if line.startswith("{"):
      return proc
  sys.exit(f"the worker for {tree} failed (exit {proc.wait()})")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--base", help="git revision to compare against, or WORKTREE (required)")
  ap.add_argument("--new", default="WORKTREE", help="git revision, or WORKTREE (default)")
  ap.add_argument("--what", choices=["train", "mc"], default="train")
  ap.add_argument("--shape", default="medium")
  ap.add_argument("--gates", default="untied")
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--samples", type=int, default=1000, help="MC samples in the chunk (--what mc)")
  ap.add_argument("--rounds", type=int, default=12)
  ap.add_argument("--worker", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.worker:
    return worker(json.loads(args.worker))
  if not args.base:
    ap.error("--base is required")
  with tempfile.TemporaryDirectory() as tmp:
    procs, checks = {}, {}
    for name, rev in (("base", args.base), ("new", args.new)):
      checks[name] = os.path.join(tmp, f"{name}.npy")
      spec = {k: getattr(args, k) for k in ("what", "shape", "gates", "dtype", "samples")}
      procs[name] = start(checkout(rev, os.path.join(tmp, name)), {**spec, "check_path": checks[name]})
    diff = float(np.max(np.abs(np.load(checks["new"]) - np.load(checks["base"]))))
    times = {name: [] for name in procs}
    for _ in range(args.rounds):
      for name, proc in procs.items():
        proc.stdin.write("1\n")
        proc.stdin.flush()
        times[name].append(json.loads(proc.stdout.readline())["s"])
    for proc in procs.values():
      proc.stdin.close()
      proc.wait()
  base = np.array(times["base"])
  print(f"{args.what} {args.shape} {args.gates} {args.dtype}: max |new - base| of the results {diff:.2e}")
  for name, rev in (("base", args.base), ("new", args.new)):
    t = np.array(times[name])
    print(f"  {name} ({rev}): min {1e3 * t.min():.1f} ms, median {1e3 * np.median(t):.1f} ms")
  print(f"  new / base, median of per-round ratios: {np.median(np.array(times['new']) / base):.3f}")


if __name__ == "__main__":
  main()
