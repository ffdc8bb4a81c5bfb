"""Dropout masks drawn from explicit PRNG keys (Gal & Ghahramani 2016, Sec. 4).

Every mask uses inverted scaling: a kept unit is multiplied by ``1 / (1 - p)`` and a
dropped one by 0, so the deterministic "dropout approximation" at evaluation time is
simply "no mask" (all ones).

Variational dropout draws **one mask per sequence** and holds it fixed over time. All
samplers here draw row ``b`` of a batch from ``fold_in(key, b)``, so a row's mask
depends only on ``(key, row index)``: not on the batch size, the number of devices, or
how the batch is sharded. ``sample_masks`` is the "one key -> one complete set of masks"
helper that a training window, an MC sample and a population member all use.

Rates may be Python floats (checked, and a rate of exactly 0 draws nothing and returns
``None`` from ``sample_masks``) or traced JAX scalars (for populations vmapped over
rates; ``bernoulli(1.0)`` is always 1, so a traced rate of 0 still gives exact ones).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

SCHEMES = ("variational", "naive", "none")


def check_rate(rate: Any, name: str = "rate") -> Any:
  """Returns ``rate`` if it is a probability in [0, 1); raises ValueError naming it.

  Traced values (inside ``jit``/``vmap``) cannot be inspected and pass through.
  """
  if isinstance(rate, jax.core.Tracer):
    return rate
  try:
    r = np.asarray(rate, dtype=np.float64)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a number in [0, 1), got {rate!r}") from None
  if r.size == 0 or not np.all(np.isfinite(r)) or np.any(r < 0) or np.any(r >= 1):
    raise ValueError(f"{name} must be a dropout probability in [0, 1), got {rate!r}")
  return rate


def is_zero(rate: Any) -> bool:
  """True when ``rate`` is a concrete 0 (so no mask needs to be drawn)."""
  if isinstance(rate, jax.core.Tracer):
    return False
  return bool(np.all(np.asarray(rate) == 0))


def dropout_mask(key: Array, shape: Sequence[int], rate: Any, dtype=jnp.float32) -> Array:
  """Inverted-dropout mask: entries are 0 (prob. ``rate``) or ``1 / (1 - rate)``.

  Args:
    key: PRNG key.
    shape: mask shape.
    rate: drop probability in [0, 1). ``rate == 0`` returns exactly ones.
  Returns:
    ``[*shape]`` array of ``dtype``.
  """
  check_rate(rate, "rate")
  if is_zero(rate):
    return jnp.ones(shape, dtype)
  keep = 1.0 - jnp.asarray(rate, jnp.float32)
  return jax.random.bernoulli(key, keep, tuple(shape)).astype(dtype) / keep.astype(dtype)


def per_row(key: Array, batch: int, shape: Sequence[int], rate: Any, dtype=jnp.float32) -> Array:
  """``[B, *shape]`` masks, row ``b`` drawn from ``fold_in(key, b)`` (one mask per sequence)."""
  check_rate(rate, "rate")
  if is_zero(rate):
    return jnp.ones((batch, *shape), dtype)
  rows = jnp.arange(batch, dtype=jnp.uint32)
  return jax.vmap(lambda b: dropout_mask(jax.random.fold_in(key, b), shape, rate, dtype))(rows)


def word_type_mask(key: Array, tokens: Array, rate: Any, *, shared_across_batch: bool = False,
                   dtype=jnp.float32) -> Array:
  """Gal's embedding dropout: drop whole word types, not single tokens.

  Within one row, every occurrence of the same token id gets the same value: one
  Bernoulli draw per (row, word type), taken from ``fold_in(fold_in(key, row), token)``.
  Rows are independent. With ``shared_across_batch=True`` (the AWD-LSTM variant of
  Merity et al. 2017) there is one draw per word type for the whole batch.

  Args:
    key: PRNG key.
    tokens: ``[B, T]`` integer token ids.
    rate: probability of dropping a word type, in [0, 1).
  Returns:
    ``[B, T]`` mask with entries 0 or ``1 / (1 - rate)``; multiply the embeddings by
    ``mask[..., None]``.
  """
  check_rate(rate, "rate")
  tokens = jnp.asarray(tokens)
  if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"tokens must be an integer array of shape [B, T], got {tokens.dtype}{list(tokens.shape)}")
  if is_zero(rate):
    return jnp.ones(tokens.shape, dtype)
  keep = 1.0 - jnp.asarray(rate, jnp.float32)
  B = tokens.shape[0]
  if shared_across_batch:
    row_keys = jnp.broadcast_to(key, (B, *key.shape))
  else:
    row_keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(B, dtype=jnp.uint32))

  def draw(k, tok):
    return jax.random.bernoulli(jax.random.fold_in(k, tok), keep)

  kept = jax.vmap(jax.vmap(draw, (None, 0)), (0, 0))(row_keys, tokens.astype(jnp.uint32))
  return kept.astype(dtype) / keep.astype(dtype)


def sample_masks(key: Array, rates: dict, tokens: Array, *, scheme: str, tied: bool,
                 layers: Sequence[tuple[int, int]], n_gates: int,
                 emb_shared_across_batch: bool = False) -> dict:
  """Draws every mask a (stacked) recurrent model needs, from one key, per sequence.

  Args:
    key: PRNG key; one key gives one complete set of masks.
    rates: ``{"emb", "x", "h", "out"}`` drop probabilities (floats or traced scalars):
      word-type embedding dropout, RNN-input dropout (every layer), recurrent dropout
      and dropout before the output layer (Gal's dropout_x / _i / _h / _o).
    tokens: ``[B, T]`` token ids of the window (for the word-type masks).
    scheme: ``"variational"`` (Gal), ``"naive"`` (Zaremba et al. 2014: fresh mask at
      every step on non-recurrent connections only; uses ``rates["x"]`` for the
      embedding output and between layers and ``rates["out"]`` before the softmax) or
      ``"none"``.
    tied: variational only. True: one mask shared by all gates; False: one per gate.
    layers: ``[(D_in, H), ...]`` per recurrent layer.
    n_gates: 4 for the LSTM, 3 for the GRU.
  Returns:
    A dict; absent masks are ``None``.
    variational: ``emb`` [B, T]; ``x[l]`` [B, D_l] (tied) or [G, B, D_l] (untied);
      ``h[l]`` [B, H_l] or [G, B, H_l]; ``out`` [B, H_L].
    naive: ``x_steps[l]`` [T, B, D_l]; ``out`` [T, B, H_L].
    none: all ``None``.
  """
  if scheme not in SCHEMES:
    raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
  for name in ("emb", "x", "h", "out"):
    check_rate(rates.get(name, 0.0), f"rates[{name!r}]")
  B, T = tokens.shape
  k_emb, k_x, k_h, k_out = jax.random.split(key, 4)
  L = len(layers)
  masks: dict = {"emb": None, "x": [None] * L, "h": [None] * L, "x_steps": [None] * L, "out": None}
  if scheme == "none":
    return masks
  H_last = layers[-1][1]

  def maybe(rate, fn):
    return None if is_zero(rate) else fn()

  if scheme == "naive":
    def steps(k, dim, rate):  # [T, B, dim]: a fresh mask at every time step, per row
      return jnp.swapaxes(per_row(k, B, (T, dim), rate), 0, 1)
    masks["x_steps"] = [maybe(rates["x"], lambda l=l, d=d: steps(jax.random.fold_in(k_x, l), d, rates["x"]))
                        for l, (d, _) in enumerate(layers)]
    masks["out"] = maybe(rates["out"], lambda: steps(k_out, H_last, rates["out"]))
    return masks

  # Variational: one mask per sequence, constant over the window's time steps.
  def const(k, dim, rate):
    if tied:
      return per_row(k, B, (dim,), rate)  # [B, dim]
    return jnp.swapaxes(per_row(k, B, (n_gates, dim), rate), 0, 1)  # [G, B, dim]

  masks["emb"] = maybe(rates["emb"], lambda: word_type_mask(
      k_emb, tokens, rates["emb"], shared_across_batch=emb_shared_across_batch))
  masks["x"] = [maybe(rates["x"], lambda l=l, d=d: const(jax.random.fold_in(k_x, l), d, rates["x"]))
                for l, (d, _) in enumerate(layers)]
  masks["h"] = [maybe(rates["h"], lambda l=l, h=h: const(jax.random.fold_in(k_h, l), h, rates["h"]))
                for l, (_, h) in enumerate(layers)]
  masks["out"] = maybe(rates["out"], lambda: per_row(k_out, B, (H_last,), rates["out"]))
  return masks
