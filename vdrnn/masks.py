"""Dropout masks drawn from explicit PRNG keys (Gal & Ghahramani 2016, Sec. 4).

Every mask uses inverted scaling by default: a kept unit is multiplied by ``1 / (1 - p)``
and a dropped one by 0, so the deterministic "dropout approximation" at evaluation time is
simply "no mask" (all ones). ``inverted=False`` gives the Keras 0.x fork's 0/1 masks
(Sentiment_analysis_code of the released code), whose deterministic pass multiplies by the
keep probability instead (``vdrnn.models.seq_apply``'s ``eval_keep``).

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

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

SCHEMES = ("variational", "naive", "none")
# A model config's rate fields and the rate keys of ``sample_masks``: the paper's four dropout
# sites (Gal's dropout_x / _i / _h / _o), then weight drop and zoneout.
RATE_FIELDS = {"p_emb": "emb", "p_x": "x", "p_h": "h", "p_out": "out", "p_weight_drop": "weight",
               "zoneout_c": "zone_c", "zoneout_h": "zone_h"}
DROPOUT_FIELDS = ("p_emb", "p_x", "p_h", "p_out")
ZONEOUT_FIELDS = ("zoneout_c", "zoneout_h")


def config_rates(model) -> dict:
  """``sample_masks``' rates from a model config (a field it lacks: rate 0).

  Args:
    model: a model config (a mapping with ``get``, e.g. a ``ConfigDict``) holding any of the
      ``RATE_FIELDS`` (``p_emb``, ``p_x``, ``p_h``, ``p_out``, ``p_weight_drop``,
      ``zoneout_c``, ``zoneout_h``).
  Returns:
    ``{"emb", "x", "h", "out", "weight", "zone_c", "zone_h"}``: the fields' values, 0.0 for
    those it lacks.
  """
  return {key: model.get(field, 0.0) for field, key in RATE_FIELDS.items()}


def _check_probability(rate: Any, name: str, closed: bool) -> Any:
  """``rate`` if every entry is a probability in [0, 1) (``closed``: [0, 1]); else ValueError
  naming it. Traced values pass through."""
  if isinstance(rate, jax.core.Tracer):
    return rate
  interval = "[0, 1]" if closed else "[0, 1)"
  try:
    r = np.asarray(rate, dtype=np.float64)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a number in {interval}, got {rate!r}") from None
  too_big = np.any(r > 1) if closed else np.any(r >= 1)
  if r.size == 0 or not np.all(np.isfinite(r)) or np.any(r < 0) or too_big:
    what = "probability" if closed else "dropout probability"
    raise ValueError(f"{name} must be a {what} in {interval}, got {rate!r}")
  return rate


def check_rate(rate: Any, name: str = "rate") -> Any:
  """Returns ``rate`` if it is a probability in [0, 1); raises ValueError naming it.

  Traced values (inside ``jit``/``vmap``) cannot be inspected and pass through.

  Args:
    rate: a Python or NumPy number, an array of them (every entry checked) or a traced scalar.
    name: the name the error message uses.
  Returns:
    ``rate`` itself, unchanged.
  """
  return _check_probability(rate, name, closed=False)


def is_zero(rate: Any) -> bool:
  """True when ``rate`` is a concrete 0 (so no mask needs to be drawn).

  Args:
    rate: a number, an array of numbers or a traced value.
  Returns:
    A Python bool: True when every entry of ``rate`` is 0; False for traced values.
  """
  if isinstance(rate, jax.core.Tracer):
    return False
  return bool(np.all(np.asarray(rate) == 0))


def dropout_mask(key: Array, shape: Sequence[int], rate: Any, dtype=jnp.float32, *,
                 inverted: bool = True) -> Array:
  """Inverted-dropout mask: entries are 0 (prob. ``rate``) or ``1 / (1 - rate)``.

  Args:
    key: PRNG key.
    shape: mask shape.
    rate: drop probability in [0, 1). ``rate == 0`` returns exactly ones.
    dtype: dtype of the mask.
    inverted: False: entries 0 or 1 (Keras 0.x, non-inverted dropout).
  Returns:
    ``[*shape]`` array of ``dtype``.
  """
  check_rate(rate, "rate")
  if is_zero(rate):
    return jnp.ones(shape, dtype)
  keep = 1.0 - jnp.asarray(rate, jnp.float32)
  kept = jax.random.bernoulli(key, keep, tuple(shape)).astype(dtype)
  return kept / keep.astype(dtype) if inverted else kept


def dropout_mask_bytes(key: Array, shape: Sequence[int], rate: Any, dtype=jnp.float32, *,
                       inverted: bool = True) -> Array:
  """``dropout_mask`` drawn from 8 random bits per entry (four entries per 32-bit draw), for
  the large per-step masks of the naive scheme: the threefry draws dominated a sentiment step
  (1.4 s of masks per batch at [T, G, B, D] = [200, 4, 128, 128] on the 2-core CPU). The keep
  probability is exact when ``256 * rate`` is an integer (0.5, 0.25, ...); any other rate, or a
  traced one, falls back to ``dropout_mask``.

  Args:
    key: PRNG key.
    shape: mask shape.
    rate: drop probability in [0, 1). ``rate == 0`` returns exactly ones.
    dtype: dtype of the mask.
    inverted: False: entries 0 or 1 (Keras 0.x, non-inverted dropout).
  Returns:
    ``[*shape]`` array of ``dtype``, entries 0 or ``1 / (1 - rate)`` (0 or 1 when not
    ``inverted``).
  """
  check_rate(rate, "rate")
  if is_zero(rate):
    return jnp.ones(shape, dtype)
  if isinstance(rate, jax.core.Tracer) or float(np.asarray(rate)) * 256 % 1 != 0:
    return dropout_mask(key, shape, rate, dtype, inverted=inverted)
  keep = 1.0 - float(np.asarray(rate))
  n = int(np.prod(shape))
  bits = jax.random.bits(key, (-(-n // 4),), jnp.uint32)
  byte = jnp.stack([(bits >> (8 * j)) & 0xFF for j in range(4)], axis=-1).reshape(-1)[:n]
  kept = (byte < round(256 * keep)).reshape(tuple(shape)).astype(dtype)  # P(kept) = keep exactly
  return kept / jnp.asarray(keep, dtype) if inverted else kept


CONCRETE_EPS = 1e-7


def concrete_mask(key: Array, shape: Sequence[int], rate: Any, temperature: float,
                  dtype=jnp.float32) -> Array:
  """Concrete dropout's relaxed mask (Gal, Hron & Kendall 2017, Sec. 3; the Concrete / relaxed
  Bernoulli of Maddison et al. and Jang et al.): ``(1 - z) / (1 - p)`` with

    z = sigmoid((log p - log(1 - p) + log u - log(1 - u)) / temperature),  u ~ U(0, 1),

  a mask that is differentiable in ``p`` (a traced, learned rate) and tends to the inverted
  Bernoulli mask as the temperature goes to 0 (the paper's temperature: 0.1).

  Args:
    key: PRNG key (draws ``u``).
    shape: mask shape.
    rate: the drop probability ``p``, a scalar (float or traced); not checked.
    temperature: the relaxation's temperature (> 0).
    dtype: dtype of the mask.
  Returns:
    ``[*shape]`` array of ``dtype`` with entries in ``(0, 1 / (1 - p))`` (already inverted).
  """
  eps = CONCRETE_EPS
  u = jax.random.uniform(key, tuple(shape), jnp.float32, eps, 1.0 - eps)
  p = jnp.asarray(rate, jnp.float32)
  logit = jnp.log(p + eps) - jnp.log(1.0 - p + eps) + jnp.log(u) - jnp.log(1.0 - u)
  return ((1.0 - jax.nn.sigmoid(logit / temperature)) / (1.0 - p)).astype(dtype)


def per_row(key: Array, batch: int, shape: Sequence[int], rate: Any, dtype=jnp.float32, *,
            inverted: bool = True, byte_draws: bool = False,
            concrete: Optional[float] = None) -> Array:
  """``[B, *shape]`` masks, row ``b`` drawn from ``fold_in(key, b)`` (one mask per sequence);
  ``byte_draws``: with ``dropout_mask_bytes``; ``concrete``: relaxed masks of that temperature
  (``concrete_mask``).

  Args:
    key: PRNG key.
    batch: B, the number of rows.
    shape: one row's mask shape, e.g. ``(D,)``, ``(G, D)`` or ``(T, D)``.
    rate: drop probability in [0, 1). A concrete 0 returns exactly ones (unless ``concrete``).
    dtype: dtype of the masks.
    inverted: False: entries 0 or 1 (Keras 0.x); ignored with ``concrete``.
    byte_draws: draw with ``dropout_mask_bytes`` instead of ``dropout_mask``.
    concrete: None, or a temperature: relaxed masks (``concrete_mask``), drawn even at rate 0.
  Returns:
    ``[B, *shape]`` array of ``dtype``.
  """
  check_rate(rate, "rate")
  rows = jnp.arange(batch, dtype=jnp.uint32)
  if concrete is not None:
    return jax.vmap(lambda b: concrete_mask(jax.random.fold_in(key, b), shape, rate, concrete,
                                            dtype))(rows)
  if is_zero(rate):
    return jnp.ones((batch, *shape), dtype)
  draw = dropout_mask_bytes if byte_draws else dropout_mask
  return jax.vmap(lambda b: draw(jax.random.fold_in(key, b), shape, rate, dtype,
                                 inverted=inverted))(rows)


def word_type_mask(key: Array, tokens: Array, rate: Any, *, shared_across_batch: bool = False,
                   dtype=jnp.float32, inverted: bool = True,
                   concrete: Optional[float] = None) -> Array:
  """Gal's embedding dropout: drop whole word types, not single tokens.

  Within one row, every occurrence of the same token id gets the same value: one
  Bernoulli draw per (row, word type), taken from ``fold_in(fold_in(key, row), token)``.
  Rows are independent. With ``shared_across_batch=True`` (the AWD-LSTM variant of
  Merity et al. 2017) there is one draw per word type for the whole batch.

  Args:
    key: PRNG key.
    tokens: ``[B, T]`` integer token ids.
    rate: probability of dropping a word type, in [0, 1).
    shared_across_batch: True: one draw per word type for the whole batch (every row uses
      ``key`` itself instead of ``fold_in(key, row)``).
    dtype: dtype of the mask.
    inverted: False: entries 0 or 1 (Keras 0.x).
    concrete: a temperature: relaxed masks (``concrete_mask``), one per (row, word type).
  Returns:
    ``[B, T]`` mask with entries 0 or ``1 / (1 - rate)`` (0 or 1 when not ``inverted``; relaxed
    values with ``concrete``); multiply the ``[B, T, E]`` embeddings by ``mask[..., None]``.
  """
  check_rate(rate, "rate")
  tokens = jnp.asarray(tokens)
  if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(
        f"tokens must be an integer array of shape [B, T], got {tokens.dtype}{list(tokens.shape)}")
  if is_zero(rate) and concrete is None:
    return jnp.ones(tokens.shape, dtype)
  keep = 1.0 - jnp.asarray(rate, jnp.float32)
  B = tokens.shape[0]
  if shared_across_batch:
    row_keys = jnp.broadcast_to(key, (B, *key.shape))
  else:
    row_keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(B, dtype=jnp.uint32))

  def draw(k, tok):
    if concrete is not None:
      return concrete_mask(jax.random.fold_in(k, tok), (), rate, concrete)
    return jax.random.bernoulli(jax.random.fold_in(k, tok), keep)

  # Rows in two halves of a loop, not one vmap: a loop's result is materialised, whereas XLA
  # fuses a vmapped draw into whatever consumes the mask and reruns the hash for every element
  # there (128 times per draw in an embedding [T, B, 128], 512 in a per-gate stack of it).
  row = lambda a: jax.vmap(lambda t: draw(a[0], t))(a[1])  # noqa: E731 - one row's [T] draws
  kept = jax.lax.map(row, (row_keys, tokens.astype(jnp.uint32)), batch_size=max(1, -(-B // 2)))
  if concrete is not None:  # already inverted
    return kept.astype(dtype)
  return kept.astype(dtype) / keep.astype(dtype) if inverted else kept.astype(dtype)


def check_zoneout(rate: Any, name: str = "zoneout rate") -> Any:
  """Returns ``rate`` if it is a probability in [0, 1] (1: every unit keeps its old value);
  raises ValueError naming it. Traced values pass through.

  Args:
    rate: a Python or NumPy number, an array of them (every entry checked) or a traced scalar.
    name: the name the error message uses.
  Returns:
    ``rate`` itself, unchanged.
  """
  return _check_probability(rate, name, closed=True)


def weight_drop_mask(key: Array, shape: Sequence[int], rate: Any, dtype=jnp.float32) -> Array:
  """DropConnect on a weight matrix (AWD-LSTM's weight drop, Merity et al. 2017): one
  inverted-dropout mask over the whole ``shape`` (e.g. the recurrent ``W_h [H, G*H]``), drawn once
  per call, i.e. per batch and forward pass, and shared by every row of the batch.

  Args:
    key: PRNG key.
    shape: the weight's shape, e.g. ``(H, G*H)``.
    rate: drop probability in [0, 1); 0 gives exactly ones.
    dtype: dtype of the mask.
  Returns:
    ``[*shape]`` (e.g. ``[H, G*H]``) array of ``dtype``, entries 0 or ``1 / (1 - rate)``.
  """
  return dropout_mask(key, shape, rate, dtype)


def zoneout_mask(key: Array, batch: int, steps: int, dim: int, rate: Any,
                 dtype=jnp.float32) -> Array:
  """Zoneout (Krueger et al. 2016): ``[T, B, dim]``, 1 where a unit keeps its previous value
  (probability ``rate``) and 0 where it takes the new one; fresh at every step, row ``b`` drawn
  from ``fold_in(key, b)``. Rate 0 gives zeros (the plain LSTM), rate 1 ones (the state held).

  Args:
    key: PRNG key.
    batch: B, the number of rows.
    steps: T, the number of time steps.
    dim: the state size (H).
    rate: probability in [0, 1] that a unit keeps its previous value (float or traced).
    dtype: dtype of the mask.
  Returns:
    ``[T, B, dim]`` array of ``dtype``, entries 0 or 1.
  """
  check_zoneout(rate, "rate")
  if is_zero(rate):
    return jnp.zeros((steps, batch, dim), dtype)
  if not isinstance(rate, jax.core.Tracer) and float(np.asarray(rate)) == 1.0:
    return jnp.ones((steps, batch, dim), dtype)
  rows = jnp.arange(batch, dtype=jnp.uint32)
  held = jax.vmap(lambda b: jax.random.bernoulli(jax.random.fold_in(key, b), rate,
                                                 (steps, dim)))(rows)
  return jnp.swapaxes(held, 0, 1).astype(dtype)


def sample_masks(key: Array, rates: dict, tokens: Array, *, scheme: str, tied: bool,
                 layers: Sequence[tuple[int, int]], n_gates: int,
                 emb_shared_across_batch: bool = False, naive_per_gate: bool = False,
                 inverted: bool = True, concrete: Optional[float] = None) -> dict:
  """Draws every mask a (stacked) recurrent model needs, from one key, per sequence.

  Args:
    key: PRNG key; one key gives one complete set of masks.
    rates: ``{"emb", "x", "h", "out"}`` drop probabilities (floats or traced scalars):
      word-type embedding dropout, RNN-input dropout (every layer), recurrent dropout
      and dropout before the output layer (Gal's dropout_x / _i / _h / _o); optionally
      ``"weight"`` (weight drop on every layer's ``W_h``) and ``"zone_c"`` / ``"zone_h"``
      (zoneout of the LSTM cell and hidden state), with any scheme, ``"none"`` included.
    tokens: ``[B, T]`` token ids of the window (for the word-type masks).
    scheme: ``"variational"`` (Gal), ``"naive"`` (a fresh mask at every time step) or
      ``"none"``. Naive uses ``rates["x"]`` for the embedding output and between layers
      and ``rates["out"]`` before the output layer (Zaremba et al. 2014, whose PTB naive
      has ``h = emb = 0``); a nonzero ``rates["h"]`` also drops the recurrent state with a
      fresh mask per step and a nonzero ``rates["emb"]`` drops word types as the
      variational scheme does: the released sentiment naive scripts
      (``sentiment_{lstm,gru}_regression_naive.py``: ``NaiveDropoutLSTM`` /
      ``NaiveDropoutGRU`` with p_U = 0.5 and ``DropoutEmbedding`` with p_emb = 0.5).
    tied: variational only. True: one mask shared by all gates; False: one per gate.
    layers: ``[(D_in, H), ...]`` per recurrent layer.
    n_gates: 4 for the LSTM, 3 for the GRU.
    emb_shared_across_batch: word-type masks drawn once for the whole batch.
    naive_per_gate: naive only. False: one mask per step shared by the gates (dropout on
      the layer's input, Zaremba); True: one mask per step *and gate*, as the Keras fork's
      ``NaiveDropoutLSTM`` / ``GRU`` draw them (``B_W`` [G, T, B, D], ``B_U`` [T, G, B, H]).
    inverted: False: 0/1 masks (the Keras 0.x fork's non-inverted dropout).
    concrete: variational only: a temperature, for concrete dropout's relaxed masks
      (``concrete_mask``), differentiable in the rates; ``rates["x"]`` and ``rates["h"]`` may
      then also be sequences with one (learned) rate per layer.
  Returns:
    A dict; absent masks are ``None``.
    variational: ``emb`` [B, T]; ``x[l]`` [B, D_l] (tied) or [G, B, D_l] (untied);
      ``h[l]`` [B, H_l] or [G, B, H_l]; ``out`` [B, H_L].
    naive: ``emb`` [B, T]; ``x_steps[l]`` [T, B, D_l] or [T, G, B, D_l] (per gate);
      ``h_steps[l]`` [T, B, H_l] or [T, G, B, H_l]; ``out`` [T, B, H_L].
    none: all ``None``.
    Any scheme: ``w_h[l]`` [H_l, G*H_l] (weight drop, one per call); ``zone_c[l]`` and
      ``zone_h[l]`` [T, B, H_l] (zoneout, fresh per step and row); ``None`` at rate 0.
  """
  if scheme not in SCHEMES:
    raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
  for name in ("emb", "x", "h", "out", "weight"):
    r = rates.get(name, 0.0)
    for i, ri in enumerate(r if isinstance(r, (list, tuple)) else [r]):
      check_rate(ri, f"rates[{name!r}]" + (f"[{i}]" if isinstance(r, (list, tuple)) else ""))
  if concrete is not None and scheme != "variational":
    raise ValueError(f"concrete (relaxed) masks are variational masks, not {scheme!r}")
  for name in ("zone_c", "zone_h"):
    check_zoneout(rates.get(name, 0.0), f"rates[{name!r}]")
  B, T = tokens.shape
  k_emb, k_x, k_h, k_out = jax.random.split(key, 4)
  L = len(layers)
  masks: dict = {"emb": None, "x": [None] * L, "h": [None] * L, "x_steps": [None] * L,
                 "h_steps": [None] * L, "out": None}

  def maybe(rate, fn):
    return None if is_zero(rate) and concrete is None else fn()

  def layer_rate(name, l):  # one rate for every layer, or one per layer
    r = rates.get(name, 0.0)
    return r[l] if isinstance(r, (list, tuple)) else r

  # Weight drop and zoneout from keys of their own: the other masks keep their draws.
  k_w, k_zc, k_zh = jax.random.split(jax.random.fold_in(key, 0x5EED), 3)
  w_rate, zc, zh = rates.get("weight", 0.0), rates.get("zone_c", 0.0), rates.get("zone_h", 0.0)
  hidden = [h for _, h in layers]
  masks["w_h"] = [maybe(w_rate, lambda l=l, h=h: weight_drop_mask(
      jax.random.fold_in(k_w, l), (h, n_gates * h), w_rate)) for l, h in enumerate(hidden)]
  masks["zone_c"] = [maybe(zc, lambda l=l, h=h: zoneout_mask(
      jax.random.fold_in(k_zc, l), B, T, h, zc)) for l, h in enumerate(hidden)]
  masks["zone_h"] = [maybe(zh, lambda l=l, h=h: zoneout_mask(
      jax.random.fold_in(k_zh, l), B, T, h, zh)) for l, h in enumerate(hidden)]
  if scheme == "none":
    return masks
  H_last = layers[-1][1]

  masks["emb"] = maybe(rates.get("emb", 0.0), lambda: word_type_mask(
      k_emb, tokens, rates["emb"], shared_across_batch=emb_shared_across_batch, inverted=inverted,
      concrete=concrete))

  if scheme == "naive":
    def steps(k, dim, rate, per_gate, fast):  # a fresh mask at every time step, per row
      if per_gate:  # [T, G, B, dim]
        m = per_row(k, B, (T, n_gates, dim), rate, inverted=inverted, byte_draws=fast)
        return jnp.transpose(m, (1, 2, 0, 3))
      m = per_row(k, B, (T, dim), rate, inverted=inverted, byte_draws=fast)
      return jnp.swapaxes(m, 0, 1)  # [T, B, dim]
    # Zaremba's masks (shared by the gates) keep their threefry draws; the per-gate input masks
    # and the recurrent ones (the released sentiment naive) use byte draws.
    masks["x_steps"] = [maybe(rates["x"], lambda l=l, d=d: steps(
        jax.random.fold_in(k_x, l), d, rates["x"], naive_per_gate, naive_per_gate))
                        for l, (d, _) in enumerate(layers)]
    masks["h_steps"] = [maybe(rates.get("h", 0.0), lambda l=l, h=h: steps(
        jax.random.fold_in(k_h, l), h, rates["h"], naive_per_gate, True))
                        for l, (_, h) in enumerate(layers)]
    masks["out"] = maybe(rates["out"], lambda: steps(k_out, H_last, rates["out"], False, False))
    return masks

  # Variational: one mask per sequence, constant over the window's time steps.
  def const(k, dim, rate):
    if tied:
      return per_row(k, B, (dim,), rate, inverted=inverted, concrete=concrete)  # [B, dim]
    return jnp.swapaxes(per_row(k, B, (n_gates, dim), rate, inverted=inverted, concrete=concrete),
                        0, 1)  # [G, B, dim]

  masks["x"] = [maybe(layer_rate("x", l), lambda l=l, d=d: const(
      jax.random.fold_in(k_x, l), d, layer_rate("x", l))) for l, (d, _) in enumerate(layers)]
  masks["h"] = [maybe(layer_rate("h", l), lambda l=l, h=h: const(
      jax.random.fold_in(k_h, l), h, layer_rate("h", l))) for l, (_, h) in enumerate(layers)]
  masks["out"] = maybe(rates["out"], lambda: per_row(k_out, B, (H_last,), rates["out"],
                                                     inverted=inverted, concrete=concrete))
  return masks
