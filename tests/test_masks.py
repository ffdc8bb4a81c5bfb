"""Mask invariants: scaling, rate 0, per-sequence and word-type ties, validation."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from vdrnn import masks


def test_dropout_mask_values_and_mean():
  m = np.asarray(masks.dropout_mask(jax.random.key(0), (200, 500), 0.3))
  assert set(np.unique(m)) <= {0.0, np.float32(1 / 0.7)}
  assert abs(m.mean() - 1.0) < 0.01
  assert abs((m == 0).mean() - 0.3) < 0.01


def test_rate_zero_is_exactly_ones():
  np.testing.assert_array_equal(masks.dropout_mask(jax.random.key(0), (4, 5), 0.0), np.ones((4, 5)))
  np.testing.assert_array_equal(
      masks.word_type_mask(jax.random.key(0), jnp.ones((2, 3), jnp.int32), 0), np.ones((2, 3)))
  # A traced rate of 0 (population training) also gives exact ones.
  f = jax.jit(lambda r: masks.dropout_mask(jax.random.key(0), (4, 5), r))
  np.testing.assert_array_equal(f(0.0), np.ones((4, 5)))


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan"), "a"])
def test_bad_rate_raises_naming_it(rate):
  with pytest.raises(ValueError, match="rate"):
    masks.dropout_mask(jax.random.key(0), (3,), rate)
  with pytest.raises(ValueError, match="rate"):
    masks.word_type_mask(jax.random.key(0), jnp.zeros((2, 2), jnp.int32), rate)


def test_bad_rate_in_sample_masks_names_the_entry():
  with pytest.raises(ValueError, match=r"rates\['h'\]"):
    masks.sample_masks(jax.random.key(0), {
        "emb": 0,
        "x": 0.1,
        "h": 1.2,
        "out": 0
    },
                       jnp.zeros((2, 3), jnp.int32),
                       scheme="variational",
                       tied=True,
                       layers=[(4, 4)],
                       n_gates=4)


def test_per_row_rows_differ_and_do_not_depend_on_batch_size():
  k = jax.random.key(1)
  a = np.asarray(masks.per_row(k, 8, (100,), 0.5))
  b = np.asarray(masks.per_row(k, 3, (100,), 0.5))
  np.testing.assert_array_equal(a[:3], b)
  assert all(not np.array_equal(a[i], a[j]) for i in range(8) for j in range(i))


def test_word_type_mask_ties_word_types_within_a_row():
  tokens = jnp.array([[5, 7, 5, 5, 9, 7, 1, 5] * 4, [5, 7, 5, 5, 9, 7, 1, 5] * 4] * 8, jnp.int32)
  m = np.asarray(masks.word_type_mask(jax.random.key(2), tokens, 0.5))
  t = np.asarray(tokens)
  for b in range(t.shape[0]):
    for w in np.unique(t[b]):
      assert len(set(m[b][t[b] == w])) == 1, "occurrences of one type must share their value"
  # Rows are independent: identical token rows still get different masks somewhere.
  assert any(not np.array_equal(m[0], m[b]) for b in range(1, t.shape[0]))
  # Not all types dropped together: within a row both values appear across the batch.
  assert (m == 0).any() and (m > 0).any()


def test_word_type_mask_shared_across_batch():
  tokens = jnp.tile(jnp.arange(50, dtype=jnp.int32), (6, 1))
  m = np.asarray(masks.word_type_mask(jax.random.key(3), tokens, 0.5, shared_across_batch=True))
  for b in range(1, 6):
    np.testing.assert_array_equal(m[0], m[b])


def test_word_type_mask_rejects_bad_tokens():
  with pytest.raises(ValueError, match="tokens"):
    masks.word_type_mask(jax.random.key(0), jnp.zeros((3,), jnp.int32), 0.2)


def test_sample_masks_shapes_and_determinism():
  tokens = jax.random.randint(jax.random.key(0), (5, 7), 0, 30)
  rates = {"emb": 0.3, "x": 0.5, "h": 0.3, "out": 0.5}
  layers = [(8, 6), (6, 6)]
  tied = masks.sample_masks(jax.random.key(9),
                            rates,
                            tokens,
                            scheme="variational",
                            tied=True,
                            layers=layers,
                            n_gates=4)
  assert tied["emb"].shape == (5, 7)
  assert [m.shape for m in tied["x"]] == [(5, 8), (5, 6)]
  assert [m.shape for m in tied["h"]] == [(5, 6), (5, 6)]
  assert tied["out"].shape == (5, 6)
  untied = masks.sample_masks(jax.random.key(9),
                              rates,
                              tokens,
                              scheme="variational",
                              tied=False,
                              layers=layers,
                              n_gates=4)
  assert [m.shape for m in untied["x"]] == [(4, 5, 8), (4, 5, 6)]
  # gates get different masks when untied
  assert not np.array_equal(untied["h"][0][0], untied["h"][0][1])
  again = masks.sample_masks(jax.random.key(9),
                             rates,
                             tokens,
                             scheme="variational",
                             tied=True,
                             layers=layers,
                             n_gates=4)
  for a, b in zip(jax.tree.leaves(tied), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)
  naive = masks.sample_masks(jax.random.key(9),
                             rates,
                             tokens,
                             scheme="naive",
                             tied=True,
                             layers=layers,
                             n_gates=4)
  assert [m.shape for m in naive["x_steps"]] == [(7, 5, 8), (7, 5, 6)]
  assert naive["out"].shape == (7, 5, 6) and naive["h"] == [None, None]
  # naive masks change over time
  assert not np.array_equal(naive["x_steps"][0][0], naive["x_steps"][0][1])
  zero = masks.sample_masks(jax.random.key(9),
                            dict.fromkeys(rates, 0.0),
                            tokens,
                            scheme="variational",
                            tied=True,
                            layers=layers,
                            n_gates=4)
  assert jax.tree.leaves(zero) == []


def test_unknown_scheme():
  with pytest.raises(ValueError, match="scheme"):
    masks.sample_masks(jax.random.key(0), {},
                       jnp.zeros((1, 1), jnp.int32),
                       scheme="gal",
                       tied=True,
                       layers=[(1, 1)],
                       n_gates=4)
