"""Like-for-like comparisons with the released code: the Lua validation formula, the sentiment
naive scheme of the released scripts (fresh per-step, per-gate masks on the inputs and the
recurrent state), and the Keras 0.x fork's semantics (hard_sigmoid gates, sigmoid GRU
candidate, non-inverted dropout, orthogonal scale) against a step-by-step NumPy reference."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import ptb_tiny, sentiment_gru, sentiment_lstm
from tests.helpers import make_masks, np_gru, np_lstm
from vdrnn import config as config_lib
from vdrnn import lm_eval, masks, metrics, models, rnn, sharding
from vdrnn.errors import UserError


# ----------------------------------------------------------------------------------------
# The Lua validation perplexity.


def test_lua_valid_ppl_hand_computation():
  # A stream of rows = 8 tokens per row, T = 3: len = 7/3, the loop runs 2 whole windows.
  got = metrics.lua_valid_ppl([1.0, 2.0], rows=8, seq_length=3)
  assert got == pytest.approx(math.exp(3.0 / (7 / 3)))
  assert math.exp(3.0 / (7 / 3)) < math.exp(1.5)  # below the exact exp(mean NLL)
  # rows - 1 divisible by T: no fraction, the exact value.
  assert metrics.lua_valid_ppl([1.0, 2.0], rows=7, seq_length=3) == pytest.approx(math.exp(1.5))
  # From the total NLL of B = 2 rows: windows' means 6/6 and 12/6.
  got = metrics.lua_valid_ppl_from_sum(18.0, batch=2, rows=8, seq_length=3)
  assert got == pytest.approx(math.exp(9 / 7))
  with pytest.raises(ValueError, match="whole windows"):
    metrics.lua_valid_ppl([1.0, 2.0, 3.0], rows=8, seq_length=3)


def test_lua_valid_ppl_of_a_model_matches_the_lua_loop():
  """``lm_eval.evaluate_split(lua=True)`` against the Lua loop run by hand on a small stream."""
  c = ptb_tiny.get_config("none")
  c.model.vocab_size = 30
  c.train.seq_length = 4
  c.eval.seq_length = 5
  B = 3
  ids = np.asarray(jax.random.randint(jax.random.key(0), (3 * 23 + 2,), 0, 30), np.int32)
  params = models.init_lm(jax.random.key(1), c.model)
  mesh = sharding.make_mesh(jax.devices()[:1])
  eval_fn = lm_eval.make_eval_fn(c)
  got = lm_eval.evaluate_split(c, eval_fn, params, ids, B, full=False, mesh=mesh, lua=True)
  # Lua: data [rows, B]; len = (rows - 1) / T; whole windows, state carried; fp = window mean.
  streams = ids[: len(ids) // B * B].reshape(B, -1)
  rows, T = streams.shape[1], 4
  carry, perp = models.lm_zero_carry(c.model, B), 0.0
  for i in range(int((rows - 1) / T)):
    x, y = streams[:, i * T:(i + 1) * T], streams[:, i * T + 1:(i + 1) * T + 1]
    nll, carry = models.lm_nll(params, carry, jnp.asarray(x), jnp.asarray(y))
    perp += float(np.mean(np.asarray(nll, np.float64)))
  want = math.exp(perp / ((rows - 1) / T))
  assert (rows - 1) % T != 0  # the fractional case
  assert got == pytest.approx(want, rel=1e-5)
  exact = lm_eval.evaluate_split(c, eval_fn, params, ids, B, full=False, mesh=mesh)
  assert got < exact


# ----------------------------------------------------------------------------------------
# NumPy references with per-step, per-gate masks and the fork's activations.


def make(G, D=5, H=6, B=3, T=7, seed=0, scale=1.5):
  k = jax.random.split(jax.random.key(seed), 5)
  p = {"w_x": jax.random.uniform(k[0], (D, G * H), minval=-scale, maxval=scale),
       "w_h": jax.random.uniform(k[1], (H, G * H), minval=-scale, maxval=scale),
       "b": jax.random.uniform(k[2], (G * H,), minval=-scale, maxval=scale)}
  xs = jax.random.normal(k[3], (T, B, D))
  h0 = 0.3 * jax.random.normal(k[4], (B, H))
  return p, xs, h0


def step_masks(G, T, B, D, H, per_gate, inverted=True, seed=1):
  kx, kh = jax.random.split(jax.random.key(seed))
  tokens = jnp.zeros((B, T), jnp.int32)
  rates = {"emb": 0.0, "x": 0.4, "h": 0.5, "out": 0.0}
  m = masks.sample_masks(kx, rates, tokens, scheme="naive", tied=False, layers=[(D, H)], n_gates=G,
                         naive_per_gate=per_gate, inverted=inverted)
  return m["x_steps"][0], m["h_steps"][0]


@pytest.mark.parametrize("gate_act", ["sigmoid", "hard_sigmoid"])
@pytest.mark.parametrize("per_gate", [False, True])
def test_lstm_per_step_masks_and_gate_activation_match_numpy(per_gate, gate_act):
  p, xs, h0 = make(4)
  T, B, D = xs.shape
  H = h0.shape[1]
  c0 = 0.5 * h0
  mx, mh = step_masks(4, T, B, D, H, per_gate)
  assert mx.shape == ((T, 4, B, D) if per_gate else (T, B, D)) and mh.shape[0] == T
  valid = np.ones((T, B), bool)
  valid[:2, 1] = False  # a left-padded row
  (c, h), _ = rnn.lstm(p, (c0, h0), xs, mask_x_steps=mx, mask_h_steps=mh, gate_act=gate_act,
                       valid=jnp.asarray(valid))
  f64 = lambda a: np.asarray(a, np.float64)
  rc, rh, _ = np_lstm(p, f64(c0), f64(h0), f64(xs), ("steps", f64(mx)), ("steps", f64(mh)),
                      gate_act, valid)
  np.testing.assert_allclose(c, rc, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(h, rh, rtol=1e-5, atol=1e-5)
  # The masks matter: the same run without the recurrent masks differs.
  (_, h_no), _ = rnn.lstm(p, (c0, h0), xs, mask_x_steps=mx, gate_act=gate_act,
                          valid=jnp.asarray(valid))
  assert np.abs(np.asarray(h_no) - np.asarray(h)).max() > 1e-3


def jnp_lstm(p, c, h, xs, mx, mh, gate_act):
  """Per-step, per-gate LSTM as a Python loop of jnp ops (differentiated by autodiff)."""
  H, sg = h.shape[1], rnn.activation(gate_act)
  for t in range(xs.shape[0]):
    m = lambda a, k: a[t] if a.ndim == 3 else a[t, k]
    sl = [slice(k * H, (k + 1) * H) for k in range(4)]
    i, f, g, o = [(xs[t] * m(mx, k)) @ p["w_x"][:, sl[k]] + (h * m(mh, k)) @ p["w_h"][:, sl[k]]
                  + p["b"][sl[k]] for k in range(4)]
    c = sg(f) * c + sg(i) * jnp.tanh(g)
    h = sg(o) * jnp.tanh(c)
  return c, h


@pytest.mark.parametrize("gate_act", ["sigmoid", "hard_sigmoid"])
@pytest.mark.parametrize("per_gate", [False, True])
def test_lstm_per_step_masks_hand_written_backward_matches_autodiff(per_gate, gate_act):
  p, xs, h0 = make(4)
  T, B, D = xs.shape
  H = h0.shape[1]
  c0 = 0.5 * h0
  mx, mh = step_masks(4, T, B, D, H, per_gate)
  wc, ws = jnp.cos(jnp.arange(H)), jnp.sin(jnp.arange(H))

  def loss(params, h_init, fn):
    c, h = fn(params, h_init)
    return jnp.sum(h * wc) + jnp.sum(c * ws)
  hand = lambda params, h_init: rnn.lstm(params, (c0, h_init), xs, mask_x_steps=mx, mask_h_steps=mh,
                                         gate_act=gate_act)[0]
  ref = lambda params, h_init: jnp_lstm(params, c0, h_init, xs, mx, mh, gate_act)
  g_hand = jax.grad(loss, argnums=(0, 1))(p, h0, hand)
  g_ref = jax.grad(loss, argnums=(0, 1))(p, h0, ref)
  for a, b in zip(jax.tree.leaves(g_hand), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert float(jnp.abs(g_hand[0]["w_h"]).max()) > 1e-3


@pytest.mark.parametrize("acts", [("sigmoid", "tanh"), ("hard_sigmoid", "sigmoid"),
                                  ("hard_sigmoid", "tanh")])
@pytest.mark.parametrize("per_gate", [False, True])
def test_gru_per_step_masks_and_activations_match_numpy(per_gate, acts):
  gate_act, candidate_act = acts
  p, xs, h0 = make(3)
  T, B, D = xs.shape
  H = h0.shape[1]
  mx, mh = step_masks(3, T, B, D, H, per_gate)
  h, _ = rnn.gru(p, h0, xs, mask_x_steps=mx, mask_h_steps=mh, gate_act=gate_act,
                 candidate_act=candidate_act)
  f64 = lambda a: np.asarray(a, np.float64)
  rh, _ = np_gru(p, f64(h0), f64(xs), ("steps", f64(mx)), ("steps", f64(mh)), gate_act,
                 candidate_act)
  np.testing.assert_allclose(h, rh, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["none", "tied", "untied"])
def test_hard_sigmoid_lstm_constant_masks_and_hand_written_backward(kind):
  """The hoisted path (hand-written VJP, ``_dgate``) against NumPy and against autodiff of
  the fused path."""
  p, xs, h0 = make(4)
  T, B, D = xs.shape
  H = h0.shape[1]
  c0 = 0.5 * h0
  mx, mh = make_masks(kind, 4, B, D, H, seed=2)[:2]
  f64 = lambda a: None if a is None else np.asarray(a, np.float64)
  (c, h), _ = rnn.lstm(p, (c0, h0), xs, mx, mh, gate_act="hard_sigmoid")
  rc, rh, _ = np_lstm(p, f64(c0), f64(h0), f64(xs), f64(mx), f64(mh), "hard_sigmoid")
  np.testing.assert_allclose(h, rh, rtol=1e-5, atol=1e-5)
  # Some gates saturate (the derivative is 0 there) and some do not.
  pre = np.asarray(xs[0] @ p["w_x"] + p["b"])
  assert (np.abs(pre) > 2.5).any() and (np.abs(pre) < 2.5).any()

  def loss(params, hoist):
    _, ys = rnn.lstm(params, (c0, h0), xs, mx, mh, gate_act="hard_sigmoid", hoist_input=hoist)
    return jnp.sum(ys * jnp.cos(jnp.arange(H)))
  g_hand = jax.grad(loss)(p, True)
  g_auto = jax.grad(loss)(p, False)
  for k in p:
    np.testing.assert_allclose(g_hand[k], g_auto[k], rtol=1e-4, atol=1e-5)


def test_bad_activation_and_step_mask_shapes_name_the_argument():
  p, xs, h0 = make(4)
  T, B, D = xs.shape
  with pytest.raises(ValueError, match="gate_act"):
    rnn.lstm(p, (h0, h0), xs, gate_act="relu")
  with pytest.raises(ValueError, match="mask_h_steps"):
    rnn.lstm(p, (h0, h0), xs, mask_h_steps=jnp.ones((T, B, 5)))
  with pytest.raises(ValueError, match="not both"):
    rnn.lstm(p, (h0, h0), xs, jnp.ones((B, D)), mask_x_steps=jnp.ones((T, B, D)))
  p3, xs3, h3 = make(3)
  with pytest.raises(ValueError, match="candidate_act"):
    rnn.gru(p3, h3, xs3, candidate_act="relu")


# ----------------------------------------------------------------------------------------
# The sentiment naive scheme of the released scripts.


def seq_cfg(module, arg):
  c = module.get_config(arg + ",tiny")
  return c


@pytest.mark.parametrize("module", [sentiment_lstm, sentiment_gru])
def test_sentiment_naive_masks_change_every_step_and_reach_the_recurrent_state(module):
  c = seq_cfg(module, "naive").model
  G = models.GATES[c.cell]
  B, T = 4, 9
  tokens = jax.random.randint(jax.random.key(0), (B, T), 3, c.vocab_size)
  m = models.seq_masks(jax.random.key(1), c, tokens)
  mx, mh = np.asarray(m["x_steps"][0]), np.asarray(m["h_steps"][0])
  assert mx.shape == (T, G, B, c.emb_dim) and mh.shape == (T, G, B, c.hidden)
  assert m["emb"] is not None and m["out"] is not None
  for t in range(T - 1):  # a fresh mask at every step, for the inputs and the state
    assert not np.array_equal(mx[t], mx[t + 1]) and not np.array_equal(mh[t], mh[t + 1])
  assert not np.array_equal(mh[0, 0], mh[0, 1])  # and per gate
  assert set(np.unique(mh)) == {0.0, 2.0}  # inverted scaling by default, p_U = 0.5
  # The recurrent masks reach the state: dropping all of them changes the output, and the
  # model equals the NumPy reference with these per-step masks.
  params = models.init_seq(jax.random.key(2), c)
  sem = models.seq_semantics(c)
  out = np.asarray(models.seq_apply(params, tokens, m, **sem))
  m_no_h = {**m, "h_steps": [None]}
  assert np.abs(out - np.asarray(models.seq_apply(params, tokens, m_no_h, **sem))).max() > 1e-4
  f64 = lambda a: np.asarray(a, np.float64)
  xs = f64(params["embed"])[np.asarray(tokens).T] * f64(m["emb"]).T[..., None]
  z = np.zeros((B, c.hidden))
  if c.cell == "lstm":
    _, h, _ = np_lstm(params["rnn"], z, z, xs, ("steps", mx), ("steps", mh))
  else:
    h, _ = np_gru(params["rnn"], z, xs, ("steps", mx), ("steps", mh))
  ref = (h * f64(m["out"])[-1]) @ f64(params["dense"]["w"]) + f64(params["dense"]["b"])
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_ptb_zaremba_naive_masks_are_unchanged():
  """PTB's naive (p_emb = p_h = 0) draws exactly Zaremba's masks: one per step on each layer's
  input, shared by the gates, and before the softmax; nothing on the state or word types."""
  c = ptb_tiny.get_config("naive").model
  c.vocab_size = 50
  assert c.p_emb == 0 and c.p_h == 0
  tokens = jax.random.randint(jax.random.key(0), (4, 6), 0, 50)
  key = jax.random.key(3)
  m = models.lm_masks(key, c, tokens)
  _, k_x, _, k_out = jax.random.split(key, 4)
  for l, d in enumerate([c.emb_dim, c.hidden]):
    want = jnp.swapaxes(masks.per_row(jax.random.fold_in(k_x, l), 4, (6, d), c.p_x), 0, 1)
    np.testing.assert_array_equal(m["x_steps"][l], want)
  want_out = jnp.swapaxes(masks.per_row(k_out, 4, (6, c.hidden), c.p_out), 0, 1)
  np.testing.assert_array_equal(m["out"], want_out)
  assert m["emb"] is None and m["h_steps"] == [None, None] and m["h"] == [None, None]


# ----------------------------------------------------------------------------------------
# Keras 0.x semantics: non-inverted dropout, released switches, orthogonal scale.


def test_non_inverted_masks_are_zero_one():
  m = np.asarray(masks.dropout_mask(jax.random.key(0), (100, 100), 0.3, inverted=False))
  assert set(np.unique(m)) == {0.0, 1.0} and abs(m.mean() - 0.7) < 0.02
  tokens = jnp.ones((4, 5), jnp.int32) * 7
  w = np.asarray(masks.word_type_mask(jax.random.key(0), tokens, 0.5, inverted=False))
  assert set(np.unique(w)) <= {0.0, 1.0}


@pytest.mark.parametrize("module", [sentiment_lstm, sentiment_gru])
@pytest.mark.parametrize("scheme", ["variational", "naive"])
def test_released_deterministic_pass_scales_by_keep_and_training_masks_are_zero_one(module, scheme):
  c = seq_cfg(module, f"{scheme},released").model
  assert c.dropout_scaling == "keras0" and c.gate_act == "hard_sigmoid" and c.ortho_scale == 1.1
  assert c.candidate_act == ("sigmoid" if c.cell == "gru" else "tanh")
  assert not c.skip_padding  # the fork runs over the left padding
  c.p_x, c.p_h, c.p_out, c.p_emb = 0.25, 0.5, 0.4, 0.3  # distinct keeps, so a misplaced one shows
  B, T = 3, 7
  tokens = np.array(jax.random.randint(jax.random.key(0), (B, T), 3, c.vocab_size))
  tokens[0, :3] = 0  # left padding
  params = models.init_seq(jax.random.key(1), c)
  sem = models.seq_semantics(c)
  m = models.seq_masks(jax.random.key(2), c, jnp.asarray(tokens))
  for leaf in jax.tree.leaves(m):
    assert set(np.unique(np.asarray(leaf))) <= {0.0, 1.0}
  det = np.asarray(models.seq_apply(params, jnp.asarray(tokens), None, **sem))
  # NumPy: every site multiplied by its keep probability; hard_sigmoid gates.
  f64 = lambda a: np.asarray(a, np.float64)
  xs = f64(params["embed"])[tokens.T] * 0.7
  z = np.zeros((B, c.hidden))
  valid = np.ones((T, B), bool)  # every step, the padded ones too
  if c.cell == "lstm":
    keep_x, keep_h = 0.75 * np.ones((B, c.emb_dim)), 0.5 * np.ones((B, c.hidden))
    _, h, _ = np_lstm(params["rnn"], z, z, xs, keep_x, keep_h, "hard_sigmoid", valid)
  else:
    keep_x, keep_h = 0.75 * np.ones((B, c.emb_dim)), 0.5 * np.ones((B, c.hidden))
    h, _ = np_gru(params["rnn"], z, xs, keep_x, keep_h, "hard_sigmoid", "sigmoid", valid)
  ref = (h * 0.6) @ f64(params["dense"]["w"]) + f64(params["dense"]["b"])
  np.testing.assert_allclose(det, ref, rtol=1e-4, atol=1e-5)
  # The modern (inverted) deterministic pass has no scaling: a different output.
  modern = np.asarray(models.seq_apply(params, jnp.asarray(tokens), None, cell=c.cell,
                                       gate_act="hard_sigmoid", candidate_act=c.candidate_act))
  assert np.abs(modern - det).max() > 1e-3


def test_per_gate_and_fused_init_scales():
  """``per_gate`` (the fork): every gate's [H, H] recurrent block orthogonal times ortho_scale and
  every [E, H] input block Glorot over its own fan; ``fused`` (the modern default): one
  orthogonal [H, 4H] kernel (orthonormal rows) and Glorot over the fused [E, 4H] shape, so the
  per-gate weights are about 1.6x (input) and 2x (recurrent) the fused ones."""
  c = sentiment_lstm.get_config("tiny").model
  c.hidden = c.emb_dim = 64  # enough entries for the spreads below
  E = H = 64
  assert c.init == "fused" and sentiment_lstm.get_config("released").model.init == "per_gate"
  params = {}
  for init in ("per_gate", "fused"):
    for scale in (1.0, 1.1):
      c.init, c.ortho_scale = init, scale
      params[init, scale] = models.init_seq(jax.random.key(0), c)["rnn"]
      w_h = np.asarray(params[init, scale]["w_h"], np.float64)
      if init == "per_gate":
        for k in range(4):
          blk = w_h[:, k * H:(k + 1) * H]
          np.testing.assert_allclose(blk.T @ blk, scale ** 2 * np.eye(H), atol=1e-5)
      else:
        np.testing.assert_allclose(w_h @ w_h.T, scale ** 2 * np.eye(H), atol=1e-5)
  limits = {"per_gate": np.sqrt(6 / (E + H)), "fused": np.sqrt(6 / (E + 4 * H))}
  for init, limit in limits.items():
    w_x = np.asarray(params[init, 1.0]["w_x"])
    assert np.abs(w_x).max() <= limit and np.abs(w_x).max() > 0.95 * limit
    np.testing.assert_allclose(w_x.std(), limit / np.sqrt(3), rtol=0.05)
  ratio = lambda k: params["per_gate", 1.0][k].std() / params["fused", 1.0][k].std()  # noqa: E731
  np.testing.assert_allclose([ratio("w_x"), ratio("w_h")], [np.sqrt(2.5), 2.0], rtol=0.05)


def test_released_switches_default_to_modern_and_are_validated():
  for module in (sentiment_lstm, sentiment_gru):
    for arg in ("variational", "naive,paper", "none"):
      c = module.get_config(arg).model
      got = (c.gate_act, c.candidate_act, c.dropout_scaling, c.ortho_scale, c.init, c.skip_padding)
      assert got == ("sigmoid", "tanh", "inverted", 1.0, "fused", True)
    r = module.get_config("none,released")
    assert r.data.split == "paper" and r.data.valid_fraction == 0.0
    assert r.model.dropout_scaling == "keras0"
    assert models.seq_semantics(r.model).get("eval_keep") is None  # no dropout: nothing to scale
  c = sentiment_gru.get_config("released").model
  for field, bad in (("gate_act", "relu"), ("candidate_act", "relu"), ("dropout_scaling", "keras1"),
                     ("ortho_scale", -1.0), ("init", "xavier")):
    bad_cfg = ml_collections.ConfigDict(c.to_dict())
    bad_cfg[field] = bad
    with pytest.raises(UserError, match=field):
      config_lib.validate_rates(bad_cfg)
  with pytest.raises(ValueError, match="unknown arg"):
    sentiment_lstm.get_config("naive,relased")
