"""Flax contenders for the benchmark's peers (registered in ``launch.bench.peers``) and its
``flax`` section (``launch.bench.sections.bench_flax``).

Both build the PTB language-model training step of ``vdrnn.lm.make_train_step`` at a
config's shapes (embedding -> L LSTM layers -> output dropout -> softmax; loss = sum over
the window's steps of the batch-mean NLL; global-norm clip; SGD; state carried from window
to window) and follow the peers' contract: ``builder(cfg, dtype) -> (run, info)``, where
``run(n)`` does n training steps and returns seconds per step and ``info["gates"]`` is
``"tied"`` or ``"untied"`` (both builders honour ``cfg.model.tied_gates``).

* ``build_flax_rnn``: what a Flax user has today. ``nnx.RNN`` over an
  ``nnx.OptimizedLSTMCell`` subclass whose recurrent dropout is an ``nnx.Dropout`` on its own
  rng stream (``'recurrent_dropout'``), broadcast over the scan's steps with
  ``nnx.RNN(..., broadcast_rngs='recurrent_dropout')`` (Flax's recurrent-dropout test; the
  Linen RNN FLIP's ``split_rngs={'dropout': True, 'recurrent_dropout': False}``): one mask per
  call, held over time. Tied gates: input dropout outside the scan,
  ``nnx.Dropout(p_x, broadcast_dims=(1,))`` on ``[B, T, D]``, and one mask on ``h`` inside the
  cell. Untied: four masks each for ``x`` and ``h``, drawn inside the cell (one ``nnx.Dropout``
  on the state broadcast to ``[4, B, .]``), per-gate matmuls. Output dropout
  ``nnx.Dropout(p_out, broadcast_dims=(1,))``; ``nnx.Linear`` softmax layer; optax
  ``clip_by_global_norm`` + ``sgd`` in an ``nnx.Optimizer``; the step is ``nnx.jit``-ted.
  No word-type embedding dropout (Flax has none; the Keras and PyTorch peers skip it too).
  bfloat16: the layers' ``dtype=bfloat16`` (Flax's mixed precision: float32 parameters).
* ``build_nnx_variational``: the same model from ``vdrnn.nn`` layers (``WordTypeDropout``,
  ``VariationalLSTM``, ``LockedDropout``; all of vdrnn's dropouts, as the core's step), the
  softmax with ``vdrnn.models.softmax_nll``; the step is the functional NNX fast path,
  ``nnx.split`` once, ``nnx.merge`` inside a plain ``jax.jit`` with the state donated.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vdrnn import models, rnn
from vdrnn import nn as vnn
from vdrnn.lm import embedding_grad_sq


def _uniform(scale: float):
  """U(-scale, scale), the recipes' initialiser (Zaremba; Gal)."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return init


def _batches(cfg, n: int = 4, seed: int = 0):
  m, t = cfg.model, cfg.train
  rng = np.random.RandomState(seed)
  toks = rng.randint(0, m.vocab_size, (n, t.batch_size, t.seq_length + 1)).astype(np.int32)
  return [(jax.device_put(a[:, :-1]), jax.device_put(a[:, 1:])) for a in toks]


def _runner(step, state, batches, finite):
  """Compiles (first call) and warms up ``state = step(state, x, y)``; ``(run, compile s)``."""
  t0 = time.perf_counter()
  state = jax.block_until_ready(step(state, *batches[0]))
  compile_s = time.perf_counter() - t0
  state = jax.block_until_ready(step(state, *batches[1 % len(batches)]))
  i = 0

  def run(n: int) -> float:
    nonlocal state, i
    t0 = time.perf_counter()
    for _ in range(n):
      state = step(state, *batches[i % len(batches)])
      i += 1
    jax.block_until_ready(state)
    return (time.perf_counter() - t0) / n

  run.state = lambda: state
  run.check = lambda: finite(state)
  return run, compile_s


# ----------------------------------------------------------------------------------------
# What a Flax user has today: nnx.RNN(OptimizedLSTMCell) with recurrent dropout by hand.


class DropoutLSTMCell(nnx.OptimizedLSTMCell):
  """``nnx.OptimizedLSTMCell`` with dropout on ``h`` before the recurrent matmul (tied: one
  mask; untied: one per gate, and the input's four masks drawn here too). Under
  ``nnx.RNN(..., broadcast_rngs='recurrent_dropout')`` each step sees the same key, so the
  masks are held over the sequence."""

  def __init__(self, in_features, hidden_features, *, p_x, p_h, tied, rngs, **kwargs):
    super().__init__(in_features, hidden_features, rngs=rngs, **kwargs)
    self.tied = tied
    self.drop_h = nnx.Dropout(p_h, rng_collection="recurrent_dropout", rngs=rngs)
    self.drop_x = None if tied else nnx.Dropout(p_x, rng_collection="recurrent_dropout", rngs=rngs)

  def __call__(self, carry, x):
    c, h = carry
    if self.tied:
      z = self.dense_i(x) + self.dense_h(self.drop_h(h))
    else:
      D, H = self.in_features, self.hidden_features
      xm = self.drop_x(jnp.broadcast_to(x, (4, *x.shape)))  # [4, B, D]
      hm = self.drop_h(jnp.broadcast_to(h, (4, *h.shape)))  # [4, B, H]
      dt = self.dtype or x.dtype
      w_i = self.dense_i.kernel[...].reshape(D, 4, H).astype(dt)
      w_h = self.dense_h.kernel[...].reshape(H, 4, H).astype(dt)
      z = (jnp.einsum("gbd,dgk->bgk", xm.astype(dt), w_i)
           + jnp.einsum("gbh,hgk->bgk", hm.astype(dt), w_h))
      z = z.reshape(x.shape[0], 4 * H) + self.dense_h.bias[...].astype(dt)
    i, f, g, o = jnp.split(z, 4, axis=-1)
    i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
    c = (f * c + i * g).astype(c.dtype)
    h = (o * jnp.tanh(c)).astype(h.dtype)
    return (c, h), h


class FlaxRNNLM(nnx.Module):
  def __init__(self, m, dtype, *, rngs: nnx.Rngs):
    init = _uniform(m.init_scale)
    self.tied = m.tied_gates
    self.embed = nnx.Embed(m.vocab_size, m.emb_dim, embedding_init=init, rngs=rngs)
    L = m.num_layers
    self.drop_x = nnx.List([nnx.Dropout(m.p_x, broadcast_dims=(1,), rngs=rngs) for _ in range(L)])
    self.rnns = nnx.List([
        nnx.RNN(DropoutLSTMCell(m.emb_dim if l == 0 else m.hidden, m.hidden, p_x=m.p_x, p_h=m.p_h,
                                tied=m.tied_gates, kernel_init=init, recurrent_kernel_init=init,
                                bias_init=init, dtype=dtype, rngs=rngs),
                return_carry=True, broadcast_rngs="recurrent_dropout")
        for l in range(L)])
    self.drop_out = nnx.Dropout(m.p_out, broadcast_dims=(1,), rngs=rngs)
    self.out = nnx.Linear(m.hidden, m.vocab_size, kernel_init=init, bias_init=init, dtype=dtype,
                          rngs=rngs)

  def __call__(self, tokens, carry):  # tokens [B, T]; carry: per layer (c, h)
    x = self.embed(tokens)
    new = []
    for l, rnn_ in enumerate(self.rnns):
      if self.tied:
        x = self.drop_x[l](x)  # one mask per sequence, held over time
      c, x = rnn_(x, initial_carry=carry[l])
      new.append(c)
    return self.out(self.drop_out(x)).astype(jnp.float32), new  # [B, T, V]


def build_flax_rnn(cfg, dtype: str = "float32"):
  """``(run, info)``: the PTB step with ``nnx.RNN(OptimizedLSTMCell)`` and hand-made recurrent
  dropout (see the module docstring)."""
  m, t = cfg.model, cfg.train
  B, T = t.batch_size, t.seq_length
  cdt = jnp.bfloat16 if dtype == "bfloat16" else None
  model = FlaxRNNLM(m, cdt, rngs=nnx.Rngs(params=0, dropout=1, recurrent_dropout=2))
  tx = optax.chain(optax.clip_by_global_norm(t.max_grad_norm), optax.sgd(1.0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, carry, x, y):
    def loss_fn(model):
      logits, new = model(x, carry)
      return T * optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), (new, logits)
    (loss, (new, _)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return loss, new

  state = {"carry": models.lm_zero_carry(m, B), "loss": jnp.zeros(())}

  def body(state, x, y):
    loss, carry = step(model, optimizer, state["carry"], x, y)
    return {"carry": carry, "loss": loss}

  run, compile_s = _runner(body, state, _batches(cfg), lambda s: bool(jnp.isfinite(s["loss"])))
  return run, {"compile_s": compile_s, "gates": "tied" if m.tied_gates else "untied",
               "precision": "bfloat16 layers (float32 params)" if cdt else "float32"}


# ----------------------------------------------------------------------------------------
# The same model from vdrnn.nn layers.


class VariationalLM(nnx.Module):
  """The core's language model (``vdrnn.models.lm_hidden`` / ``lm_logits``) as an NNX module;
  time-major inside, as the core."""

  def __init__(self, m, compute_dtype, unroll: int = 1, *, rngs: nnx.Rngs):
    init = _uniform(m.init_scale)
    self.compute_dtype = compute_dtype
    self.embed = nnx.Param(init(rngs.params(), (m.vocab_size, m.emb_dim)))
    shared = m.get("emb_shared_across_batch", False)
    self.emb_drop = vnn.WordTypeDropout(m.p_emb, time_major=True, shared_across_batch=shared,
                                        rngs=rngs)
    self.lstms = nnx.List([
        vnn.VariationalLSTM(m.emb_dim if l == 0 else m.hidden, m.hidden, rate_x=m.p_x,
                            rate_h=m.p_h, tied_gates=m.tied_gates, unroll=unroll,
                            compute_dtype=compute_dtype, time_major=True, return_carry=True,
                            kernel_init=init, recurrent_kernel_init=init, bias_init=init,
                            rngs=rngs)
        for l in range(m.num_layers)])
    self.out_drop = vnn.LockedDropout(m.p_out, time_major=True, rngs=rngs)
    self.softmax_w = nnx.Param(init(rngs.params(), (m.hidden, m.vocab_size)))
    self.softmax_b = nnx.Param(init(rngs.params(), (m.vocab_size,)))

  def __call__(self, tokens, carry, embedded=None):
    """``tokens`` [B, T] -> ``(logits [T, B, V], carry)``; ``embedded`` [T, B, E]: rows of the
    embedding gathered by the caller (to differentiate with respect to those rows only)."""
    xs = jnp.take(self.embed[...], tokens.T, axis=0) if embedded is None else embedded
    xs = self.emb_drop(xs, tokens.T)
    new = []
    for l, lstm in enumerate(self.lstms):
      c, xs = lstm(xs, initial_carry=carry[l])
      new.append(c)
    ys = self.out_drop(xs)
    return rnn.matmul(ys, self.softmax_w[...], self.compute_dtype) + self.softmax_b[...], new


def make_variational_step(cfg, model, rows_only: bool = True):
  """``(step, state)``: ``state = step(state, x, y)``, a plain ``jax.jit`` with the state
  donated, around ``nnx.merge`` / ``nnx.state`` (the functional NNX fast path).

  ``rows_only`` (as the core's step): the embedding gets the gradient of its looked-up rows
  only, added in place, and no dense ``[V, E]`` gradient is formed. Otherwise (what
  ``nnx.grad`` of the whole model gives): a dense embedding gradient. Either way the
  global-norm clip (Torch rule) and SGD (lr 1) of the core's step."""
  t = cfg.train
  lr, max_norm = 1.0, t.max_grad_norm
  graphdef, model_state = nnx.split(model)
  not_embed = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("embed")))

  def loss_fn(model, carry, x, y, rows):
    logits, new = model(x, carry, embedded=rows)
    return models.softmax_nll(logits, y.T).mean(axis=1).sum(), new

  def step(state, x, y):
    model = nnx.merge(graphdef, state["model"])
    if rows_only:
      embed = model.embed[...]
      rows = jnp.take(embed, x.T, axis=0)  # [T, B, E]
      grad_fn = nnx.value_and_grad(loss_fn, argnums=(nnx.DiffState(0, not_embed), 4), has_aux=True)
      (loss, new), (grads, g_rows) = grad_fn(model, state["carry"], x, y, rows)
      ids = x.T.reshape(-1)
      g_rows = g_rows.reshape(ids.shape[0], -1)
      sq = sum(jnp.sum(g * g) for g in jax.tree.leaves(grads)) + embedding_grad_sq(ids, g_rows)
    else:
      grad_fn = nnx.value_and_grad(loss_fn, argnums=0, has_aux=True)
      (loss, new), grads = grad_fn(model, state["carry"], x, y, None)
      sq = sum(jnp.sum(g * g) for g in jax.tree.leaves(grads))
    norm = jnp.sqrt(sq)
    scale = jnp.where(norm > max_norm, max_norm / norm, 1.0)
    params = nnx.state(model, not_embed if rows_only else nnx.Param)
    nnx.update(model, jax.tree.map(lambda p, g: p - lr * scale * g, params, grads))
    if rows_only:
      model.embed[...] = embed.at[ids].add(-lr * scale * g_rows)
    return {"model": nnx.state(model), "carry": new, "loss": loss}

  state = {"model": model_state, "carry": models.lm_zero_carry(cfg.model, cfg.train.batch_size),
           "loss": jnp.zeros(())}
  return jax.jit(step, donate_argnums=0), state


def variational_step(cfg, dtype: str = "float32", rows_only: bool = True):
  """``(step, state)`` (``make_variational_step``) of a ``VariationalLM`` at ``cfg``'s
  shapes, seeded by ``cfg.seed``; bfloat16: bfloat16 matmuls."""
  cdt = jnp.bfloat16 if dtype == "bfloat16" else None
  rngs = nnx.Rngs(params=cfg.seed, dropout=cfg.seed + 1)
  model = VariationalLM(cfg.model, cdt, cfg.train.unroll, rngs=rngs)
  return make_variational_step(cfg, model, rows_only)


def build_nnx_variational(cfg, dtype: str = "float32", rows_only: bool = True):
  """``(run, info)``: the PTB step of an NNX model built from ``vdrnn.nn`` layers."""
  step, state = variational_step(cfg, dtype, rows_only)
  run, compile_s = _runner(step, state, _batches(cfg), lambda s: bool(jnp.isfinite(s["loss"])))
  return run, {"compile_s": compile_s, "gates": "tied" if cfg.model.tied_gates else "untied",
               "precision": "bfloat16 matmuls" if dtype == "bfloat16" else "float32"}
