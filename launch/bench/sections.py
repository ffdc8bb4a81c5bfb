"""The benchmark's sections: GEMM rate, training step, MC chunk, population step, sentiment
training step, the Flax front end against the core."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from vdrnn import lm_eval, models, population, sentiment, seq_task
from launch.bench import flax_peer
from launch.bench.common import (_block, _fraction, _median_rate, _random_batches, core_step,
                                gemm_probe, interleaved_rounds, lm_config, matmul_params,
                                round_stats, step_runner, time_train, xla_cost)
from vdrnn.config import load_config_file

def bench_gemm(sizes, dtypes, reps: int) -> dict:
  """Best rate over ``sizes`` of an ``n x n`` by ``n x n`` matmul per dtype, FLOP/s."""
  out = {}
  for dt in dtypes:
    for n in sizes:
      probe = gemm_probe(dt, n)
      t, _, _ = _median_rate(lambda: 2 * n ** 3 / probe(), reps, 1.0)
      out[f"{dt}_{n}"] = 2 * n ** 3 / t
    out[dt] = max(out[f"{dt}_{n}"] for n in sizes)
  return out



def _step_rates(cfg, tokens: int, t: float, compile_s: float, times, rates) -> dict:
  """A training step's record: ``tokens`` per step done in median ``t`` seconds."""
  flops = 6 * matmul_params(cfg) * tokens
  return {"seconds_per_step": t, "tokens_per_s": tokens / t, "flops_per_s": flops / t,
          "compile_s": compile_s, "times": times, "gemm_rates": rates,
          "gemm_fraction": _fraction(flops, times, rates)}


def bench_train(cfg, steps: int, reps: int, min_time: float, probe=None) -> dict:
  step_fn, state = core_step(cfg)
  batches = _random_batches(cfg, 4)
  t, compile_s, state, times, rates = time_train(step_fn, state, batches, steps, reps, min_time,
                                                 probe)
  if not bool(jnp.isfinite(state["acc"]["nll_sum"])):
    raise RuntimeError("the benchmarked training step produced a non-finite loss")
  tokens = cfg.train.batch_size * cfg.train.seq_length
  cache = getattr(step_fn, "_cache_size", lambda: None)()
  return {**_step_rates(cfg, tokens, t, compile_s, times, rates), "compilations": cache}


def bench_mc(cfg, samples: int, windows: int, reps: int, min_time: float, probe=None) -> dict:
  """One jitted MC chunk of ``samples`` samples over a stream of ``windows`` windows."""
  rates = lm_eval.mc_rates(cfg)
  fn = lm_eval.make_mc_chunk_fn(cfg, rates)
  params = models.init_lm(jax.random.key(0), cfg.model)
  T = cfg.eval.seq_length
  ids = np.random.RandomState(1).randint(0, cfg.model.vocab_size, windows * T + 1)
  xs, ys, ws = (jnp.asarray(a) for a in lm_eval.stream_windows(ids, T))
  acc = jnp.full(xs.shape, -jnp.inf, jnp.float32)
  sample_ids = jnp.arange(samples, dtype=jnp.uint32)
  t0 = time.perf_counter()
  _block(fn(params, acc, sample_ids, xs, ys, ws))
  compile_s = time.perf_counter() - t0

  def run():
    t0 = time.perf_counter()
    _block(fn(params, acc, sample_ids, xs, ys, ws))
    return time.perf_counter() - t0

  t, times, rates = _median_rate(run, reps, min_time, probe=probe)
  st = samples * windows * T
  flops = 2 * matmul_params(cfg) * st
  return {
      "seconds": t,
      "sample_tokens_per_s": st / t,
      "flops_per_s": flops / t,
      "compile_s": compile_s,
      "times": times,
      "gemm_rates": rates,
      "gemm_fraction": _fraction(flops, times, rates)
  }


def bench_population(cfg, K: int, steps: int, reps: int, min_time: float, probe=None) -> dict:
  m = cfg.model
  members = [{
      "seed": k,
      "p_emb": m.p_emb,
      "p_x": m.p_x,
      "p_h": m.p_h,
      "p_out": m.p_out
  } for k in range(K)]
  state = population.init_population_state(cfg, members)
  step_fn = jax.jit(population.make_population_train_step(cfg, members), donate_argnums=0)
  batches = _random_batches(cfg, 4)
  t, compile_s, state, times, rates = time_train(step_fn, state, batches, steps, reps, min_time,
                                                 probe)
  tokens = K * cfg.train.batch_size * cfg.train.seq_length
  return _step_rates(cfg, tokens, t, compile_s, times, rates)


def sentiment_config(cell: str, scheme: str, dtype: str = "float32", tiny: bool = False):
  """The released sentiment recipe of ``cell`` and ``scheme`` (``configs/sentiment_<cell>.py``,
  ``<scheme>,released``: batch 128, 200 steps, 128 units; ``tiny``: toy shapes)."""
  c = load_config_file(f"configs/sentiment_{cell}.py:{scheme},released" + (",tiny" if tiny else ""))
  c.train.compute_dtype = dtype
  c.train.progress = False
  return c


def sentiment_matmul_params(cfg) -> int:
  """The recurrent layer's input and recurrent kernels (the dense layer is negligible)."""
  m = cfg.model
  return models.GATES[m.cell] * m.hidden * (m.emb_dim + m.hidden)


def sentiment_batch(cfg, seed: int = 0):
  """One batch of the recipe's shape: random tokens, 38% of the rows left-padded by a random
  length, as the Pang & Lee segments (the last segment of a review) are."""
  B, T = cfg.train.batch_size, cfg.data.maxlen
  rng = np.random.RandomState(seed)
  x = rng.randint(3, cfg.model.vocab_size, (B, T)).astype(np.int32)
  for b in range(B * 38 // 100):
    x[b, :rng.randint(1, T)] = 0
  return (jax.device_put(x), jax.device_put(rng.randn(B).astype(np.float32)),
          jax.device_put(np.ones(B, np.float32)))


def bench_sentiment(cfg, steps: int, reps: int, min_time: float, probe=None) -> dict:
  """Tokens/s of the sentiment training step (``vdrnn.sentiment.make_train_step``: masks,
  forward, backward, Adam; donated state); padded steps count as tokens."""
  step_fn = jax.jit(sentiment.make_train_step(cfg), donate_argnums=0)
  state = seq_task.init_state(cfg)
  batch = sentiment_batch(cfg)
  t0 = time.perf_counter()
  state = _block(step_fn(state, *batch))
  compile_s = time.perf_counter() - t0
  state = _block(step_fn(state, *batch))

  def run():
    nonlocal state
    t0 = time.perf_counter()
    for _ in range(steps):
      state = step_fn(state, *batch)
    _block(state)
    return (time.perf_counter() - t0) / steps

  t, times, rates = _median_rate(run, reps, min_time, probe=probe)
  if not bool(jnp.isfinite(state["acc"]["loss_sum"])):
    raise RuntimeError("the benchmarked sentiment step produced a non-finite loss")
  tokens = cfg.train.batch_size * cfg.data.maxlen
  flops = 6 * sentiment_matmul_params(cfg) * tokens
  floor = sentiment_matmul_floor(cfg, reps, min_time)
  return {"seconds_per_step": t, "tokens_per_s": tokens / t, "flops_per_s": flops / t,
          "compile_s": compile_s, "times": times, "gemm_rates": rates,
          "gemm_fraction": _fraction(flops, times, rates),
          "matmul_floor_s": floor, "matmul_floor_fraction": floor / t}


def sentiment_matmul_floor(cfg, reps: int, min_time: float) -> float:
  """Seconds of the recurrence's matmuls alone (the LSTM's per-step fused path of ``vdrnn.rnn``;
  for the GRU its FLOPs at those shapes): a scan over the T steps with, per step, the forward
  ``[G, B, D+H] @ [G, D+H, H]``, the backward ``dz @ W^T`` and the ``dW`` update, the step's
  matmul FLOPs and nothing else. The step does not run faster than these matmuls on the device:
  the ratio to the step's time (``matmul_floor_fraction``) says what is left beside them."""
  m = cfg.model
  G, B, T = models.GATES[m.cell], cfg.train.batch_size, cfg.data.maxlen
  K, H = m.emb_dim + m.hidden, m.hidden
  k = jax.random.split(jax.random.key(0), 3)
  xh, w = jax.random.normal(k[0], (G, B, K)), 0.01 * jax.random.normal(k[1], (G, K, H))
  dz = jax.random.normal(k[2], (G, B, H))

  @jax.jit
  def matmuls(xh, w, dz):
    def body(carry, _):
      xh, dw = carry
      z = jnp.einsum("gbk,gkn->gbn", xh, w)
      dxh = jnp.einsum("gbn,gkn->gbk", dz + 1e-3 * z, w)
      return (dxh, dw + jnp.einsum("gbk,gbn->gkn", xh, dz)), None
    return jax.lax.scan(body, (xh, jnp.zeros_like(w)), None, length=T)[0]

  _block(matmuls(xh, w, dz))

  def run():
    t0 = time.perf_counter()
    _block(matmuls(xh, w, dz))
    return time.perf_counter() - t0

  return _median_rate(run, reps, min_time)[0]


# ----------------------------------------------------------------------------------------
# The Flax front end against the core.

FLAX_IMPLS = ("core", "nnx", "flax")


def _core_runner(cfg, dtype: str):
  """The core's step as a contender: ``(run, info)``, ``run.check()`` its loss finite."""
  del dtype  # in cfg.train.compute_dtype
  run, compile_s = step_runner(*core_step(cfg), _random_batches(cfg, 4))
  run.check = lambda: bool(jnp.isfinite(run.state()["acc"]["nll_sum"]))
  return run, {"compile_s": compile_s}


def flax_costs(cfg, dtype: str) -> dict:
  """``{impl: xla_cost}`` of the compiled core (``core``) and NNX (``nnx``) steps at ``cfg``,
  and of the NNX step with the dense ``[V, E]`` embedding gradient that ``nnx.grad`` of the
  whole model gives (``nnx_dense``: what the core's row gradient saves)."""
  x, y = _random_batches(cfg, 1)[0]
  step, state = core_step(cfg)
  lowered = {"core": step.lower(state, x, y, 1.0)}
  for impl, rows_only in (("nnx", True), ("nnx_dense", False)):
    step, state = flax_peer.variational_step(cfg, dtype, rows_only)
    lowered[impl] = step.lower(state, x, y)
  return {impl: xla_cost(low) for impl, low in lowered.items()}


def bench_flax(shape: str, dtype: str, rounds: int, steps: int, gemm_n: int,
               log=lambda m: None) -> tuple[list, list]:
  """The PTB training step of the core (``core``: ``vdrnn.lm.make_train_step``), of the same
  model built from the Flax NNX layers of ``vdrnn.nn`` (``nnx``: ``VariationalLSTM``,
  ``WordTypeDropout``, ``LockedDropout``; ``flax_peer.build_nnx_variational``) and of
  ``nnx.RNN(OptimizedLSTMCell)`` with recurrent dropout the documented Flax way (``flax``:
  ``flax_peer.build_flax_rnn``), tied and untied gates, at one shape and precision, timed in
  interleaved rounds (a ``gemm_n`` GEMM after each). A row's ``ratio_to_core`` is the median
  over rounds of the per-round (s/step) / the core's at the same gates; the ``flax`` row's
  ``nnx_speedup`` the median of its per-round (s/step) / the ``nnx`` step's. Also XLA's cost
  analysis of the compiled steps (``flax_costs``; FLOPs and bytes accessed, which no machine
  load disturbs), each with its ratio to the core's. Returns ``(rows, costs)``."""
  builders = {"core": _core_runner, "nnx": flax_peer.build_nnx_variational,
              "flax": flax_peer.build_flax_rnn}
  cfgs = {gates: lm_config(shape, gates, dtype) for gates in ("tied", "untied")}
  runs, infos = {}, {}
  for gates, cfg in cfgs.items():
    for impl in FLAX_IMPLS:
      runs[(impl, gates)], infos[(impl, gates)] = builders[impl](cfg, dtype)
      log(f"built {impl} {gates}: compile {infos[(impl, gates)]['compile_s']:.1f} s")
  times, gemm_rates = interleaved_rounds(runs, rounds, steps, gemm_probe(dtype, gemm_n))
  for (impl, gates), run in runs.items():
    if not run.check():
      raise RuntimeError(f"the {impl} {gates} step produced a non-finite loss")
  rows = []
  for (impl, gates), ts in times.items():
    ts = np.array(ts)
    r = {"section": "flax", "impl": impl, "shape": shape, "gates": gates, "dtype": dtype,
         **round_stats(cfgs[gates], ts, gemm_rates),
         "ratio_to_core": float(np.median(ts / np.array(times[("core", gates)]))),
         **{k: v for k, v in infos[(impl, gates)].items() if k != "gates"}}
    if impl == "flax":
      r["nnx_speedup"] = float(np.median(ts / np.array(times[("nnx", gates)])))
    rows.append(r)
  costs = []
  for gates, cfg in cfgs.items():
    log(f"XLA cost analysis: {shape} {gates} {dtype} ...")
    cost = flax_costs(cfg, dtype)
    base = cost["core"]
    for impl, c in cost.items():
      costs.append({"section": "flax", "impl": impl, "shape": shape, "gates": gates,
                    "dtype": dtype, **c,
                    "flops_vs_core": c["flops"] / base["flops"] if base["flops"] else None,
                    "bytes_vs_core": (c["bytes_accessed"] / base["bytes_accessed"]
                                      if base["bytes_accessed"] else None)})
  return rows, costs
