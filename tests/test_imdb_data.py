"""IMDB for the uncertainty benchmark: the held-out validation split of the training reviews and
out-of-distribution text (PTB, Pang & Lee) put through the IMDB test set's preprocessing, on
the tiny corpora in tests/data and on files written here."""

import os

import numpy as np
import pytest

from configs import imdb_lstm
from vdrnn.data import sentiment as data

TINY = os.path.join(os.path.dirname(__file__), "data")


def _tiny_imdb():
  folder = data.locate.find("imdb", data.IMDB_FILES, TINY, verify=False)
  return data.read_imdb(folder, "train"), data.read_imdb(folder, "test")


def _config(data_dir):
  c = imdb_lstm.get_config("tiny")
  c.data_dir, c.verify_checksums = str(data_dir), False
  return c


# ----------------------------------------------------------------------------------------
# The validation split.


@pytest.mark.parametrize("fraction,seed", [(0.25, 0), (0.1, 0), (0.5, 3)])
def test_validation_split_sizes_disjoint_labels_and_inputs(fraction, seed):
  train, test = _tiny_imdb()
  splits, info = data.imdb_splits(train, test, num_words=30, maxlen=6, valid_fraction=fraction,
                                  shuffle_seed=seed)
  n = len(train[0])
  n_valid = int(n * fraction)
  assert (info["train_reviews"], info["valid_reviews"]) == (n - n_valid, n_valid)
  tr, va = splits["train"]["review"], splits["valid"]["review"]
  assert not set(tr) & set(va) and sorted(np.r_[tr, va]) == list(range(n))
  for k in ("train", "valid"):  # each review keeps its own label
    np.testing.assert_array_equal(splits[k]["y"], train[1][splits[k]["review"]])
  # The vocabulary is the training part's; valid and test go through it alike.
  vocab = data.build_vocab([data.tokenize(train[0][i], "words") for i in tr], 30)
  for k, texts in (("valid", [train[0][i] for i in va]), ("test", test[0])):
    expect = data.pad([data.encode(data.tokenize(t, "words"), vocab) for t in texts], 6)
    np.testing.assert_array_equal(splits[k]["x"], expect)
  np.testing.assert_array_equal(splits["test"]["y"], test[1])


def test_validation_split_is_determined_by_the_seed_and_zero_means_none():
  train, test = _tiny_imdb()
  kw = dict(num_words=30, maxlen=6, valid_fraction=0.25)
  a, _ = data.imdb_splits(train, test, shuffle_seed=0, **kw)
  b, _ = data.imdb_splits(train, test, shuffle_seed=0, **kw)
  c, _ = data.imdb_splits(train, test, shuffle_seed=1, **kw)
  for k in a:
    for f in a[k]:
      np.testing.assert_array_equal(a[k][f], b[k][f])
  assert set(a["valid"]["review"]) != set(c["valid"]["review"])
  _, held = data.imdb_held_out(24, 0.25, 1)
  np.testing.assert_array_equal(np.sort(held), np.sort(c["valid"]["review"]))
  # valid_fraction 0 (the Keras example's setting): every training review trains.
  none, _ = data.imdb_splits(train, test, num_words=30, maxlen=6, valid_fraction=0.0)
  assert "valid" not in none and sorted(none["train"]["review"]) == list(range(24))


def test_imdb_configs_hold_out_validation_reviews_except_keras():
  assert imdb_lstm.get_config().data.valid_fraction == 0.1
  assert imdb_lstm.get_config("naive").data.valid_fraction == 0.1
  assert imdb_lstm.get_config("keras").data.valid_fraction == 0.0
  splits, _ = data.load("imdb", _config(TINY).data, TINY, verify=False)
  assert len(splits["valid"]["y"]) == int(24 * 0.1)

