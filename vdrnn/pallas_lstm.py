"""One LSTM layer's time loop as a Pallas kernel (forward and backward), for the GPU.

``rnn.lstm(..., impl="pallas")`` runs the recurrence here; ``impl="scan"`` (the default, the
CPU path and the reference) runs ``lax.scan``. Same inputs as the scan's recurrence: the
hoisted, already-masked input pre-activations ``gx`` (gate-major ``[T, 4, B, H]``), the
per-gate recurrent weights ``w_h [4, H, H]``, the per-sequence recurrent mask (tied
``[B, H]`` or untied ``[4, B, H]``), the initial ``(c, h)`` and an optional ``[T, B]``
validity mask (a padded step leaves the state unchanged).

Design (Triton lowering, ``jax.experimental.pallas``):

* One kernel launch runs all T steps (``lax.fori_loop`` inside the kernel); the grid has
  one program per block of ``block_b`` batch rows. Each program computes all 4H gate
  columns of its rows, so no state crosses programs and no grid-wide barrier is needed.
* Per step, for each tile of ``block_h`` hidden units: four ``[block_b, block_h]``
  accumulators (one per gate) sum ``(h_{t-1}[:, k] * m_g[:, k]) @ W_g[k, u]`` over the
  ``block_h``-wide contraction tiles ``k``; the gate non-linearities, the cell update, the
  validity select and the stores of ``h_t``, ``c_t`` (and, for the backward pass, the four
  activations) follow in registers. The masks are applied inside.
* ``h_t`` is exchanged between the unit tiles through the ``hs`` output in global memory
  (Pallas Triton has no scratch memory): after a step's stores, a CTA barrier
  (``debug_barrier``, a ``__syncthreads``), then the next step reads ``hs[t]`` back (from
  L1/L2). ``W_h`` cannot stay in one SM's shared memory (a medium ``[650, 2600]`` layer is
  6.8 MB in float32, large 36 MB; an H100 SM has 228 KB), so each program streams it from
  L2 (50 MB) every step. Splitting the 4H columns over programs that each keep a
  ``W_h`` slice on chip (Diamos et al.'s persistent RNN) needs a grid-wide barrier per
  step; Pallas Triton has atomics to build one, but no co-residency guarantee (a spin
  barrier can deadlock) and interpret mode runs the grid's programs one after the other
  (it would deadlock there always), so that variant is not implemented.
* Backward: a reverse time loop; per step, phase 1 computes ``dz`` (all four gates) per unit
  tile from ``dh``, ``dc``, the saved activations and cell states, and stores it (it is
  the gradient of ``gx``); barrier; phase 2 computes ``dh_{t-1} = sum_g (dz_g @ W_g^T) * m_g``
  per unit tile; barrier. ``dW_h`` (one matmul over all ``T*B`` rows per gate) and the
  mask gradient are XLA ops after the kernel, as in the scan's hand-written backward.
* Budget per program and step (block_b 16, block_h 64; Hp = H rounded up to 64): W_h
  traffic 4 Hp^2 elements from L2 (medium Hp 704: 7.9 MB float32 / 4.0 MB bfloat16; large
  Hp 1536: 37.7 / 18.9 MB, all inside the H100's 50 MB L2); per inner iteration one h tile
  [16, 64] and four W tiles [64, 64] (64 KB float32, 32 KB bfloat16) staged in shared
  memory, times ``num_stages`` (2: 136 KB float32 of the 228 KB); four [16, 64] float32
  accumulators in registers. Expected limit: at B = 20 only 2 programs (2 of 132 SMs) run,
  each bound by its SM's L2 read rate (order 100-200 GB/s), so about 20-40 us per medium
  and 100-200 us per large bfloat16 step and direction: slower than the scan's cuBLAS
  steps at B = 20; it pays off only where 4 H^2 fits on chip (H up to ~200 in bfloat16)
  or launch overhead dominates.
* Triton needs power-of-2 tensor shapes and matmul dimensions >= 16: B is padded to a
  multiple of ``block_b`` (>= 16) and H to a multiple of ``block_h`` (a power of 2). Padded
  units have zero weights, inputs and state, so their state stays exactly 0 and they
  change nothing; padded rows are dropped.

On the CPU the kernel runs in Pallas interpret mode (``interpret=None`` picks it when the
default backend is the CPU): slow, for tests. Matmul operands are cast to
``compute_dtype`` (None: float32, TF32 on the GPU at default precision) and accumulate in
float32; the state and the gate non-linearities stay float32.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Config:
  """Static kernel parameters.

  block_b: batch rows per program (a power of 2, >= 16 for the GPU's matmul units).
  block_h: hidden units per tile (a power of 2, >= 16).
  num_warps, num_stages: Triton compiler parameters (None: Triton's defaults).
  interpret: run in Pallas interpret mode (None: when the default backend is the CPU).
  """
  block_b: int = 16
  block_h: int = 64
  num_warps: Optional[int] = 4
  num_stages: Optional[int] = 2
  interpret: Optional[bool] = None


def _pow2(n: int) -> bool:
  return n >= 1 and n & (n - 1) == 0


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _interpret(cfg: Config) -> bool:
  return jax.default_backend() == "cpu" if cfg.interpret is None else cfg.interpret


def _compiler_params(cfg: Config):
  if _interpret(cfg):
    return None
  from jax.experimental.pallas import triton as plgpu  # noqa: PLC0415 - GPU only
  return plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _barrier(interpret: bool) -> None:
  """A CTA barrier between a step's stores and the next step's loads (no-op when
  interpreted: interpret mode runs the kernel sequentially)."""
  if not interpret:
    from jax.experimental.pallas import triton as plgpu  # noqa: PLC0415 - GPU only
    plgpu.debug_barrier()


def _tile(i, n: int):
  return pl.ds(pl.multiple_of(i * n, n), n)


# ----------------------------------------------------------------------------------------
# Kernels. Refs are one program's batch block: bB rows, all (padded) Hp units.


def _fwd_kernel(gx_ref, w_ref, m_ref, v_ref, c0_ref, h0_ref, h_ref, c_ref, *acts_ref, T, nU, BU,
                has_mask, tied_mask, has_valid, cdt, interpret):
  """gx [T, 4, bB, Hp], w [4, Hp, Hp], m [1|4, bB, Hp], v [T, bB], c0/h0 [bB, Hp] ->
  h, c [T+1, bB, Hp] (index 0: the initial state), acts [T, 4, bB, Hp] (if saved)."""
  bB = h0_ref.shape[0]

  def init(u, carry):
    usl = _tile(u, BU)
    h_ref[0, :, usl] = h0_ref[:, usl]
    c_ref[0, :, usl] = c0_ref[:, usl]
    return carry

  jax.lax.fori_loop(0, nU, init, 0)
  _barrier(interpret)

  def step(t, carry):
    def unit(u, carry):
      usl = _tile(u, BU)

      def contract(k, accs):
        ksl = _tile(k, BU)
        h = h_ref[t, :, ksl]  # [bB, BU]
        if has_mask and tied_mask:
          h = h * m_ref[0, :, ksl]
        out = []
        for g in range(4):
          hm = h * m_ref[g, :, ksl] if has_mask and not tied_mask else h
          out.append(accs[g] + jnp.dot(hm.astype(cdt), w_ref[g, ksl, usl],
                                       preferred_element_type=jnp.float32))
        return tuple(out)

      zero = jnp.zeros((bB, BU), jnp.float32)
      accs = jax.lax.fori_loop(0, nU, contract, (zero,) * 4)
      i, f, g, o = (gx_ref[t, q, :, usl] + accs[q] for q in range(4))
      i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
      c_prev = c_ref[t, :, usl]
      c_new = f * c_prev + i * g
      h_new = o * jnp.tanh(c_new)
      if has_valid:
        v = v_ref[t, :][:, None] > 0.5
        c_new = jnp.where(v, c_new, c_prev)
        h_new = jnp.where(v, h_new, h_ref[t, :, usl])
      h_ref[t + 1, :, usl] = h_new
      c_ref[t + 1, :, usl] = c_new
      if acts_ref:
        for q, a in enumerate((i, f, g, o)):
          acts_ref[0][t, q, :, usl] = a
      return carry

    jax.lax.fori_loop(0, nU, unit, 0)
    _barrier(interpret)
    return carry

  jax.lax.fori_loop(0, T, step, 0)


def _bwd_kernel(dy_ref, dcT_ref, dhT_ref, w_ref, m_ref, v_ref, c_ref, acts_ref, dz_ref, dh_ref,
                dc_ref, *, T, nU, BU, has_mask, tied_mask, has_valid, cdt, interpret):
  """dy [T, bB, Hp], dcT/dhT [bB, Hp], w [4, Hp, Hp], m [1|4, bB, Hp], v [T, bB],
  c [T+1, bB, Hp] (forward cell states), acts [T, 4, bB, Hp] ->
  dz [T, 4, bB, Hp], dh, dc [T+1, bB, Hp] (index t: the gradient w.r.t. the state after
  step t, i.e. index 0 w.r.t. the initial state)."""
  bB = dhT_ref.shape[0]

  def init(u, carry):
    usl = _tile(u, BU)
    dh_ref[T, :, usl] = dhT_ref[:, usl]
    dc_ref[T, :, usl] = dcT_ref[:, usl]
    return carry

  jax.lax.fori_loop(0, nU, init, 0)
  _barrier(interpret)

  def step(s, carry):
    t = T - 1 - s

    def gates(u, carry):  # phase 1: dz of every gate and dc_{t-1}, per unit tile
      usl = _tile(u, BU)
      dh = dh_ref[t + 1, :, usl] + dy_ref[t, :, usl]
      dc = dc_ref[t + 1, :, usl]
      i, f, g, o = (acts_ref[t, q, :, usl] for q in range(4))
      tc = jnp.tanh(c_ref[t + 1, :, usl])
      dct = dc + dh * o * (1.0 - tc * tc)
      dzs = (dct * g * i * (1.0 - i), dct * c_ref[t, :, usl] * f * (1.0 - f),
             dct * i * (1.0 - g * g), dh * tc * o * (1.0 - o))
      dc_prev = dct * f
      if has_valid:
        v = v_ref[t, :][:, None] > 0.5
        dzs = tuple(jnp.where(v, d, 0.0) for d in dzs)
        dc_prev = jnp.where(v, dc_prev, dc)
      for q in range(4):
        dz_ref[t, q, :, usl] = dzs[q]
      dc_ref[t, :, usl] = dc_prev
      return carry

    jax.lax.fori_loop(0, nU, gates, 0)
    _barrier(interpret)

    def state(u, carry):  # phase 2: dh_{t-1}[:, u] = sum_g (dz_g @ W_g[u, :]^T) * m_g[:, u]
      usl = _tile(u, BU)

      def contract(k, accs):
        ksl = _tile(k, BU)
        return tuple(accs[q] + jax.lax.dot_general(
            dz_ref[t, q, :, ksl].astype(cdt), w_ref[q, usl, ksl], (((1,), (1,)), ((), ())),
            preferred_element_type=jnp.float32) for q in range(4))

      zero = jnp.zeros((bB, BU), jnp.float32)
      accs = jax.lax.fori_loop(0, nU, contract, (zero,) * 4)
      if has_mask and not tied_mask:
        dh_prev = accs[0] * m_ref[0, :, usl]
        for q in range(1, 4):
          dh_prev = dh_prev + accs[q] * m_ref[q, :, usl]
      else:
        dh_prev = accs[0] + accs[1] + accs[2] + accs[3]
        if has_mask:
          dh_prev = dh_prev * m_ref[0, :, usl]
      if has_valid:
        v = v_ref[t, :][:, None] > 0.5
        dh_prev = jnp.where(v, dh_prev, dh_ref[t + 1, :, usl] + dy_ref[t, :, usl])
      dh_ref[t, :, usl] = dh_prev
      return carry

    jax.lax.fori_loop(0, nU, state, 0)
    _barrier(interpret)
    return carry

  jax.lax.fori_loop(0, T, step, 0)


# ----------------------------------------------------------------------------------------
# pallas_calls on padded operands.


def _static(cfg: Config, T: int, Hp: int, mask: Array, valid: Optional[Array], cdt) -> dict:
  return {"T": T, "nU": Hp // cfg.block_h, "BU": cfg.block_h, "has_mask": mask is not None,
          "tied_mask": mask is not None and mask.shape[0] == 1, "has_valid": valid is not None,
          "cdt": cdt, "interpret": _interpret(cfg)}


def _operands(mask, valid, T, bB, Hp, Bp):
  """Placeholders for absent masks (never read by the kernel) and their block specs."""
  m = jnp.zeros((1, Bp, Hp), jnp.float32) if mask is None else mask
  v = jnp.zeros((T, Bp), jnp.float32) if valid is None else valid
  m_spec = pl.BlockSpec((m.shape[0], bB, Hp), lambda b: (0, b, 0))
  v_spec = pl.BlockSpec((T, bB), lambda b: (0, b))
  return m, v, m_spec, v_spec


def _forward(cfg: Config, gx, w, c0, h0, mask, valid, save_acts: bool):
  T, _, Bp, Hp = gx.shape
  bB = cfg.block_b
  m, v, m_spec, v_spec = _operands(mask, valid, T, bB, Hp, Bp)
  state = jax.ShapeDtypeStruct((T + 1, Bp, Hp), jnp.float32)
  out_shape = [state, state]
  state_spec = pl.BlockSpec((T + 1, bB, Hp), lambda b: (0, b, 0))
  out_specs = [state_spec, state_spec]
  if save_acts:
    out_shape.append(jax.ShapeDtypeStruct((T, 4, Bp, Hp), jnp.float32))
    out_specs.append(pl.BlockSpec((T, 4, bB, Hp), lambda b: (0, 0, b, 0)))
  kernel = functools.partial(_fwd_kernel, **_static(cfg, T, Hp, mask, valid, w.dtype))
  return pl.pallas_call(
      kernel, out_shape=out_shape, grid=(Bp // bB,),
      in_specs=[pl.BlockSpec((T, 4, bB, Hp), lambda b: (0, 0, b, 0)),
                pl.BlockSpec((4, Hp, Hp), lambda b: (0, 0, 0)), m_spec, v_spec,
                pl.BlockSpec((bB, Hp), lambda b: (b, 0)), pl.BlockSpec((bB, Hp), lambda b: (b, 0))],
      out_specs=out_specs, interpret=_interpret(cfg), compiler_params=_compiler_params(cfg),
      name="lstm_fwd")(gx, w, m, v, c0, h0)


def _backward(cfg: Config, dy, dcT, dhT, w, mask, valid, cs, acts):
  T, Bp, Hp = dy.shape
  bB = cfg.block_b
  m, v, m_spec, v_spec = _operands(mask, valid, T, bB, Hp, Bp)
  state = jax.ShapeDtypeStruct((T + 1, Bp, Hp), jnp.float32)
  state_spec = pl.BlockSpec((T + 1, bB, Hp), lambda b: (0, b, 0))
  gates_spec = pl.BlockSpec((T, 4, bB, Hp), lambda b: (0, 0, b, 0))
  kernel = functools.partial(_bwd_kernel, **_static(cfg, T, Hp, mask, valid, w.dtype))
  return pl.pallas_call(
      kernel, out_shape=[jax.ShapeDtypeStruct((T, 4, Bp, Hp), jnp.float32), state, state],
      grid=(Bp // bB,),
      in_specs=[pl.BlockSpec((T, bB, Hp), lambda b: (0, b, 0)),
                pl.BlockSpec((bB, Hp), lambda b: (b, 0)), pl.BlockSpec((bB, Hp), lambda b: (b, 0)),
                pl.BlockSpec((4, Hp, Hp), lambda b: (0, 0, 0)), m_spec, v_spec, state_spec,
                gates_spec],
      out_specs=[gates_spec, state_spec, state_spec], interpret=_interpret(cfg),
      compiler_params=_compiler_params(cfg), name="lstm_bwd")(dy, dcT, dhT, w, m, v, cs, acts)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recurrence(cfg: Config, gx, w, c0, h0, mask, valid):
  """Padded operands -> ``(hs [T+1, Bp, Hp], c_T [Bp, Hp])``; ``hs[0]`` is ``h0``, ``hs[t]``
  the state after step t (so ``hs[T]`` is ``h_T``)."""
  hs, cs = _forward(cfg, gx, w, c0, h0, mask, valid, save_acts=False)
  return hs, cs[-1]


def _recurrence_fwd(cfg, gx, w, c0, h0, mask, valid):
  hs, cs, acts = _forward(cfg, gx, w, c0, h0, mask, valid, save_acts=True)
  return (hs, cs[-1]), (w, mask, valid, hs, cs, acts)


def _recurrence_bwd(cfg, res, cts):
  w, mask, valid, hs, cs, acts = res
  d_hs, d_cT = cts
  T = acts.shape[0]
  # d_hs[1:] are the per-step outputs' cotangents (d_hs[T] also the final state's, so the
  # kernel starts from dh_T = 0); d_hs[0] is h0's own, added to the kernel's dh0.
  dz, dh, dc = _backward(cfg, d_hs[1:], d_cT, jnp.zeros_like(d_cT), w, mask, valid, cs, acts)
  cdt = w.dtype
  pet = jnp.float32
  h_prev = hs[:T]  # [T, Bp, Hp]
  hm = h_prev[:, None] if mask is None else h_prev[:, None] * mask[None]  # [T, 1|4, Bp, Hp]
  hm = jnp.broadcast_to(hm, dz.shape)
  # dW_g = sum_t (h_{t-1} * m_g)^T dz_{t,g}: one [Hp, T*Bp] @ [T*Bp, Hp] matmul per gate.
  dw = jnp.einsum("tgbh,tgbk->ghk", hm.astype(cdt), dz.astype(cdt), preferred_element_type=pet)
  dmask = None
  if mask is not None:  # sum_t (dz_g @ W_g^T) * h_{t-1}: unused in training (XLA drops it)
    dhm = jnp.einsum("tgbk,ghk->tgbh", dz.astype(cdt), w, preferred_element_type=pet)
    dmask = (dhm * h_prev[:, None]).sum(0)
    if mask.shape[0] == 1:
      dmask = dmask.sum(0, keepdims=True)
  dvalid = None if valid is None else jnp.zeros_like(valid)
  return dz, dw.astype(w.dtype), dc[0], dh[0] + d_hs[0], dmask, dvalid


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


# ----------------------------------------------------------------------------------------
# The layer's recurrence, unpadded.


def check_config(cfg: Config) -> None:
  for name in ("block_b", "block_h"):
    n = getattr(cfg, name)
    if not _pow2(n) or n < 16:
      raise ValueError(f"pallas_lstm.Config.{name} must be a power of 2 >= 16, got {n}")


def lstm_recurrence(gx: Array, w_h: Array, c0: Array, h0: Array, mask_h: Optional[Array] = None,
                    valid: Optional[Array] = None, *, cfg: Config = Config()
                    ) -> tuple[tuple[Array, Array], Array]:
  """``((c_T, h_T), ys)`` of one LSTM layer from its input pre-activations.

  Args:
    gx: ``[T, 4, B, H]`` float32, ``(x_t * m_x) W_x + b`` per gate (gate order i, f, g, o).
    w_h: ``[4, H, H]``, gate k's recurrent kernel ``W_h[:, kH:(k+1)H]``, in the matmul
      operand dtype (float32, or bfloat16 for bfloat16 matmuls with float32 accumulation).
    c0, h0: ``[B, H]`` float32.
    mask_h: ``None``, ``[B, H]`` (tied) or ``[4, B, H]`` (untied).
    valid: optional ``[T, B]`` bool; where False the state is left unchanged.
    cfg: kernel parameters.
  Returns:
    ``((c_T, h_T), ys)``, ys ``[T, B, H]`` float32. Differentiable (custom VJP whose
    backward pass is the backward kernel) w.r.t. gx, w_h, c0, h0 and mask_h.
  """
  check_config(cfg)
  T, G, B, H = gx.shape
  if G != 4 or tuple(w_h.shape) != (4, H, H) or c0.shape != (B, H) or h0.shape != (B, H):
    raise ValueError(f"pallas lstm: gx [T, 4, B, H], w_h [4, H, H], c0/h0 [B, H] expected, got "
                     f"{list(gx.shape)}, {list(w_h.shape)}, {list(c0.shape)}, {list(h0.shape)}")
  Bp, Hp = _round_up(B, cfg.block_b), _round_up(H, cfg.block_h)
  pb, ph = Bp - B, Hp - H
  gx_p = jnp.pad(gx.astype(jnp.float32), ((0, 0), (0, 0), (0, pb), (0, ph)))
  w_p = jnp.pad(w_h, ((0, 0), (0, ph), (0, ph)))
  c0_p = jnp.pad(c0.astype(jnp.float32), ((0, pb), (0, ph)))
  h0_p = jnp.pad(h0.astype(jnp.float32), ((0, pb), (0, ph)))
  m_p = None
  if mask_h is not None:
    m = mask_h[None] if mask_h.ndim == 2 else mask_h
    m_p = jnp.pad(m.astype(jnp.float32), ((0, 0), (0, pb), (0, ph)))
  v_p = None
  if valid is not None:
    v_p = jnp.pad(valid.astype(jnp.float32), ((0, 0), (0, pb)), constant_values=1.0)
  hs, c_T = _recurrence(cfg, gx_p, w_p, c0_p, h0_p, m_p, v_p)
  return (c_T[:B, :H], hs[T, :B, :H]), hs[1:, :B, :H]
