"""The scans against a step-by-step NumPy reference (tied / untied / no masks, LSTM / GRU)."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from tests.helpers import make, make_masks, np_gru, np_lstm
from vdrnn import masks, rnn


@pytest.mark.parametrize("hoist_input", [True, False])
@pytest.mark.parametrize("kind", ["none", "tied", "untied"])
def test_lstm_matches_numpy(kind, hoist_input):
  p, xs, c0, h0 = make(4)
  T, B, D = xs.shape
  H = h0.shape[1]
  mx, mh, rmx, rmh = make_masks(kind, 4, B, D, H)
  (c, h), ys = rnn.lstm(p, (c0, h0), xs, mx, mh, hoist_input=hoist_input)
  rc, rh, rys = np_lstm(p, np.asarray(c0, np.float64), np.asarray(h0, np.float64),
                        np.asarray(xs, np.float64), rmx, rmh)
  np.testing.assert_allclose(ys, rys, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(c, rc, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(h, rh, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["none", "tied", "untied"])
def test_gru_matches_numpy(kind):
  p, xs, _, h0 = make(3)
  T, B, D = xs.shape
  H = h0.shape[1]
  mx, mh, rmx, rmh = make_masks(kind, 3, B, D, H)
  h, ys = rnn.gru(p, h0, xs, mx, mh)
  rh, rys = np_gru(p, np.asarray(h0, np.float64), np.asarray(xs, np.float64), rmx, rmh)
  np.testing.assert_allclose(ys, rys, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(h, rh, rtol=1e-5, atol=1e-5)


def test_masks_actually_change_the_output():
  """Guards the reference comparison: dropping units must change the result."""
  p, xs, c0, h0 = make(4)
  B, D, H = xs.shape[1], xs.shape[2], h0.shape[1]
  mx, mh, _, _ = make_masks("untied", 4, B, D, H)
  _, ys0 = rnn.lstm(p, (c0, h0), xs)
  _, ys1 = rnn.lstm(p, (c0, h0), xs, mx, mh)
  assert np.abs(np.asarray(ys0) - np.asarray(ys1)).max() > 1e-2


def test_all_ones_masks_equal_no_dropout_exactly():
  p, xs, c0, h0 = make(4)
  B, D, H = xs.shape[1], xs.shape[2], h0.shape[1]
  _, ys_none = rnn.lstm(p, (c0, h0), xs)
  _, ys_tied = rnn.lstm(p, (c0, h0), xs, jnp.ones((B, D)), jnp.ones((B, H)))
  np.testing.assert_array_equal(ys_none, ys_tied)
  mx0 = masks.per_row(jax.random.key(3), B, (D,), 0.0)
  np.testing.assert_array_equal(mx0, np.ones((B, D)))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_valid_mask_skips_padding(cell):
  """With left padding skipped, the final state equals that of the unpadded suffix."""
  G = 4 if cell == "lstm" else 3
  p, xs, c0, h0 = make(G, T=9)
  T, B, D = xs.shape
  H = h0.shape[1]
  lengths = np.array([9, 4, 1])
  valid = np.arange(T)[:, None] >= (T - lengths)[None, :]  # left-padded
  z = jnp.zeros((B, H))
  if cell == "lstm":
    (_, h), _ = rnn.lstm(p, (z, z), xs, valid=jnp.asarray(valid))
  else:
    h, _ = rnn.gru(p, z, xs, valid=jnp.asarray(valid))
  for b, n in enumerate(lengths):
    x_b = xs[T - n:, b:b + 1]
    zb = jnp.zeros((1, H))
    if cell == "lstm":
      (_, hb), _ = rnn.lstm(p, (zb, zb), x_b)
    else:
      hb, _ = rnn.gru(p, zb, x_b)
    np.testing.assert_allclose(h[b], hb[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [(2, 5), (4, 2, 5), (2, 3, 5), (5,)])
def test_bad_mask_shape_names_argument(bad):
  p, xs, c0, h0 = make(4)
  with pytest.raises(ValueError, match="mask_x"):
    rnn.lstm(p, (c0, h0), xs, mask_x=jnp.ones(bad))
  with pytest.raises(ValueError, match="mask_h"):
    rnn.lstm(p, (c0, h0), xs, mask_h=jnp.ones((7, 7)))


def test_bad_param_shape_names_argument():
  p, xs, c0, h0 = make(4)
  p = dict(p, w_h=p["w_h"][:, :5])
  with pytest.raises(ValueError, match="w_h"):
    rnn.lstm(p, (c0, h0), xs)


def test_bf16_compute_close_to_fp32():
  p, xs, c0, h0 = make(4)
  _, ys = rnn.lstm(p, (c0, h0), xs)
  _, ys16 = rnn.lstm(p, (c0, h0), xs, compute_dtype=jnp.bfloat16)
  assert ys16.dtype == jnp.float32
  np.testing.assert_allclose(ys16, ys, atol=3e-2)


def test_unroll_does_not_change_result():
  p, xs, c0, h0 = make(4)
  _, a = rnn.lstm(p, (c0, h0), xs)
  _, b = rnn.lstm(p, (c0, h0), xs, unroll=4)
  np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["tied", "untied"])
def test_lstm_fused_input_path_has_the_same_values_and_gradients(kind):
  """``hoist_input=False`` (MC evaluation's per-step fused matmul) against the training path,
  with padding, values and gradients (autodiff vs the hand-written backward)."""
  p, xs, c0, h0 = make(4, T=7)
  T, B, D = xs.shape
  H = h0.shape[1]
  mx, mh, _, _ = make_masks(kind, 4, B, D, H)
  valid = jnp.asarray(np.arange(T)[:, None] >= np.array([0, 3, 6])[None, :])

  def loss(p, hoist):
    (c, h), ys = rnn.lstm(p, (c0, h0), xs, mx, mh, valid=valid, hoist_input=hoist)
    return (ys * jnp.cos(ys)).sum() + (c * h).sum()

  np.testing.assert_allclose(loss(p, False), loss(p, True), rtol=1e-6)
  g_fused, g_hoist = jax.grad(loss)(p, False), jax.grad(loss)(p, True)
  for k in p:
    np.testing.assert_allclose(g_fused[k], g_hoist[k], rtol=1e-5, atol=1e-6)
