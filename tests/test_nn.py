"""vdrnn.nn (the Flax front end) against the functional core and against Flax's own LSTM.

References: ``vdrnn.rnn.lstm`` / ``gru`` with the masks ``vdrnn.masks.sample_masks`` draws
from the same key (the layers must give exactly their outputs and gradients), and
``nnx.RNN(nnx.OptimizedLSTMCell)`` at rate 0. Mask properties are checked from the
outside, through gradients. Tiny shapes throughout."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen, nnx

from vdrnn import masks, rnn
from vdrnn import nn as vnn
from vdrnn.examples import flax_sentiment

# D == H and one batch size throughout: each mask shape compiles its own random-bits program
# (seconds each on a small CPU), and the tests share them.
B, T, D, H = 3, 5, 4, 4
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "data")
CASES = {  # name: (tied_gates, padded, compute_dtype)
    "untied": (False, False, None), "tied_padded": (True, True, None),
    "untied_padded_bf16": (False, True, jnp.bfloat16)}
LAYERS = {"lstm": (vnn.VariationalLSTM, vnn.VariationalLSTMLinen, 4),
          "gru": (vnn.VariationalGRU, vnn.VariationalGRULinen, 3)}


def _inputs(batch=B):
  x = jax.random.normal(jax.random.key(1), (batch, T, D))
  lengths = jnp.array([T, 2, 4, 1, 3, 5][:batch])
  probe = jax.random.normal(jax.random.key(2), (batch, T, H))  # loss weights: non-trivial gradients
  return x, lengths, probe


def _core(cell, params, x, masks_, valid, dtype, zoneout=(None, None)):
  """The functional core on batch-major ``x`` [B, T, D]: ``(carry, ys [B, T, H])``; ``zoneout``
  the rates used without masks (the deterministic pass)."""
  z = jnp.zeros((x.shape[0], H), jnp.float32)
  get = lambda k: None if masks_ is None else masks_.get(k, [None])[0]  # noqa: E731
  m_x, m_h = get("x"), get("h")
  xs = jnp.swapaxes(x, 0, 1)
  if cell == "lstm":
    zc = get("zone_c") if masks_ is not None else zoneout[0]
    zh = get("zone_h") if masks_ is not None else zoneout[1]
    carry, ys = rnn.lstm(params, (z, z), xs, m_x, m_h, valid=valid, compute_dtype=dtype,
                         mask_w=get("w_h"), zone_c=zc, zone_h=zh)
  else:
    carry, ys = rnn.gru(params, z, xs, m_x, m_h, valid=valid, compute_dtype=dtype,
                        mask_w=get("w_h"))
  return carry, jnp.swapaxes(ys, 0, 1)


def _sampled(key, cell, tied, batch=B, rate_x=0.3, rate_h=0.4, **more):
  """The core's own masks for a one-layer model from ``key`` (``more``: weight / zone rates)."""
  return masks.sample_masks(key, {"emb": 0.0, "x": rate_x, "h": rate_h, "out": 0.0, **more},
                            jnp.zeros((batch, T), jnp.int32), scheme="variational", tied=tied,
                            layers=[(D, H)], n_gates=LAYERS[cell][2])


def _linen_key(key, collection="dropout"):
  """The key ``make_rng(collection)`` returns in a top-level Linen module applied with ``key``."""
  class Probe(linen.Module):
    @linen.compact
    def __call__(self):
      return self.make_rng(collection)
  return Probe().apply({}, rngs={collection: key})


# ----------------------------------------------------------------------------------------
# Equivalence with the functional core.


@pytest.mark.parametrize("cell,case", [("lstm", "untied"), ("lstm", "tied_padded"),
                                       ("lstm", "untied_padded_bf16"),
                                       ("gru", "untied_padded_bf16")])
def test_nnx_layer_equals_core_outputs_and_gradients(cell, case):
  tied, padded, dtype = CASES[case]
  x, lengths, probe = _inputs()
  layer = LAYERS[cell][0](D, H, rate_x=0.3, rate_h=0.4, tied_gates=tied, compute_dtype=dtype,
                          rngs=nnx.Rngs(0))
  key = jax.random.key(7)
  kw = {"seq_lengths": lengths} if padded else {}
  valid = (jnp.arange(T)[:, None] < lengths[None, :]) if padded else None

  def loss_layer(layer, x):
    carry, ys = layer(x, rngs=key, return_carry=True, **kw)
    return jnp.sum(ys * probe) + jnp.sum(jnp.stack(jax.tree.leaves(carry)))

  def loss_core(params, x):
    carry, ys = _core(cell, params, x, _sampled(key, cell, tied), valid, dtype)
    return jnp.sum(ys * probe) + jnp.sum(jnp.stack(jax.tree.leaves(carry)))

  got, (g_layer, gx_layer) = nnx.value_and_grad(loss_layer, argnums=(0, 1))(layer, x)
  want, (g_core, gx_core) = jax.value_and_grad(loss_core, argnums=(0, 1))(layer.params(), x)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(gx_layer, gx_core)
  for k in ("w_x", "w_h", "b"):
    np.testing.assert_array_equal(g_layer[k][...], g_core[k])
  # And the masks really were on: the deterministic layer gives another value.
  assert float(loss_layer(nnx.view(layer, deterministic=True), x)) != float(got)


@pytest.mark.parametrize("cell,case", [("lstm", "untied_padded_bf16"), ("gru", "tied_padded")])
def test_linen_layer_equals_core_outputs_and_gradients(cell, case):
  tied, padded, dtype = CASES[case]
  x, lengths, probe = _inputs()
  layer = LAYERS[cell][1](H, rate_x=0.3, rate_h=0.4, tied_gates=tied, compute_dtype=dtype)
  variables = layer.init(jax.random.key(0), x, deterministic=True)
  key = jax.random.key(7)
  kw = {"seq_lengths": lengths} if padded else {}
  valid = (jnp.arange(T)[:, None] < lengths[None, :]) if padded else None

  def loss_layer(params, x):
    ys = layer.apply({"params": params}, x, deterministic=False, rngs={"dropout": key}, **kw)
    return jnp.sum(ys * probe)

  def loss_core(params, x):
    masks_ = _sampled(_linen_key(key), cell, tied)
    return jnp.sum(_core(cell, params, x, masks_, valid, dtype)[1] * probe)

  params = variables["params"]
  got, g_layer = jax.value_and_grad(loss_layer, argnums=(0, 1))(params, x)
  want, g_core = jax.value_and_grad(loss_core, argnums=(0, 1))(params, x)
  np.testing.assert_array_equal(got, want)
  jax.tree.map(np.testing.assert_array_equal, g_layer, g_core)
  # deterministic: the core without masks
  det = layer.apply(variables, x, deterministic=True, **kw)
  np.testing.assert_array_equal(det, _core(cell, params, x, None, valid, dtype)[1])


REGULARISERS = {  # name: (cell, layer kwargs, core rates)
    "weight_drop": ("lstm", {"weight_drop": 0.5}, {"weight": 0.5}),
    "zoneout": ("lstm", {"zoneout_c": 0.5, "zoneout_h": 0.3}, {"zone_c": 0.5, "zone_h": 0.3}),
    "all": ("lstm", {"weight_drop": 0.4, "zoneout_c": 0.5, "zoneout_h": 0.05},
            {"weight": 0.4, "zone_c": 0.5, "zone_h": 0.05}),
    "gru_weight_drop": ("gru", {"weight_drop": 0.5}, {"weight": 0.5})}


@pytest.mark.parametrize("name", sorted(REGULARISERS))
def test_weight_drop_and_zoneout_layers_equal_the_core(name):
  """NNX and Linen layers with weight drop / zoneout (on top of untied variational masks) give
  exactly the core's outputs and gradients for the same key; deterministic, the core with
  zoneout's expectation and no weight drop."""
  cell, kwargs, rates = REGULARISERS[name]
  nnx_cls, linen_cls, _ = LAYERS[cell]
  x, lengths, probe = _inputs()
  valid = jnp.arange(T)[:, None] < lengths[None, :]
  key = jax.random.key(7)
  zoneout = (kwargs.get("zoneout_c") or None, kwargs.get("zoneout_h") or None)

  def loss_core(params, x, k):
    masks_ = _sampled(k, cell, False, **rates)
    return jnp.sum(_core(cell, params, x, masks_, valid, None)[1] * probe)

  layer = nnx_cls(D, H, rate_x=0.3, rate_h=0.4, rngs=nnx.Rngs(0), **kwargs)
  got, (g_layer, gx) = nnx.value_and_grad(
      lambda m, x: jnp.sum(m(x, rngs=key, seq_lengths=lengths) * probe), argnums=(0, 1))(layer, x)
  want, (g_core, gx_core) = jax.value_and_grad(loss_core, argnums=(0, 1))(layer.params(), x, key)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(gx, gx_core)
  for k in ("w_x", "w_h", "b"):
    np.testing.assert_array_equal(g_layer[k][...], g_core[k])
  det = nnx.view(layer, deterministic=True)(x, seq_lengths=lengths)
  np.testing.assert_array_equal(det, _core(cell, layer.params(), x, None, valid, None, zoneout)[1])
  assert float(jnp.abs(det * probe).sum() - jnp.abs(got)) != 0.0

  lin = linen_cls(H, rate_x=0.3, rate_h=0.4, **kwargs)
  params = lin.init(jax.random.key(0), x, deterministic=True)["params"]
  ys = lin.apply({"params": params}, x, deterministic=False, rngs={"dropout": key},
                 seq_lengths=lengths)
  np.testing.assert_array_equal(jnp.sum(ys * probe), loss_core(params, x, _linen_key(key)))
  det = lin.apply({"params": params}, x, deterministic=True, seq_lengths=lengths)
  np.testing.assert_array_equal(det, _core(cell, params, x, None, valid, None, zoneout)[1])


def test_padding_left_or_right_gives_the_unpadded_rows_state():
  layer = vnn.VariationalLSTM(D, H, rate_x=0.3, rate_h=0.4, return_carry=True, rngs=nnx.Rngs(0))
  x, _, _ = _inputs()
  key = jax.random.key(3)
  (c, h), _ = layer(x[:, :3], rngs=key)  # the real tokens: the first 3 steps
  right = x.at[:, 3:].set(9.0)
  (c_r, h_r), _ = layer(right, rngs=key, seq_lengths=jnp.full((B,), 3))
  left = jnp.concatenate([jnp.full((B, 2, D), 9.0), x[:, :3]], axis=1)
  (c_l, h_l), _ = layer(left, rngs=key, valid=jnp.broadcast_to(jnp.arange(T) >= 2, (B, T)))
  for a, b in ((c, c_r), (h, h_r), (c, c_l), (h, h_l)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  # time-major: the same numbers, transposed
  tm = vnn.VariationalLSTM(D, H, rate_x=0.3, rate_h=0.4, time_major=True, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(tm(jnp.swapaxes(x, 0, 1), rngs=key),
                                jnp.swapaxes(layer(x, rngs=key)[1], 0, 1))
  with pytest.raises(ValueError, match="valid must have shape"):
    layer(x, rngs=key, valid=jnp.ones((T, B), bool))


# ----------------------------------------------------------------------------------------
# Flax's OptimizedLSTMCell.


def test_lstm_to_and_from_optimized_lstm_cell_and_matches_nnx_rnn_at_rate_0():
  cell = nnx.OptimizedLSTMCell(D, H, rngs=nnx.Rngs(0))
  # same rngs, same parameters: the layer draws its initial weights as the cell does
  fresh = vnn.VariationalLSTM(D, H, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(fresh.w_x[...], cell.dense_i.kernel[...])
  np.testing.assert_array_equal(fresh.w_h[...], cell.dense_h.kernel[...])
  cell.dense_h.bias[...] = jax.random.normal(jax.random.key(4), (4 * H,))  # a non-zero bias
  layer = vnn.VariationalLSTM.from_cell(cell, return_carry=True)
  back = layer.to_cell()
  for a, b in ((cell.dense_i.kernel, back.dense_i.kernel), (cell.dense_i.kernel, layer.w_x),
               (cell.dense_h.kernel, back.dense_h.kernel), (cell.dense_h.kernel, layer.w_h),
               (cell.dense_h.bias, back.dense_h.bias), (cell.dense_h.bias, layer.b)):
    np.testing.assert_array_equal(a[...], b[...])
  x, lengths, _ = _inputs()
  carry, ys = nnx.RNN(cell, return_carry=True)(x)
  (c, h), ys_layer = layer(x)
  np.testing.assert_allclose(ys_layer, ys, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(c, carry[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(h, carry[1], rtol=1e-5, atol=1e-6)
  # seq_lengths: nnx.RNN picks the carry after the last valid step; so does the layer
  carry, ys = nnx.RNN(cell, return_carry=True)(x, seq_lengths=lengths)
  (c, h), ys_layer = layer(x, seq_lengths=lengths)
  np.testing.assert_allclose(c, carry[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(h, carry[1], rtol=1e-5, atol=1e-6)
  valid = np.arange(T)[None, :] < np.asarray(lengths)[:, None]
  np.testing.assert_allclose(np.asarray(ys_layer)[valid], np.asarray(ys)[valid], rtol=1e-5,
                             atol=1e-6)
  with pytest.raises(ValueError, match="gate_fn"):
    hard = nnx.OptimizedLSTMCell(D, H, gate_fn=jax.nn.hard_sigmoid, rngs=nnx.Rngs(0))
    vnn.VariationalLSTM.from_cell(hard)


# ----------------------------------------------------------------------------------------
# Mask properties, from the outside.


@pytest.mark.parametrize("tied", [True, False])
def test_masks_are_constant_over_time(tied):
  """Seen through gradients. Input: dL/dx_t[b] = (dL/d(x_t * m_x[b])) * m_x[b], so its zeros are
  exactly those of row b's input mask, at every step t. Recurrent state: the weight gradient
  dW_h = sum_t sum_b (h_{t-1}[b] * m_h[b])^T dz_t[b] has a zero row j exactly when unit j is
  dropped in every row, for the whole sequence; a mask drawn afresh per step would leave none.
  Untied: the same per gate (x's gradient sums over gates: zero where all four drop it)."""
  layer = vnn.VariationalLSTM(D, H, rate_x=0.75, rate_h=0.75, tied_gates=tied, rngs=nnx.Rngs(0))
  x, _, probe = _inputs()
  key = jax.random.key(9)
  grads, gx = nnx.grad(lambda m, x: jnp.sum(m(x, rngs=key) * probe), argnums=(0, 1))(layer, x)
  m = layer.draw_masks(key, B, T)
  m_x, m_h = np.asarray(m["x"]), np.asarray(m["h"])
  dropped_x = (m_x == 0) if tied else (m_x == 0).all(0)  # [B, D]
  # from t = 1 on (at t = 0 the forget gate's pre-activation gradient is dc * c_0 = 0)
  np.testing.assert_array_equal(np.asarray(gx)[:, 1:] == 0,
                                np.broadcast_to(dropped_x[:, None], (B, T - 1, D)))
  assert 0 < dropped_x.sum() < dropped_x.size
  g_h = np.asarray(grads["w_h"][...])
  blocks = [(g_h, m_h)] if tied else [(g_h[:, k * H:(k + 1) * H], m_h[k]) for k in range(4)]
  zero_rows = np.concatenate([np.all(g == 0, axis=1) for g, _ in blocks])
  np.testing.assert_array_equal(zero_rows, np.concatenate([(m == 0).all(0) for _, m in blocks]))
  assert 0 < zero_rows.sum() < zero_rows.size


def test_masks_are_per_row_distinct_and_independent_of_batch_size():
  layer = vnn.VariationalLSTM(D, H, rate_x=0.3, rate_h=0.4, rngs=nnx.Rngs(0))
  x = jnp.broadcast_to(jax.random.normal(jax.random.key(1), (1, T, D)), (B, T, D))  # B equal rows
  key = jax.random.key(5)
  ys = layer(x, rngs=key)
  assert all(float(jnp.abs(ys[i] - ys[j]).max()) > 1e-3 for i in range(B) for j in range(i))
  # row b's masks depend on (key, b) only, not on the batch size
  m, m2 = layer.draw_masks(key, B, T), layer.draw_masks(key, 2, T)
  assert m["x"].shape == (4, B, D) and m["h"].shape == (4, B, H) and m["w_h"] is None
  np.testing.assert_array_equal(m2["x"], m["x"][:, :2])
  np.testing.assert_array_equal(m2["h"], m["h"][:, :2])
  np.testing.assert_allclose(layer(x[:2], rngs=key), ys[:2], rtol=1e-5, atol=1e-6)


def test_word_type_and_locked_dropout():
  tokens = jnp.array([[3, 4, 3, 5, 3], [3, 3, 3, 6, 6], [7, 4, 7, 4, 7]])  # [B, T]
  emb = jax.random.normal(jax.random.key(0), (B, T, D))
  key = jax.random.key(2)
  for shared in (False, True):
    drop = vnn.WordTypeDropout(0.5, shared_across_batch=shared, rngs=nnx.Rngs(dropout=1))
    out = drop(emb, tokens, rngs=key)
    mask = masks.word_type_mask(key, tokens, 0.5, shared_across_batch=shared)
    np.testing.assert_array_equal(out, emb * mask[..., None])
    drop_tm = vnn.WordTypeDropout(0.5, shared_across_batch=shared, time_major=True)
    np.testing.assert_array_equal(drop_tm(jnp.swapaxes(emb, 0, 1), tokens.T, rngs=key),
                                  jnp.swapaxes(out, 0, 1))
    scale = np.asarray(out / emb)[..., 0]  # [B, T]: 0 or 2, one value per (row, word type)
    for b in range(B):
      for tok in np.unique(tokens[b]):
        assert len(np.unique(scale[b][np.asarray(tokens[b]) == tok])) == 1
    assert len(np.unique(scale)) == 2

  locked = vnn.LockedDropout(0.5, rngs=nnx.Rngs(dropout=1))
  x = jnp.ones((B, T, D))
  out = locked(x, rngs=key)
  np.testing.assert_array_equal(out, jnp.broadcast_to(out[:, :1], out.shape))  # constant over time
  np.testing.assert_array_equal(out[:, 0], masks.per_row(key, B, (D,), 0.5))
  assert len({tuple(np.asarray(r)) for r in out[:, 0]}) > 1  # not one mask for the batch
  tm = vnn.LockedDropout(0.5, time_major=True)
  np.testing.assert_array_equal(tm(jnp.swapaxes(x, 0, 1), rngs=key), jnp.swapaxes(out, 0, 1))
  np.testing.assert_array_equal(locked(x[:, 0], rngs=key), out[:, 0])  # [B, F]: one mask per row
  locked.eval()
  assert locked(x) is x


# ----------------------------------------------------------------------------------------
# Keys: one per call, one seed one result, MC dropout.


def test_one_key_per_call_and_one_seed_one_result_under_jit():
  """Same seed, same masks: eager, ``nnx.jit`` and ``jax.jit`` of ``nnx.merge`` agree (to float
  rounding: differently fused programs); a second call or another seed gives other masks."""
  x, _, _ = _inputs()

  def model(seed=11):
    return vnn.VariationalLSTM(D, H, rate_x=0.3, rate_h=0.4, rngs=nnx.Rngs(params=0, dropout=seed))

  def same(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

  eager = model()
  y1, y2 = eager(x), eager(x)
  assert int(eager.rngs.count[...]) == 2  # one key per call
  assert float(jnp.abs(y1 - y2).max()) > 1e-3
  # deterministic calls and zero rates take no key
  eager(x, deterministic=True)
  vnn.VariationalLSTM(D, H, rngs=nnx.Rngs(0))(x)
  assert int(eager.rngs.count[...]) == 2

  jitted = model()
  f = nnx.jit(lambda m, x: m(x))
  same(f(jitted, x), y1)
  same(f(jitted, x), y2)  # the stream's count came back out of jit
  graphdef, state = nnx.split(model())

  @jax.jit
  def pure(state, x):
    m = nnx.merge(graphdef, state)
    return m(x), nnx.state(m)

  z1, state = pure(state, x)
  z2, _ = pure(state, x)
  same(z1, y1)
  same(z2, y2)
  assert float(jnp.abs(model(12)(x) - y1).max()) > 1e-3  # another seed, another result


def test_mc_dropout_with_nnx_vmap_over_split_rngs():
  x, _, _ = _inputs()
  layer = vnn.VariationalLSTM(D, H, rate_x=0.3, rate_h=0.4, rngs=nnx.Rngs(params=0, dropout=1))
  S = 6

  @nnx.split_rngs(splits=S, only="dropout")
  @nnx.vmap(in_axes=(nnx.StateAxes({"dropout": 0, ...: None}), None))
  def mc(model, x):
    return model(x)

  samples = mc(layer, x)
  assert samples.shape == (S, B, T, H) and samples.mean(0).shape == (B, T, H)
  assert all(float(jnp.abs(samples[i] - samples[j]).max()) > 1e-3
             for i in range(S) for j in range(i))
  assert layer.rngs.key[...].shape == ()  # the stream is restored after the split
  again = mc(layer, x)  # and has moved on: the next MC pass uses new masks
  assert float(jnp.abs(again - samples).max()) > 1e-3


def test_bad_input_is_one_clear_error():
  with pytest.raises(ValueError, match="rate_h"):
    vnn.VariationalLSTM(D, H, rate_h=1.0, rngs=nnx.Rngs(0))
  layer = vnn.VariationalGRU(D, H, rate_x=0.2, rngs=nnx.Rngs(params=0))  # default stream missing
  x, _, _ = _inputs()
  with pytest.raises(ValueError, match="no rngs"):
    layer(x)
  assert layer(x, rngs=jax.random.key(0)).shape == (B, T, H)
  assert layer(x, deterministic=True).shape == (B, T, H)
  with pytest.raises(ValueError, match="inputs must have shape"):
    layer(x[0])
  with pytest.raises(ValueError, match="seq_lengths or valid"):
    layer(x, deterministic=True, seq_lengths=jnp.ones(B, int), valid=jnp.ones((B, T), bool))


# ----------------------------------------------------------------------------------------
# The worked example and its README section.


def test_flax_example_trains_and_mc_evaluates():
  r = flax_sentiment.train_and_evaluate(data_dir=TINY,
                                        steps=40,
                                        mc_samples=4,
                                        tiny=True,
                                        verify=False)
  assert len(r["losses"]) == 40 and np.all(np.isfinite(r["losses"]))
  # the deterministic training-set loss falls (0.645 -> 0.451 at this seed)
  assert r["train_loss_after"] < 0.8 * r["train_loss_before"], r
  assert r["mc_probs"].shape == (r["test_examples"], 2)
  np.testing.assert_allclose(r["mc_probs"].sum(-1), 1.0, rtol=1e-5)
  assert 0.0 <= r["mc_accuracy"] <= 1.0


def _example_block() -> str:
  src = open(flax_sentiment.__file__).read()
  m = re.search(r"^# \[readme-start\]\n(.*?)^# \[readme-end\]\n", src, re.S | re.M)
  assert m, "the example has no # [readme-start] / # [readme-end] block"
  return m.group(1)


def test_readme_section_is_the_example_code():
  heading = "## Use it in your Flax model"
  readme = open(os.path.join(ROOT, "README.md")).read()
  assert heading in readme
  section = readme[readme.index(heading) + len(heading):].split("\n## ")[0]
  blocks = re.findall(r"```python\n(.*?)```", section, re.S)
  assert blocks, "the README section has no python code block"
  assert blocks[0] == _example_block()
