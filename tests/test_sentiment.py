"""Sentiment tasks: tokenising / segmenting / splitting, the uncertainty summaries against
hand-computed values, and a few training steps of every config on the tiny corpus in
tests/data (resume, re-evaluation and error messages included)."""

import json
import math
import os
import shutil

import numpy as np
import pytest

from configs import imdb_lstm, sentiment_gru, sentiment_lstm
from vdrnn import models, plots, seq_task, tasks, uncertainty
from vdrnn.data import locate
from vdrnn.data import sentiment as data
from vdrnn.errors import UserError
from vdrnn.metrics import read_jsonl

TINY = os.path.join(os.path.dirname(__file__), "data")


def tiny(module, arg, **train):
  c = module.get_config(arg)
  c.data_dir = TINY
  c.verify_checksums = False
  for k, v in train.items():
    c.train[k] = v
  return c


# ----------------------------------------------------------------------------------------
# Tokens, vocabulary, segments.


def test_tokenize_styles():
  assert data.tokenize("A  Fine\tfilm .\n") == ["a", "fine", "film", "."]
  assert data.tokenize("Great movie!<br /><br />It's GOOD.",
                       "words") == ["great", "movie", "!", "it's", "good", "."]


def test_fork_tokens_split_the_line_with_its_newline_on_single_spaces():
  """The released script's ``Tokenizer(filters='')`` over ``list(f)``: a review line ends in
  ``" \\n"``, so its newline is a token of its own; a tab is no separator."""
  assert data.tokenize("A  Fine\tfilm . ", "fork") == ["a", "fine\tfilm", ".", "\n"]
  assert data.tokenize("the end", "fork") == ["the", "end\n"]


def test_fork_tokens_give_the_released_scripts_segment_counts():
  """On the real corpus (found as the README says; skipped where it is absent), the fork's
  tokens give the released split's 10,620 / 2,655 segments, the whitespace split 10,599 /
  2,650."""
  try:
    folder = locate.find("scaledata", data.SCALEDATA_FILES, None, verify=False)
  except UserError as e:
    pytest.skip(f"no Pang & Lee corpus here: {e}")
  texts, ratings = data.read_scaledata(folder)
  counts = {}
  for tokens in data.TOKENS:
    _, info = data.scaledata_splits(texts, ratings, num_words=20000, maxlen=200, split="paper",
                                    tokens=tokens)
    counts[tokens] = (info["train_segments"], info["test_segments"])
  assert counts == {"whitespace": (10599, 2650), "fork": (10620, 2655)}


def test_vocab_most_frequent_first_ties_by_first_occurrence_offset_3():
  vocab = data.build_vocab([["b", "a", "b"], ["c", "a", "b", "d"]], num_words=3)
  assert vocab == {"b": 3, "a": 4, "c": 5}  # d ties with c but comes later: cut
  assert data.encode(["a", "d", "b"], vocab) == [data.START, 4, data.OOV, 3]
  assert (data.PAD, data.START, data.OOV, data.OFFSET) == (0, 1, 2, 3)


def test_segment_and_pad():
  assert data.segment([1, 5, 6, 7, 8], 2) == [[1, 5], [6, 7], [8]]
  np.testing.assert_array_equal(data.pad([[1, 2, 3], [4]], 2, "pre"), [[2, 3], [0, 4]])
  np.testing.assert_array_equal(data.pad([[1, 2, 3], [4]], 2, "post"), [[1, 2], [0, 4]])
  np.testing.assert_array_equal(data.pad([[4]], 3), [[0, 0, 4]])


def test_shuffle_is_the_released_scripts_numpy_shuffle():
  items = list(range(17))
  np.random.seed(0)
  np.random.shuffle(items)
  np.testing.assert_array_equal(data.shuffled(17, 0), items)


def _texts():
  # 5 reviews: 4 train / 1 test at test_fraction 0.2; "zebra" appears only in review 4.
  texts = [
      "good good film", "bad film", "good plot good cast fine", "bad bad bad plot",
      "zebra zebra film"
  ]
  return texts, np.asarray([0.9, 0.1, 0.8, 0.2, 0.5], np.float32)


@pytest.mark.parametrize("split", ["paper", "review"])
def test_scaledata_segments_carry_their_review_rating(split):
  texts, ratings = _texts()
  splits, info = data.scaledata_splits(texts,
                                       ratings,
                                       num_words=10,
                                       maxlen=3,
                                       split=split,
                                       shuffle_seed=0)
  order = data.shuffled(5, 0)
  n_segments = sum(len(data.segment([0] * (len(t.split()) + 1), 3)) for t in texts)
  assert sum(len(s["y"]) for s in splits.values()) == n_segments
  for s in splits.values():
    np.testing.assert_array_equal(s["y"], ratings[order][s["review"]])
    assert s["x"].shape[1] == 3
  # The first segment of every review starts with START; later ones don't.
  first = np.r_[True, np.diff(splits["train"]["review"]) != 0]
  rows = splits["train"]["x"]
  starts = np.array([r[r != 0][0] for r in rows])
  assert (starts[first] == data.START).all() and (starts[~first] != data.START).all()
  np.testing.assert_allclose(info["y_mean"], splits["train"]["y"].mean(), rtol=1e-6)
  np.testing.assert_allclose(info["y_std"], splits["train"]["y"].std(), rtol=1e-6)


def test_paper_split_cuts_segments_review_split_cuts_reviews():
  texts, ratings = _texts()
  paper, pinfo = data.scaledata_splits(texts, ratings, num_words=10, maxlen=2, split="paper")
  review, rinfo = data.scaledata_splits(texts, ratings, num_words=10, maxlen=2, split="review")
  n = pinfo["train_segments"] + pinfo["test_segments"]
  assert pinfo["train_segments"] == int(n * 0.8)
  assert rinfo["straddling"] == 0
  assert set(review["train"]["review"]) == {0, 1, 2, 3} and set(review["test"]["review"]) == {4}
  # Paper: the vocabulary includes the test reviews' words; review: test-only words are OOV.
  order = data.shuffled(5, 0)
  test_words = set(texts[order[4]].split()) - set(w for i in order[:4] for w in texts[i].split())
  assert test_words  # the test review has a word no training review has
  assert (review["test"]["x"] == data.OOV).any() and not (paper["test"]["x"] == data.OOV).any()


def test_review_split_holds_out_validation_reviews():
  texts, ratings = _texts()
  splits, info = data.scaledata_splits(texts,
                                       ratings,
                                       num_words=10,
                                       maxlen=2,
                                       split="review",
                                       valid_fraction=0.25)
  assert set(splits["valid"]["review"]) == {3} and set(splits["train"]["review"]) == {0, 1, 2}
  with pytest.raises(UserError, match="valid_fraction"):
    data.scaledata_splits(texts, ratings, num_words=10, maxlen=2, split="paper", valid_fraction=0.1)


def test_tiny_scaledata_and_imdb_files_read():
  folder = data.locate.find("scaledata", data.SCALEDATA_FILES, TINY, verify=False)
  texts, ratings = data.read_scaledata(folder)
  assert len(texts) == len(ratings) == 20 and 0 <= ratings.min() and ratings.max() <= 1
  folder = data.locate.find("imdb", data.IMDB_FILES, TINY, verify=False)
  train, test = data.read_imdb(folder, "train"), data.read_imdb(folder, "test")
  assert len(train[0]) == 24 and len(test[0]) == 16 and set(train[1]) == {0, 1}
  splits, info = data.imdb_splits(train,
                                  test,
                                  num_words=30,
                                  maxlen=6,
                                  valid_fraction=0.25,
                                  truncating="pre")
  assert info["train_reviews"] == 18 and info["valid_reviews"] == 6 and info["test_reviews"] == 16
  assert set(splits["train"]["y"][:8]) == {0, 1}  # shuffled: the file is sorted by label
  # "pre" keeps the end of a long review: every tiny review ends with "highly" / "poorly" and ".".
  vocab = data.build_vocab([data.tokenize(train[0][i], "words") for i in data.shuffled(24, 0)[:18]],
                           30)
  assert (splits["test"]["x"][:, -1] == vocab["."]).all()
  post, _ = data.imdb_splits(train, test, num_words=30, maxlen=6, truncating="post")
  assert (post["test"]["x"][:, 0] == data.START).all()


def test_missing_data_is_one_clear_error(tmp_path):
  c = tiny(sentiment_lstm, "variational,tiny")
  c.data_dir = str(tmp_path)
  with pytest.raises(UserError, match="scaledata"):
    tasks.train_and_evaluate(c, str(tmp_path / "w"))


def test_config_errors():
  c = tiny(sentiment_lstm, "tiny")
  c.model.vocab_size = 99
  with pytest.raises(UserError, match="vocab_size"):
    tasks.of(c).validate(c)
  c = tiny(imdb_lstm, "tiny")
  c.model.out_dim = 1
  with pytest.raises(UserError, match="out_dim"):
    tasks.of(c).validate(c)
  with pytest.raises(ValueError, match="unknown arg"):
    sentiment_gru.get_config("variatonal")


def test_configs_read_like_the_paper():
  c = sentiment_lstm.get_config()
  m = c.model
  assert (m.emb_dim, m.hidden, m.cell, m.out_dim, m.scheme) == (128, 128, "lstm", 1, "variational")
  assert (m.p_emb, m.p_x, m.p_h, m.p_out) == (0.5, 0.5, 0.5, 0.5)
  assert (c.train.batch_size, c.train.weight_decay, c.train.num_epochs,
          c.data.split) == (128, 1e-6, 250, "review")
  assert sentiment_lstm.get_config("naive,paper").data.split == "paper"
  assert sentiment_gru.get_config().model.cell == "gru"
  k = imdb_lstm.get_config("keras")
  assert (k.model.p_x, k.model.p_h, k.data.maxlen, k.train.batch_size) == (0.2, 0.2, 80, 32)
  for cfg in (c, sentiment_gru.get_config("none"), k, imdb_lstm.get_config("naive")):
    tasks.of(cfg).validate(cfg)


@pytest.mark.parametrize("cell,gates", [("lstm", 4), ("gru", 3)])
def test_l2_scopes_every_weight_or_the_forks_last_gate_block(cell, gates):
  import jax
  c = sentiment_lstm.get_config("tiny") if cell == "lstm" else sentiment_gru.get_config("tiny")
  params = jax.tree.map(np.asarray, models.init_seq(jax.random.key(0), c.model))
  sq = lambda a: float(np.sum(np.square(a, dtype=np.float64)))  # noqa: E731
  every = sum(sq(p) for p in jax.tree.leaves(params))
  np.testing.assert_allclose(float(seq_task.l2(params)), every, rtol=1e-5)
  H, r = c.model.hidden, params["rnn"]
  last = sq(r["w_x"][:, -H:]) + sq(r["w_h"][:, -H:]) + sq(r["b"][-H:])  # LSTM o, GRU n blocks
  fork = (sq(params["embed"]) + sq(params["dense"]["w"]) + sq(params["dense"]["b"])
          + gates * last)
  np.testing.assert_allclose(float(seq_task.l2(params, "fork")), fork, rtol=1e-5)
  assert abs(fork - every) > 1e-3 * every  # the two scopes differ on these weights
  bad = sentiment_lstm.get_config("tiny")
  bad.train.weight_decay_scope = "keras"
  with pytest.raises(UserError, match="weight_decay_scope"):
    tasks.of(bad).validate(bad)


# ----------------------------------------------------------------------------------------
# Uncertainty summaries against hand-computed values.


def test_regression_predictive_mean_std_and_log_likelihood():
  mean, std = uncertainty.regression_predictive([[1.0, 2.0], [3.0, 4.0]], tau=0.5)
  np.testing.assert_allclose(mean, [2.0, 3.0])
  np.testing.assert_allclose(std, [math.sqrt(1 + 2), math.sqrt(1 + 2)])  # var 1 + 1/tau
  ll = uncertainty.gaussian_mc_log_likelihood([2.0], [[1.0], [3.0]], tau=1.0)
  np.testing.assert_allclose(ll, [-0.5 - 0.5 * math.log(2 * math.pi)])
  ll = uncertainty.gaussian_mc_log_likelihood([0.0], [[0.0]],
                                              tau=4.0)  # one sample: a Gaussian density
  np.testing.assert_allclose(ll, [math.log(math.sqrt(4 / (2 * math.pi)))])
  s = uncertainty.regression_summary([0.0, 0.0], [[1.0, -1.0], [1.0, -1.0]], tau=1.0)
  np.testing.assert_allclose([s["rmse"], s["pred_std"]], [1.0, 1.0])


def test_fit_tau_maximises_the_log_likelihood():
  """One sample: tau = 1 / MSE exactly. Several: a maximum of the mixture's mean log density
  (above tau 5% either side), and samples all equal give the one-sample answer."""
  rng = np.random.RandomState(0)
  y, pred = rng.rand(200), rng.rand(200)
  np.testing.assert_allclose(uncertainty.fit_tau(y, pred[None]), 1 / np.mean((y - pred) ** 2))
  np.testing.assert_allclose(uncertainty.fit_tau(y, np.stack([pred] * 3)),
                             1 / np.mean((y - pred) ** 2), rtol=1e-5)
  samples = pred[None] + 0.1 * rng.randn(20, 200)
  tau = uncertainty.fit_tau(y, samples)
  ll = lambda t: uncertainty.gaussian_mc_log_likelihood(y, samples, t).mean()  # noqa: E731
  assert ll(tau) > ll(tau * 1.05) and ll(tau) > ll(tau / 1.05)
  s = uncertainty.regression_summary(y, samples, tau=4.0)
  np.testing.assert_allclose(s["std_epistemic"], samples.std(0).mean())
  np.testing.assert_allclose(s["std_aleatoric"], 0.5)


def test_classification_entropy_mutual_information_nll_ece():
  np.testing.assert_allclose(uncertainty.entropy([[0.5, 0.5], [1.0, 0.0]]), [math.log(2), 0.0])
  disagree = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # [S=2, N=1, K=2]
  np.testing.assert_allclose(uncertainty.mutual_information(disagree), [math.log(2)])
  agree = np.array([[[0.5, 0.5]], [[0.5, 0.5]]])
  np.testing.assert_allclose(uncertainty.mutual_information(agree), [0.0], atol=1e-12)
  p = np.array([[0.95, 0.05], [0.85, 0.15], [0.35, 0.65], [0.25, 0.75]])
  y = np.array([0, 1, 1, 1])  # correct, wrong, correct, correct
  np.testing.assert_allclose(uncertainty.nll(p, y), -np.mean(np.log([0.95, 0.15, 0.65, 0.75])))
  assert uncertainty.accuracy(p, y) == 0.75
  # 5 bins: (0.8, 1] holds 0.95, 0.85 (acc 0.5, conf 0.9);
  # (0.6, 0.8] holds 0.65, 0.75 (acc 1, conf 0.7).
  np.testing.assert_allclose(uncertainty.ece(p, y, n_bins=5), 0.5 * 0.4 + 0.5 * 0.3)
  s = uncertainty.classification_summary(p[None], y, n_bins=5)
  np.testing.assert_allclose(s["mi"], 0.0, atol=1e-12)
  h = lambda q: -(q * math.log(q) + (1 - q) * math.log(1 - q))
  np.testing.assert_allclose(s["entropy_wrong"], h(0.85))
  np.testing.assert_allclose(s["entropy_correct"], (h(0.95) + h(0.65) + h(0.75)) / 3)


def test_reliability_diagram_png(tmp_path):
  p = np.array([[0.95, 0.05], [0.85, 0.15], [0.35, 0.65], [0.25, 0.75]])
  path = str(tmp_path / "r.png")
  plots.reliability_diagram(path, {"a": p, "b": p[:, ::-1]}, [0, 1, 1, 1], n_bins=5)
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------------
# Training: a few steps of every config at tiny shapes.


def _epochs(workdir):
  drop = ("time_s", "eval_time_s", "items_per_s")
  return [{
      k: v for k, v in r.items() if k not in drop
  } for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["event"] == "epoch"]


@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("sent") / "lstm")
  c = tiny(sentiment_lstm, "variational,tiny", num_epochs=2, checkpoint_every_steps=3)
  return c, workdir, tasks.train_and_evaluate(c, workdir)


def test_sentiment_lstm_trains_and_reports(lstm_run):
  c, workdir, r = lstm_run
  for k in ("test_rmse", "test_ll", "test_rmse_mc", "test_ll_mc", "test_pred_std_mc",
            "test_ll_fit", "test_ll_fit_mc", "test_std_epistemic_mc", "test_tau_fit_mc"):
    assert math.isfinite(r[k]), k
  assert r["test_rmse"] < 1.0 and r["test_pred_std_mc"] >= math.sqrt(1 / c.eval.tau)
  # the released tau = 0.1 is the aleatoric part; the fitted tau's ll is the better one
  assert r["test_std_aleatoric_mc"] == pytest.approx(math.sqrt(1 / c.eval.tau))
  assert r["test_std_epistemic_mc"] > 0 and r["test_ll_fit_mc"] > r["test_ll_mc"]
  assert r["mc_samples"] == c.eval.mc_samples and r["best"]["metric"] == "valid_rmse"
  for f in ("results.json", "metrics.jsonl", "config.json", "learning_curve.png"):
    assert os.path.exists(os.path.join(workdir, f)), f
  hist = _epochs(workdir)
  assert [h["epoch"] for h in hist] == [1, 2] and all(
      "test_rmse" in h and "valid_rmse" in h for h in hist)


def test_resume_mid_epoch_is_exact(lstm_run, tmp_path):
  c, full, r_full = lstm_run
  workdir = str(tmp_path / "resumed")
  c1 = tiny(sentiment_lstm, "variational,tiny", num_epochs=1, checkpoint_every_steps=3)
  tasks.train_and_evaluate(c1, workdir)
  spe = json.load(open(os.path.join(workdir, "results.json")))["step"]
  # Simulate a run killed mid-epoch: drop the epoch-end checkpoint, keep the one at step 3.
  shutil.rmtree(os.path.join(workdir, "checkpoints", str(spe)))
  r = tasks.train_and_evaluate(c, workdir)
  for k in ("test_rmse", "test_rmse_mc", "test_ll_mc", "step"):
    assert r[k] == r_full[k], k
  assert _epochs(workdir) == _epochs(full)


def test_evaluate_workdir_matches_training(lstm_run, tmp_path):
  c, workdir, r = lstm_run
  latest = tasks.evaluate_workdir(tasks.load_run_config(workdir), workdir, checkpoint="latest")
  assert latest["test_rmse"] == r["test_rmse"] and latest["test_rmse_mc"] == r["test_rmse_mc"]
  # a run written before a field existed: config.json without it takes the field's default
  old = str(tmp_path / "old")
  shutil.copytree(workdir, old)
  with open(os.path.join(old, "config.json")) as f:
    cfg = json.load(f)
  del cfg["train"]["weight_decay_scope"], cfg["model"]["skip_padding"]
  with open(os.path.join(old, "config.json"), "w") as f:
    json.dump(cfg, f)
  loaded = tasks.load_run_config(old)
  assert (loaded.train.weight_decay_scope, loaded.model.skip_padding) == ("all", True)
  assert loaded.train.num_epochs == c.train.num_epochs  # the run's own values kept
  again = tasks.evaluate_workdir(tasks.load_run_config(old), old, checkpoint="latest")
  assert again["test_rmse"] == r["test_rmse"]
  best = tasks.evaluate_workdir(c, workdir, checkpoint="best", split="valid")
  assert math.isfinite(best["valid_rmse_mc"]) and os.path.exists(
      os.path.join(workdir, "eval_best_valid.json"))
  with pytest.raises(UserError, match="split"):
    tasks.evaluate_workdir(c, workdir, split="nope")


def test_resume_refuses_another_model(lstm_run, tmp_path):
  c, workdir, _ = lstm_run
  other = tiny(sentiment_lstm, "naive,tiny", num_epochs=3)
  with pytest.raises(UserError, match="incompatible"):
    tasks.train_and_evaluate(other, workdir)


@pytest.mark.parametrize("module,arg", [(sentiment_gru, "naive,tiny,paper"), (imdb_lstm, "tiny")])
def test_other_configs_train(module, arg, tmp_path):
  c = tiny(module, arg, num_epochs=1)
  r = tasks.train_and_evaluate(c, str(tmp_path))
  if c.task == "sentiment":
    assert math.isfinite(r["test_rmse"]) and math.isfinite(r["test_rmse_mc"])
    assert r["best"]["metric"] == "train_rmse"  # the paper split has no validation set
  else:
    for k in ("test_acc", "test_nll", "test_ece", "test_acc_mc", "test_nll_mc", "test_ece_mc",
              "test_mi_mc", "test_entropy_mc"):
      assert math.isfinite(r[k]), k
    assert 0 <= r["test_acc"] <= 1 and r["test_mi_mc"] >= 0
    assert os.path.exists(os.path.join(str(tmp_path), "reliability_test.png"))


def test_non_finite_loss_stops_with_the_step(tmp_path):
  c = tiny(sentiment_lstm, "none,tiny", num_epochs=1)
  c.train.weight_decay = float("inf")
  with pytest.raises(UserError, match="non-finite loss or gradient at step 0"):
    tasks.train_and_evaluate(c, str(tmp_path))
