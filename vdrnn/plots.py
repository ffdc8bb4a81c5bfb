"""Figures (PNG, matplotlib's Agg backend): MC perplexity against samples, learning curves,
reliability diagrams, risk-coverage curves."""

from __future__ import annotations

from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
from matplotlib import ticker  # noqa: E402

import numpy as np  # noqa: E402

from vdrnn import uncertainty  # noqa: E402


def mc_curve(path: str, result: dict, ppl_k: np.ndarray) -> None:
  """MC-dropout perplexity after k = 1..S samples (log x axis) beside the dropout
  approximation's (``result`` from ``vdrnn.lm_eval.mc_lm``)."""
  fig, ax = plt.subplots(figsize=(6, 4))
  k = np.arange(1, len(ppl_k) + 1)
  ax.plot(k, ppl_k, label=f"MC dropout ({len(ppl_k)} samples: {ppl_k[-1]:.2f})")
  ax.axhline(result["det_ppl"],
             color="k",
             ls="--",
             lw=1,
             label=f"dropout approximation ({result['det_ppl']:.2f})")
  if "det_ppl_temperature" in result:
    ax.axhline(
        result["det_ppl_temperature"],
        color="k",
        ls=":",
        lw=1,
        label=
        f"dropout approximation at T={result['temperature']:g} "
        f"({result['det_ppl_temperature']:.2f})"
    )
  ax.set_xscale("log")
  ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
  ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
  ax.xaxis.set_minor_formatter(ticker.NullFormatter())
  ax.set_xlabel("MC samples")
  ax.set_ylabel(f"{result['split']} perplexity")
  ax.set_title(f"T={result['temperature']:g}, rate x{result['rate_multiplier']:g}, "
               f"embedding dropout {'on' if result['emb_dropout'] else 'off'}", fontsize=9)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def learning_curve(path: str,
                   history: list[dict],
                   metric: str,
                   final: Optional[dict] = None) -> None:
  """PNG of the per-epoch ``metric`` (``rmse``: RMSE in rating units, or ``acc``: accuracy) on
  every split; the end-of-training MC-dropout test value (``final``) as a star at the last
  epoch."""
  fig, ax = plt.subplots(figsize=(6, 4))
  epochs = [r["epoch"] for r in history]
  for key, label, style in ((f"train_running_{metric}", "train (running, with dropout)",
                             ":"), (f"train_{metric}", "train subset", "-"),
                            (f"valid_{metric}", "valid", "-"), (f"test_{metric}", "test", "-"),
                            (f"test_{metric}_mc", "test, MC dropout", "--")):
    pts = [(e, r[key]) for e, r in zip(epochs, history) if r.get(key) is not None]
    if pts:
      ax.plot(*zip(*pts), style, marker="o" if len(pts) < 30 else None, ms=3, label=label)
  if final and final.get(f"test_{metric}_mc") is not None and epochs:
    ax.plot([epochs[-1]], [final[f"test_{metric}_mc"]], "k*", ms=9,
            label=f"test, MC dropout ({final.get('mc_samples')} samples), end")
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  ax.set_xlabel("epoch")
  ax.set_ylabel({"rmse": "RMSE (rating units)", "acc": "accuracy"}.get(metric, metric))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def learned_rates(path: str, history: list[dict]) -> None:
  """PNG of concrete dropout's learned rates (the epoch records' ``rate_*`` keys) by epoch."""
  keys = sorted({k for r in history for k in r if k.startswith("rate_")})
  if not keys:
    return
  fig, ax = plt.subplots(figsize=(6, 4))
  for k in keys:
    pts = [(r["epoch"], r[k]) for r in history if k in r]
    ax.plot(*zip(*pts), marker="o" if len(pts) < 30 else None, ms=3, label=k[len("rate_"):])
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  ax.set_xlabel("epoch")
  ax.set_ylabel("learned dropout rate")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _listed(a) -> list:
  """``a`` as a JSON-able list of floats, NaN as None."""
  return [None if np.isnan(v) else float(v) for v in np.asarray(a, np.float64)]


def reliability_data(probs, labels, n_bins: int = 15) -> dict:
  """What ``reliability_diagram`` draws for one predictive ``probs [N, K]``, as JSON-able
  lists (empty bins None): ``confidence``, ``accuracy``, ``count`` per bin
  (``uncertainty.calibration_bins``) and the ``ece``."""
  b = uncertainty.calibration_bins(probs, labels, n_bins)
  return {"confidence": _listed(b["confidence"]), "accuracy": _listed(b["accuracy"]),
          "count": _listed(b["count"]), "ece": float(uncertainty.ece(probs, labels, n_bins))}


def risk_coverage_data(probs, labels, by: str = "entropy", points: Optional[int] = None) -> dict:
  """What ``risk_coverage`` draws for one predictive ``probs [N, K]`` or ``[S, N, K]``, as
  JSON-able lists: ``coverage`` and ``accuracy`` of ``uncertainty.risk_coverage`` (inputs
  accepted in order of ``by``) and the ``aurc`` of the full curve. ``points``: keep at most
  about that many points, the first at or beyond each multiple of ``1 / points`` of coverage
  (the last, coverage 1, always), enough to draw the curve without its ``N`` points."""
  ps = np.asarray(probs, np.float64)
  ps = ps[None] if ps.ndim == 2 else ps
  scores = uncertainty.ood_scores(ps)
  if by not in scores:
    raise ValueError(f"by must be one of {sorted(scores)}, got {by!r}")
  correct = ps.mean(0).argmax(-1) == np.asarray(labels)
  rc = uncertainty.risk_coverage(scores[by], correct)
  keep = np.arange(len(rc["coverage"]))
  if points is not None and len(keep) > points:
    grid = np.arange(1, points + 1) / points
    keep = np.unique(np.minimum(np.searchsorted(rc["coverage"], grid - 1e-12), len(keep) - 1))
  return {"coverage": _listed(rc["coverage"][keep]), "accuracy": _listed(rc["accuracy"][keep]),
          "aurc": float(uncertainty.aurc(scores[by], correct))}


def reliability_diagram(path: str, curves: dict, labels, n_bins: int = 15) -> None:
  """Writes a PNG: accuracy against confidence per bin for each ``name -> probs [N, K]``
  in ``curves`` (e.g. dropout approximation and MC), with the diagonal and ECE in the legend,
  and the share of points per bin below."""
  draw_reliability(path, {name: reliability_data(p, labels, n_bins) for name, p in curves.items()})


def draw_reliability(path: str, data: dict) -> None:
  """``reliability_diagram`` from each ``name -> reliability_data(...)`` in ``data``."""
  fig, (ax, hx) = plt.subplots(2,
                               1,
                               figsize=(5, 6),
                               sharex=True,
                               gridspec_kw={"height_ratios": [3, 1]})
  ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
  for i, (name, d) in enumerate(data.items()):
    conf, acc, count = (np.array(d[k], np.float64) for k in ("confidence", "accuracy", "count"))
    width = 1.0 / len(count)
    keep = count > 0
    centers = (np.arange(len(count)) + 0.5) * width
    ax.plot(conf[keep], acc[keep], "o-", label=f"{name} (ECE {d['ece']:.3f})")
    off = (i - (len(data) - 1) / 2) * width / max(len(data), 1)
    hx.bar(centers + off, count / count.sum(), width=width / max(len(data), 1), label=name)
  ax.set_ylabel("accuracy")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.legend(loc="upper left", fontsize=8)
  ax.set_title("reliability diagram")
  hx.set_xlabel("confidence (max predictive probability)")
  hx.set_ylabel("share")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def risk_coverage(path: str, curves: dict, labels, by: str = "entropy") -> None:
  """Writes a PNG: accuracy against coverage of selective prediction (Geifman & El-Yaniv
  2017; ``uncertainty.risk_coverage``) for each ``name -> probs`` in ``curves``, ``[N, K]`` or
  ``[S, N, K]`` (MC samples or ensemble members; ``[N, K]`` is one sample), the inputs
  accepted in order of ``by`` (``uncertainty.ood_scores``: ``entropy``, ``mi`` or
  ``least_confidence``), with the AURC in the legend."""
  draw_risk_coverage(path, {name: risk_coverage_data(p, labels, by) for name, p in curves.items()},
                     by)


def draw_risk_coverage(path: str, data: dict, by: str = "entropy") -> None:
  """``risk_coverage`` from each ``name -> risk_coverage_data(...)`` in ``data``."""
  fig, ax = plt.subplots(figsize=(5, 4))
  for name, d in data.items():
    ax.step(np.r_[0.0, d["coverage"]], np.r_[d["accuracy"][0], d["accuracy"]], where="pre",
            label=f"{name} (AURC {d['aurc']:.4f})")
  ax.set_xlim(0, 1)
  ax.set_xlabel("coverage (share of inputs predicted)")
  ax.set_ylabel("accuracy on the inputs predicted")
  ax.set_title(f"risk-coverage, least uncertain first (by {by})", fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(loc="lower left", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
