"""Pure LSTM and GRU scans with variational (per-sequence, time-constant) dropout masks.

Masks are arguments; nothing here draws random numbers. A mask is either

* tied: one mask shared by all gates, ``[B, D]`` for the input and ``[B, H]`` for the
  recurrent state (one fused matmul per step), or
* untied: one mask per gate, ``[G, B, D]`` and ``[G, B, H]`` (G = 4 for the LSTM, 3 for
  the GRU); gate k then sees ``x * mask_x[k]`` and ``h * mask_h[k]`` (Gal & Ghahramani
  2016, Eq. 7-8).

``None`` means no dropout. Because a variational input mask is constant over time and
the input does not depend on ``h``, the masked input projection ``(x_t * m_x) W_x + b``
is computed for all T steps in one matmul before the scan; only ``(h_{t-1} * m_h) W_h``
stays inside it.

``compute_dtype`` (e.g. ``jnp.bfloat16``) casts matmul operands and accumulates in
float32; the state and gate non-linearities stay float32.

Per-step masks (``mask_x_steps`` / ``mask_h_steps``, a fresh mask at every time step: the
released sentiment code's naive dropout) and the Keras 0.x fork's non-linearities
(``gate_act="hard_sigmoid"``; the GRU's ``candidate_act="sigmoid"``) are options; the
defaults are the modern ones (sigmoid gates, tanh candidate).

The backward passes over the loop are written by hand (``jax.custom_vjp``): plain autodiff of
``lax.scan`` adds the recurrent-weight gradient ``(h_{t-1} * m_h)^T dz_t`` into a ``[H, 4H]``
accumulator at every step (T rank-B updates); here the LSTM's backward scan only carries
``(dc, dh)`` and emits ``dz_t``, and ``dW_h`` is one ``[H, T*B] @ [T*B, 4H]`` matmul after it.
The GRU's likewise carries only ``dh`` and emits the pre-activation gradients ``(dz, dr, dn)``
of each step; ``dW_h`` is then ``(h_{t-1} * m_zr)^T [dz, dr]`` for the z and r gates and, since
the candidate multiplies ``(r * h_n) W_hn``, ``(r * h_{t-1} * m_n)^T dn`` for ``W_hn``: large
``[H, T*B] @ [T*B, .]`` matmuls (one batched matmul over the gates for untied masks). Its input
pre-activations for per-gate input masks stay gate-first ``[3, T, B, H]`` (the batched
matmul's layout), read and written in place by both loops. Same gradients up to float rounding
(tests/test_bench.py and tests/test_gru.py check them against autodiff, the latter also against
a NumPy reference).
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from vdrnn import pallas_lstm

Array = jax.Array


def _mask_kind(name: str, mask: Optional[Array], B: int, D: int, G: int) -> Optional[str]:
  """'tied', 'untied' or None; ValueError naming ``name`` for any other shape."""
  if mask is None:
    return None
  shape = tuple(mask.shape)
  if shape == (B, D):
    return "tied"
  if shape == (G, B, D):
    return "untied"
  raise ValueError(f"{name} must have shape [B, D] = {[B, D]} (tied) or [{G}, B, D] = {[G, B, D]} "
                   f"(untied, one per gate), got {list(shape)}")


def _check_params(params: dict, D: int, H: int, G: int) -> None:
  want = {"w_x": (D, G * H), "w_h": (H, G * H), "b": (G * H,)}
  for k, shape in want.items():
    if k not in params:
      raise ValueError(f"params is missing {k!r} (expected keys {sorted(want)})")
    if tuple(params[k].shape) != shape:
      raise ValueError(f"params[{k!r}] must have shape {list(shape)}, got {list(params[k].shape)}")


def _cast(a: Array, dtype) -> Array:
  return a if dtype is None else a.astype(dtype)


GATE_ACTS = ("sigmoid", "hard_sigmoid")
CANDIDATE_ACTS = ("tanh", "sigmoid")


def hard_sigmoid(x: Array) -> Array:
  """Theano's / Keras 0.x ``hard_sigmoid``: ``clip(0.2 x + 0.5, 0, 1)`` (the released sentiment
  code's gate activation, the fork's default ``inner_activation``).

  Args:
    x: pre-activations, any shape.
  Returns:
    An array of ``x``'s shape with entries in [0, 1].
  """
  return jnp.clip(0.2 * x + 0.5, 0.0, 1.0)


def activation(name: str):
  """``sigmoid`` | ``hard_sigmoid`` | ``tanh`` as a function.

  Args:
    name: ``"sigmoid"``, ``"hard_sigmoid"`` or ``"tanh"``; any other name raises ValueError.
  Returns:
    The element-wise function (``jax.nn.sigmoid``, ``hard_sigmoid`` or ``jnp.tanh``): an
    array of any shape to one of the same shape.
  """
  acts = {"sigmoid": jax.nn.sigmoid, "hard_sigmoid": hard_sigmoid, "tanh": jnp.tanh}
  if name not in acts:
    raise ValueError(f"activation must be one of {sorted(acts)}, got {name!r}")
  return acts[name]


def _dgate(a: Array, name: str) -> Array:
  """Derivative of gate activation ``name`` at the point where it took the value ``a``."""
  if name == "sigmoid":
    return a * (1.0 - a)
  return jnp.where((a > 0.0) & (a < 1.0), 0.2, 0.0).astype(a.dtype)  # hard_sigmoid


def _check_acts(gate_act: str, candidate_act: str = "tanh") -> None:
  if gate_act not in GATE_ACTS:
    raise ValueError(f"gate_act must be one of {GATE_ACTS}, got {gate_act!r}")
  if candidate_act not in CANDIDATE_ACTS:
    raise ValueError(f"candidate_act must be one of {CANDIDATE_ACTS}, got {candidate_act!r}")


def _step_mask_kind(name: str, mask: Optional[Array], T: int, B: int, D: int, G: int,
                    const: Optional[Array]) -> Optional[str]:
  """'shared' ([T, B, D]), 'per_gate' ([T, G, B, D]) or None; ValueError for other shapes or
  when the time-constant mask ``const`` is given too."""
  if mask is None:
    return None
  if const is not None:
    raise ValueError(f"give {name} or its time-constant counterpart, not both")
  shape = tuple(mask.shape)
  if shape == (T, B, D):
    return "shared"
  if shape == (T, G, B, D):
    return "per_gate"
  raise ValueError(f"{name} must have shape [T, B, D] = {[T, B, D]} or [T, {G}, B, D] = "
                   f"{[T, G, B, D]} (a fresh mask per step, shared by the gates or one per gate), "
                   f"got {list(shape)}")


def matmul(x: Array, w: Array, compute_dtype=None) -> Array:
  """``x [..., K] @ w [K, N]``, with a backward pass of two plain row-major GEMMs:
  ``dx = g @ w^T`` and ``dw = x^T @ g`` with ``x^T [K, M]`` materialised first (XLA:CPU
  otherwise transposes the larger ``g [M, N]`` or falls back to a slower dot).

  With ``compute_dtype`` (bfloat16) the operands are cast to it and products accumulate
  in float32, in the backward pass too: the float32 cotangent is cast as well, so both
  gradient matmuls also run in ``compute_dtype`` (plain autodiff would upcast the weights
  and run them in float32).

  Args:
    x: ``[..., K]`` left operand (any number of leading axes, e.g. ``[T, B, K]``).
    w: ``[K, N]`` right operand.
    compute_dtype: operand dtype (e.g. ``jnp.bfloat16``), None for the operands' own.
  Returns:
    ``[..., N]``: float32 with ``compute_dtype``, otherwise ``jnp.result_type(x, w)``. The
    gradients come back in the dtypes of ``x`` and ``w``.
  """
  return _matmul(x, w, compute_dtype, False)


def _matmul_fwd(x, w, dtype, batched):
  xc, wc = _cast(x, dtype), _cast(w, dtype)
  pet = None if dtype is None else jnp.float32
  spec = "gmk,gkn->gmn" if batched else "...k,kn->...n"
  out = jnp.einsum(spec, xc, wc, preferred_element_type=pet)
  return out, (xc, wc, jnp.zeros((), x.dtype), jnp.zeros((), w.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _matmul(x, w, dtype, batched):
  """``matmul`` (``batched=False``) and ``gate_matmul`` (True): one custom VJP for both."""
  return _matmul_fwd(x, w, dtype, batched)[0]


def _matmul_bwd(dtype, batched, res, g):
  xc, wc, x_type, w_type = res
  g = _cast(g, dtype)
  pet = None if dtype is None else jnp.float32
  if batched:  # per gate: dx = g W_k^T, dW_k = x_k^T g_k, each one batched matmul
    dx = jnp.einsum("gmn,gkn->gmk", g, wc, preferred_element_type=pet)
    dw = jnp.einsum("gmk,gmn->gkn", xc, g, preferred_element_type=pet)
  else:
    dx = jnp.einsum("...n,kn->...k", g, wc, preferred_element_type=pet)
    dw = jnp.dot(transposed(xc.reshape(-1, xc.shape[-1])), g.reshape(-1, g.shape[-1]),
                 preferred_element_type=pet)
  return dx.astype(x_type.dtype), dw.astype(w_type.dtype)


def transposed(x: Array) -> Array:
  """``x.T`` of a 2-D ``[M, K]`` array as a row-major ``[K, M]`` copy, made by a gather that
  XLA cannot fold into the dot that consumes it.

  A weight gradient ``x^T @ g`` contracts the leading (row) axis of both operands. Written
  as ``x.T @ g`` (or with an optimisation barrier), XLA:CPU folds the transpose into the
  dot's dimension numbers; the non-canonical dot then runs slower, and a bfloat16 one is
  upcast to float32 (no AMX). Measured on the 2-core Xeon for ``[700, 650]^T @ [700, 10000]``:
  bfloat16 46 ms -> 14 ms, float32 42 ms -> 36 ms (``x`` is small, so the copy is cheap).

  Args:
    x: ``[M, K]`` array.
  Returns:
    ``[K, M]``, equal to ``x.T``, in ``x``'s dtype.
  """
  M, K = x.shape
  idx = (np.arange(K, dtype=np.int32)[:, None] +
         np.arange(M, dtype=np.int32)[None, :] * K).reshape(-1)
  return jnp.take(x.reshape(-1), jnp.asarray(idx), unique_indices=True).reshape(K, M)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def gate_matmul(x: Array, w: Array, compute_dtype=None) -> Array:
  """One matmul per gate, batched over the gate axis: ``x [G, M, K] @ w [G, K, N] -> [G, M, N]``.

  The untied (per-gate) masks give each gate its own input rows, so the per-gate products are
  one batched matmul rather than G separate ones: on the 2-core CPU at the sentiment shapes
  (``[4, 25600, 128] @ [4, 128, 128]``) the batched forward, input-gradient and weight-gradient
  products ran 1.4x, 2.2x and 3.2x faster than G separate ``matmul`` calls. ``compute_dtype``
  as in ``matmul`` (both backward products in it too).

  Args:
    x: ``[G, M, K]``, one row block per gate.
    w: ``[G, K, N]``, one weight block per gate.
    compute_dtype: operand dtype (e.g. ``jnp.bfloat16``), None for the operands' own.
  Returns:
    ``[G, M, N]`` with ``result[k] == x[k] @ w[k]``: float32 with ``compute_dtype``,
    otherwise ``jnp.result_type(x, w)``.
  """
  return _matmul(x, w, compute_dtype, True)


def _stack_gates(parts: list) -> Array:
  """``jnp.stack(parts)``: the gates' masked copies of one input. Their gradient is then the sum
  of the slices ``sum_k d[k] * m[k]``; written as a broadcast product ``x[None] * m`` it would be
  a multiply and a reduce over the gate axis, which XLA:CPU fuses into the matmul that produces
  ``d`` (a kernel 2.5x slower than the matmul and the sum apart; no barrier survives on the
  CPU)."""
  return jnp.stack(parts)


def input_projection(xs: Array, w_x: Array, b: Array, mask_x: Optional[Array], G: int,
                     compute_dtype=None, gate_major: bool = False,
                     mask_x_steps: Optional[Array] = None) -> Array:
  """All-steps input pre-activations ``[T, B, G*H]``, or ``[T, G, B, H]`` with ``gate_major``.

  tied / none: ``(x_t * m) @ W_x + b``; untied: gate k uses ``(x_t * m[k]) @ W_x[:, kH:(k+1)H]``.
  ``mask_x_steps`` (instead of ``mask_x``): ``[T, B, D]`` multiplies ``x_t`` by its step's mask;
  ``[T, G, B, D]`` gives gate k the mask ``mask_x_steps[t, k]``.

  Args:
    xs: ``[T, B, D]`` inputs.
    w_x: ``[D, G*H]`` input kernel, gate blocks of H columns.
    b: ``[G*H]`` bias.
    mask_x: ``None``, ``[B, D]`` (tied) or ``[G, B, D]`` (untied, one per gate). Shapes are
      not checked here (``lstm`` / ``gru`` check them).
    G: number of gates (4 for the LSTM, 3 for the GRU).
    compute_dtype: matmul operand dtype (None = the inputs' dtype), as in ``matmul``.
    gate_major: return ``[T, G, B, H]`` rather than ``[T, B, G*H]``.
    mask_x_steps: ``None``, ``[T, B, D]`` or ``[T, G, B, D]``, a fresh mask per step (given
      instead of ``mask_x``).
  Returns:
    float32 pre-activations ``[T, B, G*H]``, or ``[T, G, B, H]`` with ``gate_major``.
  """
  T, B, D = xs.shape
  H = w_x.shape[1] // G
  if mask_x_steps is not None and mask_x_steps.ndim == 3:
    xs, mask_x_steps = xs * mask_x_steps, None
  if mask_x_steps is None and (mask_x is None or mask_x.ndim == 2):
    out = matmul(xs if mask_x is None else xs * mask_x, w_x, compute_dtype).astype(jnp.float32) + b
    return out.reshape(T, B, G, H).transpose(0, 2, 1, 3) if gate_major else out
  # untied or per gate and step: gate k's rows are x_t * m[k]; one batched matmul over the gates
  gate_mask = (lambda k: mask_x[k]) if mask_x_steps is None else (lambda k: mask_x_steps[:, k])
  xm = _stack_gates([xs * gate_mask(k) for k in range(G)])  # [G, T, B, D]
  out = gate_matmul(xm.reshape(G, T * B, D), _per_gate(w_x, G), compute_dtype)
  out = out.astype(jnp.float32).reshape(G, T, B, H) + b.reshape(G, 1, 1, H)
  if gate_major:
    return jnp.swapaxes(out, 0, 1)                          # [T, G, B, H]
  return out.transpose(1, 2, 0, 3).reshape(T, B, G * H)


def _recurrent(h: Array, w_h: Array, mask_h: Optional[Array], G: int, compute_dtype) -> Array:
  """``[B, G*H]`` recurrent pre-activations; ``w_h`` is [H, G*H] (tied) or [G, H, H] (untied)."""
  pet = jnp.float32 if compute_dtype is not None else None
  if mask_h is None or mask_h.ndim == 2:
    hm = h if mask_h is None else h * mask_h
    return jnp.dot(_cast(hm, compute_dtype), w_h, preferred_element_type=pet)
  hm = h[None] * mask_h  # [G, B, H]
  B, H = h.shape
  # Gate-major output, then transposed: XLA:CPU runs "gbh,ghk->bgk" twice as slowly.
  out = jnp.einsum("gbh,ghk->gbk", _cast(hm, compute_dtype), w_h, preferred_element_type=pet)
  return out.transpose(1, 0, 2).reshape(B, G * H)


def _per_gate(w_h: Array, G: int) -> Array:
  """[K, G*H] -> [G, K, H], so that ``result[k] == w_h[:, kH:(k+1)H]``.

  Stacked column blocks rather than ``reshape(K, G, H).transpose(1, 0, 2)``: XLA:CPU
  copies the latter through a strided layout, 3-5x slower at ``[650, 2600]``."""
  H = w_h.shape[1] // G
  return jnp.stack([w_h[:, k * H:(k + 1) * H] for k in range(G)])


def _check_valid(valid: Optional[Array], T: int, B: int) -> None:
  if valid is not None and tuple(valid.shape) != (T, B):
    raise ValueError(f"valid must have shape [T, B] = {[T, B]}, got {list(valid.shape)}")


def lstm(params: dict, carry: tuple[Array, Array], xs: Array, mask_x: Optional[Array] = None,
         mask_h: Optional[Array] = None, *, valid: Optional[Array] = None, unroll: int = 1,
         compute_dtype=None, hoist_input: bool = True, mask_x_steps: Optional[Array] = None,
         mask_h_steps: Optional[Array] = None, gate_act: str = "sigmoid", impl: str = "scan",
         pallas_config: Optional[pallas_lstm.Config] = None, mask_w: Optional[Array] = None,
         zone_c=None, zone_h=None) -> tuple[tuple[Array, Array], Array]:
  """One LSTM layer over a sequence, gate order (i, f, g, o).

  Equations (per step t, masks fixed over t)::

    [i, f, g, o] = (x_t * m_x) W_x + (h_{t-1} * m_h) W_h + b        (per gate k for untied masks)
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(c_t)

  Args:
    params: ``{"w_x": [D, 4H], "w_h": [H, 4H], "b": [4H]}``.
    carry: ``(c, h)``, each ``[B, H]``.
    xs: ``[T, B, D]`` inputs.
    mask_x: ``None``, ``[B, D]`` (tied) or ``[4, B, D]`` (untied).
    mask_h: ``None``, ``[B, H]`` (tied) or ``[4, B, H]`` (untied).
    valid: optional ``[T, B]`` bool; at a step where it is False the carry is left
      unchanged (used for padded sequences; output at that step is the old ``h``).
    unroll: ``lax.scan`` unroll factor.
    compute_dtype: matmul operand dtype (None = the inputs' dtype).
    hoist_input: True (training): the input projection of all T steps is one matmul
      before the scan, and the backward pass is the hand-written one. False (large
      batches, e.g. MC evaluation with thousands of sample rows): each step does one
      fused matmul ``[x_t * m_x, h * m_h] @ [W_x; W_h]``, so no ``[T, B, 4H]``
      intermediate exists (plain autodiff if differentiated). Same values either way.
    mask_x_steps: instead of ``mask_x``, a fresh input mask per step: ``[T, B, D]`` or one
      per gate ``[T, 4, B, D]`` (the hoisted input projection is always used).
    mask_h_steps: instead of ``mask_h``, a fresh recurrent mask per step: ``[T, B, H]`` or
      ``[T, 4, B, H]`` (released sentiment code, ``NaiveDropoutLSTM``); scanned with the
      inputs, through the same hand-written backward pass.
    gate_act: ``sigmoid`` or ``hard_sigmoid`` (Keras 0.x) for the i, f, o gates.
    impl: ``"scan"`` (``lax.scan``; the CPU path and the reference) or ``"pallas"``: the
      time loop as one Pallas kernel with a matching backward kernel
      (``vdrnn.pallas_lstm``; for the GPU, interpret mode on the CPU). Needs
      ``hoist_input``; ``unroll`` does not apply to it.
    pallas_config: kernel parameters for ``impl="pallas"`` (default ``pallas_lstm.Config()``).
    mask_w: weight drop (DropConnect on ``W_h``, AWD-LSTM): ``[H, 4H]``, multiplies ``W_h`` for
      every row and step (``masks.weight_drop_mask``); None in the dropout approximation.
    zone_c, zone_h: zoneout (Krueger et al. 2016) of the cell and the hidden state: per step
      ``c_t = z_c * c_{t-1} + (1 - z_c) * c_new`` and ``h_t = z_h * h_{t-1} + (1 - z_h) * h_new``,
      with ``h_new = o * tanh(c_new)`` from the un-zoned ``c_new``. ``[T, B, H]`` masks (1:
      keep the old value; ``masks.zoneout_mask``) while training, or a scalar rate for the
      expectation at evaluation. Runs the per-step fused matmul (``hoist_input`` does not
      apply) under plain autodiff.
  Returns:
    ``((c_T, h_T), ys)`` with ys ``[T, B, H]``.
  """
  c0, h0 = carry
  if xs.ndim != 3:
    raise ValueError(f"xs must have shape [T, B, D], got {list(xs.shape)}")
  T, B, D = xs.shape
  H = h0.shape[-1]
  if tuple(c0.shape) != (B, H) or tuple(h0.shape) != (B, H):
    raise ValueError(
        f"carry must be (c, h) each of shape [B, H] = {[B, H]}, got {list(c0.shape)}, "
        f"{list(h0.shape)}"
    )
  _check_params(params, D, H, 4)
  kind_h = _mask_kind("mask_h", mask_h, B, H, 4)
  _mask_kind("mask_x", mask_x, B, D, 4)
  _step_mask_kind("mask_x_steps", mask_x_steps, T, B, D, 4, mask_x)
  kind_h_steps = _step_mask_kind("mask_h_steps", mask_h_steps, T, B, H, 4, mask_h)
  _check_valid(valid, T, B)
  _check_acts(gate_act)
  if impl not in ("scan", "pallas"):
    raise ValueError(f"impl must be 'scan' or 'pallas', got {impl!r}")
  params = _weight_dropped(params, mask_w, H, 4)
  zoned = zone_c is not None or zone_h is not None
  for name, z in (("zone_c", zone_c), ("zone_h", zone_h)):
    if z is not None and jnp.shape(z) not in ((), (T, B, H)):
      raise ValueError(f"{name} must be a scalar rate or have shape [T, B, H] = {[T, B, H]}, "
                       f"got {list(jnp.shape(z))}")
  if impl == "pallas":
    steps = mask_x_steps is not None or mask_h_steps is not None
    if zoned:
      raise ValueError("impl='pallas' has no zoneout; use impl='scan'")
    if not hoist_input or steps or gate_act != "sigmoid":
      raise ValueError("impl='pallas' runs on hoisted input pre-activations with sigmoid gates and "
                       "per-sequence masks: it needs hoist_input=True, no per-step masks")
    gx = input_projection(xs, params["w_x"], params["b"], mask_x, 4, compute_dtype, gate_major=True)
    w_h = _cast(_per_gate(params["w_h"], 4), compute_dtype)
    return pallas_lstm.lstm_recurrence(gx, w_h, c0, h0, mask_h, valid,
                                       cfg=pallas_config or pallas_lstm.Config())
  if not hoist_input or zoned:
    return _lstm_fused_scan(params, c0, h0, xs, mask_x, mask_h, valid, unroll, compute_dtype,
                            gate_act, mask_x_steps, mask_h_steps, zone_c, zone_h)
  # Untied recurrent masks: the recurrence runs gate-major, gx [T, 4, B, H] and W_h [4, H, H],
  # so that each step's batched matmul output feeds the gates without a transpose.
  untied = kind_h == "untied" or kind_h_steps == "per_gate"
  gx = input_projection(xs, params["w_x"], params["b"], mask_x, 4, compute_dtype, gate_major=untied,
                        mask_x_steps=mask_x_steps)
  w_h = _cast(_per_gate(params["w_h"], 4) if untied else params["w_h"], compute_dtype)
  steps = mask_h_steps is not None
  return _lstm_recurrence(gx, w_h, c0, h0, mask_h_steps if steps else mask_h, valid, unroll,
                          compute_dtype, gate_act, steps)


def _fused_xh(x, h, mx, mh, untied: bool):
  """``[x * m_x, h * m_h]``: ``[4, B, D+H]`` (untied, one row block per gate) or ``[B, D+H]``."""
  xm = x if mx is None else x * mx
  hm = h if mh is None else h * mh
  if untied:
    B = x.shape[0]
    xm = jnp.broadcast_to(xm, (4, B, x.shape[-1]))
    hm = jnp.broadcast_to(hm, (4, B, h.shape[-1]))
  return jnp.concatenate([xm, hm], -1)


def _weight_dropped(params: dict, mask_w: Optional[Array], H: int, G: int) -> dict:
  """``params`` with ``W_h`` times the weight-drop mask ``[H, G*H]`` (None: unchanged)."""
  if mask_w is None:
    return params
  if tuple(mask_w.shape) != (H, G * H):
    raise ValueError(f"mask_w must have shape [H, {G}H] = {[H, G * H]}, got {list(mask_w.shape)}")
  return {**params, "w_h": params["w_h"] * mask_w}


def _lstm_fused_scan(params, c0, h0, xs, mask_x, mask_h, valid, unroll, compute_dtype,
                     gate_act="sigmoid", mask_x_steps=None, mask_h_steps=None, zone_c=None,
                     zone_h=None):
  """``lstm(..., hoist_input=False)``: per step ``z = [x_t * m_x, h * m_h] @ [W_x; W_h] + b``
  (tied or no masks: one ``[B, D+H] @ [D+H, 4H]`` matmul; untied or per gate: one batched
  ``[4, B, D+H] @ [4, D+H, H]`` matmul, gate-major). Per-step masks (``mask_*_steps``) are
  scanned with the inputs. No ``[T, ., B, .]`` intermediate exists in either direction: the
  backward pass (``_fused_bwd``) recomputes each step's ``[x_t * m_x, h * m_h]`` and adds its
  rank-B product with ``dz_t`` into ``dW`` inside the reverse loop."""
  untied = any(m is not None and m.ndim == 3 for m in (mask_x, mask_h)) or any(
      m is not None and m.ndim == 4 for m in (mask_x_steps, mask_h_steps))
  w = jnp.concatenate([params["w_x"], params["w_h"]], axis=0)  # [D+H, 4H]
  w = _per_gate(w, 4) if untied else w                          # [4, D+H, H]
  if zone_c is not None or zone_h is not None:  # zoneout: plain autodiff of the forward scan
    return _fused_fwd_scan(w, params["b"], c0, h0, xs, mask_x, mask_h, mask_x_steps,
                           mask_h_steps, valid, unroll, compute_dtype, gate_act, untied,
                           keep=False, zone_c=zone_c, zone_h=zone_h)
  return _fused_recurrence(w, params["b"], c0, h0, xs, mask_x, mask_h, mask_x_steps,
                           mask_h_steps, valid, unroll, compute_dtype, gate_act, untied)


def _fused_step_masks(mask_x, mask_h, mx_t, mh_t, B, D, H, untied):
  """A step's masks for the fused matmul: the time-constant one or the step's. ``untied``: each
  as ``[4, B, .]`` (a mask shared by the gates repeated, ones where there is none)."""
  mx = mask_x if mx_t is None else mx_t
  mh = mask_h if mh_t is None else mh_t
  if not untied:
    return mx, mh
  as_gates = lambda m, n: (jnp.ones((4, 1, n), jnp.float32) if m is None else  # noqa: E731
                           m if m.ndim == 3 else jnp.broadcast_to(m, (4, B, n)))
  return as_gates(mx, D), as_gates(mh, H)


def _fused_z(w, b, xh, untied, compute_dtype):
  pet = jnp.float32 if compute_dtype is not None else None
  if untied:
    z = jnp.einsum("gbk,gkn->gbn", _cast(xh, compute_dtype), _cast(w, compute_dtype),
                   preferred_element_type=pet)
    z = z.astype(jnp.float32) + b.reshape(4, 1, -1)
    return z[0], z[1], z[2], z[3]
  z = jnp.dot(_cast(xh, compute_dtype), _cast(w, compute_dtype), preferred_element_type=pet)
  return jnp.split(z.astype(jnp.float32) + b, 4, axis=-1)


def _fused_fwd_scan(w, b, c0, h0, xs, mask_x, mask_h, mask_x_steps, mask_h_steps, valid, unroll,
                    compute_dtype, gate_act, untied, keep, zone_c=None, zone_h=None):
  D, H = xs.shape[-1], h0.shape[-1]
  per_step = lambda z: z is not None and jnp.ndim(z) == 3  # noqa: E731 - else a constant rate

  def step(carry, inp):
    c, h = carry
    x_t, v_t, mx_t, mh_t, zc_t, zh_t = inp
    mx, mh = _fused_step_masks(mask_x, mask_h, mx_t, mh_t, x_t.shape[0], D, H, untied)
    i, f, g, o = _fused_z(w, b, _fused_xh(x_t, h, mx, mh, untied), untied, compute_dtype)
    c_new, h_new, acts = _lstm_cell(i, f, g, o, c, h, v_t, gate_act)
    zc = zc_t if per_step(zone_c) else zone_c
    zh = zh_t if per_step(zone_h) else zone_h
    if zc is not None:  # zoneout: h_new above came from the un-zoned c_new
      c_new = zc * c + (1.0 - zc) * c_new
    if zh is not None:
      h_new = zh * h + (1.0 - zh) * h_new
    return (c_new, h_new), ((h_new, c_new, jnp.stack(acts)) if keep else h_new)

  inputs = (xs, valid, mask_x_steps, mask_h_steps, zone_c if per_step(zone_c) else None,
            zone_h if per_step(zone_h) else None)
  return jax.lax.scan(step, (c0, h0), inputs, unroll=unroll)


@functools.partial(jax.custom_vjp, nondiff_argnums=(10, 11, 12, 13))
def _fused_recurrence(w, b, c0, h0, xs, mask_x, mask_h, mask_x_steps, mask_h_steps, valid,
                      unroll, compute_dtype, gate_act, untied):
  return _fused_fwd_scan(w, b, c0, h0, xs, mask_x, mask_h, mask_x_steps, mask_h_steps, valid,
                         unroll, compute_dtype, gate_act, untied, keep=False)


def _fused_fwd(w, b, c0, h0, xs, mask_x, mask_h, mask_x_steps, mask_h_steps, valid, unroll,
               compute_dtype, gate_act, untied):
  carry, (ys, cs, acts) = _fused_fwd_scan(w, b, c0, h0, xs, mask_x, mask_h, mask_x_steps,
                                          mask_h_steps, valid, unroll, compute_dtype, gate_act,
                                          untied, keep=True)
  res = (w, c0, h0, xs, mask_x, mask_h, mask_x_steps, mask_h_steps, valid, ys, cs, acts)
  return (carry, ys), res


def _fused_bwd(unroll, compute_dtype, gate_act, untied, res, cts):
  """Reverse loop over ``(dc, dh)``: per step ``dz_t``, ``[dx_t, dh] = dz_t @ W^T`` through the
  masks, and ``dW += [x_t * m_x, h_{t-1} * m_h]^T dz_t``; the masks' cotangents likewise."""
  w, c0, h0, xs, mask_x, mask_h, mask_x_steps, mask_h_steps, valid, ys, cs, acts = res
  (dc_T, dh_T), dys = cts
  B, D, H = xs.shape[1], xs.shape[-1], h0.shape[-1]
  pet = jnp.float32 if compute_dtype is not None else None
  wc = _cast(w, compute_dtype)
  c_prev = jnp.concatenate([c0[None], cs[:-1]])
  h_prev = jnp.concatenate([h0[None], ys[:-1]])

  def unmask(dxh, x, mask, given):
    """``(d x, d mask)`` of ``x * mask`` from ``dxh``, the cotangent of the product; ``d mask`` in
    the shape of ``given``, the mask as the caller passed it (None: no mask, no cotangent)."""
    if not untied:
      return (dxh, None) if mask is None else (dxh * mask, dxh * x)
    # a sum of gate slices, not a reduce over the gate axis (see _stack_gates)
    d_in = dxh[0] * mask[0] + dxh[1] * mask[1] + dxh[2] * mask[2] + dxh[3] * mask[3]
    if given is None:
      return d_in, None
    d_mask = dxh * x                                      # [4, B, n]
    return d_in, (d_mask if given.ndim == 3 else d_mask[0] + d_mask[1] + d_mask[2] + d_mask[3])

  def step(carry, inp):
    dc, dh, dw, db, dmx, dmh = carry
    dy, c, cp, hp, a, x_t, v_t, mx_t, mh_t = inp
    mx, mh = _fused_step_masks(mask_x, mask_h, mx_t, mh_t, B, D, H, untied)
    i, f, g, o = a[0], a[1], a[2], a[3]
    dh = dh + dy
    tc = jnp.tanh(c)
    do = dh * tc
    dc_t = dc + dh * o * (1.0 - tc * tc)
    dzs_ = [dc_t * g * _dgate(i, gate_act), dc_t * cp * _dgate(f, gate_act),
            dc_t * i * (1.0 - g * g), do * _dgate(o, gate_act)]
    xh = _cast(_fused_xh(x_t, hp, mx, mh, untied), compute_dtype)
    if untied:
      dz = jnp.stack(dzs_)                                      # [4, B, H]
      if v_t is not None:
        dz = jnp.where(v_t[None, :, None], dz, 0.0)
      dzc = _cast(dz, compute_dtype)
      dxh = jnp.einsum("gbn,gkn->gbk", dzc, wc, preferred_element_type=pet)
      dw = dw + jnp.einsum("gbk,gbn->gkn", xh, dzc, preferred_element_type=pet)
      db = db + dz.sum(1).reshape(-1)
    else:
      dz = jnp.concatenate(dzs_, axis=-1)                       # [B, 4H]
      if v_t is not None:
        dz = jnp.where(v_t[:, None], dz, 0.0)
      dzc = _cast(dz, compute_dtype)
      dxh = jnp.einsum("bn,kn->bk", dzc, wc, preferred_element_type=pet)
      dw = dw + jnp.dot(transposed(xh), dzc, preferred_element_type=pet)
      db = db + dz.sum(0)
    dx_t, dmx_t = unmask(dxh[..., :D], x_t, mx, mask_x if mx_t is None else mx_t)
    dh_prev, dmh_t = unmask(dxh[..., D:], hp, mh, mask_h if mh_t is None else mh_t)
    if mx_t is None and dmx_t is not None:  # a constant mask: its cotangent sums over the steps
      dmx, dmx_t = dmx + dmx_t, None
    if mh_t is None and dmh_t is not None:
      dmh, dmh_t = dmh + dmh_t, None
    dc_prev = dc_t * f
    if v_t is not None:
      dc_prev = jnp.where(v_t[:, None], dc_prev, dc)
      dh_prev = jnp.where(v_t[:, None], dh_prev, dh)
    return (dc_prev, dh_prev, dw, db, dmx, dmh), (dx_t, dmx_t, dmh_t)

  zero = lambda m: jnp.zeros(() if m is None else m.shape, jnp.float32)  # noqa: E731
  init = (dc_T, dh_T, jnp.zeros(w.shape, jnp.float32), jnp.zeros((4 * H,), jnp.float32),
          zero(mask_x), zero(mask_h))
  xs_in = (dys, cs, c_prev, h_prev, acts, xs, valid, mask_x_steps, mask_h_steps)
  (dc0, dh0, dw, db, dmx, dmh), (dxs, dmxs, dmhs) = jax.lax.scan(step, init, xs_in, reverse=True,
                                                                 unroll=unroll)
  return (dw.astype(w.dtype), db, dc0, dh0, dxs, None if mask_x is None else dmx,
          None if mask_h is None else dmh, dmxs, dmhs, None)


_fused_recurrence.defvjp(_fused_fwd, _fused_bwd)


def _lstm_cell(i, f, g, o, c, h, v_t, gate_act="sigmoid"):
  """The LSTM cell from gate pre-activations (each ``[B, H]``): ``(c_new, h_new, acts)`` with
  ``acts`` the activations ``(sigmoid(i), sigmoid(f), tanh(g), sigmoid(o))`` (``gate_act``
  in place of sigmoid); where ``v_t`` ``[B]`` is False the state is left unchanged."""
  act = activation(gate_act)
  i, f, g, o = act(i), act(f), jnp.tanh(g), act(o)
  c_new = f * c + i * g
  h_new = o * jnp.tanh(c_new)
  if v_t is not None:
    c_new = jnp.where(v_t[:, None], c_new, c)
    h_new = jnp.where(v_t[:, None], h_new, h)
  return c_new, h_new, (i, f, g, o)


def _untied(mask_h, steps: bool) -> bool:
  return mask_h is not None and mask_h.ndim == (4 if steps else 3)


def _lstm_scan(gx, w_h, c0, h0, mask_h, valid, unroll, compute_dtype, gate_act, steps):
  """Forward scan; also returns what the backward pass needs: cell states ``[T, B, H]`` and
  gate activations ``(i, f, g, o)``, each ``[T, B, H]``. ``steps``: ``mask_h`` holds one mask
  per step (``[T, B, H]`` or ``[T, 4, B, H]``), scanned with the inputs."""

  untied = _untied(mask_h, steps)
  pet = jnp.float32 if compute_dtype is not None else None

  def step(carry, inp):
    c, h = carry
    gx_t, v_t, m_t = inp
    m = m_t if steps else mask_h
    if untied:  # gate-major: gx_t [4, B, H], w_h [4, H, H]
      hm = _cast(h[None] * m, compute_dtype)
      z = gx_t + jnp.einsum("gbh,ghk->gbk", hm, w_h, preferred_element_type=pet)
      i, f, g, o = z[0], z[1], z[2], z[3]
    else:
      z = gx_t + _recurrent(h, w_h, m, 4, compute_dtype)
      i, f, g, o = jnp.split(z, 4, axis=-1)
    c_new, h_new, acts = _lstm_cell(i, f, g, o, c, h, v_t, gate_act)
    return (c_new, h_new), (h_new, c_new, acts)

  xs = (gx, valid, mask_h if steps else None)
  (c, h), (ys, cs, acts) = jax.lax.scan(step, (c0, h0), xs, unroll=unroll)
  return (c, h), ys, (cs, acts)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def _lstm_recurrence(gx, w_h, c0, h0, mask_h, valid, unroll, compute_dtype, gate_act, steps):
  """``((c_T, h_T), ys)`` from input pre-activations ``gx``: ``[T, B, 4H]`` with ``w_h [H, 4H]``
  (tied / no mask), or gate-major ``[T, 4, B, H]`` with ``w_h [4, H, H]`` (untied);
  ``w_h`` already in ``compute_dtype``; ``steps``: a recurrent mask per step (``_lstm_scan``)."""
  carry, ys, _ = _lstm_scan(gx, w_h, c0, h0, mask_h, valid, unroll, compute_dtype, gate_act, steps)
  return carry, ys


def _lstm_recurrence_fwd(gx, w_h, c0, h0, mask_h, valid, unroll, compute_dtype, gate_act, steps):
  carry, ys, (cs, acts) = _lstm_scan(gx, w_h, c0, h0, mask_h, valid, unroll, compute_dtype,
                                     gate_act, steps)
  return (carry, ys), (w_h, c0, h0, mask_h, valid, ys, cs, acts)


def _lstm_recurrence_bwd(unroll, compute_dtype, gate_act, steps, res, cts):
  """Reverse scan over ``(dc, dh)`` emitting ``dz_t``; then ``dW_h`` as one matmul."""
  w_h, c0, h0, mask_h, valid, ys, cs, acts = res
  (dc_T, dh_T), dys = cts
  T, B, H = ys.shape
  pet = jnp.float32 if compute_dtype is not None else None
  untied = _untied(mask_h, steps)
  c_prev = jnp.concatenate([c0[None], cs[:-1]])
  h_prev = jnp.concatenate([h0[None], ys[:-1]])

  def step(carry, inp):
    dc, dh, dm = carry
    dy, c, cp, hp, (i, f, g, o), v_t, m_t = inp
    m = m_t if steps else mask_h
    dh = dh + dy
    tc = jnp.tanh(c)
    do = dh * tc
    dc_t = dc + dh * o * (1.0 - tc * tc)
    if gate_act == "sigmoid":
      dzs_ = [dc_t * g * i * (1.0 - i), dc_t * cp * f * (1.0 - f), dc_t * i * (1.0 - g * g),
              do * o * (1.0 - o)]
    else:
      dzs_ = [dc_t * g * _dgate(i, gate_act), dc_t * cp * _dgate(f, gate_act),
              dc_t * i * (1.0 - g * g), do * _dgate(o, gate_act)]
    if untied:  # gate-major [4, B, H], like gx; dhm[k] = dz_k @ W_k^T
      dz = jnp.stack(dzs_)
      if v_t is not None:
        dz = jnp.where(v_t[None, :, None], dz, 0.0)
      dhm = jnp.einsum("gbk,ghk->gbh", _cast(dz, compute_dtype), w_h, preferred_element_type=pet)
      # a sum of slices, not (dhm * m).sum(0): see _stack_gates
      dh_prev, dm_t = sum(dhm[k] * m[k] for k in range(4)), dhm * hp
    else:
      dz = jnp.concatenate(dzs_, axis=-1)
      if v_t is not None:
        dz = jnp.where(v_t[:, None], dz, 0.0)
      dhm = jnp.einsum("bk,hk->bh", _cast(dz, compute_dtype), w_h, preferred_element_type=pet)
      dh_prev, dm_t = (dhm, None) if m is None else (dhm * m, dhm * hp)
    if not steps and dm_t is not None:  # a constant mask: its cotangent sums over the steps
      dm, dm_t = dm + dm_t, None
    dc_prev = dc_t * f
    if v_t is not None:
      dc_prev = jnp.where(v_t[:, None], dc_prev, dc)
      dh_prev = jnp.where(v_t[:, None], dh_prev, dh)
    return (dc_prev, dh_prev, dm), (dz, dm_t)

  dm = jnp.zeros((), jnp.float32) if mask_h is None or steps else jnp.zeros_like(mask_h)
  xs = (dys, cs, c_prev, h_prev, acts, valid, mask_h if steps else None)
  (dc0, dh0, dm), (dzs, dms) = jax.lax.scan(step, (dc_T, dh_T, dm), xs, reverse=True, unroll=unroll)
  if steps:
    dm = dms
  if untied:  # dW_k = sum_t (h_{t-1} * m_k)^T dz_{t,k}, batched over k; dzs is [T, 4, B, H]
    hm = h_prev[None] * (jnp.swapaxes(mask_h, 0, 1) if steps else mask_h[:, None])  # [4, T, B, H]
    dz_g = jnp.swapaxes(dzs, 0, 1).reshape(4, T * B, H)
    dw = jnp.einsum("gmk,gmn->gkn", _cast(hm.reshape(4, T * B, H), compute_dtype),
                    _cast(dz_g, compute_dtype), preferred_element_type=pet)
  else:
    hm = h_prev if mask_h is None else h_prev * mask_h
    dw = jnp.dot(transposed(_cast(hm, compute_dtype).reshape(T * B, H)),
                 _cast(dzs.reshape(T * B, 4 * H), compute_dtype), preferred_element_type=pet)
  return dzs, dw.astype(w_h.dtype), dc0, dh0, None if mask_h is None else dm, None


_lstm_recurrence.defvjp(_lstm_recurrence_fwd, _lstm_recurrence_bwd)


def gru(params: dict, h: Array, xs: Array, mask_x: Optional[Array] = None,
        mask_h: Optional[Array] = None, *, valid: Optional[Array] = None, unroll: int = 1,
        compute_dtype=None, mask_x_steps: Optional[Array] = None,
        mask_h_steps: Optional[Array] = None, gate_act: str = "sigmoid",
        candidate_act: str = "tanh", mask_w: Optional[Array] = None) -> tuple[Array, Array]:
  """One GRU layer over a sequence, gate order (z, r, n) (Gal's Keras GRU; reset before W_hn).

  Equations (per step t; ``x_k = x_t * m_x[k]``, ``h_k = h_{t-1} * m_h[k]``, or one shared
  mask for all k when tied)::

    z = sigmoid(x_z W_xz + h_z W_hz + b_z)
    r = sigmoid(x_r W_xr + h_r W_hr + b_r)
    n = tanh(x_n W_xn + (r * h_n) W_hn + b_n)
    h_t = z * h_{t-1} + (1 - z) * n

  (``gate_act`` in place of the sigmoids, ``candidate_act`` in place of the tanh.) The input
  projection of all T steps is one matmul before the scan, and the backward pass over the loop
  is written by hand (see the module docstring).

  Args:
    params: ``{"w_x": [D, 3H], "w_h": [H, 3H], "b": [3H]}``.
    h: ``[B, H]`` initial state.
    xs: ``[T, B, D]``.
    mask_x: ``None``, ``[B, D]`` or ``[3, B, D]``.
    mask_h: ``None``, ``[B, H]`` or ``[3, B, H]``.
    valid, unroll, compute_dtype: as in ``lstm``.
    mask_x_steps, mask_h_steps: fresh masks per step instead of ``mask_x`` / ``mask_h``:
      ``[T, B, .]`` or one per gate ``[T, 3, B, .]`` (``NaiveDropoutGRU`` of the released code).
    gate_act: ``sigmoid`` or ``hard_sigmoid`` (Keras 0.x) for z and r.
    candidate_act: ``tanh`` or ``sigmoid`` (the Keras 0.x fork's GRU default ``activation``).
    mask_w: weight drop on ``W_h``: ``[H, 3H]`` (as in ``lstm``).
  Returns:
    ``(h_T, ys)`` with ys ``[T, B, H]``.
  """
  return _gru_recurrence(*_gru_inputs(params, h, xs, mask_x, mask_h, valid=valid, unroll=unroll,
                                      compute_dtype=compute_dtype, mask_x_steps=mask_x_steps,
                                      mask_h_steps=mask_h_steps, gate_act=gate_act,
                                      candidate_act=candidate_act, mask_w=mask_w))


def _gru_autodiff(params: dict, h: Array, xs: Array, mask_x: Optional[Array] = None,
                  mask_h: Optional[Array] = None, **kwargs) -> tuple[Array, Array]:
  """``gru`` (same arguments, same values) differentiated by plain autodiff of ``_gru_scan``
  rather than by the hand-written backward pass: the reference the tests hold it against."""
  h, ys, _ = _gru_scan(*_gru_inputs(params, h, xs, mask_x, mask_h, **kwargs))
  return h, ys


def _gru_inputs(params, h, xs, mask_x, mask_h, *, valid=None, unroll=1, compute_dtype=None,
                mask_x_steps=None, mask_h_steps=None, gate_act="sigmoid", candidate_act="tanh",
                mask_w=None) -> tuple:
  """``gru``'s arguments checked, then the arguments of ``_gru_recurrence`` / ``_gru_scan``: the
  input pre-activations without the bias (``_gru_input_projection``), the bias, ``W_h``
  (weight-dropped, in ``compute_dtype``; ``[H, 3H]``, or per gate ``[3, H, H]`` for untied
  recurrent masks), the initial state, the recurrent mask (per step or not), ``valid`` and the
  static options."""
  if xs.ndim != 3:
    raise ValueError(f"xs must have shape [T, B, D], got {list(xs.shape)}")
  T, B, D = xs.shape
  H = h.shape[-1]
  if tuple(h.shape) != (B, H):
    raise ValueError(f"h must have shape [B, H] = {[B, H]}, got {list(h.shape)}")
  _check_params(params, D, H, 3)
  kind_h = _mask_kind("mask_h", mask_h, B, H, 3)
  _mask_kind("mask_x", mask_x, B, D, 3)
  _step_mask_kind("mask_x_steps", mask_x_steps, T, B, D, 3, mask_x)
  kind_h_steps = _step_mask_kind("mask_h_steps", mask_h_steps, T, B, H, 3, mask_h)
  _check_valid(valid, T, B)
  _check_acts(gate_act, candidate_act)
  params = _weight_dropped(params, mask_w, H, 3)
  gx = _gru_input_projection(xs, params["w_x"], mask_x, mask_x_steps, compute_dtype)
  untied = kind_h == "untied" or kind_h_steps == "per_gate"
  w_h = _cast(_per_gate(params["w_h"], 3) if untied else params["w_h"], compute_dtype)
  steps = mask_h_steps is not None
  return (gx, params["b"], w_h, h, mask_h_steps if steps else mask_h, valid, unroll, compute_dtype,
          gate_act, candidate_act, steps, gx.ndim == 4)


def _gru_input_projection(xs: Array, w_x: Array, mask_x: Optional[Array],
                          mask_x_steps: Optional[Array], compute_dtype) -> Array:
  """The GRU's input pre-activations of all T steps, without the bias.

  No mask, a tied one or per-step masks shared by the gates: ``(x_t * m) W_x`` as
  ``[T, B, 3H]``. One mask per gate (untied ``[3, B, D]``, or per step ``[T, 3, B, D]``): gate k's
  ``(x_t * m[k]) W_xk`` as gate-first ``[3, T, B, H]``, the batched matmul's own output, which
  the scans read in place: no ``[T, 3, B, H]`` transposes in either direction, and the bias
  gradient sums contiguous rows (XLA:CPU fuses a transpose into the reduction that follows it
  into a slow kernel: ~70 ms more at the sentiment shape on the 2-core AMD EPYC).

  Args:
    xs: ``[T, B, D]``; w_x: ``[D, 3H]``; mask_x: None, ``[B, D]`` or ``[3, B, D]``;
    mask_x_steps: None, ``[T, B, D]`` or ``[T, 3, B, D]`` (given instead of ``mask_x``);
    compute_dtype: as in ``matmul``.
  Returns:
    float32 ``[T, B, 3H]`` or ``[3, T, B, H]``.
  """
  T, B, D = xs.shape
  if mask_x_steps is not None and mask_x_steps.ndim == 3:
    xs, mask_x_steps = xs * mask_x_steps, None
  if mask_x_steps is None and (mask_x is None or mask_x.ndim == 2):
    # gate_matmul's VJP (a batch of one), not matmul's: its weight gradient contracts the rows
    # in place, where matmul's materialised x^T (``transposed``) cost ~40 ms at the sentiment
    # shape on the 2-core AMD EPYC
    xm = (xs if mask_x is None else xs * mask_x).reshape(1, T * B, D)
    out = gate_matmul(xm, w_x[None], compute_dtype)
    return out.astype(jnp.float32).reshape(T, B, -1)
  gate_mask = (lambda k: mask_x[k]) if mask_x_steps is None else (lambda k: mask_x_steps[:, k])
  xm = _stack_gates([xs * gate_mask(k) for k in range(3)])  # [3, T, B, D]
  out = gate_matmul(xm.reshape(3, T * B, D), _per_gate(w_x, 3), compute_dtype)
  return out.astype(jnp.float32).reshape(3, T, B, -1)


def _gru_weights(w_h: Array, untied: bool) -> tuple[Array, Array]:
  """``(W_zr, W_n)``: the z and r gates' recurrent weights ``[H, 2H]`` (untied ``[2, H, H]``)
  and the candidate's ``[H, H]``, from ``W_h`` ``[H, 3H]`` (untied ``[3, H, H]``)."""
  if untied:
    return w_h[:2], w_h[2]
  H = w_h.shape[0]
  return w_h[:, :2 * H], w_h[:, 2 * H:]


def _gru_masks(m: Optional[Array], untied: bool) -> tuple:
  """``(m_zr, m_n)``: the masks of ``h`` in the z and r gates' product (``[2, B, H]`` untied)
  and in the candidate's ``(r * h_n) W_hn`` (a tied mask is both; None: no mask)."""
  if m is None:
    return None, None
  return (m[:2], m[2]) if untied else (m, m)


def _gru_step_inputs(gx: Array, b: Array, t, gate_first: bool) -> tuple[Array, Array, Array]:
  """Step ``t``'s input pre-activations plus the bias, one ``[B, H]`` block per gate (z, r, n),
  from ``gx`` ``[T, B, 3H]`` or gate-first ``[3, T, B, H]``."""
  if gate_first:
    a = jax.lax.dynamic_index_in_dim(gx, t, axis=1, keepdims=False) + b.reshape(3, 1, -1)
    return a[0], a[1], a[2]
  a = jax.lax.dynamic_index_in_dim(gx, t, axis=0, keepdims=False) + b
  return tuple(jnp.split(a, 3, axis=-1))


def _dcandidate(n: Array, name: str) -> Array:
  """Derivative of the candidate activation ``name`` (tanh | sigmoid) where it took value ``n``."""
  return 1.0 - n * n if name == "tanh" else n * (1.0 - n)


def _gru_scan(gx, b, w_h, h0, mask_h, valid, unroll, compute_dtype, gate_act, candidate_act, steps,
              gate_first):
  """Forward scan; also returns what the backward pass needs: the activations ``(z, r, n)``,
  each ``[T, B, H]``. Arguments as ``_gru_inputs`` makes them; ``steps``: ``mask_h`` holds one
  mask per step (``[T, B, H]`` or ``[T, 3, B, H]``), scanned with the inputs; ``gate_first``:
  ``gx`` is ``[3, T, B, H]`` (else ``[T, B, 3H]``)."""
  untied = _untied(mask_h, steps)
  gate, cand = activation(gate_act), activation(candidate_act)
  pet = jnp.float32 if compute_dtype is not None else None
  T = gx.shape[1] if gate_first else gx.shape[0]
  w_zr, w_n = _gru_weights(w_h, untied)
  masks = _gru_masks(mask_h, untied)

  def step(h, inp):
    t, v_t, m_t = inp
    m_zr, m_n = _gru_masks(m_t, untied) if steps else masks
    a_z, a_r, a_n = _gru_step_inputs(gx, b, t, gate_first)
    if untied:  # one [B, H] @ [H, H] product per gate, batched
      hm = _cast(h[None] * m_zr, compute_dtype)
      u = jnp.einsum("gbh,ghk->gbk", hm, w_zr, preferred_element_type=pet)
      u_z, u_r = u[0], u[1]
    else:
      u_z, u_r = jnp.split(_recurrent(h, w_zr, m_zr, 2, compute_dtype), 2, axis=-1)
    z, r = gate(a_z + u_z), gate(a_r + u_r)
    h_n = h if m_n is None else h * m_n
    n = cand(a_n + jnp.dot(_cast(r * h_n, compute_dtype), w_n, preferred_element_type=pet))
    h_new = z * h + (1.0 - z) * n
    if v_t is not None:
      h_new = jnp.where(v_t[:, None], h_new, h)
    return h_new, (h_new, (z, r, n))

  xs = (jnp.arange(T), valid, mask_h if steps else None)
  h, (ys, acts) = jax.lax.scan(step, h0, xs, unroll=unroll)
  return h, ys, acts


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9, 10, 11))
def _gru_recurrence(gx, b, w_h, h0, mask_h, valid, unroll, compute_dtype, gate_act, candidate_act,
                    steps, gate_first):
  """``(h_T, ys)`` from the input pre-activations ``gx`` (``_gru_scan``'s arguments), with the
  hand-written backward pass ``_gru_recurrence_bwd``."""
  h, ys, _ = _gru_scan(gx, b, w_h, h0, mask_h, valid, unroll, compute_dtype, gate_act,
                       candidate_act, steps, gate_first)
  return h, ys


def _gru_recurrence_fwd(gx, b, w_h, h0, mask_h, valid, unroll, compute_dtype, gate_act,
                        candidate_act, steps, gate_first):
  h, ys, acts = _gru_scan(gx, b, w_h, h0, mask_h, valid, unroll, compute_dtype, gate_act,
                          candidate_act, steps, gate_first)
  # gx itself: dead after the forward loop, its buffer becomes that of its cotangent (below)
  return (h, ys), (w_h, h0, mask_h, valid, ys, acts, gx)


def _gru_recurrence_bwd(unroll, compute_dtype, gate_act, candidate_act, steps, gate_first, res,
                        cts):
  """Reverse scan over ``dh`` emitting the pre-activation gradients ``(dz, dr, dn)`` of each step
  (in ``gx``'s layout: they are its cotangent); then the bias gradient as their sum and ``dW_h``
  as large matmuls over all T*B rows: ``(h_{t-1} * m_zr)^T [dz, dr]`` and
  ``(r * h_{t-1} * m_n)^T dn``.

  Per step (``h_n = h_{t-1} * m_n``, ``q = r * h_n``, ``dh`` the cotangent of ``h_t``)::

    dn = dh (1 - z) cand'(n)          dz = dh (h_{t-1} - n) gate'(z)
    dq = dn W_n^T                     dr = dq h_n gate'(r)
    dh_{t-1} = dh z + ([dz, dr] W_zr^T) * m_zr + (dq r) * m_n

  (zero gate gradients and ``dh_{t-1} = dh`` at a padded step).
  """
  w_h, h0, mask_h, valid, ys, (zs, rs, ns), gx = res
  dh_T, dys = cts
  T, B, H = ys.shape
  pet = jnp.float32 if compute_dtype is not None else None
  untied = _untied(mask_h, steps)
  h_prev = jnp.concatenate([h0[None], ys[:-1]])
  w_zr, w_n = _gru_weights(w_h, untied)
  masks = _gru_masks(mask_h, untied)

  def step(carry, inp):
    dh, dm, dgs = carry
    t, dy, hp, z, r, n, v_t, m_t = inp
    m_zr, m_n = _gru_masks(m_t, untied) if steps else masks
    dh = dh + dy
    dn = dh * (1.0 - z) * _dcandidate(n, candidate_act)
    dz = dh * (hp - n) * _dgate(z, gate_act)
    if v_t is not None:  # a padded step: no gradient into its gates, dh passes through
      dn = jnp.where(v_t[:, None], dn, 0.0)
      dz = jnp.where(v_t[:, None], dz, 0.0)
    dq = jnp.einsum("bk,hk->bh", _cast(dn, compute_dtype), w_n, preferred_element_type=pet)
    h_n = hp if m_n is None else hp * m_n
    dr = dq * h_n * _dgate(r, gate_act)
    dh_n = dq * r
    if untied:  # dhm[k] = d_k @ W_k^T for k in (z, r), batched
      dhm = jnp.einsum("gbk,ghk->gbh", _cast(jnp.stack([dz, dr]), compute_dtype), w_zr,
                       preferred_element_type=pet)
      dh_prev = dh * z + dhm[0] * m_zr[0] + dhm[1] * m_zr[1] + dh_n * m_n
      dm_t = jnp.stack([dhm[0] * hp, dhm[1] * hp, dh_n * hp])
    else:
      dzr = jnp.concatenate([dz, dr], axis=-1)
      dhm = jnp.einsum("bk,hk->bh", _cast(dzr, compute_dtype), w_zr, preferred_element_type=pet)
      dh_m = dhm + dh_n  # the cotangent of h * m (tied) or of h (no mask)
      dh_prev, dm_t = (dh * z + dh_m, None) if m_n is None else (dh * z + dh_m * m_n, dh_m * hp)
    if not steps and dm_t is not None:  # a constant mask: its cotangent sums over the steps
      dm, dm_t = dm + dm_t, None
    if v_t is not None:
      dh_prev = jnp.where(v_t[:, None], dh_prev, dh)
    # written in place into the cotangent of gx, [3, T, B, H] or [T, B, 3H]
    dg = jnp.stack([dz, dr, dn]) if gate_first else jnp.concatenate([dz, dr, dn], axis=-1)
    dgs = jax.lax.dynamic_update_index_in_dim(dgs, dg, t, axis=1 if gate_first else 0)
    return (dh_prev, dm, dgs), dm_t

  dm = jnp.zeros((), jnp.float32) if mask_h is None or steps else jnp.zeros_like(mask_h)
  # every step overwrites its block of the cotangent, so the loop starts from gx's buffer (XLA
  # reuses it in place) rather than a fresh zero-filled one (~16 ms at the sentiment shape)
  xs = (jnp.arange(T), dys, h_prev, zs, rs, ns, valid, mask_h if steps else None)
  (dh0, dm, dgx), dms = jax.lax.scan(step, (dh_T, dm, gx), xs, reverse=True, unroll=unroll)
  if steps:
    dm = dms
  # per gate k: the rows of W_hk's product (h_{t-1} * m_k, or r * h_{t-1} * m_n for n) and the
  # gradients of its pre-activation, each [T*B, H]
  dgs = dgx.reshape(3, T * B, H) if gate_first else dgx.reshape(T * B, 3 * H)
  db = dgs.sum(1).reshape(3 * H) if gate_first else dgs.sum(0)
  d_gate = (lambda k: dgs[k]) if gate_first else (lambda k: dgs[:, k * H:(k + 1) * H])  # noqa: E731
  if untied:  # batched over the gates
    m = jnp.swapaxes(mask_h, 0, 1) if steps else mask_h[:, None]        # [3, T|1, B, H]
    lhs = _stack_gates([h_prev * m[0], h_prev * m[1], rs * h_prev * m[2]]).reshape(3, T * B, H)
    rhs = dgs if gate_first else _stack_gates([d_gate(k) for k in range(3)])
    dw = jnp.einsum("gmk,gmn->gkn", _cast(lhs, compute_dtype), _cast(rhs, compute_dtype),
                    preferred_element_type=pet)
  else:
    # a^T d as one dot contracting the rows of both (not ``transposed``: on the 2-core AMD EPYC a
    # materialised [H, T*B] copy made these products slower, 58 ms against 51 ms at [25600, 384])
    dot = lambda a, d: jnp.einsum("mk,mn->kn", _cast(a, compute_dtype),  # noqa: E731
                                  _cast(d, compute_dtype), preferred_element_type=pet)
    hm = (h_prev if mask_h is None else h_prev * mask_h).reshape(T * B, H)
    q = rs.reshape(T * B, H) * hm
    zr = [dot(hm, d_gate(0)), dot(hm, d_gate(1))] if gate_first else [dot(hm, dgs[:, :2 * H])]
    dw = jnp.concatenate(zr + [dot(q, d_gate(2))], axis=-1)
  return dgx, db, dw.astype(w_h.dtype), dh0, None if mask_h is None else dm, None


_gru_recurrence.defvjp(_gru_recurrence_fwd, _gru_recurrence_bwd)
