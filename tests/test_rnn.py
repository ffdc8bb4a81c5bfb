"""The scans against a step-by-step NumPy reference (tied / untied / no masks, LSTM / GRU)."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from vdrnn import masks, rnn


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def np_lstm(p, c, h, xs, mx, mh, valid=None):
  """Obvious reference: gate k's pre-activation is
  (x*mx[k]) W_x[:, k] + (h*mh[k]) W_h[:, k] + b[k]."""
  w_x, w_h, b = (np.asarray(p[k], np.float64) for k in ("w_x", "w_h", "b"))
  H = h.shape[1]
  ys = []
  for t in range(xs.shape[0]):
    pre = []
    for k in range(4):
      xk = xs[t] * (mx[k] if mx is not None else 1.0)
      hk = h * (mh[k] if mh is not None else 1.0)
      pre.append(xk @ w_x[:, k * H:(k + 1) * H] + hk @ w_h[:, k * H:(k + 1) * H] +
                 b[k * H:(k + 1) * H])
    i, f, g, o = pre
    c_new = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    h_new = sigmoid(o) * np.tanh(c_new)
    if valid is not None:
      c_new = np.where(valid[t][:, None], c_new, c)
      h_new = np.where(valid[t][:, None], h_new, h)
    c, h = c_new, h_new
    ys.append(h)
  return c, h, np.stack(ys)


def np_gru(p, h, xs, mx, mh, valid=None):
  w_x, w_h, b = (np.asarray(p[k], np.float64) for k in ("w_x", "w_h", "b"))
  H = h.shape[1]
  sl = [slice(k * H, (k + 1) * H) for k in range(3)]
  ys = []
  for t in range(xs.shape[0]):
    x = [xs[t] * (mx[k] if mx is not None else 1.0) for k in range(3)]
    hh = [h * (mh[k] if mh is not None else 1.0) for k in range(3)]
    z = sigmoid(x[0] @ w_x[:, sl[0]] + hh[0] @ w_h[:, sl[0]] + b[sl[0]])
    r = sigmoid(x[1] @ w_x[:, sl[1]] + hh[1] @ w_h[:, sl[1]] + b[sl[1]])
    n = np.tanh(x[2] @ w_x[:, sl[2]] + (r * hh[2]) @ w_h[:, sl[2]] + b[sl[2]])
    h_new = z * h + (1 - z) * n
    if valid is not None:
      h_new = np.where(valid[t][:, None], h_new, h)
    h = h_new
    ys.append(h)
  return h, np.stack(ys)


def make(G, D=5, H=6, B=3, T=7, seed=0):
  k = jax.random.split(jax.random.key(seed), 6)
  p = {"w_x": jax.random.uniform(k[0], (D, G * H), minval=-0.5, maxval=0.5),
       "w_h": jax.random.uniform(k[1], (H, G * H), minval=-0.5, maxval=0.5),
       "b": jax.random.uniform(k[2], (G * H,), minval=-0.5, maxval=0.5)}
  xs = jax.random.normal(k[3], (T, B, D))
  c0 = 0.1 * jax.random.normal(k[4], (B, H))
  h0 = 0.1 * jax.random.normal(k[5], (B, H))
  return p, xs, c0, h0


def make_masks(kind, G, B, D, H, seed=1):
  kx, kh = jax.random.split(jax.random.key(seed))
  if kind == "none":
    return None, None, None, None
  if kind == "tied":
    mx, mh = masks.per_row(kx, B, (D,), 0.4), masks.per_row(kh, B, (H,), 0.3)
    return mx, mh, np.stack([np.asarray(mx)] * G), np.stack([np.asarray(mh)] * G)
  mx = jnp.swapaxes(masks.per_row(kx, B, (G, D), 0.4), 0, 1)
  mh = jnp.swapaxes(masks.per_row(kh, B, (G, H), 0.3), 0, 1)
  return mx, mh, np.asarray(mx), np.asarray(mh)


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
