"""IMDB for the uncertainty benchmark: the held-out validation split of the training reviews and
out-of-distribution text (PTB, Pang & Lee) put through the IMDB test set's preprocessing, on
the tiny corpora in tests/data and on files written here."""

import os
import shutil

import numpy as np
import pytest

from configs import imdb_lstm, sentiment_lstm
from vdrnn.data import sentiment as data
from vdrnn.errors import UserError

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


# ----------------------------------------------------------------------------------------
# Out-of-distribution inputs.


def _data_dir_with(tmp_path, scaledata_texts=None, ptb_lines=None):
  """A data folder with the tiny IMDB files and the given OOD texts in the readers' layouts."""
  root = tmp_path / "data"
  shutil.copytree(os.path.join(TINY, "imdb"), root / "imdb")
  if scaledata_texts is not None:  # spread over the 4 critics in reader order
    per = -(-len(scaledata_texts) // 4)
    for i, a in enumerate(data.AUTHORS):
      (root / "scaledata" / a).mkdir(parents=True)
      part = scaledata_texts[i * per:(i + 1) * per]
      (root / "scaledata" / a / f"subj.{a}").write_text("".join(t + "\n" for t in part))
      (root / "scaledata" / a / f"rating.{a}").write_text("".join("0.5\n" for _ in part))
  if ptb_lines is not None:
    (root / "ptb").mkdir()
    (root / "ptb" / "ptb.test.txt").write_text("".join(f" {line} \n" for line in ptb_lines))
  return root


def _imdb_test_x(config):
  splits, _ = data.load("imdb", config.data, config.data_dir, verify=False)
  return splits["test"]["x"]


@pytest.mark.parametrize("truncating", ["pre", "post"])
def test_scaledata_text_gets_the_imdb_test_preprocessing(tmp_path, truncating):
  """The IMDB test reviews written as Pang & Lee reviews come out as the IMDB test inputs."""
  _, test = _tiny_imdb()
  c = _config(_data_dir_with(tmp_path, scaledata_texts=test[0]))
  c.data.truncating = truncating
  ood, info = data.ood_inputs(c, "scaledata")
  np.testing.assert_array_equal(ood["x"], _imdb_test_x(c))
  np.testing.assert_array_equal(ood["source"], np.arange(len(test[0])))
  assert info["documents"] == len(test[0]) and info["ood"] == "scaledata"


def test_ptb_lines_get_the_imdb_test_preprocessing(tmp_path):
  """PTB lines that are the IMDB test reviews' tokens: each has its review's length, so each
  pseudo-document is one line, and the inputs are the IMDB test inputs."""
  _, test = _tiny_imdb()
  lines = [" ".join(data.tokenize(t, "words")) for t in test[0]]
  c = _config(_data_dir_with(tmp_path, ptb_lines=lines))
  ood, info = data.ood_inputs(c, "ptb")
  np.testing.assert_array_equal(ood["x"], _imdb_test_x(c))
  np.testing.assert_array_equal(ood["source"], np.arange(len(lines)))
  c.data.max_test = 5
  assert len(data.ood_inputs(c, "ptb")[0]["x"]) == 5


def test_ptb_unk_is_oov_and_sentences_group_to_the_lengths():
  assert data.ptb_tokens(" the <unk> rose n't $ N a.m. ") == [
      "the", "<unk>", "rose", "n't", "$", "n", "a", ".", "m", "."]
  vocab = data.build_vocab([data.tokenize("the <unk> film", "words")], 10)
  assert "<unk>" not in vocab
  assert data.encode(data.ptb_tokens("the <unk>"), vocab)[-1] == data.OOV
  sentences = [["a"] * n for n in (3, 2, 4, 1, 1, 5, 2)]
  docs, first = data.ptb_documents(sentences, [4, 1])
  # lengths 4, 1, 4, 1, ...: [3+2], [4], [1+1+5], [2] and nothing left over.
  assert first == [0, 2, 3, 6] and [len(d) for d in docs] == [5, 4, 7, 2]
  docs, first = data.ptb_documents(sentences, [10])  # [3+2+4+1]; the short [1+5+2] dropped
  assert first == [0] and [len(d) for d in docs] == [10]
  assert data.ptb_documents(sentences, [0]) == (sentences, list(range(7)))  # at least 1 token
  words = [[f"w{i}_{j}" for j in range(n)] for i, n in enumerate((3, 2, 4))]
  docs, _ = data.ptb_documents(words, [4])  # consecutive sentences, in order, joined
  assert docs == [words[0] + words[1], words[2]]


def test_ood_errors_are_one_line(tmp_path):
  c = _config(TINY)
  with pytest.raises(UserError, match="unknown OOD set 'wiki'; use one of ptb, scaledata"):
    data.ood_inputs(c, "wiki")
  with pytest.raises(UserError, match="ptb"):  # tests/data has no PTB files
    data.ood_inputs(c, "ptb")
  s = sentiment_lstm.get_config("tiny")
  with pytest.raises(UserError, match="task must be imdb"):
    data.ood_inputs(s, "scaledata")
