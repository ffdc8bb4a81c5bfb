"""Peers for the side-by-side section: the same training step in Keras 3 and PyTorch, each
in a worker process, timed in interleaved rounds with vdrnn.

* ``keras``: ``LSTM(dropout, recurrent_dropout)`` (untied per-sequence masks);
* ``torch``: an ``LSTMCell`` loop with per-sequence masks (tied);
* ``flax``: ``nnx.RNN(OptimizedLSTMCell)`` with recurrent dropout assembled the documented
  Flax way (``launch.bench.flax_peer``; tied);
* ``cudnn`` (``build_torch_cudnn``): one ``nn.LSTM(num_layers=L, dropout=p_x)``: standard dropout
  (a fresh mask per element and step) on the embedded input, between layers and on the
  output; no recurrent dropout. The speed ceiling of an LSTM: cuDNN cannot drop ``h``.
* ``jax_cudnn`` (``build_jax_cudnn``): ``jax.experimental.rnn.lstm``, JAX's cuDNN LSTM, no
  dropout; GPU only (skipped with a message on the CPU).
* ``awd`` (``build_torch_awd``): AWD-LSTM (Merity et al. 2018): one ``nn.LSTM`` per layer;
  DropConnect on each layer's ``W_hh`` once per batch (``F.dropout`` of the raw weight,
  rate ``p_h``),
  the dropped weight passed to the cuDNN call with ``torch.func.functional_call`` (no
  ``flatten_parameters`` hack: the module's own ``weight_hh_l0`` is left out of the
  optimiser; the gradient reaches the raw weight through the dropout); locked
  (variational, one mask per sequence) dropout on the embedded input (``p_x``), between
  layers (``p_x``) and on the output (``p_out``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings

import jax
import numpy as np

from launch.bench import flax_peer
from launch.bench.common import (_random_batches, core_step, gemm_probe, interleaved_rounds,
                                lm_config, round_stats, step_runner)

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
    raise RuntimeError(
        f"keras is using the {keras.backend.backend()} backend; set KERAS_BACKEND=jax")
  keras.mixed_precision.set_global_policy("mixed_bfloat16" if dtype == "bfloat16" else "float32")
  m, t = cfg.model, cfg.train
  B, T = t.batch_size, t.seq_length
  keras.utils.set_random_seed(0)
  init = keras.initializers.RandomUniform(-m.init_scale, m.init_scale)
  inputs = keras.Input((T,), batch_size=B, dtype="int32")
  x = keras.layers.Embedding(m.vocab_size, m.emb_dim, embeddings_initializer=init)(inputs)
  for _ in range(m.num_layers):
    x = keras.layers.LSTM(m.hidden,
                          dropout=m.p_x,
                          recurrent_dropout=m.p_h,
                          return_sequences=True,
                          stateful=True,
                          kernel_initializer=init,
                          recurrent_initializer=init,
                          bias_initializer=init,
                          unit_forget_bias=False)(x)
  x = keras.layers.Dropout(m.p_out, noise_shape=(B, 1, m.hidden))(x)
  logits = keras.layers.Dense(m.vocab_size,
                              kernel_initializer=init,
                              bias_initializer=init,
                              dtype="float32")(x)
  model = keras.Model(inputs, logits)

  def loss(y, z):
    return T * keras.losses.sparse_categorical_crossentropy(y, z, from_logits=True)

  model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0, global_clipnorm=t.max_grad_norm),
                loss=loss)
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
  return run, {
      "compile_s": time.perf_counter() - t0,
      "gates": "untied",
      "version": keras.__version__,
      "precision": "mixed_bfloat16" if dtype == "bfloat16" else "float32"
  }


def build_torch(cfg, dtype: str = "float32"):
  """PyTorch: ``Embedding -> LSTMCell`` loop per layer with per-sequence masks on the
  input and on the recurrent state (one mask for all gates: *tied*), output dropout with one
  mask per sequence, ``Linear``; ``T * cross_entropy``, ``clip_grad_norm_``, SGD. The
  state is carried (detached) from window to window. No word-type embedding dropout.
  bfloat16: the forward pass under ``torch.autocast(dtype=torch.bfloat16)``.
  """
  import torch  # noqa: PLC0415 - optional
  dev = _torch_device(torch)
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

  run, compile_s = _runner(torch, dev, cfg, step)
  return run, {"compile_s": compile_s, "gates": "tied", "version": torch.__version__,
               "threads": torch.get_num_threads() if dev.type == "cpu" else None,
               "precision": "autocast bfloat16" if dtype == "bfloat16" else "float32"}


# Strong PyTorch peers (issue 14): the speed ceiling of an LSTM without recurrent dropout,
# and how PyTorch users regularise the recurrence fast today.


def _torch_device(torch):
  """CUDA when JAX runs on a GPU (error if this PyTorch has no CUDA), else the CPU."""
  platform = jax.devices()[0].platform
  if platform == "gpu" and not torch.cuda.is_available():
    raise RuntimeError("JAX runs on a GPU but this PyTorch has no CUDA")
  dev = torch.device("cuda" if platform == "gpu" else "cpu")
  if dev.type == "cpu":
    torch.set_num_threads(os.cpu_count() or 1)
  return dev


def _runner(torch, dev, cfg, step):
  """``(run, compile seconds)``: ``run(n)`` does n steps on 4 fixed random batches."""
  m, t = cfg.model, cfg.train
  B, T = t.batch_size, t.seq_length
  rng = np.random.RandomState(0)
  batches = [tuple(torch.from_numpy(rng.randint(0, m.vocab_size, (B, T))).long().to(dev)
                   for _ in range(2)) for _ in range(4)]
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
  return run, time.perf_counter() - t0


def _lstm_dtype(torch, dev, dtype):
  """The dtype of the LSTM call's input and carried state: CPU autocast casts the LSTM's
  weights to bfloat16 but neither its input nor its state, and oneDNN has no mixed-dtype
  LSTM (seen with torch 2.13.0+cpu); on CUDA autocast casts the cuDNN RNN's operands."""
  return torch.bfloat16 if dtype == "bfloat16" and dev.type == "cpu" else torch.float32


def _info(torch, dev, dtype, compile_s, **extra):
  return {"compile_s": compile_s, "gates": "untied", "version": torch.__version__,
          "threads": torch.get_num_threads() if dev.type == "cpu" else None,
          "cudnn": torch.backends.cudnn.version() if dev.type == "cuda" else None,
          "precision": "autocast bfloat16" if dtype == "bfloat16" else "float32", **extra}


def _sgd_step(torch, cfg, model_params, opt, logits, y):
  m, t = cfg.model, cfg.train
  nll = torch.nn.functional.cross_entropy(logits.reshape(-1, m.vocab_size), y.reshape(-1))
  loss = t.seq_length * nll
  opt.zero_grad(set_to_none=True)
  loss.backward()
  torch.nn.utils.clip_grad_norm_(model_params, t.max_grad_norm)
  opt.step()
  return loss


def build_torch_cudnn(cfg, dtype: str = "float32"):
  """PyTorch ``nn.LSTM`` (cuDNN on a GPU) with dropout only between layers (and on the
  embedded input and the output): no recurrent dropout."""
  import torch  # noqa: PLC0415 - optional
  dev = _torch_device(torch)
  torch.manual_seed(0)
  m, t = cfg.model, cfg.train
  B, H, L = t.batch_size, m.hidden, m.num_layers
  emb = torch.nn.Embedding(m.vocab_size, m.emb_dim)
  lstm = torch.nn.LSTM(m.emb_dim, H, num_layers=L, dropout=m.p_x if L > 1 else 0.0,
                       batch_first=True)
  out = torch.nn.Linear(H, m.vocab_size)
  model = torch.nn.ModuleList([emb, lstm, out]).to(dev)
  for p in model.parameters():
    torch.nn.init.uniform_(p, -m.init_scale, m.init_scale)
  lstm.flatten_parameters()  # one contiguous weight buffer for cuDNN (after the re-init)
  params = list(model.parameters())
  opt = torch.optim.SGD(params, lr=1.0)
  drop_x, drop_out = torch.nn.Dropout(m.p_x), torch.nn.Dropout(m.p_out)
  model.train()
  sdt = _lstm_dtype(torch, dev, dtype)
  state = tuple(torch.zeros(L, B, H, device=dev, dtype=sdt) for _ in range(2))
  autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

  def step(x, y):
    nonlocal state
    with autocast:
      ys, (h, c) = lstm(drop_x(emb(x)).to(sdt), state)  # [B, T, H]
      state = (h.detach().to(sdt), c.detach().to(sdt))
      logits = out(drop_out(ys)).float()
    return _sgd_step(torch, cfg, params, opt, logits, y)

  run, compile_s = _runner(torch, dev, cfg, step)
  return run, _info(torch, dev, dtype, compile_s, recurrent_dropout="none")


def build_torch_awd(cfg, dtype: str = "float32"):
  """AWD-LSTM: DropConnect on each layer's ``W_hh`` once per batch, then ``nn.LSTM`` (cuDNN
  on a GPU) with the dropped weight via ``torch.func.functional_call``; locked dropout on
  the inputs, between layers and on the output."""
  import torch  # noqa: PLC0415 - optional
  from torch.func import functional_call  # noqa: PLC0415 - optional
  dev = _torch_device(torch)
  torch.manual_seed(0)
  m, t = cfg.model, cfg.train
  B, H, L = t.batch_size, m.hidden, m.num_layers
  emb = torch.nn.Embedding(m.vocab_size, m.emb_dim)
  lstms = torch.nn.ModuleList([torch.nn.LSTM(m.emb_dim if l == 0 else H, H, batch_first=True)
                               for l in range(L)])
  out = torch.nn.Linear(H, m.vocab_size)
  model = torch.nn.ModuleList([emb, lstms, out]).to(dev)
  for p in model.parameters():
    torch.nn.init.uniform_(p, -m.init_scale, m.init_scale)
  # The raw recurrent weights are the trained parameters; each module's own weight_hh_l0 is
  # only replaced in every call (left out of the optimiser and the clipping norm).
  raw = torch.nn.ParameterList([torch.nn.Parameter(l.weight_hh_l0.detach().clone()) for l in lstms])
  for l in lstms:
    l.weight_hh_l0.requires_grad_(False)
  params = [p for p in model.parameters() if p.requires_grad] + list(raw)
  opt = torch.optim.SGD(params, lr=1.0)
  sdt = _lstm_dtype(torch, dev, dtype)
  state = [tuple(torch.zeros(1, B, H, device=dev, dtype=sdt) for _ in range(2)) for _ in range(L)]
  autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
  F = torch.nn.functional

  def locked(x, p):  # one mask per sequence, held over time: x [B, T, D]
    if p == 0.0:
      return x
    keep = torch.full((x.shape[0], 1, x.shape[2]), 1.0 - p, device=dev)
    return x * (torch.bernoulli(keep) / (1.0 - p))

  def step(x, y):
    nonlocal state
    with autocast, warnings.catch_warnings():
      # cuDNN copies the (new, dropped) W_hh into its flat weight buffer in every call.
      warnings.filterwarnings("ignore", message=".*not part of single contiguous chunk.*")
      xs = locked(emb(x), m.p_x)
      new_state = []
      for l, lstm in enumerate(lstms):
        w_hh = F.dropout(raw[l], p=m.p_h, training=True)  # DropConnect, once per batch
        xs, (h, c) = functional_call(lstm, {"weight_hh_l0": w_hh}, (xs.to(sdt), state[l]))
        new_state.append((h.detach().to(sdt), c.detach().to(sdt)))
        xs = locked(xs, m.p_x if l < L - 1 else m.p_out)
      state = new_state
      logits = out(xs).float()
    return _sgd_step(torch, cfg, params, opt, logits, y)

  run, compile_s = _runner(torch, dev, cfg, step)
  return run, _info(torch, dev, dtype, compile_s,
                    recurrent_dropout="DropConnect on W_hh, per batch")


def build_jax_cudnn(cfg, dtype: str = "float32"):
  """``jax.experimental.rnn.lstm``: JAX's own cuDNN LSTM (GPU only), ``num_layers`` layers in
  one call, no dropout (it has none on ``h``; between layers it is not implemented either):
  the plain-LSTM speed bar a JAX user has today. Embedding and softmax as vdrnn's; SGD with
  global-norm clipping; loss ``T * mean NLL``; state carried across windows."""
  import jax.numpy as jnp  # noqa: PLC0415
  import optax  # noqa: PLC0415
  from jax.experimental import rnn as jrnn  # noqa: PLC0415 - only the peer uses it
  if jax.devices()[0].platform != "gpu":
    raise RuntimeError("jax.experimental.rnn runs on cuDNN only: needs a GPU")
  if dtype != "float32":
    raise RuntimeError("jax.experimental.rnn.lstm is float32 here")
  m, t = cfg.model, cfg.train
  B, T, H, L = t.batch_size, t.seq_length, m.hidden, m.num_layers
  k = jax.random.split(jax.random.key(0), 4)
  u = lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -m.init_scale,  # noqa: E731
                                            m.init_scale)
  n_w = jrnn.get_num_params_in_lstm(m.emb_dim, H, L, False)
  params = {"embed": u(k[0], (m.vocab_size, m.emb_dim)), "lstm": u(k[1], (n_w,)),
            "w": u(k[2], (H, m.vocab_size)), "b": u(k[3], (m.vocab_size,))}
  tx = optax.chain(optax.clip_by_global_norm(t.max_grad_norm), optax.sgd(1.0))
  lengths = jnp.full((B,), T, jnp.int32)

  def loss_fn(params, carry, x, y):
    h0, c0 = carry
    ys, h, c = jrnn.lstm(params["embed"][x], h0, c0, params["lstm"], lengths, m.emb_dim, H, L,
                         0.0, False)
    logits = ys @ params["w"] + params["b"]
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return nll.mean(0).sum(), (h, c)

  @jax.jit
  def step(state, x, y, lr):  # lr: step_runner's argument; the SGD rate is 1, as vdrnn's
    del lr
    params, opt, carry = state
    (_, carry), g = jax.value_and_grad(loss_fn, has_aux=True)(params, carry, x, y)
    updates, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, updates), opt, jax.lax.stop_gradient(carry)

  zeros = jnp.zeros((L, B, H), jnp.float32)
  run, compile_s = step_runner(step, (params, tx.init(params), (zeros, zeros)),
                               _random_batches(cfg, 4))
  return run, {"device": jax.devices()[0].device_kind, "dtype": dtype, "compile_s": compile_s,
               "recurrent_dropout": "none (no dropout at all)"}


PEERS = {"keras": build_keras, "torch": build_torch, "cudnn": build_torch_cudnn,
         "awd": build_torch_awd, "flax": flax_peer.build_flax_rnn, "jax_cudnn": build_jax_cudnn}
# The vdrnn row each peer is compared with: the gate masks it implements (keras: untied;
# torch: tied); cudnn and awd do no per-sequence recurrent masks and are held against the
# paper's untied step.
PEER_GATES = {"keras": "untied", "torch": "tied", "cudnn": "untied", "awd": "untied",
              "flax": "tied",  # flax: the natural Flax idiom, one mask for all gates
              "jax_cudnn": "untied"}  # no dropout: held against the paper's step, as cudnn


def build_peer(name: str, shape: str, dtype: str):
  """``(run, info)`` of a peer in this process, or ``(None, {"skipped": reason})``."""
  cfg = lm_config(shape, PEER_GATES[name], "float32")
  try:
    return PEERS[name](cfg, dtype)
  except ImportError as e:
    return None, {
        "skipped": f"{name} peer skipped: {e.name or e} is not installed (pip install -e .[bench])"
    }
  except RuntimeError as e:
    return None, {"skipped": f"{name} peer skipped: {e}"}


def peer_worker(spec: str) -> None:
  """``--peer_worker=NAME,SHAPE,DTYPE``: builds the peer, prints one JSON line (its info),
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
  proc = subprocess.Popen(
      [sys.executable, "-m", "launch.bench", f"--peer_worker={name},{shape},{dtype}"],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=env)

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
    ours[("vdrnn", gates)], compile_s = step_runner(*core_step(cfg), _random_batches(cfg, 4))
    infos[("vdrnn", gates)] = {"compile_s": compile_s, "gates": gates}
  runs = {**ours, **runs}
  probe = gemm_probe(dtype, gemm_n)
  times, gemm_rates = interleaved_rounds(runs, rounds, steps, probe)
  for run in runs.values():
    getattr(run, "close", lambda: None)()
  cfg = lm_config(shape, "tied", dtype)
  rows = []
  for (impl, gates), ts in times.items():
    ts = np.array(ts)
    r = {
        "section": "side" if impl == "vdrnn" else "peer",
        "impl": impl,
        "shape": shape,
        "gates": gates,
        "dtype": dtype,
        **round_stats(cfg, ts, gemm_rates),
        **{
            k: v for k, v in infos[(impl, gates)].items() if k != "gates"
        }
    }
    # vdrnn's speed-up over this peer, same gates, median of the per-round ratios
    if impl != "vdrnn":
      r["vdrnn_speedup"] = float(np.median(ts / np.array(times[("vdrnn", gates)])))
    rows.append(r)
  return rows, skipped
