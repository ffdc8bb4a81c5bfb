"""Side-by-side timing of the Flax front end (draft; to join the benchmark package).

``python flax_ab_draft.py [--shape medium] [--rounds 5] [--steps 3] [--gates tied,untied] [--dense]
[--cost]``

Contenders, per gate kind, all in this process at one shape and precision:

* ``core``: ``jax.jit(vdrnn.lm.make_train_step(cfg), donate_argnums=0)``;
* ``nnx``: the same model built from ``vdrnn.nn`` layers
  (``flax_peer.build_nnx_variational``);
* ``nnx_dense`` (``--dense``): as ``nnx`` but with the dense embedding gradient that
  ``nnx.grad`` of the whole model gives (what the core's row-gradient trick saves);
* ``flax``: ``nnx.RNN(OptimizedLSTMCell)`` with recurrent dropout assembled the documented
  Flax way (``flax_peer.build_flax_rnn``).

Every round times ``steps`` steps of each contender in turn (as ``vdrnn.bench.peers.side_by_side``),
so a drift in the machine's speed hits all alike; a ratio is the median over rounds of the
per-round ratio of seconds per step. Prints one line per contender and a JSON summary.

``--cost`` prints instead XLA's cost analysis of the compiled core and NNX steps (FLOPs,
transcendentals, bytes accessed): a check that machine load cannot disturb.
"""

from __future__ import annotations

import json
import time

import jax
import numpy as np
from absl import app, flags

from vdrnn import lm
from vdrnn.bench import common
from vdrnn.bench import flax_peer as fp

flags.DEFINE_string("shape", "medium", "tiny | small | medium | large (vdrnn.common.lm_config)")
flags.DEFINE_string("dtype", "float32", "float32 | bfloat16")
flags.DEFINE_integer("rounds", 5, "interleaved rounds")
flags.DEFINE_integer("steps", 3, "steps per contender per round")
flags.DEFINE_list("gates", ["untied", "tied"], "gate masks")
flags.DEFINE_bool("dense", False, "also time the NNX step with a dense embedding gradient")
flags.DEFINE_string("json", None, "write the results here")
flags.DEFINE_bool("cost", False, "instead of timing: XLA's cost analysis of the compiled core and "
                  "NNX steps (FLOPs, bytes accessed), which no machine load disturbs")
FLAGS = flags.FLAGS


def core_runner(cfg):
  step = jax.jit(lm.make_train_step(cfg), donate_argnums=0)
  state = lm.init_state(cfg, cfg.train.batch_size)
  run, compile_s = common.step_runner(step, state, common._random_batches(cfg, 4))
  return run, {"compile_s": compile_s}


def cost_analysis() -> None:
  """FLOPs, transcendentals and bytes accessed of the compiled core and NNX steps."""
  for gates in FLAGS.gates:
    cfg = common.lm_config(FLAGS.shape, gates, FLAGS.dtype)
    x, y = common._random_batches(cfg, 1)[0]
    core = jax.jit(lm.make_train_step(cfg), donate_argnums=0).lower(
        lm.init_state(cfg, cfg.train.batch_size), x, y, 1.0)
    compiled = {"core": core}
    for name, rows_only in (("nnx", True), ("nnx_dense", False)):
      model = fp.VariationalLM(cfg.model, None if FLAGS.dtype == "float32" else jax.numpy.bfloat16,
                               cfg.train.unroll, rngs=fp.nnx.Rngs(params=0, dropout=1))
      step, state = fp.make_variational_step(cfg, model, rows_only)
      compiled[name] = step.lower(state, x, y)
    base = None
    for name, lowered in compiled.items():
      c = lowered.compile().cost_analysis()
      c = c[0] if isinstance(c, list) else c
      vals = (c.get("flops", 0.0), c.get("transcendentals", 0.0), c.get("bytes accessed", 0.0))
      base = base or vals
      print(f"{gates:7s} {name:10s} GFLOP {vals[0] / 1e9:8.3f} (x{vals[0] / base[0]:.4f})  "
            f"transcendentals {vals[1] / 1e6:7.3f} M  GB accessed {vals[2] / 1e9:7.3f} "
            f"(x{vals[2] / base[2]:.4f})", flush=True)


def main(argv) -> None:
  del argv
  if FLAGS.cost:
    return cost_analysis()
  t_start = time.perf_counter()
  runs, infos = {}, {}
  for gates in FLAGS.gates:
    cfg = common.lm_config(FLAGS.shape, gates, FLAGS.dtype)
    builders = {"core": core_runner, "nnx": lambda c: fp.build_nnx_variational(c, FLAGS.dtype)}
    if FLAGS.dense:
      builders["nnx_dense"] = lambda c: fp.build_nnx_variational(c, FLAGS.dtype, rows_only=False)
    builders["flax"] = lambda c: fp.build_flax_rnn(c, FLAGS.dtype)
    for name, build in builders.items():
      runs[(name, gates)], infos[(name, gates)] = build(cfg)
      print(f"built {name} {gates}: compile {infos[(name, gates)]['compile_s']:.1f} s", flush=True)
  times = {k: [] for k in runs}
  for r in range(FLAGS.rounds):
    for k, run in runs.items():
      times[k].append(run(FLAGS.steps))
    line = ", ".join(f"{k[0]}/{k[1]} {times[k][-1]:.3f}" for k in runs)
    print(f"round {r + 1}: {line}", flush=True)
  for k, run in runs.items():
    if hasattr(run, "check") and not run.check():
      raise RuntimeError(f"{k} produced a non-finite loss")
  cfg = common.lm_config(FLAGS.shape, "tied", FLAGS.dtype)
  tokens = cfg.train.batch_size * cfg.train.seq_length
  rows = []
  print(f"\n{FLAGS.shape} ({common._shape_str(cfg)}, V {cfg.model.vocab_size}), {FLAGS.dtype}, "
        f"{FLAGS.rounds} rounds x {FLAGS.steps} steps; ratio: median over rounds of the "
        f"per-round (s/step) / core's")
  for (name, gates), ts in times.items():
    ts = np.array(ts)
    ratio = float(np.median(ts / np.array(times[("core", gates)])))
    med = float(np.median(ts))
    rows.append({"impl": name, "gates": gates, "seconds_per_step": med,
                 "tokens_per_s": tokens / med, "ratio_to_core": ratio, "rounds": ts.tolist(),
                 "compile_s": infos[(name, gates)]["compile_s"]})
    print(f"  {name:10s} {gates:7s} {med * 1e3:8.1f} ms/step  {tokens / med:8.0f} tok/s  "
          f"x{ratio:.3f} of core")
  for gates in FLAGS.gates:
    if ("flax", gates) in times:
      sp = float(np.median(np.array(times[("flax", gates)]) / np.array(times[("nnx", gates)])))
      print(f"  {gates}: the vdrnn.nn step is {sp:.2f}x faster than "
            f"nnx.RNN(OptimizedLSTMCell) + dropout")
  print(f"total {time.perf_counter() - t_start:.0f} s")
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump({"shape": FLAGS.shape, "dtype": FLAGS.dtype, "device": common.device_info(),
                 "rows": rows}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
