"""The benchmark's sections: GEMM rate, training step, MC chunk, population step."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from vdrnn import lm, lm_eval, models, population
from vdrnn.bench.common import (_block, _fraction, _median_rate, _random_batches, gemm_probe,
                                matmul_params, time_train)

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
  step_fn = jax.jit(lm.make_train_step(cfg), donate_argnums=0)
  state = lm.init_state(cfg, cfg.train.batch_size)
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
  step_fn = jax.jit(population.make_population_train_step(cfg), donate_argnums=0)
  batches = _random_batches(cfg, 4)
  t, compile_s, state, times, rates = time_train(step_fn, state, batches, steps, reps, min_time,
                                                 probe)
  tokens = K * cfg.train.batch_size * cfg.train.seq_length
  return _step_rates(cfg, tokens, t, compile_s, times, rates)
