"""Model-level invariants: dropout semantics through the LM and sequence models."""

import numpy as np
import jax
import jax.numpy as jnp
import ml_collections
import pytest

from configs import ptb_tiny
from vdrnn import models, rnn


def tiny(arg="variational_untied", **over):
  c = ptb_tiny.get_config(arg)
  c.model.vocab_size = 50
  for k, v in over.items():
    c.model[k] = v
  return c.model


def data(B=4, T=6, V=50, seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return jax.random.randint(k1, (B, T), 0, V), jax.random.randint(k2, (B, T), 0, V)


@pytest.mark.parametrize("arg", ["variational_untied", "variational_tied", "naive"])
def test_rate_zero_equals_no_dropout_exactly(arg):
  cfg = tiny(arg, p_emb=0.0, p_x=0.0, p_h=0.0, p_out=0.0)
  params = models.init_lm(jax.random.key(0), cfg)
  x, y = data()
  carry = models.lm_zero_carry(cfg, 4)
  masks = models.lm_masks(jax.random.key(1), cfg, x)
  a, _ = models.lm_nll(params, carry, x, y, masks)
  b, _ = models.lm_nll(params, carry, x, y, None)
  np.testing.assert_array_equal(a, b)
  # Traced zero rates (population training) draw masks of exact ones ...
  rates = lambda r: {"emb": r, "x": r, "h": r, "out": r}
  drawn = jax.jit(lambda r: models.lm_masks(jax.random.key(1), cfg, x, rates(r)))(0.0)
  assert all(np.all(np.asarray(m) == 1.0) for m in jax.tree.leaves(drawn))
  # ... so the loss is the no-dropout loss. Untied masks (even of ones) run the gate-major
  # layout, whose matmul blocking can round one element an ulp differently from the fused
  # layout's on some CPUs (seen on an AMD EPYC, at e51d4a4 too): equal to float32 rounding.
  f = jax.jit(lambda r: models.lm_nll(params, carry, x, y, models.lm_masks(
      jax.random.key(1), cfg, x, rates(r)))[0])
  np.testing.assert_allclose(f(0.0), b, rtol=1e-6, atol=0)


def test_dropout_changes_the_loss_and_depends_on_key():
  cfg = tiny()
  params = models.init_lm(jax.random.key(0), cfg)
  x, y = data()
  carry = models.lm_zero_carry(cfg, 4)
  det, _ = models.lm_nll(params, carry, x, y)
  a, _ = models.lm_nll(params, carry, x, y, models.lm_masks(jax.random.key(1), cfg, x))
  b, _ = models.lm_nll(params, carry, x, y, models.lm_masks(jax.random.key(2), cfg, x))
  assert not np.allclose(a, det) and not np.allclose(a, b)


@pytest.mark.parametrize("tied", [True, False])
def test_variational_input_mask_is_constant_over_time(tied):
  """A dropped input unit of a row has zero influence at every time step of that row."""
  cfg = tiny("variational_tied" if tied else "variational_untied",
             p_emb=0.0,
             p_h=0.0,
             p_out=0.0,
             p_x=0.5)
  params = models.init_lm(jax.random.key(0), cfg)
  x, y = data(B=3, T=8)
  masks = models.lm_masks(jax.random.key(4), cfg, x)
  m0 = np.asarray(masks["x"][0])  # [B, E] or [4, B, E]
  dropped_all_gates = (m0 == 0) if tied else (m0 == 0).all(axis=0)
  emb = jnp.take(params["embed"], x.T, axis=0)  # [T, B, E]

  def loss_from_inputs(xs):
    carry = models.lm_zero_carry(cfg, 3)
    from vdrnn import rnn
    c, ys = rnn.lstm(params["lstm"][0], carry[0], xs, masks["x"][0], None)
    return ys.sum()

  g = np.asarray(jax.grad(loss_from_inputs)(emb))  # [T, B, E]
  for b in range(3):
    for t in range(8):
      assert np.all(g[t, b][dropped_all_gates[b]] == 0)
      assert np.any(g[t, b][~dropped_all_gates[b]] != 0)


def test_naive_masks_differ_across_time_and_variational_word_types_tie():
  cfg = tiny("naive")
  x, _ = data(B=2, T=5)
  m = models.lm_masks(jax.random.key(0), cfg, x)
  assert m["x_steps"][0].shape == (5, 2, cfg.emb_dim)
  assert not np.array_equal(m["x_steps"][0][0], m["x_steps"][0][1])
  cfg = tiny()
  tokens = jnp.array([[3, 4, 3, 3, 4, 5]] * 2)
  m = np.asarray(models.lm_masks(jax.random.key(0), cfg, tokens)["emb"])
  assert m[0, 0] == m[0, 2] == m[0, 3] and m[0, 1] == m[0, 4]


def test_loss_is_sum_over_time_of_batch_mean():
  cfg = tiny("none")
  params = models.init_lm(jax.random.key(0), cfg)
  x, y = data()
  nll, _ = models.lm_nll(params, models.lm_zero_carry(cfg, 4), x, y)
  logits = np.asarray(
      models.lm_logits(params,
                       models.lm_hidden(params, models.lm_zero_carry(cfg, 4), x)[0]))
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ref = -np.take_along_axis(logp, np.asarray(y).T[..., None], -1)[..., 0]
  np.testing.assert_allclose(nll, ref, rtol=1e-5)
  assert nll.shape == (6, 4)


def test_tied_embeddings_share_the_matrix():
  cfg = tiny(tie_embeddings=True)
  params = models.init_lm(jax.random.key(0), cfg)
  assert "w" not in params["softmax"]
  ys = jnp.ones((2, 3, cfg.hidden))
  np.testing.assert_allclose(models.lm_logits(params, ys),
                             ys @ params["embed"].T + params["softmax"]["b"],
                             rtol=1e-6)


def test_lua_biases_are_two_trained_copies_of_one_bias():
  """``lua_biases``: the gates see ``b + b_h`` (the Lua code's i2h and h2h biases); each copy
  gets the single-bias model's bias gradient, so an SGD step moves their sum twice as far."""
  cfg1, cfg2 = tiny("none"), tiny("none", lua_biases=True)
  p1, p2 = models.init_lm(jax.random.key(0), cfg1), models.init_lm(jax.random.key(0), cfg2)
  b_h = [layer.pop("b_h") for layer in p2["lstm"]]
  jax.tree.map(np.testing.assert_array_equal, p2, p1)  # the rest: as without the switch
  for layer, extra in zip(p1["lstm"], b_h):
    assert extra.shape == layer["b"].shape and float(jnp.abs(extra).max()) <= cfg2.init_scale
    assert not np.allclose(extra, layer["b"])
    layer["b_h"] = extra
  merged = jax.tree.map(lambda a: a, p1)
  for layer in merged["lstm"]:
    layer["b"] = layer.pop("b") + layer.pop("b_h")
  x, y = data()
  carry = models.lm_zero_carry(cfg1, 4)
  loss = lambda p: models.lm_nll(p, carry, x, y)[0].mean(axis=1).sum()
  np.testing.assert_allclose(loss(p1), loss(merged), rtol=1e-6)
  g, gm = jax.grad(loss)(p1), jax.grad(loss)(merged)
  for l in range(cfg1.num_layers):
    for name, ref in (("b", "b"), ("b_h", "b"), ("w_h", "w_h"), ("w_x", "w_x")):
      np.testing.assert_allclose(g["lstm"][l][name], gm["lstm"][l][ref], rtol=1e-5, atol=1e-7)
  assert float(jnp.abs(g["lstm"][0]["b"]).max()) > 0


def test_init_is_uniform_in_scale():
  cfg = tiny()
  params = models.init_lm(jax.random.key(0), cfg)
  for leaf in jax.tree.leaves(params):
    assert float(jnp.abs(leaf).max()) <= cfg.init_scale


def test_seq_model_padding_is_ignored():
  cfg = ml_collections.ConfigDict(
      dict(vocab_size=30,
           emb_dim=8,
           hidden=6,
           cell="lstm",
           out_dim=2,
           scheme="none",
           tied_gates=True,
           p_emb=0.0,
           p_x=0.0,
           p_h=0.0,
           p_out=0.0))
  for cell in ("lstm", "gru"):
    cfg.cell = cell
    params = models.init_seq(jax.random.key(0), cfg)
    seq = jnp.array([[5, 6, 7]])
    left = jnp.array([[0, 0, 5, 6, 7]])
    right = jnp.array([[5, 6, 7, 0, 0]])
    a = models.seq_apply(params, seq, cell=cell)
    np.testing.assert_allclose(models.seq_apply(params, left, cell=cell), a, rtol=1e-6)
    np.testing.assert_allclose(models.seq_apply(params, right, cell=cell), a, rtol=1e-6)


def test_without_skip_padding_the_rnn_runs_over_the_pad_embedding():
  """``skip_padding=False`` (the Keras 0.x fork): a left-padded sequence's output depends on the
  pad id's embedding, and equals the recurrence over every step; with ``skip_padding`` it
  does not. Without padding the two agree."""
  cfg = ml_collections.ConfigDict(dict(vocab_size=10, emb_dim=4, hidden=5, cell="lstm", out_dim=1))
  left, full = jnp.array([[0, 0, 5, 6, 7]]), jnp.array([[4, 3, 5, 6, 7]])
  for cell in ("lstm", "gru"):
    cfg.cell = cell
    params = models.init_seq(jax.random.key(0), cfg)
    moved = {**params, "embed": params["embed"].at[0].add(0.5)}
    run = lambda p, x, skip: np.asarray(models.seq_apply(p, x, cell=cell, skip_padding=skip))
    np.testing.assert_array_equal(run(params, left, True), run(moved, left, True))
    assert np.abs(run(params, left, False) - run(moved, left, False)).max() > 1e-4
    np.testing.assert_allclose(run(params, full, False), run(params, full, True), rtol=1e-6)
    xs = jnp.take(params["embed"], left.T, axis=0)
    z = jnp.zeros((1, 5))
    h = (rnn.lstm(params["rnn"], (z, z), xs)[0][1] if cell == "lstm" else
         rnn.gru(params["rnn"], z, xs)[0])
    np.testing.assert_allclose(run(params, left, False),
                               h @ params["dense"]["w"] + params["dense"]["b"], rtol=1e-5)
