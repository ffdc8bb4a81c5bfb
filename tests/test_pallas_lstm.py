"""The Pallas LSTM kernel (``rnn.lstm(..., impl="pallas")``) against the NumPy reference of
tests/test_rnn.py: values and gradients, no / tied / untied masks, padded sequences.

On the CPU the kernels run in Pallas interpret mode; launch/gpu_check.sh runs this file
natively on a GPU (``JAX_PLATFORMS=cuda``), where matmuls run at float32 precision here
(``jax.default_matmul_precision("float32")``; the GPU default would be TF32)."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from tests.helpers import make, make_masks, np_lstm
from vdrnn import pallas_lstm, rnn

# block_h 16 with H = 20: two unit tiles (Hp = 32) and padded units; B = 3: padded rows.
CFG = pallas_lstm.Config(block_b=16, block_h=16)
D, H, B, T = 5, 20, 3, 7
STARTS = np.array([0, 3, 6])  # left padding: row b starts at step STARTS[b]


@pytest.fixture(autouse=True)
def precise_and_fast():
  """float32 matmuls on a GPU (the reference tolerances are float32's); on the CPU,
  unoptimised XLA code generation (interpret mode compiles large programs)."""
  before = jax.config.read("jax_disable_most_optimizations")
  if jax.default_backend() == "cpu":
    jax.config.update("jax_disable_most_optimizations", True)
  with jax.default_matmul_precision("float32"):
    yield
  jax.config.update("jax_disable_most_optimizations", before)


def setup(kind, seed=0):
  p, xs, c0, h0 = make(4, D=D, H=H, B=B, T=T, seed=seed)
  mx, mh, rmx, rmh = make_masks(kind, 4, B, D, H)
  valid = np.arange(T)[:, None] >= STARTS[None, :]
  return p, xs, c0, h0, mx, mh, rmx, rmh, valid


def np_loss(p, c0, h0, xs, rmx, rmh, valid):
  """The tests' scalar loss on the float64 NumPy reference."""
  c, h, ys = np_lstm(p, c0, h0, xs, rmx, rmh, valid=valid)
  return float((ys * np.cos(ys)).sum() + (c * h).sum())


def loss_fn(impl, mx, valid, xs, cfg=CFG):
  def loss(p, c0, h0, mh):
    (c, h), ys = rnn.lstm(p, (c0, h0), xs, mx, mh, valid=valid, impl=impl, pallas_config=cfg)
    return (ys * jnp.cos(ys)).sum() + (c * h).sum(), (c, h, ys)
  return loss


@pytest.mark.parametrize("kind", ["none", "tied", "untied"])
def test_pallas_values_and_gradients_match_reference(kind):
  p, xs, c0, h0, mx, mh, rmx, rmh, valid = setup(kind)
  argnums = (0, 1, 2) if mh is None else (0, 1, 2, 3)
  vg = {impl: jax.jit(jax.value_and_grad(loss_fn(impl, mx, jnp.asarray(valid), xs), argnums,
                                         has_aux=True))
        for impl in ("pallas", "scan")}
  (loss, (c, h, ys)), grads = vg["pallas"](p, c0, h0, mh)
  f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
  rc, rh, rys = np_lstm(p, f64(c0), f64(h0), f64(xs), rmx, rmh, valid=valid)
  np.testing.assert_allclose(ys, rys, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(c, rc, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(h, rh, rtol=1e-5, atol=1e-5)
  # Padding: a row's state before its first valid step is its initial state.
  np.testing.assert_array_equal(ys[:STARTS[2], 2], np.broadcast_to(h0[2], (STARTS[2], H)))

  # Gradients: against the scan's hand-written backward (itself checked against autodiff) ...
  (loss_s, _), grads_s = vg["scan"](p, c0, h0, mh)
  np.testing.assert_allclose(loss, loss_s, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_s)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

  # ... and against central differences of the float64 NumPy reference along random
  # directions of (params, c0, h0[, untied / tied recurrent mask]).
  rng = np.random.default_rng(1)
  for _ in range(3):
    wrt = (p, c0, h0) + (() if mh is None else (mh,))
    dirs = jax.tree.map(lambda a: rng.standard_normal(a.shape), wrt)
    eps = 1e-5

    def at(s):
      q, c0_, h0_ = (jax.tree.map(lambda a, d: f64(a) + s * d, x, dx)
                     for x, dx in zip((p, c0, h0), dirs))
      if mh is None:
        return np_loss(q, c0_, h0_, f64(xs), rmx, rmh, valid)
      m = f64(mh) + s * dirs[3]
      return np_loss(q, c0_, h0_, f64(xs), rmx, np.stack([m] * 4) if kind == "tied" else m, valid)

    numeric = (at(eps) - at(-eps)) / (2 * eps)
    analytic = sum(float((f64(g) * d).sum())
                   for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(dirs)))
    np.testing.assert_allclose(analytic, numeric, rtol=2e-4, atol=1e-4)


def test_pallas_forward_only_two_batch_blocks_and_bfloat16():
  """The primal kernel (no saved activations), a batch of two row blocks (B = 20 > 16),
  and bfloat16 matmul operands against the scan's bfloat16 path."""
  p, xs, c0, h0 = make(4, D=D, H=H, B=20, T=5, seed=3)
  mx, mh, rmx, rmh = make_masks("untied", 4, 20, D, H)
  run = jax.jit(lambda p: rnn.lstm(p, (c0, h0), xs, mx, mh, impl="pallas", pallas_config=CFG))
  (c, h), ys = run(p)
  f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
  rc, rh, rys = np_lstm(p, f64(c0), f64(h0), f64(xs), rmx, rmh)
  np.testing.assert_allclose(ys, rys, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(c, rc, rtol=1e-5, atol=1e-5)
  lstm16 = jax.jit(lambda p, impl: rnn.lstm(p, (c0, h0), xs, mx, mh, impl=impl, pallas_config=CFG,
                                            compute_dtype=jnp.bfloat16)[1], static_argnums=1)
  ys16, ys16_scan = lstm16(p, "pallas"), lstm16(p, "scan")
  assert ys16.dtype == jnp.float32
  np.testing.assert_allclose(ys16, ys16_scan, atol=2e-3)  # same bf16 operands, other sum order
  np.testing.assert_allclose(ys16, rys, atol=3e-2)
  assert np.abs(np.asarray(ys16) - rys).max() > 1e-5  # bfloat16 really used


def test_pallas_rejects_bad_config():
  p, xs, c0, h0 = make(4)
  with pytest.raises(ValueError, match="block_h"):
    rnn.lstm(p, (c0, h0), xs, impl="pallas", pallas_config=pallas_lstm.Config(block_h=24))
  with pytest.raises(ValueError, match="hoist_input"):
    rnn.lstm(p, (c0, h0), xs, impl="pallas", hoist_input=False)
  with pytest.raises(ValueError, match="impl"):
    rnn.lstm(p, (c0, h0), xs, impl="cudnn")


@pytest.mark.parametrize("kind", ["tied", "untied"])
def test_pallas_lowers_to_triton(kind):
  """The forward and backward kernels lower to Triton IR for a CUDA device (lowering only,
  no GPU needed): every loaded tensor has a power-of-2 size, every primitive has a Triton
  rule. Compiling the IR to PTX is left to the GPU run."""
  p, xs, c0, h0, mx, mh, _, _, valid = setup(kind)
  cfg = pallas_lstm.Config(block_b=16, block_h=16, interpret=False)
  loss = loss_fn("pallas", mx, jnp.asarray(valid), xs, cfg)
  f = jax.jit(jax.grad(lambda *a: loss(*a)[0], argnums=(0, 1, 2)))
  text = f.trace(p, c0, h0, mh).lower(lowering_platforms=("cuda",)).as_text()
  calls = [l for l in text.splitlines() if "__gpu$xla.gpu.triton" in l]
  assert len(calls) == 2, calls  # forward (saving activations) and backward
  assert 'name = "lstm_fwd"' in text and 'name = "lstm_bwd"' in text
