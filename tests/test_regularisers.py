"""Weight drop and zoneout on the core (``vdrnn.rnn.lstm`` / ``vdrnn.masks`` / ``vdrnn.models``):
values and gradients against the step-by-step NumPy reference (``tests.helpers.np_lstm``), alone
and with variational masks, and their invariants."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from configs import ptb_tiny
from tests.helpers import make, make_masks, np_lstm
from vdrnn import masks, models, rnn

T, B, D, H = 6, 3, 5, 4


def regs(kind, seed=3):
  """Weight-drop and zoneout arguments of ``kind`` (drawn with the masks module)."""
  kw, kc, kh = jax.random.split(jax.random.key(seed), 3)
  w = masks.weight_drop_mask(kw, (H, 4 * H), 0.4)
  zc, zh = masks.zoneout_mask(kc, B, T, H, 0.5), masks.zoneout_mask(kh, B, T, H, 0.3)
  return {"weight": {"mask_w": w}, "zoneout": {"zone_c": zc, "zone_h": zh},
          "both": {"mask_w": w, "zone_c": zc, "zone_h": zh},
          "zoneout expectation": {"zone_c": 0.5, "zone_h": 0.05}}[kind]


def np_args(r):
  return {"w_mask": r.get("mask_w"), "zc": r.get("zone_c"), "zh": r.get("zone_h")}


CASES = [(reg, var) for reg in ("weight", "zoneout", "both", "zoneout expectation")
         for var in ("none", "tied", "untied")]


@pytest.mark.parametrize("reg,var", CASES)
@pytest.mark.parametrize("hoist_input", [True, False])
def test_values_match_numpy(reg, var, hoist_input):
  p, xs, c0, h0 = make(4, D, H, B, T)
  mx, mh, nmx, nmh = make_masks(var, 4, B, D, H)
  r = regs(reg)
  (c, h), ys = rnn.lstm(p, (c0, h0), xs, mx, mh, hoist_input=hoist_input, **r)
  rc, rh, rys = np_lstm(p, np.asarray(c0, np.float64), np.asarray(h0, np.float64),
                        np.asarray(xs, np.float64), nmx, nmh,
                        **{k: None if v is None else np.asarray(v) for k, v in np_args(r).items()})
  np.testing.assert_allclose(ys, rys, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(c, rc, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(h, rh, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reg,var", [c for c in CASES if c[1] != "tied"])
def test_gradients_match_numpy_finite_differences(reg, var):
  """The directional derivative of a loss of the outputs, by autodiff of ``rnn.lstm`` and by
  central differences of the float64 NumPy reference, along random directions of every
  parameter, the inputs and the initial state."""
  p, xs, c0, h0 = make(4, D, H, B, T)
  mx, mh, nmx, nmh = make_masks(var, 4, B, D, H)
  r = regs(reg)
  wy = np.asarray(jax.random.normal(jax.random.key(5), (T, B, H)), np.float64)
  args = {"p": p, "xs": xs, "c0": c0, "h0": h0}

  def loss_jax(a):
    (c, h), ys = rnn.lstm(a["p"], (a["c0"], a["h0"]), a["xs"], mx, mh, **r)
    return (ys * wy).sum() + (c * c).sum()

  def loss_np(a):
    a = jax.tree.map(lambda v: np.asarray(v, np.float64), a)
    c, _, ys = np_lstm(a["p"], a["c0"], a["h0"], a["xs"], nmx, nmh,
                       **{k: None if v is None else np.asarray(v) for k, v in np_args(r).items()})
    return (ys * wy).sum() + (c * c).sum()

  grad = jax.grad(loss_jax)(args)
  for seed in range(3):
    leaves, tree = jax.tree.flatten(args)
    keys = jax.random.split(jax.random.key(10 + seed), len(leaves))
    v = jax.tree.unflatten(tree, [np.asarray(jax.random.normal(k, l.shape), np.float64)
                                  for k, l in zip(keys, leaves)])
    eps = 1e-5
    shift = lambda s: jax.tree.map(  # noqa: E731
        lambda a, d: np.asarray(a, np.float64) + s * eps * d, args, v)
    numeric = (loss_np(shift(1.0)) - loss_np(shift(-1.0))) / (2 * eps)
    analytic = sum(float(np.sum(np.asarray(g, np.float64) * d))
                   for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(v)))
    np.testing.assert_allclose(analytic, numeric, rtol=2e-3, atol=1e-3)


def test_rate_zero_is_the_plain_lstm_exactly():
  cfg = ptb_tiny.get_config("variational_untied").model
  params = models.init_lm(jax.random.key(0), cfg)
  tokens = jax.random.randint(jax.random.key(1), (4, 9), 0, cfg.vocab_size)
  carry = models.lm_zero_carry(cfg, 4)
  key = jax.random.key(2)
  m = models.lm_masks(key, cfg, tokens)
  assert all(x is None for k in ("w_h", "zone_c", "zone_h") for x in m[k])
  cfg0 = cfg.copy_and_resolve_references()
  cfg0.p_weight_drop, cfg0.zoneout_c, cfg0.zoneout_h = 0.0, 0.0, 0.0
  a = models.lm_hidden(params, carry, tokens, models.lm_masks(key, cfg0, tokens))[0]
  np.testing.assert_array_equal(a, models.lm_hidden(params, carry, tokens, m)[0])
  # the other masks keep their draws when weight drop and zoneout are switched on
  cfg1 = cfg.copy_and_resolve_references()
  cfg1.p_weight_drop, cfg1.zoneout_c = 0.3, 0.2
  m1 = models.lm_masks(key, cfg1, tokens)
  for k in ("emb", "out"):
    np.testing.assert_array_equal(m1[k], m[k])
  for k in ("x", "h"):
    for u, w in zip(m1[k], m[k]):
      np.testing.assert_array_equal(u, w)


def test_weight_drop_is_shared_by_the_rows_redrawn_per_call_and_off_when_deterministic():
  cfg = ptb_tiny.get_config("none").model
  cfg.p_weight_drop = 0.5
  params = models.init_lm(jax.random.key(0), cfg)
  row = jax.random.randint(jax.random.key(1), (1, 9), 0, cfg.vocab_size)
  tokens = jnp.concatenate([row] * 3)  # identical rows
  carry = models.lm_zero_carry(cfg, 3)
  m = models.lm_masks(jax.random.key(2), cfg, tokens)
  (w0,) = m["w_h"][:1]
  assert w0.shape == (cfg.hidden, 4 * cfg.hidden)
  assert set(np.unique(np.asarray(w0))) == {0.0, 2.0}
  ys = np.asarray(models.lm_hidden(params, carry, tokens, m)[0])
  np.testing.assert_array_equal(ys[:, 0], ys[:, 1])
  np.testing.assert_array_equal(ys[:, 0], ys[:, 2])
  m2 = models.lm_masks(jax.random.key(3), cfg, tokens)
  assert np.abs(np.asarray(m2["w_h"][0]) - np.asarray(w0)).max() > 0  # a new draw
  det = models.lm_hidden(params, carry, tokens, None)[0]
  plain = ptb_tiny.get_config("none").model
  np.testing.assert_array_equal(det, models.lm_hidden(params, carry, tokens, None)[0])
  assert models.lm_rates(plain)["weight"] == 0.0 and models.lm_rates(cfg)["weight"] == 0.5
  assert np.abs(ys - np.asarray(det)).max() > 1e-4


def test_zoneout_one_holds_the_initial_state_and_masks_differ_per_row_and_step():
  p, xs, c0, h0 = make(4, D, H, B, T)
  ones = masks.zoneout_mask(jax.random.key(0), B, T, H, 1.0)
  (c, h), ys = rnn.lstm(p, (c0, h0), xs, zone_c=ones, zone_h=ones)
  np.testing.assert_array_equal(c, c0)
  np.testing.assert_array_equal(ys, jnp.broadcast_to(h0, ys.shape))
  (c, h), _ = rnn.lstm(p, (c0, h0), xs, zone_c=1.0, zone_h=1.0)  # the expectation at z = 1
  np.testing.assert_array_equal(c, c0)
  z = np.asarray(masks.zoneout_mask(jax.random.key(1), 8, 50, 16, 0.3))
  assert z.shape == (50, 8, 16) and set(np.unique(z)) == {0.0, 1.0}
  assert abs(z.mean() - 0.3) < 0.03
  assert all((z[:, b] != z[:, 0]).any() for b in range(1, 8))  # rows differ
  assert all((z[t] != z[0]).any() for t in range(1, 50))        # steps differ
  np.testing.assert_array_equal(masks.zoneout_mask(jax.random.key(1), 8, 50, 16, 0.0), 0.0)


def test_bad_rates_are_named():
  with pytest.raises(ValueError, match=r"rates\['weight'\]"):
    masks.sample_masks(jax.random.key(0), {"weight": 1.0}, jnp.zeros((2, 3), jnp.int32),
                       scheme="none", tied=True, layers=[(4, 4)], n_gates=4)
  with pytest.raises(ValueError, match=r"rates\['zone_h'\]"):
    masks.sample_masks(jax.random.key(0), {"zone_h": 1.5}, jnp.zeros((2, 3), jnp.int32),
                       scheme="none", tied=True, layers=[(4, 4)], n_gates=4)
  p, xs, c0, h0 = make(4, D, H, B, T)
  with pytest.raises(ValueError, match="mask_w"):
    rnn.lstm(p, (c0, h0), xs, mask_w=jnp.ones((H, H)))
  with pytest.raises(ValueError, match="zone_c"):
    rnn.lstm(p, (c0, h0), xs, zone_c=jnp.ones((T, H)))


# ----------------------------------------------------------------------------------------
# Concrete dropout.


def _concrete_cfg(**kw):
  c = ptb_tiny.get_config("variational_tied")
  c.model.concrete = True
  c.model.p_emb, c.model.p_x, c.model.p_h, c.model.p_out = 0.1, 0.2, 0.15, 0.25
  for k, v in kw.items():
    c.model[k] = v
  return c


def test_concrete_regularizer_against_a_hand_computation():
  c = _concrete_cfg(concrete_length_scale=0.3)
  m = c.model
  params = models.init_lm(jax.random.key(0), m)
  rates = {k: np.asarray(v) for k, v in jax.tree.map(np.asarray,
                                                     models.concrete_rates(params)).items()}
  np.testing.assert_allclose([rates["emb"], rates["out"], *rates["x"], *rates["h"]],
                             [0.1, 0.25, 0.2, 0.2, 0.15, 0.15], rtol=1e-6)
  f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
  H = lambda p: -p * np.log(p) - (1 - p) * np.log(1 - p)  # noqa: E731
  site = lambda p, w, K: 0.5 * 0.09 * np.sum(f64(w) ** 2) / (1 - p) - K * H(p)  # noqa: E731
  want = site(0.1, params["embed"], m.vocab_size) + site(0.25, params["softmax"]["w"], m.hidden)
  for l in range(m.num_layers):
    want += site(0.2, params["lstm"][l]["w_x"], m.emb_dim if l == 0 else m.hidden)
    want += site(0.15, params["lstm"][l]["w_h"], m.hidden)
  got = models.concrete_regularizer(params, m, n_tokens=12345)
  np.testing.assert_allclose(float(got), want / 12345, rtol=1e-5)


def _train_rates(c, tokens, n_tokens, steps):
  """The learned rates after ``steps`` SGD steps of the real training step on windows of
  ``tokens`` [B, steps * T + 1]."""
  from vdrnn import lm  # noqa: PLC0415 - the training step, only here
  step = jax.jit(lm.make_train_step(c, n_tokens=n_tokens))
  B, T = c.train.batch_size, c.train.seq_length
  state = lm.init_state(c, B)
  for i in range(steps):
    state = step(state, tokens[:, i * T:(i + 1) * T], tokens[:, i * T + 1:(i + 1) * T + 1], 0.5)
  return jax.tree.map(float, models.concrete_rates(state["params"]))


def test_concrete_rates_move_as_a_toy_problem_says():
  """Tokens with no signal (uniform noise): dropping costs nothing and the KL's entropy pulls
  every rate up from its start. A signal (each row repeats one short cycle) with a negligible
  KL pulls the rates before the softmax and on the top layer's state down: dropping there
  loses what predicts the next token."""
  c = _concrete_cfg()
  B, T, V = c.train.batch_size, c.train.seq_length, c.model.vocab_size
  steps = 40
  noise = np.asarray(jax.random.randint(jax.random.key(0), (B, steps * T + 1), 0, V), np.int32)
  up = _train_rates(c, noise, n_tokens=2000, steps=steps)
  for k, start in (("emb", 0.1), ("out", 0.25)):
    assert up[k] > start, (k, up)
  assert all(r > 0.2 for r in up["x"]) and all(r > 0.15 for r in up["h"]), up
  cycle = (np.arange(B)[:, None] * 7 + np.arange(steps * T + 1)[None, :] % 5) % V
  down = _train_rates(c, cycle.astype(np.int32), n_tokens=10 ** 9, steps=steps)
  assert down["out"] < 0.2 and down["h"][-1] < 0.14, down


def test_frozen_concrete_masks_equal_the_bernoulli_path_in_expectation():
  """At a fixed rate, the relaxed masks (temperature 0.1) have mean 1 and most entries near
  0 or 1 / (1 - p), and the LSTM's outputs averaged over many rows, each with its own mask, agree
  with the Bernoulli masks' average within Monte Carlo error."""
  p, n = 0.3, 4000
  relaxed = np.asarray(masks.per_row(jax.random.key(0), n, (H,), p, concrete=0.1))
  hard = np.asarray(masks.per_row(jax.random.key(1), n, (H,), p))
  assert abs(relaxed.mean() - 1.0) < 0.02 and abs(hard.mean() - 1.0) < 0.02
  near = np.minimum(np.abs(relaxed), np.abs(relaxed - 1 / (1 - p)))
  assert np.mean(near < 0.1) > 0.85  # 0.89 at temperature 0.1; about 0.2 for uniform masks
  params, xs, c0, h0 = make(4, D, H, 1, T)
  xs, c0, h0 = (jnp.broadcast_to(a, (a.shape[0], n, a.shape[-1])) if a.ndim == 3 else
                jnp.broadcast_to(a, (n, H)) for a in (xs, c0, h0))
  out = {}
  for name, draw in (("concrete", dict(concrete=0.1)), ("bernoulli", {})):
    kx, kh = jax.random.split(jax.random.key(7 if name == "concrete" else 8))
    mx, mh = masks.per_row(kx, n, (D,), p, **draw), masks.per_row(kh, n, (H,), p, **draw)
    ys = np.asarray(rnn.lstm(params, (c0, h0), xs, mx, mh)[1])  # [T, n, H]
    out[name] = (ys.mean(1), ys.std(1) / np.sqrt(n))
  err = np.sqrt(out["concrete"][1] ** 2 + out["bernoulli"][1] ** 2)
  assert np.all(np.abs(out["concrete"][0] - out["bernoulli"][0]) < 4 * err + 1e-3)
