"""The benchmark's sections: GEMM rate, training step, MC chunk, population step, sentiment
training step."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from vdrnn import lm_eval, models, population, sentiment
from vdrnn.bench.common import (_block, _fraction, _median_rate, _random_batches, core_step,
                                gemm_probe, matmul_params, time_train)
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
  step_fn = jax.jit(population.make_population_train_step(cfg), donate_argnums=0)
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
  state = sentiment.init_state(cfg)
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
  return {"seconds_per_step": t, "tokens_per_s": tokens / t, "flops_per_s": flops / t,
          "compile_s": compile_s, "times": times, "gemm_rates": rates,
          "gemm_fraction": _fraction(flops, times, rates)}
