"""Throughput benchmark: ``python -m vdrnn.bench [--quick] [--json PATH] [--only SECTIONS]``.

Measures, on the default JAX device (CPU or one accelerator):

* ``gemm``: the device's own large-GEMM rate (square ``jnp.dot``, float32 and bfloat16
  operands with float32 accumulation); every other result is reported as a fraction of it.
* ``train``: tokens/s of one complete training step (``vdrnn.train.make_train_step``:
  masks, forward, backward, clipping, SGD update; jitted with buffer donation) at the PTB
  small, medium and large shapes, tied and untied gate masks, float32 and bfloat16 matmuls.
  "small" is Zaremba's 2 x 200 / 20-step shape with the medium recipe's variational dropout.
* ``mc``: MC-dropout evaluation, sample-tokens/s (``vdrnn.evaluate.make_mc_chunk_fn``) at
  S = 100 and S = 1000 samples, medium shapes.
* ``population``: tokens/s of K = 1, 4, 16 members trained as one vmapped step
  (``vdrnn.population``), medium shapes.
* ``peers``: vdrnn side by side with the same training step in Keras 3
  (``LSTM(dropout, recurrent_dropout)`` on its JAX backend; untied gate masks) and in PyTorch
  (an ``LSTMCell`` loop with per-sequence masks; tied), at each precision: float32, and
  bfloat16 where supported (Keras ``mixed_bfloat16``, ``torch.autocast``). They run in
  interleaved rounds (each peer in its own worker process, waiting on a pipe between rounds),
  so drift in the machine's speed hits all alike; ratios are medians of per-round ratios.
  Peers are optional (``pip install -e .[bench]``) and skipped with a message when missing.

FLOPs count 2 per multiply-add over the matmul parameters (LSTM input and recurrent
kernels, softmax matrix; not the embedding lookup): ``2 P`` per token forward, ``6 P`` per
token for a training step. Timings are medians over repetitions, compilation excluded.
Each %GEMM is the median over repetitions of (achieved FLOP/s) / (the rate of a GEMM timed
right after that repetition, at the size that ran fastest in the ``gemm`` section): the
machine's speed can drift between and within sections (a shared VM's does), and a
yardstick taken minutes earlier would misstate the fraction. The load average is printed
with the results.

A table goes to stdout and, with ``--json PATH``, everything to a JSON file.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

SECTIONS = ("gemm", "train", "mc", "population", "peers")
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


# ----------------------------------------------------------------------------------------
# Configs and FLOP counts.


def _load_config(name: str, arg: str):
  path = os.path.join(CONFIG_DIR, name + ".py")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: run the benchmark from a source checkout of vdrnn")
  spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def lm_config(shape: str, gates: str, dtype: str = "float32", unroll: int = 1):
  """The recipe config at ``shape`` (tiny | small | medium | large) with tied or untied gates."""
  if shape == "large":
    c = _load_config("ptb_large", gates)
  elif shape == "tiny":
    c = _load_config("ptb_tiny", f"variational_{gates}")
  else:
    c = _load_config("ptb_medium", f"variational_{gates}")
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
  lstm = sum(4 * h * (d + h) for d, h in ((m.emb_dim if l == 0 else m.hidden, m.hidden) for l in range(m.num_layers)))
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
    if len(times) >= 20 * reps or (len(times) >= reps and spent >= min_time) or (len(times) >= 2 and spent >= max_time):
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


# ----------------------------------------------------------------------------------------
# Sections.


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


def time_train(step_fn, state, batches, steps: int, reps: int, min_time: float, probe=None):
  """Times ``steps`` consecutive steps per repetition; returns ``(median seconds per step,
  compile seconds, state, times, probe rates)``."""
  run, compile_s = step_runner(step_fn, state, batches)
  t, times, rates = _median_rate(lambda: run(steps), reps, min_time, probe=probe)
  return t, compile_s, run.state(), times, rates


def bench_train(cfg, steps: int, reps: int, min_time: float, probe=None) -> dict:
  from vdrnn import train
  step_fn = jax.jit(train.make_train_step(cfg), donate_argnums=0)
  state = train.init_state(cfg, cfg.train.batch_size)
  batches = _random_batches(cfg, 4)
  t, compile_s, state, times, rates = time_train(step_fn, state, batches, steps, reps, min_time, probe)
  if not bool(jnp.isfinite(state["acc"]["nll_sum"])):
    raise RuntimeError("the benchmarked training step produced a non-finite loss")
  tokens = cfg.train.batch_size * cfg.train.seq_length
  cache = getattr(step_fn, "_cache_size", lambda: None)()
  flops = 6 * matmul_params(cfg) * tokens
  return {"seconds_per_step": t, "tokens_per_s": tokens / t, "flops_per_s": flops / t, "compile_s": compile_s,
          "times": times, "gemm_rates": rates, "gemm_fraction": _fraction(flops, times, rates), "compilations": cache}


def bench_mc(cfg, samples: int, windows: int, reps: int, min_time: float, probe=None) -> dict:
  """One jitted MC chunk of ``samples`` samples over a stream of ``windows`` windows."""
  from vdrnn import evaluate, models
  rates = evaluate.mc_rates(cfg)
  fn = evaluate.make_mc_chunk_fn(cfg, rates)
  params = models.init_lm(jax.random.key(0), cfg.model)
  T = cfg.eval.seq_length
  ids = np.random.RandomState(1).randint(0, cfg.model.vocab_size, windows * T + 1)
  xs, ys, ws = (jnp.asarray(a) for a in evaluate.stream_windows(ids, T))
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
  return {"seconds": t, "sample_tokens_per_s": st / t, "flops_per_s": flops / t, "compile_s": compile_s,
          "times": times, "gemm_rates": rates, "gemm_fraction": _fraction(flops, times, rates)}


def bench_population(cfg, K: int, steps: int, reps: int, min_time: float, probe=None) -> dict:
  from vdrnn import population
  m = cfg.model
  members = [{"seed": k, "p_emb": m.p_emb, "p_x": m.p_x, "p_h": m.p_h, "p_out": m.p_out} for k in range(K)]
  state = population.init_population_state(cfg, members)
  step_fn = jax.jit(population.make_population_train_step(cfg), donate_argnums=0)
  batches = _random_batches(cfg, 4)
  t, compile_s, state, times, rates = time_train(step_fn, state, batches, steps, reps, min_time, probe)
  tokens = K * cfg.train.batch_size * cfg.train.seq_length
  flops = 6 * matmul_params(cfg) * tokens
  return {"seconds_per_step": t, "tokens_per_s": tokens / t, "flops_per_s": flops / t, "compile_s": compile_s,
          "times": times, "gemm_rates": rates, "gemm_fraction": _fraction(flops, times, rates)}


# ----------------------------------------------------------------------------------------
# Peers: the same model, dropout semantics, loss, clipping and SGD update. Each builder
# returns ``(run, info)``: ``run(n)`` does n training steps and returns seconds per step.


def build_keras(cfg, dtype: str = "float32"):
  """Keras 3 on its JAX backend: ``Embedding -> LSTM(dropout=p_x, recurrent_dropout=p_h,
  stateful) x L -> Dropout(p_out, one mask per sequence) -> Dense``; SGD with global-norm
  clipping; loss ``T * mean NLL`` (= sum over time of the batch mean). bfloat16: the
  ``mixed_bfloat16`` policy (bf16 compute, float32 variables).

  Keras 3 holds one mask per sequence for all time steps and, with ``recurrent_dropout``,
  switches the cell to ``implementation=1``: one mask per gate (4 for the input, 4 for the
  state), i.e. the paper's *untied* gates. It has no word-type embedding dropout (vdrnn's
  step does that work too).
  """
  os.environ.setdefault("KERAS_BACKEND", "jax")
  import keras  # noqa: PLC0415 - optional
  if keras.backend.backend() != "jax":
    raise RuntimeError(f"keras is using the {keras.backend.backend()} backend; set KERAS_BACKEND=jax")
  keras.mixed_precision.set_global_policy("mixed_bfloat16" if dtype == "bfloat16" else "float32")
  m, t = cfg.model, cfg.train
  B, T = t.batch_size, t.seq_length
  keras.utils.set_random_seed(0)
  init = keras.initializers.RandomUniform(-m.init_scale, m.init_scale)
  inputs = keras.Input((T,), batch_size=B, dtype="int32")
  x = keras.layers.Embedding(m.vocab_size, m.emb_dim, embeddings_initializer=init)(inputs)
  for _ in range(m.num_layers):
    x = keras.layers.LSTM(m.hidden, dropout=m.p_x, recurrent_dropout=m.p_h, return_sequences=True, stateful=True,
                          kernel_initializer=init, recurrent_initializer=init, bias_initializer=init,
                          unit_forget_bias=False)(x)
  x = keras.layers.Dropout(m.p_out, noise_shape=(B, 1, m.hidden))(x)
  logits = keras.layers.Dense(m.vocab_size, kernel_initializer=init, bias_initializer=init, dtype="float32")(x)
  model = keras.Model(inputs, logits)

  def loss(y, z):
    return T * keras.losses.sparse_categorical_crossentropy(y, z, from_logits=True)

  model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0, global_clipnorm=t.max_grad_norm), loss=loss)
  rng = np.random.RandomState(0)
  batches = [(rng.randint(0, m.vocab_size, (B, T)).astype(np.int32),) * 2 for _ in range(4)]
  i = 0

  def run(n: int) -> float:
    nonlocal i
    t0 = time.perf_counter()
    for _ in range(n):
      out = model.train_on_batch(*batches[i % 4])
      i += 1
    float(np.asarray(out if np.ndim(out) == 0 else out[0]))
    return (time.perf_counter() - t0) / n

  t0 = time.perf_counter()
  run(1)
  return run, {"compile_s": time.perf_counter() - t0, "gates": "untied", "version": keras.__version__,
               "precision": "mixed_bfloat16" if dtype == "bfloat16" else "float32"}


def build_torch(cfg, dtype: str = "float32"):
  """PyTorch: ``Embedding -> LSTMCell`` loop per layer with per-sequence masks on the
  input and on the recurrent state (one mask for all gates: *tied*), output dropout with one
  mask per sequence, ``Linear``; ``T * cross_entropy``, ``clip_grad_norm_``, SGD. The
  state is carried (detached) from window to window. No word-type embedding dropout.
  bfloat16: the forward pass under ``torch.autocast(dtype=torch.bfloat16)``.
  """
  import torch  # noqa: PLC0415 - optional
  platform_ = jax.devices()[0].platform
  if platform_ == "gpu" and not torch.cuda.is_available():
    raise RuntimeError("JAX runs on a GPU but this PyTorch has no CUDA")
  dev = torch.device("cuda" if platform_ == "gpu" else "cpu")
  if dev.type == "cpu":
    torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(0)
  m, t = cfg.model, cfg.train
  B, T, H, L = t.batch_size, t.seq_length, m.hidden, m.num_layers
  emb = torch.nn.Embedding(m.vocab_size, m.emb_dim)
  cells = torch.nn.ModuleList([torch.nn.LSTMCell(m.emb_dim if l == 0 else H, H) for l in range(L)])
  out = torch.nn.Linear(H, m.vocab_size)
  model = torch.nn.ModuleList([emb, cells, out]).to(dev)
  for p in model.parameters():
    torch.nn.init.uniform_(p, -m.init_scale, m.init_scale)
  opt = torch.optim.SGD(model.parameters(), lr=1.0)
  state = [(torch.zeros(B, H, device=dev), torch.zeros(B, H, device=dev)) for _ in range(L)]
  autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

  def mask(shape, p):
    return torch.bernoulli(torch.full(shape, 1.0 - p, device=dev)) / (1.0 - p)

  def step(x, y):
    nonlocal state
    with autocast:
      xs = emb(x)  # [B, T, E]
      new_state = []
      for l, cell in enumerate(cells):
        mx, mh = mask((B, xs.shape[-1]), m.p_x), mask((B, H), m.p_h)  # per sequence, held over T
        h, c = state[l]
        ys = []
        for s in range(T):
          h, c = cell(xs[:, s] * mx, (h * mh, c))
          ys.append(h)
        xs = torch.stack(ys, 1)
        new_state.append((h.detach().float(), c.detach().float()))
      state = new_state
      logits = out(xs * mask((B, 1, H), m.p_out)).float()
    loss = T * torch.nn.functional.cross_entropy(logits.reshape(-1, m.vocab_size), y.reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm)
    opt.step()
    return loss

  rng = np.random.RandomState(0)
  batches = [tuple(torch.from_numpy(rng.randint(0, m.vocab_size, (B, T))).long().to(dev) for _ in range(2))
             for _ in range(4)]
  i = 0

  def run(n: int) -> float:
    nonlocal i
    t0 = time.perf_counter()
    for _ in range(n):
      loss = step(*batches[i % 4])
      i += 1
    float(loss.detach())
    if dev.type == "cuda":
      torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n

  t0 = time.perf_counter()
  run(1)
  return run, {"compile_s": time.perf_counter() - t0, "gates": "tied", "version": torch.__version__,
               "threads": torch.get_num_threads() if dev.type == "cpu" else None,
               "precision": "autocast bfloat16" if dtype == "bfloat16" else "float32"}


PEERS = {"keras": build_keras, "torch": build_torch}
PEER_GATES = {"keras": "untied", "torch": "tied"}  # the gate masks each peer implements


def build_peer(name: str, shape: str, dtype: str):
  """``(run, info)`` of a peer in this process, or ``(None, {"skipped": reason})``."""
  cfg = lm_config(shape, PEER_GATES[name], "float32")
  try:
    return PEERS[name](cfg, dtype)
  except ImportError as e:
    return None, {"skipped": f"{name} peer skipped: {e.name or e} is not installed (pip install -e .[bench])"}
  except RuntimeError as e:
    return None, {"skipped": f"{name} peer skipped: {e}"}


def peer_worker(spec: str) -> None:
  """``--peer-worker NAME,SHAPE,DTYPE``: builds the peer, prints one JSON line (its info),
  then for every line ``n`` on stdin runs n steps and prints ``{"s": seconds per step}``."""
  name, shape, dtype = spec.split(",")
  run, info = build_peer(name, shape, dtype)
  print(json.dumps(info), flush=True)
  if run is None:
    return
  for line in sys.stdin:
    print(json.dumps({"s": run(int(line))}), flush=True)


def start_peer(name: str, shape: str, dtype: str, isolate: bool = True):
  """A peer's ``(run, info)``; with ``isolate`` it lives in its own process (a worker that
  waits on a pipe between rounds), so neither its thread pools nor this process's XLA
  threads share a process with the other's timings."""
  if not isolate:
    return build_peer(name, shape, dtype)
  env = {**os.environ, "KERAS_BACKEND": "jax"} if name == "keras" else dict(os.environ)
  proc = subprocess.Popen([sys.executable, "-m", "vdrnn.bench", "--peer-worker", f"{name},{shape},{dtype}"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

  def reply() -> dict:
    for line in proc.stdout:
      if line.startswith("{"):
        return json.loads(line)
    err = (proc.stderr.read().strip().splitlines() or ["no output"])[-1]
    return {"skipped": f"{name} peer failed (exit {proc.wait()}): {err}"}

  info = reply()
  if "skipped" in info:
    proc.kill()
    return None, info

  def run(n: int) -> float:
    proc.stdin.write(f"{n}\n")
    proc.stdin.flush()
    r = reply()
    if "s" not in r:
      raise RuntimeError(r.get("skipped", "peer worker stopped"))
    return r["s"]

  run.close = lambda: (proc.stdin.close(), proc.wait())
  return run, info


def side_by_side(shape: str, dtype: str, rounds: int, steps: int, gemm_n: int, isolate: bool = True,
                 log=lambda m: None) -> tuple[list, list]:
  """vdrnn (tied and untied) and the peers at one shape and precision, measured in
  interleaved rounds: every round times ``steps`` steps of each, then one ``gemm_n`` GEMM.
  A machine whose speed drifts (a shared VM's does, by 1.5x within minutes) then slows
  every contender alike; ratios and GEMM fractions are medians of per-round values.
  Returns ``(rows, skipped)``."""
  from vdrnn import train
  runs, infos, skipped = {}, {}, []
  for name in PEERS:
    run, info = start_peer(name, shape, dtype, isolate)
    if run is None:
      skipped.append({"section": "peers", "impl": name, "reason": info["skipped"]})
      log(info["skipped"])
      continue
    runs[(name, info["gates"])], infos[(name, info["gates"])] = run, info
  if not runs:  # nothing to compare with
    return [], skipped
  ours = {}
  for gates in ("tied", "untied"):
    cfg = lm_config(shape, gates, dtype)
    step_fn = jax.jit(train.make_train_step(cfg), donate_argnums=0)
    ours[("vdrnn", gates)], compile_s = step_runner(step_fn, train.init_state(cfg, cfg.train.batch_size),
                                                    _random_batches(cfg, 4))
    infos[("vdrnn", gates)] = {"compile_s": compile_s, "gates": gates}
  runs = {**ours, **runs}
  probe = gemm_probe(dtype, gemm_n)
  times = {k: [] for k in runs}
  gemm_rates = []
  for _ in range(rounds):
    for k, run in runs.items():
      times[k].append(run(steps))
    gemm_rates.append(probe())
  for run in runs.values():
    getattr(run, "close", lambda: None)()
  cfg = lm_config(shape, "tied", dtype)
  tokens, flops_tok = cfg.train.batch_size * cfg.train.seq_length, 6 * matmul_params(cfg)
  rows = []
  for (impl, gates), ts in times.items():
    ts = np.array(ts)
    r = {"section": "side" if impl == "vdrnn" else "peer", "impl": impl, "shape": shape, "gates": gates,
         "dtype": dtype, "dims": _shape_str(cfg), "matmul_params": matmul_params(cfg),
         "seconds_per_step": float(np.median(ts)), "tokens_per_s": float(tokens / np.median(ts)),
         "flops_per_s": float(flops_tok * tokens / np.median(ts)), "rounds": ts.tolist(),
         "gemm_rates": gemm_rates, "gemm_fraction": _fraction(flops_tok * tokens, ts, gemm_rates),
         **{k: v for k, v in infos[(impl, gates)].items() if k != "gates"}}
    if impl != "vdrnn":  # vdrnn's speed-up over this peer, same gates, median of the per-round ratios
      r["vdrnn_speedup"] = float(np.median(ts / np.array(times[("vdrnn", gates)])))
    rows.append(r)
  return rows, skipped


# ----------------------------------------------------------------------------------------
# Driver.


def plan(quick: bool, tiny: bool) -> dict:
  """What to run: shapes, repetitions and sample counts."""
  if tiny:  # the smoke test: every section at toy size
    return {"shapes": ["tiny"], "gemm_sizes": [256], "steps": 1, "reps": 1, "min_time": 0.0,
            "mc_shape": "tiny", "mc_samples": [4, 8], "mc_windows": 1, "pop_shape": "tiny", "pop_k": [1, 2],
            "peer_shapes": ["tiny"], "rounds": 2, "target_shape": "tiny"}
  gpu = jax.devices()[0].platform != "cpu"
  if quick:
    return {"shapes": ["small", "medium"], "gemm_sizes": [2048], "steps": 2, "reps": 3, "min_time": 0.5,
            "mc_shape": "medium", "mc_samples": [100], "mc_windows": 1, "pop_shape": "small", "pop_k": [1, 4],
            "peer_shapes": ["medium"], "rounds": 3, "target_shape": "medium"}
  return {"shapes": ["small", "medium", "large"], "gemm_sizes": [4096, 8192] if gpu else [2048, 4096],
          "steps": 10 if gpu else 3, "reps": 5 if gpu else 3, "min_time": 1.0,
          "mc_shape": "medium", "mc_samples": [100, 1000], "mc_windows": 1, "pop_shape": "medium",
          "pop_k": [1, 4, 16], "peer_shapes": ["small", "medium"], "rounds": 7, "target_shape": "medium"}


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def run(only=SECTIONS, quick: bool = False, tiny: bool = False, dtypes=None, log=_log,
        isolate_peers: bool = True, json_path: str | None = None) -> dict:
  """Runs the selected sections; returns the JSON-able report. Peers run in subprocesses
  unless ``isolate_peers=False``. With ``json_path`` the report so far is rewritten after
  every result, so a run cut short still leaves its numbers."""
  p = plan(quick, tiny)
  bf16 = supports_bf16()
  dtypes = dtypes or (["float32", "bfloat16"] if bf16 else ["float32"])
  report = {"device": device_info(), "plan": p, "dtypes": dtypes, "load_start": _load(), "gemm": {},
            "results": [], "skipped": [], "started": time.strftime("%Y-%m-%d %H:%M:%S")}
  t_start = time.perf_counter()

  def add(**r):
    r["load"] = _load()
    report["results"].append(r)
    if json_path:
      write_json(report, json_path)
    log(f"  {r['section']:10s} {r.get('shape', ''):6s} {r.get('impl', ''):6s} {r.get('gates', ''):6s} "
        f"{r.get('dtype', ''):8s} {r.get('K', r.get('samples', '')) or '':>5} "
        f"{r.get('tokens_per_s', r.get('sample_tokens_per_s', 0)):10.0f}/s  load {r['load']}")

  if "gemm" in only or "train" in only or "mc" in only:
    log(f"GEMM {p['gemm_sizes']} ...")
    report["gemm"] = bench_gemm(p["gemm_sizes"], dtypes, p["reps"])
  # The yardstick timed after every repetition: a GEMM of the size that ran fastest above.
  best_n = {dt: max(p["gemm_sizes"], key=lambda n: report["gemm"].get(f"{dt}_{n}", 0.0)) for dt in dtypes}
  probes = {dt: gemm_probe(dt, best_n[dt]) for dt in dtypes} if {"train", "mc", "population"} & set(only) else {}
  if "train" in only:
    for shape in p["shapes"]:
      for dt in dtypes:
        for gates in ("tied", "untied"):
          cfg = lm_config(shape, gates, dt)
          r = bench_train(cfg, p["steps"], p["reps"], p["min_time"], probes[dt])
          add(section="train", impl="vdrnn", shape=shape, gates=gates, dtype=dt, dims=_shape_str(cfg),
              matmul_params=matmul_params(cfg), **r)
  if "mc" in only:
    try:
      from vdrnn import evaluate
      evaluate.make_mc_chunk_fn, evaluate.mc_rates, evaluate.stream_windows  # noqa: B018 - the API used
    except (ImportError, AttributeError) as e:
      report["skipped"].append({"section": "mc", "reason": f"vdrnn.evaluate has no MC chunk function: {e}"})
    else:
      for S in p["mc_samples"]:
        cfg = lm_config(p["mc_shape"], "untied", "float32")
        r = bench_mc(cfg, S, p["mc_windows"], p["reps"], p["min_time"], probes["float32"])
        add(section="mc", impl="vdrnn", shape=p["mc_shape"], gates="untied", dtype="float32", samples=S,
            dims=_shape_str(cfg), matmul_params=matmul_params(cfg), **r)
  if "population" in only:
    try:
      from vdrnn import population
      population.init_population_state, population.make_population_train_step  # noqa: B018 - the API used
    except (ImportError, AttributeError) as e:
      report["skipped"].append({"section": "population", "reason": f"vdrnn.population is not available: {e}"})
    else:
      for K in p["pop_k"]:
        cfg = lm_config(p["pop_shape"], "untied", "float32")
        r = bench_population(cfg, K, max(1, p["steps"] // 2) if K > 4 else p["steps"], p["reps"], p["min_time"],
                             probes["float32"])
        add(section="population", impl="vdrnn", shape=p["pop_shape"], gates="untied", dtype="float32", K=K,
            dims=_shape_str(cfg), matmul_params=matmul_params(cfg), **r)
  if "peers" in only:
    for dt in dtypes:
      for shape in p["peer_shapes"]:
        log(f"side by side: {shape} {dt}, {p['rounds']} interleaved rounds ...")
        rows, skipped = side_by_side(shape, dt, p["rounds"], p["steps"], best_n[dt], isolate_peers, log)
        for r in rows:
          add(**r)
        report["skipped"] += [s for s in skipped if s not in report["skipped"]]
  report["seconds"] = time.perf_counter() - t_start
  report["load_end"] = _load()
  report["summary"] = summarize(report, p["target_shape"])
  return report


def _find(results, **kw):
  for r in results:
    if all(r.get(k) == v for k, v in kw.items()):
      return r
  return None


def summarize(report: dict, shape: str) -> dict:
  """GEMM fractions (for results without their own per-repetition GEMM probe) and the
  headline ratios."""
  gemm, res = report["gemm"], report["results"]
  for r in res:
    if r.get("gemm_fraction") is None:  # no per-repetition GEMM probe: the GEMM section's rate
      g = gemm.get(r.get("dtype"))
      r["gemm_fraction"] = r["flops_per_s"] / g if g else None
  s = {}
  for dt in report["dtypes"]:
    tied = _find(res, section="train", shape=shape, gates="tied", dtype=dt)
    untied = _find(res, section="train", shape=shape, gates="untied", dtype=dt)
    if tied and untied:
      s[f"untied_slowdown_{dt}"] = tied["tokens_per_s"] / untied["tokens_per_s"]
  for r in res:
    if r["section"] == "peer":
      s[f"speedup_vs_{r['impl']}_{r['shape']}_{r['dtype']}"] = r["vdrnn_speedup"]
  for r in res:
    if r["section"] == "side" and r["shape"] == shape:
      s[f"side_by_side_{shape}_{r['gates']}_{r['dtype']}_gemm_fraction"] = r["gemm_fraction"]
  for r in res:
    if r["section"] == "mc":
      s[f"mc_S{r['samples']}_gemm_fraction"] = r["gemm_fraction"]
  t = _find(res, section="train", shape=shape, gates="untied", dtype="float32")
  if t:
    s[f"train_{shape}_untied_float32_gemm_fraction"] = t["gemm_fraction"]
  t = _find(res, section="train", shape=shape, gates="tied", dtype="float32")
  if t:
    s[f"train_{shape}_tied_float32_gemm_fraction"] = t["gemm_fraction"]
  return s


def format_table(report: dict) -> str:
  d = report["device"]
  lines = [f"device: {d['platform']} ({d['device_kind']}; {d['processor']}; {d['cpu_count']} CPUs), "
           f"jax {d['jax']}; load average {report['load_start']} at start, {report['load_end']} at end; "
           f"{report['seconds']:.0f} s"]
  g = report["gemm"]
  if g:
    lines.append("large-GEMM rate: " + ", ".join(f"{dt} {g[dt] / 1e9:.0f} GFLOP/s" for dt in report["dtypes"] if dt in g)
                 + "  (bfloat16: bf16 operands, float32 accumulation)")
  hdr = f"{'section':10s} {'impl':6s} {'shape':7s} {'dims':17s} {'gates':6s} {'dtype':8s} {'K/S':>5s} " \
        f"{'tokens/s':>10s} {'ms/step':>9s} {'GFLOP/s':>8s} {'%GEMM':>6s}  vs peer"
  lines += ["", hdr, "-" * len(hdr)]
  res = report["results"]
  for r in res:
    rate = r.get("tokens_per_s", r.get("sample_tokens_per_s"))
    ms = 1e3 * r.get("seconds_per_step", r.get("seconds", 0.0))
    frac = r.get("gemm_fraction")
    vs = ""
    if r["section"] == "side":
      peers = [p for p in res if p["section"] == "peer" and p["shape"] == r["shape"] and p["dtype"] == r["dtype"]
               and p["gates"] == r["gates"]]
      vs = "  ".join(f"{p['vdrnn_speedup']:.2f}x {p['impl']}" for p in peers)
    kS = r.get("K", r.get("samples", ""))
    lines.append(f"{r['section']:10s} {r['impl']:6s} {r['shape']:7s} {r.get('dims', ''):17s} {r.get('gates', ''):6s} "
                 f"{r['dtype']:8s} {kS!s:>5s} {rate:10.0f} {ms:9.1f} {r['flops_per_s'] / 1e9:8.1f} "
                 f"{'' if frac is None else f'{100 * frac:5.1f}%':>6s}  {vs}")
  lines.append("(mc: tokens/s is sample-tokens/s and ms/step the time of one chunk of S samples; "
               "population: tokens/s counts all K members; side/peer: vdrnn and the peers in interleaved "
               "rounds, medians over rounds, %GEMM against a GEMM timed in the same rounds, 'vs peer' the "
               "median of the per-round speed ratios at the same gates and precision)")
  for k, v in report["summary"].items():
    lines.append(f"{k}: {v:.2f}")
  for s in report["skipped"]:
    lines.append(f"skipped: {s['reason']}")
  return "\n".join(lines)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(prog="python -m vdrnn.bench", description=__doc__.split("\n\n")[0])
  ap.add_argument("--quick", action="store_true", help="fewer shapes and repetitions (about 2 minutes on a CPU)")
  ap.add_argument("--tiny", action="store_true", help="toy shapes: a smoke test of every section in seconds")
  ap.add_argument("--json", metavar="PATH", help="write the full report as JSON to PATH")
  ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections from {','.join(SECTIONS)}")
  ap.add_argument("--dtypes", default="", help="comma-separated, e.g. float32 (default: float32 and bfloat16 "
                                               "where the device supports it)")
  ap.add_argument("--peer-worker", help=argparse.SUPPRESS)  # internal: NAME,SHAPE,DTYPE (see peer_worker)
  args = ap.parse_args(argv)
  if args.peer_worker:
    peer_worker(args.peer_worker)
    return
  only = [s.strip() for s in args.only.split(",") if s.strip()]
  bad = [s for s in only if s not in SECTIONS]
  if bad:
    ap.error(f"unknown section(s) {bad}; choose from {list(SECTIONS)}")
  dtypes = [s.strip() for s in args.dtypes.split(",") if s.strip()] or None
  report = run(only, quick=args.quick, tiny=args.tiny, dtypes=dtypes, json_path=args.json)
  print(format_table(report))
  if args.json:
    write_json(report, args.json)
    print(f"wrote {args.json}", file=sys.stderr)


def write_json(report: dict, path: str) -> None:
  """Writes ``report`` to ``path`` atomically (a partial report while the run goes on)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(report, f, indent=1)
  os.replace(path + ".tmp", path)


if __name__ == "__main__":
  main()
