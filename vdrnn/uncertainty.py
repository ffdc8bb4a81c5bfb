"""Predictive summaries of MC-dropout samples (Gal & Ghahramani 2016a, "Dropout as a Bayesian
approximation"; the ModelTest callback of the released code). Pure NumPy, float64.

Regression, ``S`` stochastic forward passes ``yhat [S, N]`` and model precision ``tau``
(the observation-noise precision; the released sentiment scripts pass ``tau=0.1``)::

  mean      = (1/S) sum_s yhat_s
  variance  = (1/S) sum_s yhat_s^2 - mean^2 + 1/tau
  log p(y)  = logsumexp_s(-0.5 tau (y - yhat_s)^2) - log S - 0.5 log(2 pi) + 0.5 log(tau)

The dropout approximation is the ``S = 1`` case with the deterministic output. The variance's
two parts are reported apart: the epistemic spread of the samples and the aleatoric ``1/tau``;
``fit_tau`` gives the ``tau`` that maximises the log density on given (training) points.

Classification, probabilities ``p [S, N, K]`` (softmax of each pass)::

  p(y | x)   = (1/S) sum_s p_s                     predictive probability
  entropy    = H[p(y | x)] = -sum_k p_k log p_k     total uncertainty (nats)
  MI (BALD)  = H[p(y | x)] - (1/S) sum_s H[p_s]     epistemic part (Houlsby et al. 2011)
  ECE        = sum_b (n_b / N) |acc_b - conf_b|     confidence = max_k p_k, equal-width bins
  Brier      = (1/N) sum_n sum_k (p_nk - [y_n = k])^2

Uncertainty benchmarks (IMDB against the dropout approximation and a deep ensemble,
Lakshminarayanan et al. 2017, whose members' probabilities stack into the same ``[S, N, K]``):

* out-of-distribution detection (Hendrycks & Gimpel 2017): a score per input, higher = more
  likely OOD (predictive entropy, mutual information, ``1 - max_k p_k``), summarised by AUROC
  and AUPR with the OOD inputs as the positive class (``ood_scores``, ``auroc``, ``aupr``);
* selective prediction (Geifman & El-Yaniv 2017): predict only on the inputs of lowest
  uncertainty; accuracy / risk against coverage and its area (``risk_coverage``, ``aurc``);
* temperature scaling (Guo et al. 2017), the one-parameter recalibration baseline
  (``fit_temperature``), of one pass's logits or of every MC pass's before their mean.
"""

from __future__ import annotations

import numpy as np

LOG_2PI = float(np.log(2.0 * np.pi))


# ----------------------------------------------------------------------------------------
# Regression.


def rmse(y, pred) -> float:
  y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
  return float(np.sqrt(np.mean((y - pred) ** 2)))


def regression_predictive(samples, tau: float) -> tuple[np.ndarray, np.ndarray]:
  """Predictive mean and standard deviation ``[N]`` from samples ``[S, N]`` (variance of
  the samples, population form, plus the observation noise ``1 / tau``)."""
  s = np.asarray(samples, np.float64)
  return s.mean(0), np.sqrt(s.var(0) + 1.0 / tau)


def gaussian_mc_log_likelihood(y, samples, tau: float) -> np.ndarray:
  """Per-point log predictive density ``[N]`` of the mixture of ``N(yhat_s, 1/tau)``."""
  y, s = np.asarray(y, np.float64), np.asarray(samples, np.float64)
  a = -0.5 * tau * (y[None] - s) ** 2  # [S, N]
  m = a.max(0)
  lse = m + np.log(np.exp(a - m).sum(0))
  return lse - np.log(s.shape[0]) - 0.5 * LOG_2PI + 0.5 * np.log(tau)


def fit_tau(y, samples, lo: float = 1e-3, hi: float = 1e7) -> float:
  """The model precision ``tau`` that maximises the mean log predictive density of ``y`` under
  the samples' mixture (the maximum-likelihood ``tau`` on these points; fitted on training data
  it replaces the released scripts' fixed ``tau = 0.1``, whose ``1 / tau = 10`` dwarfs squared
  errors of about 0.03 in rating units).

  One sample (the dropout approximation): ``1 / mean((y - yhat)^2)`` exactly. Several: the
  maximum over ``log tau`` in ``[log lo, log hi]``, on a grid of 161 points refined by
  golden-section search between the best point's neighbours.
  """
  y, s = np.asarray(y, np.float64), np.asarray(samples, np.float64)
  if s.shape[0] == 1:
    return float(1.0 / max(np.mean((y - s[0]) ** 2), 1.0 / hi))
  return _argmax_log(lambda t: float(gaussian_mc_log_likelihood(y, s, t).mean()), lo, hi)


def _argmax_log(f, lo: float, hi: float) -> float:
  """The ``x`` in ``[lo, hi]`` that maximises ``f(x)``, searched over ``log x``: a grid of 161
  points refined by golden-section search between the best point's neighbours."""
  g = lambda lx: f(float(np.exp(lx)))  # noqa: E731
  grid = np.linspace(np.log(lo), np.log(hi), 161)
  i = int(np.argmax([g(v) for v in grid]))
  a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
  r = (np.sqrt(5.0) - 1.0) / 2.0
  c, d = b - r * (b - a), a + r * (b - a)
  fc, fd = g(c), g(d)
  for _ in range(40):
    if fc >= fd:
      b, d, fd = d, c, fc
      c = b - r * (b - a)
      fc = g(c)
    else:
      a, c, fc = c, d, fd
      d = a + r * (b - a)
      fd = g(d)
  return float(np.exp((a + b) / 2.0))


def regression_summary(y, samples, tau: float) -> dict:
  """``rmse`` of the predictive mean, mean test ``ll``, the mean predictive ``std`` and its
  parts: ``std_epistemic`` (the mean over points of the samples' spread) and
  ``std_aleatoric`` (``sqrt(1 / tau)``, the observation noise)."""
  mean, std = regression_predictive(samples, tau)
  return {"rmse": rmse(y, mean), "ll": float(gaussian_mc_log_likelihood(y, samples, tau).mean()),
          "pred_std": float(std.mean()),
          "std_epistemic": float(np.asarray(samples, np.float64).std(0).mean()),
          "std_aleatoric": float(np.sqrt(1.0 / tau))}


# ----------------------------------------------------------------------------------------
# Classification.


def softmax(logits) -> np.ndarray:
  z = np.asarray(logits, np.float64)
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def entropy(p) -> np.ndarray:
  """``-sum_k p_k log p_k`` over the last axis, in nats (0 log 0 = 0)."""
  p = np.asarray(p, np.float64)
  return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


def mutual_information(probs) -> np.ndarray:
  """BALD ``[N]`` from per-sample probabilities ``[S, N, K]``: H[mean] - mean H."""
  probs = np.asarray(probs, np.float64)
  return entropy(probs.mean(0)) - entropy(probs).mean(0)


def nll(probs, labels) -> float:
  """Mean ``-log p(label)``; probabilities are floored at 1e-12 (a pass certain of the
  wrong class would otherwise give infinity)."""
  p = np.asarray(probs, np.float64)[np.arange(len(labels)), np.asarray(labels)]
  return float(-np.mean(np.log(np.maximum(p, 1e-12))))


def brier(probs, labels) -> float:
  """Multi-class Brier score: the mean over examples of ``sum_k (p_k - [y = k])^2`` (Brier
  1950), from probabilities ``[N, K]`` and labels ``[N]``; 0 is perfect, 2 the worst."""
  p = np.asarray(probs, np.float64)
  onehot = np.eye(p.shape[-1])[np.asarray(labels)]
  return float(np.mean(np.sum((p - onehot) ** 2, axis=-1)))


def accuracy(probs, labels) -> float:
  return float(np.mean(np.argmax(probs, -1) == np.asarray(labels)))


def calibration_bins(probs, labels, n_bins: int = 15) -> dict:
  """Per-bin ``count``, mean ``confidence`` and ``accuracy`` (NaN for empty bins).

  Bin ``b`` holds confidences in ``(b / n, (b + 1) / n]`` (the first bin also holds 0), the
  edges ``b / n`` as floats: a confidence one ulp above an edge is in the bin above it
  (``ceil(conf * n)`` would round it down).
  """
  p = np.asarray(probs, np.float64)
  conf, correct = p.max(-1), (p.argmax(-1) == np.asarray(labels)).astype(np.float64)
  edges = np.arange(n_bins + 1) / n_bins
  idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
  count = np.bincount(idx, minlength=n_bins).astype(np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean_conf = np.bincount(idx, conf, n_bins) / count
    mean_acc = np.bincount(idx, correct, n_bins) / count
  return {"count": count, "confidence": mean_conf, "accuracy": mean_acc, "edges": edges}


def ece(probs, labels, n_bins: int = 15) -> float:
  b = calibration_bins(probs, labels, n_bins)
  keep = b["count"] > 0
  return float(
      np.sum(b["count"][keep] / b["count"].sum() *
             np.abs(b["accuracy"][keep] - b["confidence"][keep])))


def fit_temperature(logits, labels, lo: float = 0.05, hi: float = 20.0) -> float:
  """Temperature scaling (Guo et al. 2017): the ``T`` in ``[lo, hi]`` that minimises the mean
  NLL of ``softmax(logits / T)`` on held-out points (``logits [N, K]``, ``labels [N]``); one
  scalar, so the predicted class never changes, only the confidence.

  With MC samples, ``logits [S, N, K]``: the NLL of ``predictive(softmax(logits / T))``, each
  pass's logits divided by ``T`` before the mean over passes (as ``scaled_predictive``). The
  mean's predicted class can then change with ``T``."""
  z = np.asarray(logits, np.float64)
  if z.ndim == 2:
    return _argmax_log(lambda t: -nll(softmax(z / t), labels), lo, hi)
  return _argmax_log(lambda t: -nll(softmax(z / t).mean(0), labels), lo, hi)


def scaled_predictive(logits, temperature: float) -> dict:
  """``predictive`` of MC passes' logits ``[S, N, K]`` each divided by ``temperature``."""
  return predictive(softmax(np.asarray(logits, np.float64) / temperature))


def predictive(probs) -> dict:
  """``{"probs": [N, K], "mi": [N]}`` from per-pass probabilities ``[S, N, K]``: the predictive
  probability ``(1/S) sum_s p_s`` and the mutual information (0 when ``S = 1``). Every metric
  below is a function of these two arrays (``summary``, ``ood_scores``), which is what a
  workdir's ``predictions_*.npz`` holds."""
  ps = np.asarray(probs, np.float64)
  return {"probs": ps.mean(0), "mi": mutual_information(ps)}


def ensemble(members: list) -> dict:
  """``predictive`` of a deep ensemble (Lakshminarayanan et al. 2017) from its members'
  ``{"probs" [N, K], "mi" [N]}`` (each a single pass, ``mi = 0``, or MC dropout's mean over its
  own S samples): the mean over members, and the mutual information over all member x sample
  passes, ``H[mean] - mean_m (H[probs_m] - mi_m)`` (each member's mean entropy of its passes is
  ``H[probs_m] - mi_m``), exact when every member has the same number of passes."""
  p = np.stack([np.asarray(m["probs"], np.float64) for m in members])
  within = np.stack([entropy(m["probs"]) - np.asarray(m["mi"], np.float64) for m in members])
  mean = p.mean(0)
  return {"probs": mean, "mi": entropy(mean) - within.mean(0)}


def summary(pred: dict, labels, n_bins: int = 15) -> dict:
  """Metrics of a predictive distribution ``pred`` (``predictive``): accuracy, nll, brier,
  ece, and means of the predictive entropy and the mutual information, over all points and
  over correct / wrong predictions."""
  p, mi = pred["probs"], np.asarray(pred["mi"], np.float64)
  h = entropy(p)
  right = np.argmax(p, -1) == np.asarray(labels)

  def mean(v, m):
    return float(v[m].mean()) if m.any() else float("nan")

  return {
      "acc": accuracy(p, labels),
      "nll": nll(p, labels),
      "brier": brier(p, labels),
      "ece": ece(p, labels, n_bins),
      "entropy": float(h.mean()),
      "entropy_correct": mean(h, right),
      "entropy_wrong": mean(h, ~right),
      "mi": float(mi.mean()),
      "mi_correct": mean(mi, right),
      "mi_wrong": mean(mi, ~right)
  }


def classification_summary(probs_samples, labels, n_bins: int = 15) -> dict:
  """``summary`` of ``[S, N, K]`` probabilities (S = 1: the dropout approximation)."""
  return summary(predictive(probs_samples), labels, n_bins)


# ----------------------------------------------------------------------------------------
# Out-of-distribution detection and selective prediction.


def ood_scores(probs) -> dict:
  """Per-input scores ``[N]``, higher = more likely out-of-distribution (Hendrycks & Gimpel
  2017's baseline and its Bayesian refinements), from probabilities ``[S, N, K]`` or a
  ``predictive`` dict:

  * ``entropy``: the predictive entropy ``H[(1/S) sum_s p_s]`` (total uncertainty);
  * ``mi``: the mutual information (``mutual_information``; epistemic, 0 when ``S = 1``);
  * ``least_confidence``: ``1 - max_k p_k`` of the predictive probability (Hendrycks &
    Gimpel's maximum softmax probability, reversed so that higher = more likely OOD).
  """
  pred = probs if isinstance(probs, dict) else predictive(probs)
  p = np.asarray(pred["probs"], np.float64)
  return {"entropy": entropy(p), "mi": np.asarray(pred["mi"], np.float64),
          "least_confidence": 1.0 - p.max(-1)}


def _scores_and_labels(scores, positive) -> tuple[np.ndarray, np.ndarray]:
  s, y = np.asarray(scores, np.float64), np.asarray(positive)
  if s.ndim != 1 or s.shape != y.shape:
    raise ValueError(f"scores and positive must be [N] alike, got {s.shape} and {y.shape}")
  if np.isnan(s).any():
    raise ValueError("scores contain NaN")
  if not np.isin(y, (0, 1)).all():
    raise ValueError("positive must be 0 / 1 (or bool)")
  y = y.astype(bool)
  if y.all() or not y.any():
    raise ValueError("AUROC / AUPR need at least one positive and one negative example")
  return s, y


def _midranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks ``[N]`` of ``x`` ascending, tied values sharing their mean rank."""
  order = np.argsort(x, kind="stable")
  xs = x[order]
  new = np.r_[True, xs[1:] != xs[:-1]]  # first position of each run of equal values
  starts = np.flatnonzero(new)
  ends = np.r_[starts[1:], len(x)]
  ranks = np.empty(len(x))
  ranks[order] = ((starts + 1 + ends) / 2.0)[np.cumsum(new) - 1]
  return ranks


def auroc(scores, positive) -> float:
  """Area under the ROC curve of ``scores [N]`` (higher = positive) for the labels
  ``positive [N]`` (bool; for OOD detection, True = out-of-distribution): the probability
  that a random positive scores above a random negative, ties counting 1/2 (the
  Mann-Whitney U statistic over ``P * Q`` pairs, from mid-ranks; ``O(N log N)``)."""
  s, y = _scores_and_labels(scores, positive)
  n_pos, n_neg = int(y.sum()), int((~y).sum())
  r = _midranks(s)
  return float((r[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def aupr(scores, positive) -> float:
  """Area under the precision-recall curve of ``scores [N]`` (higher = positive) for the
  labels ``positive [N]`` (for OOD detection, True = out-of-distribution), as average
  precision (scikit-learn's step-wise ``average_precision_score``): with the distinct scores
  ``t_1 > t_2 > ...`` as thresholds (predict positive when ``score >= t_j``),

    AP = sum_j (R_j - R_{j-1}) P_j,    R_0 = 0,

  ``P_j`` and ``R_j`` the precision and recall at ``t_j``. No interpolation; its chance level
  is the share of positives."""
  s, y = _scores_and_labels(scores, positive)
  order = np.argsort(-s, kind="stable")
  ss, ys = s[order], y[order]
  last = np.r_[ss[1:] != ss[:-1], True]  # last position of each run of equal scores
  tp = np.cumsum(ys)[last]
  precision = tp / (np.flatnonzero(last) + 1)
  recall = tp / ys.sum()
  return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def ood_detection(probs_in, probs_out) -> dict:
  """``auroc_<score>`` and ``aupr_<score>`` (``ood_scores``' scores; positive = OOD) of
  in-distribution ``[S, N, K]`` against out-of-distribution ``[S, M, K]`` probabilities (or
  ``predictive`` dicts of each)."""
  s_in, s_out = ood_scores(probs_in), ood_scores(probs_out)
  positive = np.r_[np.zeros(len(s_in["entropy"]), bool), np.ones(len(s_out["entropy"]), bool)]
  out = {}
  for k in s_in:
    both = np.r_[s_in[k], s_out[k]]
    out[f"auroc_{k}"], out[f"aupr_{k}"] = auroc(both, positive), aupr(both, positive)
  return out


def risk_coverage(uncertainty, correct) -> dict:
  """The risk-coverage curve of selective prediction (Geifman & El-Yaniv 2017): predict only
  on the inputs whose ``uncertainty [N]`` is at most a threshold, abstain on the rest.

  At each distinct uncertainty ``t_1 < t_2 < ... < t_M`` (``threshold [M]``), accepting the
  ``n_j`` inputs with ``uncertainty <= t_j``: ``coverage_j = n_j / N``, ``accuracy_j`` the
  share of ``correct [N]`` among them and ``risk_j = 1 - accuracy_j``. Tied inputs enter
  together, so the curve does not depend on the order of ties; the last point is the full
  set (coverage 1, the plain accuracy).
  """
  u, c = np.asarray(uncertainty, np.float64), np.asarray(correct, np.float64)
  if u.ndim != 1 or u.shape != c.shape or not len(u):
    raise ValueError(f"uncertainty and correct must be [N] alike, got {u.shape} and {c.shape}")
  order = np.argsort(u, kind="stable")
  us = u[order]
  last = np.r_[us[1:] != us[:-1], True]
  n = np.flatnonzero(last) + 1
  acc = np.cumsum(c[order])[last] / n
  return {"threshold": us[last], "coverage": n / len(u), "accuracy": acc, "risk": 1.0 - acc}


def aurc(uncertainty, correct) -> float:
  """Area under the risk-coverage curve (``risk_coverage``), step-wise:

    AURC = sum_j (coverage_j - coverage_{j-1}) risk_j,    coverage_0 = 0,

  i.e. without ties the mean over ``k = 1..N`` of the risk on the ``k`` least uncertain
  inputs (Geifman, Uziel & El-Yaniv 2019's AURC); a tied group counts at the risk it has once
  all of it is accepted. Lower is better; a constant uncertainty gives the plain error rate.
  """
  rc = risk_coverage(uncertainty, correct)
  return float(np.sum(np.diff(rc["coverage"], prepend=0.0) * rc["risk"]))
