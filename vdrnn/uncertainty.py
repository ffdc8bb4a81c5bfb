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
  f = lambda lt: float(gaussian_mc_log_likelihood(y, s, float(np.exp(lt))).mean())  # noqa: E731
  grid = np.linspace(np.log(lo), np.log(hi), 161)
  i = int(np.argmax([f(g) for g in grid]))
  a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
  r = (np.sqrt(5.0) - 1.0) / 2.0
  c, d = b - r * (b - a), a + r * (b - a)
  fc, fd = f(c), f(d)
  for _ in range(40):
    if fc >= fd:
      b, d, fd = d, c, fc
      c = b - r * (b - a)
      fc = f(c)
    else:
      a, c, fc = c, d, fd
      d = a + r * (b - a)
      fd = f(d)
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


def accuracy(probs, labels) -> float:
  return float(np.mean(np.argmax(probs, -1) == np.asarray(labels)))


def calibration_bins(probs, labels, n_bins: int = 15) -> dict:
  """Per-bin ``count``, mean ``confidence`` and ``accuracy`` (NaN for empty bins).

  Bin ``b`` holds confidences in ``(b / n, (b + 1) / n]`` (the first bin also holds 0).
  """
  p = np.asarray(probs, np.float64)
  conf, correct = p.max(-1), (p.argmax(-1) == np.asarray(labels)).astype(np.float64)
  idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
  count = np.bincount(idx, minlength=n_bins).astype(np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean_conf = np.bincount(idx, conf, n_bins) / count
    mean_acc = np.bincount(idx, correct, n_bins) / count
  return {"count": count, "confidence": mean_conf, "accuracy": mean_acc,
          "edges": np.linspace(0.0, 1.0, n_bins + 1)}


def ece(probs, labels, n_bins: int = 15) -> float:
  b = calibration_bins(probs, labels, n_bins)
  keep = b["count"] > 0
  return float(
      np.sum(b["count"][keep] / b["count"].sum() *
             np.abs(b["accuracy"][keep] - b["confidence"][keep])))


def classification_summary(probs_samples, labels, n_bins: int = 15) -> dict:
  """Metrics of the predictive distribution from ``[S, N, K]`` probabilities (S = 1: the
  dropout approximation): accuracy, nll, ece, and means of the predictive entropy and the
  mutual information, over all points and over correct / wrong predictions."""
  ps = np.asarray(probs_samples, np.float64)
  p = ps.mean(0)
  h, mi = entropy(p), mutual_information(ps)
  right = np.argmax(p, -1) == np.asarray(labels)

  def mean(v, m):
    return float(v[m].mean()) if m.any() else float("nan")

  return {
      "acc": accuracy(p, labels),
      "nll": nll(p, labels),
      "ece": ece(p, labels, n_bins),
      "entropy": float(h.mean()),
      "entropy_correct": mean(h, right),
      "entropy_wrong": mean(h, ~right),
      "mi": float(mi.mean()),
      "mi_correct": mean(mi, right),
      "mi_wrong": mean(mi, ~right)
  }
