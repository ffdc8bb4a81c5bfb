"""``python -m launch.check_predictions``: the IMDB table's accuracy, NLL and ECE, recomputed
from each row's saved per-example predictions (issue 28: "the table's numbers come from exactly
these arrays").

  python -m launch.check_predictions --workdir_root /path/to/reproduce [--tol 1e-6]

For every IMDB row that is done in ``--results_dir``'s ``results.json`` (what
``README_table.md`` shows), it loads ``<workdir_root>/<row>/predictions_test.npz`` (a deep
ensemble: every member's, ``member_XX/``, averaged over members) and recomputes, for each mode
it has (dropout approximation ``probs``, MC dropout ``probs_mc``, temperature-scaled
``probs_ts`` and ``probs_mc_ts``; those added since a row ran from its re-evaluation,
``collect.reevaluation``), the accuracy, the mean NLL of the true label and the ECE
(equal-width bins of the top-label confidence, ``(lo, hi]``, the config's ``eval.ece_bins``)
directly in NumPy, without vdrnn's metric code. It prints one line per row and mode with the
largest difference, and exits 1 if any exceeds ``--tol``; a row whose arrays are missing is
named and counts as a failure.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags

from launch.collect import saved_test_predictions
from launch.rows import ROWS
from vdrnn.errors import UserError, run_main

MODES = (("", "probs"), ("_mc", "probs_mc"), ("_ts", "probs_ts"), ("_mc_ts", "probs_mc_ts"))
METRICS = ("acc", "nll", "ece")


def accuracy_nll_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> dict:
  """``probs [N, K]`` and ``labels [N]``: accuracy, mean NLL and ECE (a sum over the bins)."""
  p = np.asarray(probs, np.float64)
  conf, pred, n = p.max(1), p.argmax(1), len(labels)
  ece = 0.0
  for b in range(n_bins):
    inside = (conf > b / n_bins) & (conf <= (b + 1) / n_bins)
    if b == 0:
      inside |= conf == 0
    if inside.any():
      ece += inside.sum() / n * abs(np.mean(pred[inside] == labels[inside]) - conf[inside].mean())
  return {"acc": float(np.mean(pred == labels)),
          "nll": float(-np.mean(np.log(p[np.arange(n), labels]))), "ece": float(ece)}


def check(results_dir: str, workdir_root: str, tol: float) -> int:
  path = os.path.join(results_dir, "results.json")
  if not os.path.exists(path):
    raise UserError(f"no {path}: run python -m launch.reproduce --report first")
  with open(path) as f:
    records = {r["row"]: r for r in json.load(f)["rows"]}
  failed, checked = [], 0
  for row in (r for r in ROWS if r.task == "imdb"):
    rec = records.get(row.name)
    if rec is None or rec["status"] != "done":
      print(f"{row.name}: {rec['status'] if rec else 'not in results.json'}; nothing to check")
      continue
    workdir = os.path.join(workdir_root, row.name)
    try:
      pred = saved_test_predictions(workdir, rec.get("members", 0))
      with open(os.path.join(workdir, "config.json")) as f:
        n_bins = json.load(f)["eval"]["ece_bins"]
    except (OSError, KeyError, ValueError) as e:
      print(f"{row.name}: cannot read its predictions ({e})")
      failed.append(row.name)
      continue
    for suffix, key in MODES:
      if key not in pred:
        continue
      ours = accuracy_nll_ece(pred[key], pred["labels"], n_bins)
      table = {m: rec["results"].get(f"test_{m}{suffix}") for m in METRICS}
      diff = max(abs(ours[m] - table[m]) if table[m] is not None else np.inf for m in METRICS)
      checked += 1
      print(f"{row.name} {key}: " + ", ".join(
          f"{m} {table[m]} / {ours[m]:.10g}" for m in METRICS) + f"; max |diff| {diff:.2e}")
      if not diff <= tol:
        failed.append(f"{row.name} {key}")
  print(f"{checked} row-modes checked, {len(failed)} beyond {tol:g}" +
        (f": {', '.join(failed)}" if failed else ""))
  return 1 if failed else 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  run_main(lambda: sys.exit(check(flags.FLAGS.results_dir, flags.FLAGS.workdir_root,
                                   flags.FLAGS.tol)))


if __name__ == "__main__":
  flags.DEFINE_string("workdir_root", "workdirs/reproduce", "Row <name> ran in <root>/<name>.")
  flags.DEFINE_string("results_dir", "launch/results", "Where results.json (the table) is.")
  flags.DEFINE_float("tol", 1e-6, "Largest allowed |table - recomputed|.")
  app.run(main)
