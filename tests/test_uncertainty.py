"""The uncertainty benchmark's metrics (``vdrnn.uncertainty``) against slow direct computations
on small hand-made arrays: Brier, ECE, AUROC, AUPR, risk-coverage / AURC and the OOD scores,
with their edge cases (all scores equal, perfectly separated, ties, values on bin edges)."""

import math

import numpy as np
import pytest

from vdrnn import plots, uncertainty


def _probs(rng, n, k, s=None):
  z = rng.randn(*((n, k) if s is None else (s, n, k))) * 2.0
  return uncertainty.softmax(z)


# ----------------------------------------------------------------------------------------
# Slow references: loops over examples, pairs, bins and thresholds.


def brier_loop(p, y):
  total = 0.0
  for n in range(len(y)):
    for k in range(p.shape[1]):
      total += (p[n][k] - (1.0 if k == y[n] else 0.0)) ** 2
  return total / len(y)


def ece_loop(p, y, n_bins):
  """Bin ``b`` holds confidences in ``(b / n, (b + 1) / n]``; 0 goes to the first bin."""
  conf = [max(row) for row in p]
  right = [int(np.argmax(row)) == y[i] for i, row in enumerate(p)]
  total = 0.0
  for b in range(n_bins):
    lo, hi = b / n_bins, (b + 1) / n_bins
    members = [i for i, c in enumerate(conf) if lo < c <= hi or (b == 0 and c == 0.0)]
    if members:
      acc = sum(right[i] for i in members) / len(members)
      mean_conf = sum(conf[i] for i in members) / len(members)
      total += len(members) / len(conf) * abs(acc - mean_conf)
  return total


def auroc_pairs(scores, positive):
  """Over every (positive, negative) pair: 1 if the positive scores higher, 1/2 on a tie."""
  pos = [s for s, y in zip(scores, positive) if y]
  neg = [s for s, y in zip(scores, positive) if not y]
  wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
  return wins / (len(pos) * len(neg))


def aupr_thresholds(scores, positive):
  """Average precision: for each distinct score, from the highest, predict positive when
  ``score >= t``; add (recall gained) x precision."""
  total, prev_recall, n_pos = 0.0, 0.0, sum(bool(y) for y in positive)
  for t in sorted(set(scores), reverse=True):
    predicted = [bool(y) for s, y in zip(scores, positive) if s >= t]
    tp = sum(predicted)
    precision, recall = tp / len(predicted), tp / n_pos
    total += (recall - prev_recall) * precision
    prev_recall = recall
  return total


def risk_coverage_loop(u, correct):
  """For each distinct uncertainty t ascending: the inputs with ``u <= t``."""
  rows = []
  for t in sorted(set(u)):
    kept = [c for v, c in zip(u, correct) if v <= t]
    acc = sum(kept) / len(kept)
    rows.append((t, len(kept) / len(u), acc, 1.0 - acc))
  return rows


def aurc_loop(u, correct):
  area, prev = 0.0, 0.0
  for _, cov, _, risk in risk_coverage_loop(u, correct):
    area += (cov - prev) * risk
    prev = cov
  return area


# ----------------------------------------------------------------------------------------
# Brier and ECE.


def test_brier_matches_a_loop_and_its_extremes():
  rng = np.random.RandomState(0)
  for k in (2, 3, 5):
    p, y = _probs(rng, 17, k), rng.randint(0, k, 17)
    np.testing.assert_allclose(uncertainty.brier(p, y), brier_loop(p, y), rtol=1e-12)
  y = np.array([0, 1, 2])
  assert uncertainty.brier(np.eye(3), y) == 0.0  # certain and right
  assert uncertainty.brier(np.eye(3)[[1, 2, 0]], y) == 2.0  # certain and wrong
  np.testing.assert_allclose(uncertainty.brier(np.full((3, 3), 1 / 3), y), 2 / 3)  # uniform


def test_classification_summary_reports_the_brier_of_the_predictive_probability():
  rng = np.random.RandomState(1)
  ps, y = _probs(rng, 11, 3, s=4), rng.randint(0, 3, 11)
  s = uncertainty.classification_summary(ps, y, n_bins=5)
  np.testing.assert_allclose(s["brier"], brier_loop(ps.mean(0), y), rtol=1e-12)
  np.testing.assert_allclose(s["ece"], ece_loop(ps.mean(0), y, 5), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("n_bins", [1, 3, 5, 10, 15])
def test_ece_matches_a_loop_over_bins(n_bins):
  rng = np.random.RandomState(n_bins)
  p, y = _probs(rng, 40, 3), rng.randint(0, 3, 40)
  np.testing.assert_allclose(uncertainty.ece(p, y, n_bins), ece_loop(p, y, n_bins), rtol=1e-12,
                             atol=1e-15)


def test_ece_bins_confidences_on_and_just_above_an_edge_as_the_loop_does():
  """Binary confidences exactly ``b / n`` belong to bin ``b - 1``; one ulp above, to bin
  ``b``."""
  n = 10
  conf = [b / n for b in range(5, 11)] + [np.nextafter(b / n, 2.0) for b in range(5, 10)]
  p = np.array([[c, 1.0 - c] for c in conf])
  y = np.arange(len(conf)) % 2
  np.testing.assert_allclose(uncertainty.ece(p, y, n), ece_loop(p, y, n), rtol=1e-12)
  count = uncertainty.calibration_bins(p, y, n)["count"]
  np.testing.assert_array_equal(count, [0, 0, 0, 0, 1, 2, 2, 2, 2, 2])


# ----------------------------------------------------------------------------------------
# AUROC and AUPR (positive = out-of-distribution).


def _cases():
  rng = np.random.RandomState(2)
  yield rng.randn(12), rng.rand(12) < 0.4  # distinct scores
  yield rng.randint(0, 4, 15).astype(float), rng.rand(15) < 0.5  # many ties
  yield np.array([0.3, 0.3, 0.1, 0.9, 0.9, 0.5]), np.array([1, 0, 0, 1, 0, 1], bool)
  yield np.array([2.0, 1.0]), np.array([False, True])  # one of each, reversed


@pytest.mark.parametrize("case", range(4))
def test_auroc_and_aupr_match_pair_counts_and_a_loop_over_thresholds(case):
  scores, positive = list(_cases())[case]
  np.testing.assert_allclose(uncertainty.auroc(scores, positive), auroc_pairs(scores, positive),
                             rtol=1e-12)
  np.testing.assert_allclose(uncertainty.aupr(scores, positive),
                             aupr_thresholds(scores, positive), rtol=1e-12)


def test_auroc_aupr_edge_cases():
  positive = np.array([0, 1, 0, 1, 1], bool)
  equal = np.full(5, 0.7)
  assert uncertainty.auroc(equal, positive) == 0.5
  np.testing.assert_allclose(uncertainty.aupr(equal, positive), 3 / 5)  # the share of positives
  separated = np.where(positive, 2.0, 1.0)
  assert uncertainty.auroc(separated, positive) == 1.0
  assert uncertainty.aupr(separated, positive) == 1.0
  assert uncertainty.auroc(-separated, positive) == 0.0
  np.testing.assert_allclose(uncertainty.aupr(-separated, positive),
                             aupr_thresholds(list(-separated), positive))
  # A strictly increasing transform of the scores changes neither.
  rng = np.random.RandomState(3)
  s, y = rng.randn(20), rng.rand(20) < 0.5
  y[:2] = [True, False]
  for f in (uncertainty.auroc, uncertainty.aupr):
    np.testing.assert_allclose(f(np.exp(3 * s), y), f(s, y), rtol=1e-12)
  with pytest.raises(ValueError, match="positive and one negative"):
    uncertainty.auroc(s, np.ones(20, bool))
  with pytest.raises(ValueError, match="NaN"):
    uncertainty.aupr(np.r_[np.nan, s[1:]], y)


# ----------------------------------------------------------------------------------------
# Risk-coverage and AURC.


@pytest.mark.parametrize("ties", [False, True])
def test_risk_coverage_matches_sorting_and_counting(ties):
  rng = np.random.RandomState(4 + ties)
  u = rng.randint(0, 5, 25).astype(float) if ties else rng.rand(25)
  correct = rng.rand(25) < 0.7
  rc = uncertainty.risk_coverage(u, correct)
  rows = risk_coverage_loop(list(u), list(correct))
  for key, col in (("threshold", 0), ("coverage", 1), ("accuracy", 2), ("risk", 3)):
    np.testing.assert_allclose(rc[key], [r[col] for r in rows], rtol=1e-12, atol=1e-15)
  np.testing.assert_allclose(uncertainty.aurc(u, correct), aurc_loop(list(u), list(correct)),
                             rtol=1e-12)
  assert rc["coverage"][-1] == 1.0 and rc["accuracy"][-1] == correct.mean()


def test_aurc_without_ties_is_the_mean_risk_over_the_k_least_uncertain():
  rng = np.random.RandomState(6)
  u, correct = rng.rand(30), rng.rand(30) < 0.6
  order = sorted(range(30), key=lambda i: u[i])
  risks = [1 - sum(correct[i] for i in order[:k]) / k for k in range(1, 31)]
  np.testing.assert_allclose(uncertainty.aurc(u, correct), sum(risks) / 30, rtol=1e-12)


def test_risk_coverage_edge_cases():
  correct = np.array([1, 0, 1, 1, 0], bool)
  rc = uncertainty.risk_coverage(np.zeros(5), correct)  # all equal: one point, everything kept
  assert list(rc["coverage"]) == [1.0] and list(rc["risk"]) == [0.4]
  assert uncertainty.aurc(np.zeros(5), correct) == pytest.approx(0.4)
  # Perfectly ordered (every wrong answer the most uncertain): risk 0 until coverage 3/5.
  u = np.where(correct, 0.0, 1.0) + np.arange(5) * 1e-3
  rc = uncertainty.risk_coverage(u, correct)
  np.testing.assert_allclose(rc["risk"], [0, 0, 0, 1 / 4, 2 / 5])
  np.testing.assert_allclose(uncertainty.aurc(u, correct), (1 / 4 + 2 / 5) / 5)
  assert uncertainty.aurc(-u, correct) > uncertainty.aurc(u, correct)  # the worst order


# ----------------------------------------------------------------------------------------
# OOD scores from [S, N, K] probabilities.


def test_ood_scores_match_loops_over_samples_and_classes():
  rng = np.random.RandomState(7)
  ps = _probs(rng, 6, 3, s=4)
  sc = uncertainty.ood_scores(ps)
  for n in range(6):
    mean = [sum(ps[s, n, k] for s in range(4)) / 4 for k in range(3)]
    h = -sum(q * math.log(q) for q in mean)
    h_each = [-sum(ps[s, n, k] * math.log(ps[s, n, k]) for k in range(3)) for s in range(4)]
    np.testing.assert_allclose(sc["entropy"][n], h, rtol=1e-12)
    np.testing.assert_allclose(sc["mi"][n], h - sum(h_each) / 4, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(sc["least_confidence"][n], 1 - max(mean), rtol=1e-12)


def test_ood_detection_scores_the_ood_set_as_positive():
  rng = np.random.RandomState(8)
  confident = uncertainty.softmax(rng.randn(3, 20, 2) * 0.3 + np.array([4.0, 0.0]))
  vague = _probs(rng, 10, 2, s=3) * 0.2 + 0.4  # rows near [0.5, 0.5]
  r = uncertainty.ood_detection(confident, vague)
  assert set(r) == {f"{m}_{k}" for m in ("auroc", "aupr")
                    for k in ("entropy", "mi", "least_confidence")}
  positive = np.r_[np.zeros(20, bool), np.ones(10, bool)]
  for k in ("entropy", "mi", "least_confidence"):
    both = np.r_[uncertainty.ood_scores(confident)[k], uncertainty.ood_scores(vague)[k]]
    np.testing.assert_allclose(r[f"auroc_{k}"], auroc_pairs(list(both), positive), rtol=1e-12)
    np.testing.assert_allclose(r[f"aupr_{k}"], aupr_thresholds(list(both), positive), rtol=1e-12)
  assert r["auroc_entropy"] == 1.0
  # One sample (the dropout approximation): MI is 0 for every input, so it cannot rank them.
  one = uncertainty.ood_detection(confident[:1], vague[:1])
  assert one["auroc_mi"] == 0.5 and one["aupr_mi"] == pytest.approx(10 / 30)


def test_risk_coverage_png(tmp_path):
  rng = np.random.RandomState(9)
  ps, y = _probs(rng, 30, 2, s=5), rng.randint(0, 2, 30)
  path = str(tmp_path / "rc.png")
  plots.risk_coverage(path, {"dropout approx.": ps[0], "MC dropout (5)": ps}, y)
  plots.risk_coverage(str(tmp_path / "rc_mi.png"), {"MC dropout (5)": ps}, y, by="mi")
  for p in (path, str(tmp_path / "rc_mi.png")):
    with open(p, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(ValueError, match="by"):
    plots.risk_coverage(path, {"a": ps}, y, by="variance")


def test_the_figures_data_thinned_is_the_full_curve_at_fewer_points(tmp_path):
  """``plots.risk_coverage_data`` with ``points``: a subset of the full curve's points, one
  at or past each 1/points of coverage, the last (coverage 1) kept, the AURC of the full
  curve; ``reliability_data`` is ``calibration_bins`` with empty bins as None; both draw."""
  rng = np.random.RandomState(3)
  ps, y = _probs(rng, 500, 2, s=4), rng.randint(0, 2, 500)
  full = plots.risk_coverage_data(ps, y)
  thin = plots.risk_coverage_data(ps, y, points=20)
  assert len(full["coverage"]) > 400 and 10 <= len(thin["coverage"]) <= 20
  pairs = set(zip(full["coverage"], full["accuracy"]))
  assert all(p in pairs for p in zip(thin["coverage"], thin["accuracy"]))
  assert thin["coverage"][-1] == 1.0 and thin["aurc"] == full["aurc"]
  correct = ps.mean(0).argmax(-1) == y
  assert full["aurc"] == uncertainty.aurc(uncertainty.ood_scores(ps)["entropy"], correct)
  for g in np.arange(1, 21) / 20:  # the first point at or past each grid step is kept
    first = min(c for c in full["coverage"] if c >= g - 1e-12)
    assert first in thin["coverage"]
  rel = plots.reliability_data(ps.mean(0), y, 15)
  b = uncertainty.calibration_bins(ps.mean(0), y, 15)
  assert rel["count"] == list(b["count"]) and sum(v is None for v in rel["accuracy"]) == sum(
      b["count"] == 0)
  plots.draw_reliability(str(tmp_path / "r.png"), {"a": rel})
  plots.draw_risk_coverage(str(tmp_path / "rc.png"), {"a": thin})
  assert (tmp_path / "r.png").stat().st_size > 1000 and (tmp_path / "rc.png").stat().st_size > 1000


def test_fit_temperature_minimises_the_nll_as_a_fine_grid_does():
  """Labels drawn from softmax(z); the model's logits are 3 z (over-confident): the fitted
  temperature is the NLL minimiser a 6,001-point grid finds, near 3; it never changes the
  predicted class; already calibrated logits give a temperature near 1."""
  rng = np.random.RandomState(0)
  z = rng.randn(2000, 3)
  labels = np.array([rng.choice(3, p=p) for p in uncertainty.softmax(z)])

  def nll_at(logits, t):  # a loop over examples
    return -np.mean([np.log(uncertainty.softmax(logits[i] / t)[labels[i]])
                     for i in range(len(labels))])

  t = uncertainty.fit_temperature(3 * z, labels)
  grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 6001))
  vectorised = [uncertainty.nll(uncertainty.softmax(3 * z / g), labels) for g in grid]
  best = grid[int(np.argmin(vectorised))]
  assert abs(t - best) < 2e-3 * best and 2.7 < t < 3.3
  assert nll_at(3 * z, t) <= nll_at(3 * z, best) + 1e-9
  assert nll_at(3 * z, t) < nll_at(3 * z, 1.0)
  assert (uncertainty.softmax(3 * z / t).argmax(1) == z.argmax(1)).all()
  assert abs(uncertainty.fit_temperature(z, labels) - 1.0) < 0.1


def test_fit_temperature_of_mc_passes_minimises_the_nll_of_their_scaled_mean():
  """MC passes ``[S, N, K]``: the fitted temperature minimises the NLL of the mean over passes
  of ``softmax(logits_s / T)`` (a loop over passes, on a fine grid); one pass is
  the single-pass fit; ``scaled_predictive`` is that mean and its mutual information."""
  rng = np.random.RandomState(1)
  z = rng.randn(600, 3)
  labels = np.array([rng.choice(3, p=p) for p in uncertainty.softmax(z)])
  passes = 0.4 * (z[None] + 2.0 * rng.randn(5, 600, 3))  # weak, disagreeing passes

  def nll_at(t):  # the true label's probability in each pass, then their mean
    p_true = [np.exp(passes[s] / t)[np.arange(600), labels] / np.exp(passes[s] / t).sum(1)
              for s in range(5)]
    return -np.mean(np.log(np.mean(p_true, 0)))

  t = uncertainty.fit_temperature(passes, labels)
  grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 801))
  best = grid[int(np.argmin([nll_at(g) for g in grid]))]
  assert abs(t - best) < 2e-2 * best and t < 1.0  # under-confident passes are sharpened
  assert nll_at(t) <= nll_at(best) + 1e-9 and nll_at(t) < nll_at(1.0)
  assert uncertainty.fit_temperature(passes[:1], labels) == pytest.approx(
      uncertainty.fit_temperature(passes[0], labels), rel=1e-9)
  pred = uncertainty.scaled_predictive(passes, t)
  by_loop = np.mean([uncertainty.softmax(passes[s] / t) for s in range(5)], 0)
  np.testing.assert_allclose(pred["probs"], by_loop, rtol=1e-12)
  np.testing.assert_allclose(pred["mi"], uncertainty.mutual_information(
      np.stack([uncertainty.softmax(passes[s] / t) for s in range(5)])), rtol=1e-12)
