"""Shared test helpers: step-by-step NumPy references of the LSTM and the GRU (float64, one gate
and one step at a time: the obviously correct versions the scans are held against), and small
random parameters, inputs and masks; the evaluation command line run in this process."""

import jax
import jax.numpy as jnp
import numpy as np

from vdrnn import evaluate, masks


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def np_act(name):
  return {"sigmoid": sigmoid, "tanh": np.tanh,
          "hard_sigmoid": lambda x: np.clip(0.2 * x + 0.5, 0.0, 1.0)}[name]


def gate_mask(m, t, k):
  """Mask of gate ``k`` at step ``t`` from None, [B, D], [G, B, D], [T, B, D]* or [T, G, B, D]*
  (* given as ("steps", array))."""
  if m is None:
    return 1.0
  if isinstance(m, tuple):
    a = m[1]
    return a[t] if a.ndim == 3 else a[t, k]
  return m if m.ndim == 2 else m[k]


def np_lstm(p, c, h, xs, mx=None, mh=None, gate_act="sigmoid", valid=None, w_mask=None, zc=None,
            zh=None):
  """The LSTM: gate k's pre-activation is ``(x * mx[k]) W_x[:, k] + (h * mh[k]) W_h[:, k] + b[k]``
  (masks as ``gate_mask`` reads them); ``W_h`` times ``w_mask`` (weight drop); zoneout mixes
  the old and the new state with ``zc[t]`` / ``zh[t]`` ([T, B, H] arrays, or a constant rate),
  ``h_new`` from the un-zoned ``c_new``; where ``valid[t]`` is False the state is kept.
  Returns ``(c_T, h_T, ys [T, B, H])``."""
  w_x, w_h, b = (np.asarray(p[k], np.float64) for k in ("w_x", "w_h", "b"))
  if w_mask is not None:
    w_h = w_h * np.asarray(w_mask, np.float64)
  H, sg = h.shape[1], np_act(gate_act)
  sl = [slice(k * H, (k + 1) * H) for k in range(4)]
  at = lambda z, t: None if z is None else (z[t] if np.ndim(z) == 3 else z)  # noqa: E731
  ys = []
  for t in range(xs.shape[0]):
    i, f, g, o = [(xs[t] * gate_mask(mx, t, k)) @ w_x[:, sl[k]] +
                  (h * gate_mask(mh, t, k)) @ w_h[:, sl[k]] + b[sl[k]] for k in range(4)]
    c_new = sg(f) * c + sg(i) * np.tanh(g)
    h_new = sg(o) * np.tanh(c_new)
    if at(zc, t) is not None:
      c_new = at(zc, t) * c + (1 - at(zc, t)) * c_new
    if at(zh, t) is not None:
      h_new = at(zh, t) * h + (1 - at(zh, t)) * h_new
    if valid is not None:
      c_new, h_new = np.where(valid[t][:, None], c_new, c), np.where(valid[t][:, None], h_new, h)
    c, h = c_new, h_new
    ys.append(h)
  return c, h, np.stack(ys)


def np_gru(p, h, xs, mx=None, mh=None, gate_act="sigmoid", candidate_act="tanh", valid=None,
           w_mask=None):
  """The GRU of Gal's Keras code (reset before ``W_hn``), gate order (z, r, n); masks as
  ``gate_mask`` reads them, ``W_h`` times ``w_mask`` (weight drop); where ``valid[t]`` is False
  the state is kept. Returns ``(h_T, ys [T, B, H])``."""
  w_x, w_h, b = (np.asarray(p[k], np.float64) for k in ("w_x", "w_h", "b"))
  if w_mask is not None:
    w_h = w_h * np.asarray(w_mask, np.float64)
  H, sg, cand = h.shape[1], np_act(gate_act), np_act(candidate_act)
  sl = [slice(k * H, (k + 1) * H) for k in range(3)]
  ys = []
  for t in range(xs.shape[0]):
    x = [xs[t] * gate_mask(mx, t, k) for k in range(3)]
    hh = [h * gate_mask(mh, t, k) for k in range(3)]
    z = sg(x[0] @ w_x[:, sl[0]] + hh[0] @ w_h[:, sl[0]] + b[sl[0]])
    r = sg(x[1] @ w_x[:, sl[1]] + hh[1] @ w_h[:, sl[1]] + b[sl[1]])
    n = cand(x[2] @ w_x[:, sl[2]] + (r * hh[2]) @ w_h[:, sl[2]] + b[sl[2]])
    h_new = z * h + (1 - z) * n
    h = h_new if valid is None else np.where(valid[t][:, None], h_new, h)
    ys.append(h)
  return h, np.stack(ys)


def make(G, D=5, H=6, B=3, T=7, seed=0):
  """Parameters U(-0.5, 0.5), inputs ``xs [T, B, D]`` and a small initial ``(c0, h0)``."""
  k = jax.random.split(jax.random.key(seed), 6)
  p = {"w_x": jax.random.uniform(k[0], (D, G * H), minval=-0.5, maxval=0.5),
       "w_h": jax.random.uniform(k[1], (H, G * H), minval=-0.5, maxval=0.5),
       "b": jax.random.uniform(k[2], (G * H,), minval=-0.5, maxval=0.5)}
  xs = jax.random.normal(k[3], (T, B, D))
  c0 = 0.1 * jax.random.normal(k[4], (B, H))
  h0 = 0.1 * jax.random.normal(k[5], (B, H))
  return p, xs, c0, h0


def make_masks(kind, G, B, D, H, seed=1):
  """``(mask_x, mask_h)`` for the scans and their per-gate NumPy form: ``none``, ``tied``
  ([B, .], repeated per gate for NumPy) or ``untied`` ([G, B, .])."""
  kx, kh = jax.random.split(jax.random.key(seed))
  if kind == "none":
    return None, None, None, None
  if kind == "tied":
    mx, mh = masks.per_row(kx, B, (D,), 0.4), masks.per_row(kh, B, (H,), 0.3)
    return mx, mh, np.stack([np.asarray(mx)] * G), np.stack([np.asarray(mh)] * G)
  mx = jnp.swapaxes(masks.per_row(kx, B, (G, D), 0.4), 0, 1)
  mh = jnp.swapaxes(masks.per_row(kh, B, (G, H), 0.3), 0, 1)
  return mx, mh, np.asarray(mx), np.asarray(mh)


def evaluate_cli(argv: list[str]) -> None:
  """``python -m vdrnn.evaluate`` with ``argv`` in this process (``argv[0]`` is the program)."""
  evaluate.main(evaluate.flags_parser(list(argv)))
