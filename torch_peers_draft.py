"""Draft: two strong PyTorch peers for ``vdrnn.bench`` (issue 14), to move into
``vdrnn/bench/peers.py`` and register there::

  PEERS["cudnn"], PEER_GATES["cudnn"] = build_torch_cudnn, "untied"
  PEERS["awd"], PEER_GATES["awd"] = build_torch_awd, "untied"

Contract (as ``build_torch``): ``builder(cfg, dtype) -> (run, info)``; ``run(n)`` does n
training steps and returns seconds per step; ``info["gates"]`` names the vdrnn row the peer
is compared with. Both are paired with vdrnn's *untied* step: the issue's target is the
variational untied medium step against cuDNN's plain ``nn.LSTM``.

Same model, loss, clipping and update as ``build_torch``: ``Embedding -> L LSTM layers ->
dropout -> Linear``; loss ``T * cross_entropy`` (= sum over time of the batch mean);
``clip_grad_norm_(max_grad_norm)``; SGD at lr 1; the state carried (detached) from window
to window; no word-type embedding dropout. bfloat16: the forward pass under
``torch.autocast(dtype=torch.bfloat16)``. On the GPU (when JAX runs on one) PyTorch uses
CUDA, where ``nn.LSTM`` is cuDNN's fused LSTM; on the CPU it is ATen's / oneDNN's.

* ``build_torch_cudnn``: one ``nn.LSTM(num_layers=L, dropout=p_x)``: standard dropout
  (a fresh mask per element and step) on the embedded input, between layers and on the
  output; no recurrent dropout. The speed ceiling of an LSTM: cuDNN cannot drop ``h``.
* ``build_torch_awd``: AWD-LSTM (Merity et al. 2018): one ``nn.LSTM`` per layer; DropConnect
  on each layer's ``W_hh`` once per batch (``F.dropout`` of the raw weight, rate ``p_h``),
  the dropped weight passed to the cuDNN call with ``torch.func.functional_call`` (no
  ``flatten_parameters`` hack: the module's own ``weight_hh_l0`` is left out of the
  optimiser; the gradient reaches the raw weight through the dropout); locked
  (variational, one mask per sequence) dropout on the embedded input (``p_x``), between
  layers (``p_x``) and on the output (``p_out``).
"""

from __future__ import annotations

import os
import time
import warnings

import jax
import numpy as np


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


PEERS = {"cudnn": build_torch_cudnn, "awd": build_torch_awd}
PEER_GATES = {"cudnn": "untied", "awd": "untied"}  # the vdrnn rows they are compared with
