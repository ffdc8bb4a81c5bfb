"""Collecting a row's workdir into one record: status, numbers, epochs, seed, device, wall time,
the command (portable: no path of the machine it ran on), the per-epoch curve and the MC curve;
and merging those records with the committed ones (``merge``).

A workdir holds ``results.json``, ``config.json``, ``metrics.jsonl``, ``run_info.json`` (written
by ``launch/run_row.py``) and, after MC evaluation, ``mc_test.json``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from typing import Optional

from launch.rows import DEFAULT_ROOT, Row
from launch.running import command

MC_CURVE_SAMPLES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)  # the MC curve table's columns

# Sentiment metrics a row's results may lack (runs from before they existed): taken from the
# final checkpoint's re-evaluation, ``python -m vdrnn.evaluate --workdir W``
# (eval_latest_test.json).
REEVALUATED = ("test_ll_fit", "test_tau_fit", "test_ll_fit_mc", "test_tau_fit_mc",
               "test_std_epistemic_mc", "test_std_aleatoric_mc", "test_std_aleatoric_fit_mc")


def reevaluation(workdir: str, res: Optional[dict], checkpoint: str) -> Optional[dict]:
  """``workdir``'s re-evaluation of checkpoint ``checkpoint`` on the test set, ``python -m
  vdrnn.evaluate --workdir W --checkpoint <checkpoint>`` (``eval_<checkpoint>_test.json``, beside
  ``predictions_<checkpoint>_test.npz``), when it evaluated the step ``results.json`` (``res``)
  reports; else None. A row's results take from it what they lack: a sentiment row the
  ``REEVALUATED`` metrics, an IMDB row the modes added since it ran (such as ``_mc_ts``), and
  its predictions the arrays of those modes."""
  again = read_json(os.path.join(workdir, f"eval_{checkpoint}_test.json"))
  if res is None or again is None or again.get("step") != res.get("step"):
    return None
  return again


def read_json(path: str):
  """The JSON file at ``path``; None when there is none."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _history(workdir: str) -> list[dict]:
  """The per-epoch records of ``metrics.jsonl`` (the last record of each epoch)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  by_epoch = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        r = json.loads(line)
        if r.get("event") == "epoch":
          by_epoch[r["epoch"]] = r
  return [by_epoch[e] for e in sorted(by_epoch)]


def portable(cmd: str) -> str:
  """``cmd`` with its ``--workdir`` (``--workdir W`` or ``--workdir=W``) under the default root
  (``workdirs/reproduce/<row>``): the command as anyone runs it from a checkout, not the path of
  the machine it ran on. The report writes every command through it."""
  def under_root(workdir):
    return os.path.join(DEFAULT_ROOT, os.path.basename(os.path.normpath(workdir)))

  argv = shlex.split(cmd)
  for i, arg in enumerate(argv):
    if arg == "--workdir" and i + 1 < len(argv):
      argv[i + 1] = under_root(argv[i + 1])
    elif arg.startswith("--workdir="):
      argv[i] = "--workdir=" + under_root(arg.partition("=")[2])
  return shlex.join(argv)


GPU_FLOAT32 = "float32 (TF32 matmuls)"  # XLA's default precision for float32 dots on the GPU


def with_precision(rec: dict) -> dict:
  """``rec`` with its device followed by the matmul precision it ran in (``train.compute_dtype``
  from its command; float32 when the command does not set it, as every base config does), e.g.
  "NVIDIA H200 (gpu), bfloat16". On a GPU, float32 runs at XLA's default precision, whose
  matmuls round their operands to TF32 on NVIDIA GPUs since Ampere (the JAX docs' "Matmul
  precision"): its label says so."""
  if not rec.get("device") or rec["device"].endswith(("float32", "bfloat16", GPU_FLOAT32)):
    return rec
  m = re.search(r"--config\.train\.compute_dtype[= ](\w+)", rec.get("command") or "")
  dtype = m.group(1) if m else "float32"
  if dtype == "float32" and "(gpu)" in rec["device"]:
    dtype = GPU_FLOAT32
  return {**rec, "device": f"{rec['device']}, {dtype}"}


def collect(row: Row, root: str, extra: list[str]) -> dict:
  """The row's record: status, numbers, epochs, seed, device, wall time, command, curves.

  A row that ran shows the command it ran with; one that did not, the command that runs it
  in the default workdir root (what a reader would type), whatever ``root`` the report reads."""
  workdir = os.path.join(root, row.name)
  rec = {"row": row.name, "family": row.family, "task": row.task, "config": row.config,
         "overrides": [f"--config.{p}={v}" for p, v in row.overrides], "note": row.note,
         "status": "not run", "command": command(row, DEFAULT_ROOT, extra), "device": None,
         "wall_s": None,
         "epochs": None, "seed": None, "results": None, "curve": []}
  if not os.path.isdir(workdir):
    return rec
  info = read_json(os.path.join(workdir, "run_info.json")) or {"sessions": []}
  cfg = read_json(os.path.join(workdir, "config.json")) or {}
  res = read_json(os.path.join(workdir, "results.json"))
  if res is not None and row.task == "sentiment":  # the final checkpoint re-evaluated since
    again = reevaluation(workdir, res, "latest") or {}
    res = {**{k: v for k, v in again.items() if k in REEVALUATED}, **res}
  if res is not None and row.task == "imdb" and "members" not in res:
    again = reevaluation(workdir, res, res.get("checkpoint", "best")) or {}
    res = {**{k: v for k, v in again.items() if k.startswith("test_") and k not in res}, **res}
  hist = _history(workdir)
  sessions = info.get("sessions", [])
  if sessions:
    rec["command"] = portable(sessions[-1]["command"])
    rec["device"] = sessions[-1]["device"]
    ended = [s["end"] - s["start"] for s in sessions if s.get("end")]
    rec["wall_s"] = sum(ended) if ended else None
  if hist:  # an interrupted session has no end: its epochs' own times still count
    epochs_s = sum(h.get("time_s", 0.0) + h.get("eval_time_s", 0.0) for h in hist)
    rec["wall_s"] = max(rec["wall_s"] or 0.0, epochs_s)
  num_epochs = cfg.get("train", {}).get("num_epochs")
  rec["seed"] = cfg.get("seed")
  keys = {"sentiment": ("epoch", "test_rmse", "test_rmse_mc", "train_rmse", "train_running_rmse"),
          "imdb": ("epoch", "valid_acc", "valid_nll", "test_acc", "test_nll")}.get(
              row.task, ("epoch", "train_ppl", "valid_ppl", "valid_ppl_lua"))
  rec["curve"] = [{k: h.get(k) for k in keys if isinstance(h.get(k), (int, float))}
                  for h in hist]  # a population's lists (one value per member) left out
  if res is not None and hist and len(hist) > res.get("epochs", len(hist)):
    res = None  # results.json of the shorter run this one extends: not this run's end
  mc = read_json(os.path.join(workdir, "mc_test.json"))
  if res is not None and mc and res.get("mc_samples") == len(mc.get("ppl_by_samples", [])):
    by = mc["ppl_by_samples"]  # MC test perplexity with the first k samples, k = 1..K
    rec["mc_curve"] = {k: by[k - 1] for k in MC_CURVE_SAMPLES if k <= len(by)}
    rec["mc_curve"].setdefault(len(by), by[-1])
  if res is not None and "members" in res:  # a population: its members' or ensemble's results
    rec["members"] = len(res["members"])
    res = res.get("ensemble", {})
  if res is not None:
    rec["status"] = "done"
    rec["epochs"] = num_epochs
    rec["results"] = {k: v for k, v in res.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if row.task == "imdb":
      rec["figures"] = imdb_figure_data(workdir, row.name, rec.get("members", 0))
  elif hist or sessions:
    rec["status"] = f"partial ({len(hist)}/{num_epochs} epochs)" if num_epochs else "partial"
    rec["epochs"] = len(hist)
  return rec


def saved_test_predictions(workdir: str, members: int = 0) -> dict:
  """A row's saved ``predictions_test.npz`` as a dict (``labels``, ``probs``, ``probs_mc``, ...)
  with the arrays it lacks from the re-evaluation of the same checkpoint (``reevaluation``);
  a population's (``members`` > 0) from every ``member_XX/``, each array but the labels
  averaged over the members (the deep ensemble's predictive). A missing file raises
  ``OSError``."""
  import numpy as np  # noqa: PLC0415
  from vdrnn import population  # noqa: PLC0415
  if not members:
    pred = dict(np.load(os.path.join(workdir, "predictions_test.npz")))
    res = read_json(os.path.join(workdir, "results.json"))
    checkpoint = (res or {}).get("checkpoint", "best")
    if reevaluation(workdir, res, checkpoint):
      again = np.load(os.path.join(workdir, f"predictions_{checkpoint}_test.npz"))
      pred.update({k: again[k] for k in again.files if k not in pred})
    return pred
  preds = [dict(np.load(os.path.join(workdir, population.member_name(k), "predictions_test.npz")))
           for k in range(members)]
  common = set.intersection(*(set(p) for p in preds)) - {"labels"}
  return {"labels": preds[0]["labels"],
          **{key: np.mean([p[key] for p in preds], axis=0) for key in sorted(common)}}


FIGURE_POINTS = 200  # risk-coverage points a record keeps for the report's figure


def imdb_figure_data(workdir: str, name: str, members: int = 0) -> Optional[dict]:
  """What the report's IMDB figures draw for a row, from its saved test predictions (MC
  dropout where it ran, else the dropout approximation; a population's members' mean):
  ``{"label", "reliability", "risk_coverage"}`` (``plots.reliability_data``, 15 bins as the
  table's ECE; ``plots.risk_coverage_data``, by entropy). Kept in the row's record, so the
  figures are drawn again from the committed results when the workdirs are gone; None when
  the workdir has no predictions."""
  from vdrnn import plots  # noqa: PLC0415
  try:
    pred = saved_test_predictions(workdir, members)
  except OSError:
    return None
  mc = not members and "probs_mc" in pred
  probs = pred["probs_mc" if mc else "probs"]
  return {"label": name + (" (MC)" if mc else ""),
          "reliability": plots.reliability_data(probs, pred["labels"], 15),
          "risk_coverage": plots.risk_coverage_data(probs, pred["labels"],
                                                    points=FIGURE_POINTS)}


def merge(collected: list[dict], committed: Optional[dict]) -> list[dict]:
  """Each row's record from its workdir, or the committed one when the workdir has no result
  and the committed record does, or has more epochs of an unfinished run (a row restarted on
  another machine, or a fresh clone's empty root, does not erase what was run elsewhere until
  it gets further); with the row's grouping, ``family``, ``task`` and ``note``, as
  ``launch/rows.py`` defines it now."""
  old = {r["row"]: r for r in (committed or {}).get("rows", [])}
  out = []
  for rec in collected:
    prev = old.get(rec["row"])
    further = prev is not None and (prev.get("status") == "done" or
                                    (prev.get("epochs") or 0) > (rec.get("epochs") or 0))
    if rec["status"] != "done" and further:
      now = {k: rec[k] for k in ("family", "task", "note")}
      out.append(with_precision({**prev, **now, "command": portable(prev["command"])}))
    else:
      out.append(with_precision(rec))
  return out


