"""The GRU's hand-written backward pass (``rnn.gru``) against plain autodiff of the same scan
(``rnn._gru_autodiff``) and against central differences of the float64 NumPy step loop
(``tests.helpers.np_gru``): values and gradients w.r.t. the parameters, the initial state, the
inputs and the masks, for every mask scheme, with and without left padding, with the modern
(sigmoid gates, tanh candidate) and the released (hard_sigmoid gates, sigmoid candidate)
non-linearities."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import hlo
from tests.helpers import make, np_gru
from vdrnn import rnn

D, H, B, T = 5, 6, 3, 7
LENGTHS = np.array([7, 3, 1])  # left-padded rows, as the sentiment segments
SEMANTICS = {"modern": ("sigmoid", "tanh"), "released": ("hard_sigmoid", "sigmoid")}
# The schemes (variational none / tied / untied, the released naive per step shared / per gate)
# in every combination of padding and semantics; the mixed ones and weight drop in two.
CASES = ([(kind, padded, sem) for kind in ("none", "tied", "untied", "steps", "steps per gate")
          for padded in (False, True) for sem in SEMANTICS] +
         [(kind, padded, sem) for kind in ("x tied h untied", "x untied h tied",
                                           "x steps per gate, h tied", "weight drop")
          for padded, sem in ((False, "modern"), (True, "released"))])


def _masks(kind):
  """``rnn.gru``'s mask keyword arguments of ``kind``: entries 0 or 1.5 (inverted, p = 1/3)."""
  k = jax.random.split(jax.random.key(9), 3)
  m = lambda i, shape: 1.5 * (jax.random.uniform(k[i], shape) > 1 / 3)  # noqa: E731
  return {"none": {}, "tied": {"mask_x": m(0, (B, D)), "mask_h": m(1, (B, H))},
          "untied": {"mask_x": m(0, (3, B, D)), "mask_h": m(1, (3, B, H))},
          "x tied h untied": {"mask_x": m(0, (B, D)), "mask_h": m(1, (3, B, H))},
          "x untied h tied": {"mask_x": m(0, (3, B, D)), "mask_h": m(1, (B, H))},
          "steps": {"mask_x_steps": m(0, (T, B, D)), "mask_h_steps": m(1, (T, B, H))},
          "steps per gate": {"mask_x_steps": m(0, (T, 3, B, D)),
                             "mask_h_steps": m(1, (T, 3, B, H))},
          "x steps per gate, h tied": {"mask_x_steps": m(0, (T, 3, B, D)),
                                       "mask_h": m(1, (B, H))},
          "weight drop": {"mask_x": m(0, (B, D)), "mask_h": m(1, (B, H)),
                          "mask_w": 2.0 * (jax.random.uniform(k[2], (H, 3 * H)) > 0.5)}}[kind]


def _case(padded, semantics, scale=1.0):
  """Parameters (times ``scale``), initial state, inputs, the output weights of the loss, the
  ``valid`` mask (left padding of ``LENGTHS`` or None) and the activations' names."""
  p, xs, _, h0 = make(3, D, H, B, T)
  p = {k: scale * v for k, v in p.items()}
  wy = jax.random.normal(jax.random.key(5), (T, B, H))
  valid = np.arange(T)[:, None] >= (T - LENGTHS)[None, :] if padded else None
  return p, 3.0 * h0, xs, wy, valid, SEMANTICS[semantics]


def _loss(fn, wy, valid, acts, **kw):
  """``(params, h0, xs, masks) -> loss`` of the GRU ``fn``: every output and the last state."""
  def loss(p, h0, xs, masks):
    h, ys = fn(p, h0, xs, valid=None if valid is None else jnp.asarray(valid), gate_act=acts[0],
               candidate_act=acts[1], **masks, **kw)
    return (ys * wy).sum() + (h * h).sum()
  return loss


@functools.lru_cache(maxsize=None)
def _fast(kind, padded, semantics):
  """``rnn.gru``'s loss and gradients (w.r.t. params, h0, xs and the masks), computed once per
  case for the tests below."""
  p, h0, xs, wy, valid, acts = _case(padded, semantics)
  f = jax.jit(jax.value_and_grad(_loss(rnn.gru, wy, valid, acts), argnums=(0, 1, 2, 3)))
  return jax.tree.map(np.asarray, f(p, h0, xs, _masks(kind)))


@pytest.mark.parametrize("kind,padded,semantics", CASES)
def test_gru_backward_matches_autodiff(kind, padded, semantics):
  """The hand-written backward pass gives plain autodiff's gradients of the same scan."""
  p, h0, xs, wy, valid, acts = _case(padded, semantics)
  ref = jax.jit(jax.value_and_grad(_loss(rnn._gru_autodiff, wy, valid, acts), argnums=(0, 1, 2, 3)))
  ref = ref(p, h0, xs, _masks(kind))
  new = _fast(kind, padded, semantics)
  np.testing.assert_allclose(new[0], ref[0], rtol=1e-6)
  assert jax.tree.structure(ref[1]) == jax.tree.structure(new[1])
  for a, b in zip(jax.tree.leaves(ref[1]), jax.tree.leaves(new[1])):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def _np_args(p, h0, xs, masks):
  """The float64 leaves the NumPy loss is differentiated in, keyed like the JAX gradients."""
  args = {("p", k): np.asarray(v, np.float64) for k, v in p.items()}
  args[("h0",)], args[("xs",)] = np.asarray(h0, np.float64), np.asarray(xs, np.float64)
  args.update({("m", k): np.asarray(v, np.float64) for k, v in masks.items()})
  return args


def _np_loss(args, wy, valid, acts):
  """The loss of each batch row ``[B]`` (rows do not interact), in float64."""
  p = {k[1]: v for k, v in args.items() if k[0] == "p"}
  m = {k[1]: v for k, v in args.items() if k[0] == "m"}
  mx = ("steps", m["mask_x_steps"]) if "mask_x_steps" in m else m.get("mask_x")
  mh = ("steps", m["mask_h_steps"]) if "mask_h_steps" in m else m.get("mask_h")
  h, ys = np_gru(p, args[("h0",)], args[("xs",)], mx, mh, acts[0], acts[1], valid,
                 m.get("mask_w"))
  return (ys * wy).sum((0, 2)) + (h * h).sum(-1)


def _central_differences(f, args, eps=1e-6):
  """``{key: d sum(f(args)) / d args[key]}`` for ``f`` giving the loss of each batch row.

  The parameters and the weight-drop mask are perturbed one element at a time; the other
  arrays (``h0``, ``xs`` and the masks, batch axis -2) one element of every row at a time,
  each row's loss giving that row's derivative."""
  grads = {}
  for key, a in args.items():
    shared = key[0] == "p" or key == ("m", "mask_w")
    g = np.zeros_like(a)
    for i in np.ndindex(a.shape if shared else a.shape[:-2] + a.shape[-1:]):
      i = i if shared else i[:-1] + (slice(None), i[-1])
      old = a[i].copy()
      a[i] = old + eps
      up = f(args)
      a[i] = old - eps
      down = f(args)
      a[i] = old
      g[i] = ((up - down).sum() if shared else up - down) / (2 * eps)
    grads[key] = g
  return grads


@pytest.mark.parametrize("kind,padded,semantics", CASES)
def test_gru_matches_numpy_values_and_gradients(kind, padded, semantics):
  """Loss and gradients of ``rnn.gru`` against the float64 NumPy step loop (central differences:
  independent of any derivation of the backward pass)."""
  p, h0, xs, wy, valid, acts = _case(padded, semantics)
  masks = _masks(kind)
  args = _np_args(p, h0, xs, masks)
  np_loss = functools.partial(_np_loss, wy=np.asarray(wy, np.float64), valid=valid, acts=acts)
  ref = _central_differences(np_loss, args)
  value, (gp, gh0, gxs, gm) = _fast(kind, padded, semantics)
  np.testing.assert_allclose(value, np_loss(args).sum(), rtol=1e-5)
  new = {**{("p", k): v for k, v in gp.items()}, ("h0",): gh0, ("xs",): gxs,
         **{("m", k): v for k, v in gm.items()}}
  assert set(new) == set(ref)
  for key in ref:
    np.testing.assert_allclose(new[key], ref[key], rtol=1e-5, atol=2e-5, err_msg=str(key))
  # the reset gate's product (r * h_n) W_hn: its gradients w.r.t. W_hr and W_hn are not trivial
  assert np.abs(ref[("p", "w_h")][:, H:2 * H]).max() > 1e-2
  assert np.abs(ref[("p", "w_h")][:, 2 * H:]).max() > 1e-2


def test_hard_sigmoid_cases_saturate_some_gates():
  """Guards the released-semantics cases: some z / r pre-activations fall outside (-2.5, 2.5),
  where the hard sigmoid's derivative is 0, and most inside."""
  p, h0, xs, _, _, _ = _case(False, "released")
  acts = jax.jit(lambda p, h0, xs: rnn._gru_scan(*rnn._gru_inputs(
      p, h0, xs, None, None, gate_act="hard_sigmoid", candidate_act="sigmoid"))[2])
  zs, rs, _ = acts(p, h0, xs)
  a = np.concatenate([np.ravel(zs), np.ravel(rs)])
  saturated = np.mean((a == 0.0) | (a == 1.0))
  assert 0.0 < saturated < 0.5, saturated


@pytest.mark.parametrize("kind", ["tied", "untied", "steps per gate"])
def test_gru_bfloat16_backward_matches_autodiff(kind):
  """bfloat16 operands (float32 accumulation): the hand-written backward against autodiff of
  the same bfloat16 scan, and against the float32 gradients, within bfloat16's precision."""
  p, h0, xs, wy, valid, acts = _case(True, "released")
  masks = _masks(kind)
  grad = lambda fn, dtype: jax.jit(jax.value_and_grad(  # noqa: E731
      _loss(fn, wy, valid, acts, compute_dtype=dtype), argnums=(0, 1, 2, 3)))(p, h0, xs, masks)
  new, ref = grad(rnn.gru, jnp.bfloat16), grad(rnn._gru_autodiff, jnp.bfloat16)
  f32 = _fast(kind, True, "released")
  np.testing.assert_allclose(new[0], ref[0], rtol=1e-5)
  np.testing.assert_allclose(new[0], f32[0], rtol=2e-2)
  for a, b, c in zip(jax.tree.leaves(ref[1]), jax.tree.leaves(new[1]), jax.tree.leaves(f32[1])):
    scale = float(np.abs(c).max())
    assert b.dtype == c.dtype == np.float32
    np.testing.assert_allclose(b, a, atol=1e-2 * scale)
    np.testing.assert_allclose(b, c, atol=3e-2 * scale)


@pytest.mark.parametrize("kind", ["tied", "untied", "steps"])
def test_gru_unroll_gives_the_same_values_and_gradients(kind):
  p, h0, xs, wy, valid, acts = _case(True, "modern")
  f = jax.jit(jax.value_and_grad(_loss(rnn.gru, wy, valid, acts, unroll=3), argnums=(0, 1, 2, 3)))
  new, ref = f(p, h0, xs, _masks(kind)), _fast(kind, True, "modern")
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(new)):
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)


def _time_loop_matmuls(fn, kind):
  p, h0, xs, wy, valid, acts = _case(True, "modern")
  f = jax.jit(jax.grad(_loss(fn, wy, valid, acts), argnums=(0, 1, 2, 3)))
  text = f.lower(p, h0, xs, _masks(kind)).compile().as_text()
  return [m for loop in hlo.loops(text) if loop["trip_count"] == T for m in loop["matmuls"]]


@pytest.mark.parametrize("kind", ["tied", "untied"])
def test_gru_loops_run_only_batch_row_matmuls(kind):
  """The forward and backward loops multiply only ``[B, .]`` rows (``[G, B, .]`` per gate): the
  recurrent weight gradient is not accumulated per step (``[H, .]`` products) but computed
  after the loop. Plain autodiff of the scan does accumulate it, which guards the check."""
  batch_rows = lambda shape: shape.split("[")[1].rstrip("]").split(",")[-2] == str(B)  # noqa: E731
  fast, plain = _time_loop_matmuls(rnn.gru, kind), _time_loop_matmuls(rnn._gru_autodiff, kind)
  assert fast and all(batch_rows(s) for s in fast), fast
  assert not all(batch_rows(s) for s in plain), plain
