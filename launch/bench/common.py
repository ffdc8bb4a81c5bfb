"""Shared pieces of the benchmark: the measured configs, FLOP counts, timers and the GEMM
yardstick."""

from __future__ import annotations

import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from vdrnn import lm
from vdrnn.config import load_config_file

def lm_config(shape: str, gates: str, dtype: str = "float32", unroll: int = 1):
  """The recipe config at ``shape`` (tiny | small | medium | large) with tied or untied gates."""
  if shape == "large":
    c = load_config_file(f"configs/ptb_large.py:{gates}")
  elif shape == "tiny":
    c = load_config_file(f"configs/ptb_tiny.py:variational_{gates}")
  else:
    c = load_config_file(f"configs/ptb_medium.py:variational_{gates}")
    if shape == "small":  # Zaremba small's shape, the medium recipe's variational dropout
      c.model.emb_dim = c.model.hidden = 200
      c.model.init_scale = 0.1
      c.train.seq_length = 20
  c.train.compute_dtype = dtype
  c.train.unroll = unroll
  c.train.progress = False
  return c


def matmul_params(cfg) -> int:
  """LSTM input + recurrent kernels and the softmax matrix: the parameters used in matmuls."""
  m = cfg.model
  lstm = sum(4 * h * (d + h) for d, h in ((m.emb_dim if l == 0 else m.hidden, m.hidden)
                                          for l in range(m.num_layers)))
  return lstm + m.hidden * m.vocab_size


def _shape_str(cfg) -> str:
  m, t = cfg.model, cfg.train
  return f"{m.num_layers}x{m.hidden} B{t.batch_size} T{t.seq_length}"


# ----------------------------------------------------------------------------------------
# Timing.


def _block(x):
  return jax.block_until_ready(x)


def _median_rate(run, reps: int, min_time: float, max_time: float = 8.0, probe=None):
  """Calls ``run()`` (returns seconds for one unit of work) ``reps`` times, or more until
  ``min_time`` seconds have passed, or fewer (at least 2) once ``max_time`` seconds have;
  after each call, ``probe()`` (a ``gemm_probe``) if given. Returns the median time, all
  times and the probe's rates."""
  times, rates, t0 = [], [], time.perf_counter()
  while True:
    times.append(run())
    if probe is not None:
      rates.append(probe())
    spent = time.perf_counter() - t0
    if len(times) >= 20 * reps or (len(times) >= reps and spent >= min_time) or (len(times) >= 2 and
                                                                                 spent >= max_time):
      break
  return float(np.median(times)), times, rates


def gemm_probe(dtype: str, n: int):
  """``probe() -> FLOP/s`` of one ``n x n`` GEMM in ``dtype`` (float32 accumulation), timed
  when called. Timed right after each repetition of a measurement, it gives that
  repetition's own yardstick: on a shared VM the machine's speed drifts (1.5x within
  minutes was seen here), and a GEMM rate taken minutes earlier would misstate fractions."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
  f = jax.jit(lambda a: jnp.dot(a, a, preferred_element_type=jnp.float32))
  _block(f(a))

  def probe() -> float:
    t0 = time.perf_counter()
    _block(f(a))
    return 2 * n ** 3 / (time.perf_counter() - t0)

  return probe


def _fraction(flops_per_unit: float, times, rates) -> float | None:
  """Median over repetitions of (achieved FLOP/s) / (that repetition's GEMM rate)."""
  if not rates:
    return None
  return float(np.median(flops_per_unit / np.asarray(times) / np.asarray(rates)))


def _load() -> float | None:
  try:
    return os.getloadavg()[0]
  except OSError:
    return None


def device_info() -> dict:
  d = jax.devices()[0]
  info = {"platform": d.platform, "device_kind": d.device_kind, "num_devices": jax.device_count(),
          "jax": jax.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
          "processor": _cpu_name()}
  return info


def _cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def supports_bf16() -> bool:
  """True when the device runs a bfloat16 x bfloat16 -> float32 matmul."""
  try:
    a = jnp.ones((8, 8), jnp.bfloat16)
    _block(jnp.dot(a, a, preferred_element_type=jnp.float32))
    return True
  except Exception:  # noqa: BLE001 - any failure means "not supported here"
    return False



def _random_batches(cfg, n: int, batch: int | None = None, seed: int = 0):
  B = batch or cfg.train.batch_size
  rng = np.random.RandomState(seed)
  toks = rng.randint(0, cfg.model.vocab_size, (n, B, cfg.train.seq_length + 1)).astype(np.int32)
  return [(jax.device_put(t[:, :-1]), jax.device_put(t[:, 1:])) for t in toks]


def step_runner(step_fn, state, batches):
  """Compiles and warms up a (donating) training step; returns ``(run, compile seconds)``:
  ``run(n)`` does n consecutive steps and returns seconds per step (``run.state()`` the
  state reached)."""
  t0 = time.perf_counter()
  state = _block(step_fn(state, *batches[0], 1.0))
  compile_s = time.perf_counter() - t0
  state = _block(step_fn(state, *batches[1 % len(batches)], 1.0))
  i = 0

  def run(n: int) -> float:
    nonlocal state, i
    t0 = time.perf_counter()
    for _ in range(n):
      state = step_fn(state, *batches[i % len(batches)], 1.0)
      i += 1
    _block(state)
    return (time.perf_counter() - t0) / n

  run.state = lambda: state
  return run, compile_s


def core_step(cfg):
  """``(step, state)``: the core's training step (``vdrnn.lm.make_train_step``), jitted with
  the state donated, and its initial state."""
  step = jax.jit(lm.make_train_step(cfg), donate_argnums=0)
  return step, lm.init_state(cfg, cfg.train.batch_size)


def interleaved_rounds(runs: dict, rounds: int, steps: int, probe) -> tuple[dict, list]:
  """Every round times ``steps`` steps of each contender in turn (``runs``: name ->
  ``run(n)``, seconds per step), then ``probe()`` (a ``gemm_probe``): a drift in the
  machine's speed hits all alike. Returns ``({name: seconds per step per round}, the probe's
  rate per round)``."""
  times = {k: [] for k in runs}
  gemm_rates = []
  for _ in range(rounds):
    for k, run in runs.items():
      times[k].append(run(steps))
    gemm_rates.append(probe())
  return times, gemm_rates


def round_stats(cfg, ts, gemm_rates) -> dict:
  """A training step's record from interleaved rounds: ``ts`` its seconds per step in each
  round, ``gemm_rates`` the GEMM rate timed in each; medians over rounds."""
  ts = np.array(ts)
  tokens, flops_tok = cfg.train.batch_size * cfg.train.seq_length, 6 * matmul_params(cfg)
  return {
      "dims": _shape_str(cfg),
      "matmul_params": matmul_params(cfg),
      "seconds_per_step": float(np.median(ts)),
      "tokens_per_s": float(tokens / np.median(ts)),
      "flops_per_s": float(flops_tok * tokens / np.median(ts)),
      "rounds": ts.tolist(),
      "gemm_rates": gemm_rates,
      "gemm_fraction": _fraction(flops_tok * tokens, ts, gemm_rates)
  }


def xla_cost(lowered) -> dict:
  """XLA's cost analysis of a lowered (``jax.jit(f).lower(...)``) program, compiled: FLOPs,
  transcendentals and bytes accessed per call, which no machine load disturbs."""
  c = lowered.compile().cost_analysis()
  c = c[0] if isinstance(c, list) else c
  return {"flops": float(c.get("flops", 0.0)),
          "transcendentals": float(c.get("transcendentals", 0.0)),
          "bytes_accessed": float(c.get("bytes accessed", 0.0))}


def time_train(step_fn, state, batches, steps: int, reps: int, min_time: float, probe=None):
  """Times ``steps`` consecutive steps per repetition; returns ``(median seconds per step,
  compile seconds, state, times, probe rates)``."""
  run, compile_s = step_runner(step_fn, state, batches)
  t, times, rates = _median_rate(lambda: run(steps), reps, min_time, probe=probe)
  return t, compile_s, run.state(), times, rates
