"""The paper's experiments as named rows, one command each, and a report that sets vdrnn's
numbers beside the published ones.

  python -m launch.reproduce --dry_run                        # every row and its command
  python -m launch.reproduce --only sentiment_ --epochs 20 --parallel 2 \\
      --override eval.mc_samples=10
  python -m launch.reproduce --only zaremba_small              # the three seeds, one at a time
  python -m launch.reproduce --only large_variational_untied   # on a GPU machine (one run per GPU)
  python -m launch.reproduce --report                         # tables, CSV/JSON and figures

A row is one config plus overrides (``ROWS``) with the paper's value(s) (``launch/paper.py``).
Rows run as ``python -m vdrnn.train --config ... --workdir <workdir_root>/<row>`` through the
process queue of ``launch/sweep.py`` (one process per GPU, or ``--parallel`` on the CPU),
wrapped by ``launch/run_row.py``, which records the device and the wall time in the workdir's
``run_info.json``. Re-running the same command resumes unfinished rows from their checkpoints
and skips finished ones (a ``results.json`` from a run with the requested number of epochs;
asking for more epochs extends a finished row from its last checkpoint).

``--report`` reads every row's workdir (``results.json``, ``config.json``, ``metrics.jsonl``,
``run_info.json``), merges them with the records already in ``--results_dir``
(``results.json``: rows run elsewhere, e.g. on a GPU machine, keep their committed numbers),
and writes ``results.json``, ``results.csv``, ``README_table.md`` (the README's results
section) and the sentiment learning curves (``sentiment_{lstm,gru}.png``: test RMSE against
epochs, one figure per cell type, the three schemes). Rows without a result show "not run"
and their command, never a number.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shlex
import shutil
import time
from typing import Optional

from absl import app, flags

from launch import paper, sweep
from vdrnn.config import load_config_file
from vdrnn.errors import UserError, run_main

DEFAULT_ROOT = "workdirs/reproduce"  # where rows run unless --workdir_root says otherwise
MC_CURVE_SAMPLES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)  # the MC curve table's columns
SENTIMENT_EPOCHS = (1, 2, 5, 10, 20, 50, 100, 250, 500, 1250)  # the fixed-epoch table's columns


@dataclasses.dataclass(frozen=True)
class Row:
  name: str
  config: str                      # config file[:arg], as for vdrnn.train
  overrides: tuple = ()            # ((config path, value), ...) -> --config.PATH=VALUE
  family: str = ""                 # rows aggregated in the report (one experiment's seeds)
  paper_row: str = ""              # the paper row it is held against (default: family or name)
  task: str = "ptb"                # ptb | sentiment
  where: str = "gpu"               # where the row is meant to run (informational): cpu | gpu
  note: str = ""

  @property
  def paper(self) -> Optional[dict]:
    key = self.paper_row or self.family or self.name
    return paper.PTB.get(key) if self.task == "ptb" else None


def _sentiment_rows():
  """The figure's rows, released semantics and split: the variational LSTM in the paper's tuned
  setting (appendix B) and in the scripts' defaults, naive dropout, and no dropout; 250 epochs
  (the variational LSTM script's; no dropout over-fits within a few, so 30 show it), the GRU's
  as the LSTM's."""
  rows = []
  epochs = {"variational": 250, "naive": 250, "none": 30}
  for cell in ("lstm", "gru"):
    for scheme in ("variational", "naive", "none"):
      spec = f"configs/sentiment_{cell}.py:{scheme},released"
      rows.append(Row(f"sentiment_{cell}_{scheme}", spec,
                      (("train.num_epochs", str(epochs[scheme])),), task="sentiment", where="cpu",
                      note="released semantics and split"))
  tuned = "configs/sentiment_lstm.py:variational,released,tuned"
  rows.append(Row("sentiment_lstm_variational_tuned", tuned, task="sentiment", where="cpu",
                  note="the paper's tuned setting: p = 0.25, weight decay 1e-4 (appendix B)"))
  rows.append(Row("sentiment_lstm_variational_tuned_wd1e-3", tuned,
                  (("train.weight_decay", "0.001"),), task="sentiment", where="cpu",
                  note="p = 0.25, weight decay 1e-3 as the text states (appendix B)"))
  rows.append(Row("sentiment_lstm_naive_text", "configs/sentiment_lstm.py:naive,released",
                  (("train.num_epochs", "250"), ("model.p_h", "0.0"), ("model.p_emb", "0.0"),
                   ("model.naive_per_gate", "False")), task="sentiment", where="cpu",
                  note="naive dropout as the paper's text defines it: fresh masks per step on "
                       "the inputs and the outputs only, shared by the gates"))
  return rows


SCHEMES_NOTE = "beyond the paper; the rates are our choice, not tuned"
# The regularisers of issue 20 side by side: PTB small's shape and recipe (2 x 200, two biases per
# gate), 6 epochs, seed 0. Rates chosen by us: variational 0.1 on word types and the state, 0.25
# on the inputs and the softmax input (below the large model's 0.3 / 0.5 for a smaller model);
# naive 0.25 on the non-recurrent connections; weight drop 0.3; zoneout 0.5 / 0.05 (Krueger et
# al.'s PTB setting); concrete dropout starting from the variational rates.
_VAR = (("model.scheme", "variational"), ("model.p_emb", "0.1"), ("model.p_h", "0.1"),
        ("model.p_x", "0.25"), ("model.p_out", "0.25"))
SCHEMES = {
    "none": (),
    "naive": (("model.scheme", "naive"), ("model.p_x", "0.25"), ("model.p_out", "0.25")),
    "variational_tied": (*_VAR, ("model.tied_gates", "True")),
    "variational_untied": _VAR,
    "weight_drop": (("model.p_weight_drop", "0.3"),),
    "zoneout": (("model.zoneout_c", "0.5"), ("model.zoneout_h", "0.05")),
    "variational_weight_drop": (*_VAR, ("model.tied_gates", "True"),
                                ("model.p_weight_drop", "0.3")),
    "concrete": (*_VAR, ("model.tied_gates", "True"), ("model.concrete", "True")),
}


def _schemes_rows():
  return [Row(f"schemes_{name}", "configs/ptb_small.py",
              (("train.num_epochs", "6"), *overrides), task="schemes", where="cpu",
              note=SCHEMES_NOTE) for name, overrides in SCHEMES.items()]


MEDIUM_NOTE = "the paper's medium rates (Sec. 5.1, footnote 3): 0.2 emb/recurrent, 0.35 in/out"
ROWS = (
    *(Row(f"zaremba_small_seed{s}", "configs/ptb_small.py",
          (("seed", str(s)), ("model.lua_biases", "False")), family="zaremba_small", where="cpu",
          note="one bias per gate (the config's default until the Lua biases became it)")
      for s in range(3)),
    *(Row(f"zaremba_small_lua_biases_seed{s}", "configs/ptb_small.py",
          (("seed", str(s)), ("model.lua_biases", "True")), family="zaremba_small_lua_biases",
          paper_row="zaremba_small", where="cpu",
          note="the Lua code's two biases per gate (i2h and h2h), as Zaremba's main.lua")
      for s in range(3)),
    Row("medium_naive", "configs/ptb_medium.py:naive"),
    Row("medium_variational_tied", "configs/ptb_medium.py:variational_tied", note=MEDIUM_NOTE),
    Row("medium_variational_untied", "configs/ptb_medium.py:variational_untied", note=MEDIUM_NOTE),
    Row("large_zaremba", "configs/ptb_large.py:zaremba"),
    Row("large_variational_tied", "configs/ptb_large.py:tied"),
    Row("large_variational_untied", "configs/ptb_large.py:untied"),
    Row("large_variational_untied_tied_embeddings", "configs/ptb_large.py:untied",
        (("model.tie_embeddings", "True"),),
        note="beyond the paper: Press & Wolf's embedding tying"),
    *_sentiment_rows(),
    *_schemes_rows(),
)


# ----------------------------------------------------------------------------------------
# Planning and running.


def select(rows, only: list[str]) -> list[Row]:
  """Rows named by ``only`` (all rows when empty): a row's whole name picks that row, anything
  else every row whose name starts with it."""
  if not only:
    return list(rows)
  names = {r.name for r in rows}
  picks = lambda r, o: r.name == o if o in names else r.name.startswith(o)  # noqa: E731
  chosen = [r for r in rows if any(picks(r, o) for o in only)]
  unknown = [o for o in only if not any(r.name == o or r.name.startswith(o) for r in rows)]
  if unknown:
    raise UserError(f"--only {','.join(unknown)} matches no row; rows: "
                    f"{', '.join(r.name for r in rows)}")
  return chosen


def override_flags(overrides: list[str], epochs: int) -> list[str]:
  """``["train.lr=0.5"]`` and ``--epochs N`` ->
  ``["--config.train.lr=0.5", "--config.train.num_epochs=N"]``."""
  out = []
  for o in overrides:
    path, sep, value = o.partition("=")
    if not sep or not path:
      raise UserError(f"--override {o!r}: expected CONFIG.PATH=VALUE, e.g. train.num_epochs=20")
    out.append(f"--config.{path.removeprefix('--config.')}={value}")
  if epochs:
    out.append(f"--config.train.num_epochs={epochs}")
  return out


def as_run(row: Row, root: str) -> dict:
  """The row as a ``launch/sweep.py`` run."""
  return {"name": row.name, "workdir": os.path.join(root, row.name), "config": row.config,
          "point": dict(row.overrides)}


def command(row: Row, root: str, extra: list[str]) -> str:
  """The row's ``python -m vdrnn.train ...`` command line."""
  argv = sweep.train_command(as_run(row, root), row.config, extra)
  return shlex.join(["python", *argv[1:]])


def requested_epochs(row: Row, extra: list[str]) -> int:
  """``train.num_epochs`` the row runs with (its config, then its overrides, then ``extra``)."""
  n = None
  for flag in [f"--config.{p}={v}" for p, v in row.overrides] + list(extra):
    if flag.startswith("--config.train.num_epochs="):
      n = int(flag.split("=", 1)[1])
  if n is None:
    n = int(load_config_file(row.config).train.num_epochs)
  return n


def _read_json(path: str):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def is_finished(run: dict, epochs: Optional[int] = None) -> bool:
  """A ``results.json`` from a run with ``epochs`` epochs (any number when None)."""
  if not os.path.exists(os.path.join(run["workdir"], "results.json")):
    return False
  cfg = _read_json(os.path.join(run["workdir"], "config.json")) or {}
  return epochs is None or int(cfg.get("train", {}).get("num_epochs", -1)) == epochs


# ----------------------------------------------------------------------------------------
# Collecting a workdir.


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
  """``cmd`` with its ``--workdir`` under the default root (``workdirs/reproduce/<row>``): the
  command as anyone runs it from a checkout, not the path of the machine it ran on."""
  argv = shlex.split(cmd)
  if "--workdir" in argv:
    i = argv.index("--workdir") + 1
    argv[i] = os.path.join(DEFAULT_ROOT, os.path.basename(os.path.normpath(argv[i])))
  return shlex.join(argv)


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
  info = _read_json(os.path.join(workdir, "run_info.json")) or {"sessions": []}
  cfg = _read_json(os.path.join(workdir, "config.json")) or {}
  res = _read_json(os.path.join(workdir, "results.json"))
  if res is not None and row.task == "sentiment":  # the final checkpoint re-evaluated since
    again = _read_json(os.path.join(workdir, "eval_latest_test.json")) or {}
    if again.get("step") == res.get("step"):
      res = {**{k: v for k, v in again.items() if k in REEVALUATED}, **res}
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
  keys = (("epoch", "test_rmse", "test_rmse_mc", "train_rmse", "train_running_rmse")
          if row.task == "sentiment" else ("epoch", "train_ppl", "valid_ppl", "valid_ppl_lua"))
  rec["curve"] = [{k: h.get(k) for k in keys if h.get(k) is not None} for h in hist]
  if res is not None and hist and len(hist) > res.get("epochs", len(hist)):
    res = None  # results.json of the shorter run this one extends: not this run's end
  mc = _read_json(os.path.join(workdir, "mc_test.json"))
  if res is not None and mc and res.get("mc_samples") == len(mc.get("ppl_by_samples", [])):
    by = mc["ppl_by_samples"]  # MC test perplexity with the first k samples, k = 1..K
    rec["mc_curve"] = {k: by[k - 1] for k in MC_CURVE_SAMPLES if k <= len(by)}
    rec["mc_curve"].setdefault(len(by), by[-1])
  if res is not None:
    rec["status"] = "done"
    rec["epochs"] = num_epochs
    rec["results"] = {k: v for k, v in res.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)}
  elif hist or sessions:
    rec["status"] = f"partial ({len(hist)}/{num_epochs} epochs)" if num_epochs else "partial"
    rec["epochs"] = len(hist)
  return rec


def merge(collected: list[dict], committed: Optional[dict]) -> list[dict]:
  """Each row's record from its workdir, or the committed one when the workdir has no result
  and the committed record does."""
  old = {r["row"]: r for r in (committed or {}).get("rows", [])}
  out = []
  for rec in collected:
    prev = old.get(rec["row"])
    if rec["status"] != "done" and prev is not None and prev.get("status") == "done":
      out.append({**prev, "command": portable(prev["command"])})
    else:
      out.append(rec)
  return out


# ----------------------------------------------------------------------------------------
# Tables.


def _fmt(v, digits=2) -> str:
  if v is None:
    return "–"
  if isinstance(v, tuple):
    return _fmt(v[0], 1) + ("" if v[1] is None else f" ± {v[1]:.1f}")
  return f"{v:.{digits}f}"


def _mean_sd(xs: list[float]) -> tuple[float, Optional[float]]:
  m = sum(xs) / len(xs)
  sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
  return m, sd


PTB_METRICS = (("valid (Lua formula)", "valid_ppl_lua", "valid"),
               ("valid (exact)", "valid_ppl", None),
               ("test", "test_ppl", "test"), ("MC test", "mc_test_ppl", "mc_test"))


def ptb_lines(records: list[dict]) -> list[dict]:
  """One line per (row or seed family, metric): paper value, vdrnn value, difference."""
  lines = []
  families = {}
  for rec in records:
    if rec["task"] != "ptb":
      continue
    row = next(r for r in ROWS if r.name == rec["row"])
    pap = row.paper or {}
    res = rec["results"] or {}
    if rec["status"] != "done" and rec["curve"]:  # a run still going: its latest validation
      res = {k: rec["curve"][-1][k] for k in ("valid_ppl_lua",) if k in rec["curve"][-1]}
    for label, key, pkey in PTB_METRICS:
      p = pap.get(pkey) if pkey else None
      v = res.get(key)
      if v is None and p is None and rec["status"] == "done":
        continue  # e.g. no MC test in this row and none in the paper
      if key == "mc_test_ppl" and p is None and v is None:
        continue
      if key == "valid_ppl" and rec["status"] != "done":
        continue
      line = _line(rec, label, p, v)
      if key == "mc_test_ppl" and res.get("mc_samples"):  # the paper's: 1000 samples
        line["samples"] = res["mc_samples"]
      lines.append(line)
    if rec["family"]:
      families.setdefault(rec["family"], []).append(rec)
  for fam, recs in families.items():
    done = [r for r in recs if r["status"] == "done"]
    pap = next(r for r in ROWS if r.family == fam).paper or {}
    for label, key, pkey in PTB_METRICS[:3]:
      vals = [r["results"][key] for r in done if r["results"].get(key) is not None]
      line = {"row": f"{fam} (mean of {len(vals)} seeds)", "metric": label,
              "paper": pap.get(pkey) if pkey else None, "vdrnn": None, "vdrnn_sd": None,
              "diff": None,
              "seeds": ",".join(str(r["seed"]) for r in done),
              "status": f"{len(done)}/{len(recs)} seeds done",
              "device": ", ".join(sorted({r["device"] for r in done if r["device"]})) or None,
              "wall_s": sum(r["wall_s"] or 0 for r in done) or None, "epochs": None,
              "command": "see the seed rows"}
      if vals:
        line["vdrnn"], line["vdrnn_sd"] = _mean_sd(vals)
        if line["paper"] is not None:
          line["diff"] = line["vdrnn"] - line["paper"][0]
      lines.append(line)
  return lines


def _line(rec: dict, label: str, p, v) -> dict:
  return {"row": rec["row"], "metric": label, "paper": p, "vdrnn": v, "vdrnn_sd": None,
          "diff": (v - p[0]) if (v is not None and p is not None) else None,
          "seeds": None if rec["seed"] is None else str(rec["seed"]), "status": rec["status"],
          "device": rec["device"], "wall_s": rec["wall_s"], "epochs": rec["epochs"],
          "command": rec["command"]}


# Sentiment metrics a row's results may lack (runs from before they existed): taken from the
# final checkpoint's re-evaluation, ``python -m vdrnn.evaluate --workdir W``
# (eval_latest_test.json).
REEVALUATED = ("test_ll_fit", "test_tau_fit", "test_ll_fit_mc", "test_tau_fit_mc",
               "test_std_epistemic_mc", "test_std_aleatoric_mc", "test_std_aleatoric_fit_mc")
SENTIMENT_UNCERTAINTY = (
    ("test log-likelihood, released tau 0.1 (dropout approx. / MC)", "test_ll", "test_ll_mc"),
    ("test log-likelihood, tau fitted on training examples (dropout approx. / MC)",
     "test_ll_fit", "test_ll_fit_mc"),
    ("MC predictive std: epistemic / aleatoric (fitted tau)", "test_std_epistemic_mc",
     "test_std_aleatoric_fit_mc"))


def sentiment_lines(records: list[dict]) -> list[dict]:
  lines = []
  for rec in records:
    if rec["task"] != "sentiment":
      continue
    res = rec["results"] or {}
    curve = [c for c in rec["curve"] if c.get("test_rmse") is not None]
    best = min(curve, key=lambda c: c["test_rmse"]) if curve else None
    mc = res.get("mc_samples")
    mc_label = f"MC test RMSE ({mc} samples), last epoch" if mc else "MC test RMSE"
    best_label = (f"lowest test RMSE on the curve (epoch {best['epoch']})" if best
                  else "lowest test RMSE")
    last = res.get("test_rmse") if rec["status"] == "done" else (
        curve[-1]["test_rmse"] if curve else None)  # a run still going: its latest epoch
    for label, v in (("test RMSE, last epoch", last),
                     (mc_label, res.get("test_rmse_mc")),
                     (best_label, best["test_rmse"] if best else None)):
      if rec["status"] != "done" and label.startswith("MC"):
        continue
      lines.append(_line(rec, label, None, v))
    for label, a, b in SENTIMENT_UNCERTAINTY:
      if rec["status"] == "done" and (res.get(a) is not None or res.get(b) is not None):
        lines.append({**_line(rec, label, None, res.get(a)), "vdrnn_b": res.get(b)})
  return lines


def _test_curve(rec: dict) -> dict:
  return {c["epoch"]: c["test_rmse"] for c in rec["curve"] if c.get("test_rmse") is not None}


def compare_curves(a: dict, b: dict) -> Optional[dict]:
  """Test RMSE curve ``a`` against ``b`` ({epoch: RMSE}) on the epochs both have.

  Returns the common epochs' count and last epoch, on how many ``a`` is lower, the epoch from
  which ``a`` stays lower to the last common epoch (None when it is not lower there), each
  curve's lowest value with its epoch (over its whole length), and the first epoch at which ``a``
  is below the lowest value ``b`` ever reached (None if never: ``b`` may have stopped early, as
  the no-dropout rows do at 30 epochs); None without a common epoch."""
  common = sorted(set(a) & set(b))
  if not common:
    return None
  lower = [a[e] < b[e] for e in common]
  since = None
  for e, low in zip(reversed(common), reversed(lower)):
    if not low:
      break
    since = e
  best = lambda c: min(c.items(), key=lambda kv: kv[1])  # noqa: E731
  best_a, best_b = best(a), best(b)
  below_best = next((e for e in sorted(a) if a[e] < best_b[1]), None)
  return {"epochs": len(common), "last": common[-1], "lower": sum(lower), "since": since,
          "best_a": best_a, "best_b": best_b, "below_best": below_best}


def sentiment_comparisons(records: list[dict]) -> list[str]:
  """Markdown lines: each variational row of a cell against its naive and no-dropout rows."""
  out = []
  for cell in ("lstm", "gru"):
    curves = {r["row"]: _test_curve(r) for r in records if r["task"] == "sentiment"
              and r["row"].startswith(f"sentiment_{cell}_")}
    recs = [r for r in records if curves.get(r["row"])]
    ours = [r for r in recs if r["row"].startswith(f"sentiment_{cell}_variational")]
    others = [r for r in recs if not r["row"].startswith(f"sentiment_{cell}_variational")]
    for v in ours:
      for o in others:
        c = compare_curves(curves[v["row"]], curves[o["row"]])
        if c is None:
          continue
        since = (f"lower at every epoch from {c['since']} to {c['last']}" if c["since"]
                 else f"not lower at epoch {c['last']}")
        below = "never" if c["below_best"] is None else f"epoch {c['below_best']}"
        out.append(
            f"| {v['row']} | {o['row']} | {c['epochs']} (to epoch {c['last']}) "
            f"| {c['lower']} | {since} | {c['best_a'][1]:.4f} (epoch {c['best_a'][0]}) "
            f"| {c['best_b'][1]:.4f} (epoch {c['best_b'][0]}) | {below} |")
  if not out:
    return []
  return ["", "Variational against naive and no dropout (test RMSE, dropout approximation, on "
          "the epochs both curves have; a partial row compares only as far as it has run):", "",
          "| variational row | against | common epochs | variational lower on | since | "
          "lowest, variational | lowest, against | first below the other's lowest |",
          "|---|---|---|---|---|---|---|---|", *out]


def markdown(ptb: list[dict], sent: list[dict], records: list[dict]) -> str:
  """The README's results section (tables only; the figures are separate PNGs)."""
  def wall(s):
    return "–" if not s else (f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min")

  def status(line):
    return line["status"] if line["status"] != "done" else f"{line['epochs']} epochs"

  out = ["<!-- generated by `python -m launch.reproduce --report`; do not edit by hand -->", "",
         "### Penn Treebank (perplexity)", "",
         "Paper: Gal & Ghahramani 2016, Table 1 (Zaremba et al. 2014 for the no-dropout small "
         "model, Press & Wolf 2016 for tied embeddings). Paper validation numbers are the Lua "
         "formula's (`valid (Lua formula)`); `valid (exact)` has no paper counterpart.", "",
         "| row | metric | paper | vdrnn | difference | seeds | run | device | wall time |",
         "|---|---|---|---|---|---|---|---|---|"]
  for l in ptb:
    v = _fmt(l["vdrnn"]) + ("" if l["vdrnn_sd"] is None else f" ± {l['vdrnn_sd']:.2f}")
    v = v if l["vdrnn"] is not None else _missing(l)
    diff = _fmt(l["diff"]) if l["diff"] is not None else "–"
    metric = l["metric"] + (f" ({l['samples']} samples)" if l.get("samples") else "")
    out.append(f"| {l['row']} | {metric} | {_fmt(l['paper'])} | {v} | {diff} "
               f"| {l['seeds'] or '–'} | {status(l)} | {l['device'] or '–'} "
               f"| {wall(l['wall_s'])} |")
  curves = [r for r in records if r.get("mc_curve")]
  if curves:
    cols = sorted({int(k) for r in curves for k in r["mc_curve"]})
    out += ["", "MC test perplexity against the number of samples (masks held over the whole "
            "test stream, probabilities averaged; figure `<row>_mc_test.png`):", "",
            "| row | " + " | ".join(str(k) for k in cols) + " |", "|---|" + "---|" * len(cols)]
    for r in curves:
      at = {int(k): v for k, v in r["mc_curve"].items()}
      out.append(f"| {r['row']} | " + " | ".join(_fmt(at.get(k)) for k in cols) + " |")
  out += ["", "### Sentiment regression (Pang & Lee, test RMSE in rating units)", "",
          "Paper: Gal & Ghahramani 2016, Sec. 5.2, figure only (no published number). All rows "
          "use the released scripts' semantics and split (`:<scheme>,released`).", "",
          "| row | metric | vdrnn | seed | run | device | wall time |",
          "|---|---|---|---|---|---|---|"]
  for l in sent:
    v = _fmt(l["vdrnn"], 4) if l["vdrnn"] is not None else _missing(l)
    if "vdrnn_b" in l:  # a pair: dropout approximation / MC, or epistemic / aleatoric
      v = f"{_fmt(l['vdrnn'], 4)} / {_fmt(l['vdrnn_b'], 4)}"
    out.append(f"| {l['row']} | {l['metric']} | {v} | {l['seeds'] or '–'} | {status(l)} "
               f"| {l['device'] or '–'} | {wall(l['wall_s'])} |")
  sent_recs = [r for r in records if r["task"] == "sentiment" and r["curve"]]
  if sent_recs:
    last = max(c["epoch"] for r in sent_recs for c in r["curve"])
    cols = [e for e in SENTIMENT_EPOCHS if e <= last]
    out += ["", "Test RMSE (dropout approximation) at fixed epochs:", "",
            "| row | " + " | ".join(f"epoch {e}" for e in cols) + " |",
            "|---|" + "---|" * len(cols)]
    for r in sent_recs:
      at = {c["epoch"]: c.get("test_rmse") for c in r["curve"]}
      out.append(f"| {r['row']} | " + " | ".join(_fmt(at.get(e), 4) for e in cols) + " |")
    out += sentiment_comparisons(records)
  schemes = [r for r in records if r["task"] == "schemes"]
  if schemes:
    out += ["", "### Regularisers beyond the paper (PTB, small shape and recipe, 6 epochs)", "",
            f"One seed each, {SCHEMES_NOTE} (see `launch/reproduce.py`). It shows that each "
            "regulariser trains; it is not a ranking.", "",
            "| row | valid (Lua formula) | valid (exact) | test | run | device | wall time |",
            "|---|---|---|---|---|---|---|"]
    for r in schemes:
      res = r["results"] or {}
      last = r["curve"][-1] if r["curve"] else {}
      val = lambda k: (_fmt(res[k]) if k in res else  # noqa: E731
                       _fmt(last[k]) + " (last epoch)" if k in last else
                       "not run" if r["status"] == "not run" else "not finished")
      run = r["status"] if r["status"] != "done" else f"{r['epochs']} epochs"
      out.append(f"| {r['row']} | {val('valid_ppl_lua')} | {val('valid_ppl')} | {val('test_ppl')} "
                 f"| {run} | {r['device'] or '–'} | {wall(r['wall_s'])} |")
    learned = [r for r in schemes if any(k.startswith("rate_") for k in (r["results"] or {}))]
    for r in learned:
      rates = ", ".join(f"{k[5:]} {v:.3f}" for k, v in sorted(r["results"].items())
                        if k.startswith("rate_"))
      out += ["", f"{r['row']}: learned rates at the end: {rates}."]
  out += ["", "Commands (as run, or to run for the rows marked not run):", ""]
  out += [f"* {r['row']} ({r['status']}): `{r['command']}`" for r in records]
  return "\n".join(out) + "\n"


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def readme_summary(ptb: list[dict], sent: list[dict]) -> str:
  """The README's results table: one line per row, every metric in one cell each
  (the full tables, commands and figures are in launch/results/)."""
  def cells(lines, metrics, digits):
    by = {l["metric"]: l for l in lines}
    paper_ = " / ".join(_fmt(by[m]["paper"]) for m in metrics if m in by and by[m]["paper"])
    ours = [by[m] for m in metrics if m in by]
    if ours and all(l["vdrnn"] is None for l in ours):
      return paper_ or "–", _missing(ours[0])
    return paper_ or "–", " / ".join(_fmt(l["vdrnn"], digits) for l in ours)

  out = [README_START,
         "| row | paper (valid Lua / test / MC test) | vdrnn (same) | run | device |",
         "|---|---|---|---|---|"]
  rows = dict.fromkeys(l["row"] for l in ptb)
  for row in rows:
    lines = [l for l in ptb if l["row"] == row]
    pap, ours = cells(lines, ("valid (Lua formula)", "test", "MC test"), 1)
    first = lines[0]
    run = first["status"] if first["status"] != "done" else f"{first['epochs']} epochs"
    out.append(f"| {row} | {pap} | {ours} | {run} | {first['device'] or '–'} |")
  out += ["", "| sentiment row (released semantics) | test RMSE: last epoch / MC / lowest | run | "
          "device |", "|---|---|---|---|"]
  for row in dict.fromkeys(l["row"] for l in sent):
    lines = [l for l in sent if l["row"] == row]
    pick = lambda prefix: next((l["vdrnn"] for l in lines if l["metric"].startswith(prefix)), None)
    vals = " / ".join(_fmt(pick(p), 4) for p in ("test RMSE, last", "MC test", "lowest"))
    first = lines[0]
    run = first["status"] if first["status"] != "done" else f"{first['epochs']} epochs"
    out.append(f"| {row} | {vals} | {run} | {first['device'] or '–'} |")
  return "\n".join(out + [README_END])


def update_readme(path: str, summary: str) -> bool:
  """Replaces the text between the results markers of ``path``; False without markers."""
  if not os.path.exists(path):
    return False
  text = open(path).read()
  if README_START not in text or README_END not in text:
    return False
  head, rest = text.split(README_START, 1)
  tail = rest.split(README_END, 1)[1]
  with open(path, "w") as f:
    f.write(head + summary + tail)
  return True


def _missing(line: dict) -> str:
  """The value cell of a line without a number."""
  none = line["status"] == "not run" or line["status"].startswith("0/")
  return "not run" if none else "not finished"


def plot_sentiment(records: list[dict], results_dir: str) -> list[str]:
  """``sentiment_<cell>.png``: test RMSE against epochs for the three schemes of each cell."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  paths = []
  for cell in ("lstm", "gru"):
    recs = [r for r in records if r["row"].startswith(f"sentiment_{cell}_")]
    if not any(r["curve"] for r in recs):
      continue
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in recs:
      pts = [(c["epoch"], c["test_rmse"]) for c in r["curve"] if c.get("test_rmse") is not None]
      if not pts:
        continue
      scheme = r["row"].removeprefix(f"sentiment_{cell}_")
      line, = ax.plot(*zip(*pts), marker="o" if len(pts) < 30 else None, ms=3, label=scheme)
      mc = (r["results"] or {}).get("test_rmse_mc")
      if mc is not None and (r["results"] or {}).get("epochs") == pts[-1][0]:  # this run's end
        ax.plot([pts[-1][0]], [mc], "*", color=line.get_color(), ms=9)
    ax.set_title(f"{cell.upper()}, released semantics (star: MC dropout at the end)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test RMSE (rating units)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = os.path.join(results_dir, f"sentiment_{cell}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
  return paths


def report(root: str, results_dir: str, extra: list[str]) -> list[dict]:
  os.makedirs(results_dir, exist_ok=True)
  committed = _read_json(os.path.join(results_dir, "results.json"))
  records = merge([collect(r, root, extra) for r in ROWS], committed)
  ptb, sent = ptb_lines(records), sentiment_lines(records)
  with open(os.path.join(results_dir, "results.json"), "w") as f:
    json.dump({"generated": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": records}, f, indent=1)
  cols = ["row", "metric", "paper", "paper_spread", "vdrnn", "vdrnn_sd", "diff", "seeds", "status",
          "epochs", "device", "wall_s", "command"]
  with open(os.path.join(results_dir, "results.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for l in ptb + sent:
      p = l["paper"]
      w.writerow({**l, "paper": None if p is None else p[0],
                  "paper_spread": None if p is None else p[1]})
  table = markdown(ptb, sent, records)
  with open(os.path.join(results_dir, "README_table.md"), "w") as f:
    f.write(table)
  figures = plot_sentiment(records, results_dir)
  for r in records:  # each MC curve's figure beside the table
    png = os.path.join(root, r["row"], "mc_test.png")
    if r.get("mc_curve") and os.path.exists(png):
      figures.append(shutil.copyfile(png, os.path.join(results_dir, f"{r['row']}_mc_test.png")))
  root_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if os.path.abspath(results_dir) == os.path.join(root_dir, "launch", "results"):
    if update_readme(os.path.join(root_dir, "README.md"), readme_summary(ptb, sent)):
      print("updated the results table in README.md")
  print(table)
  print(f"wrote {results_dir}/results.json, results.csv, README_table.md" +
        "".join(f", {os.path.basename(p)}" for p in figures))
  return records


# ----------------------------------------------------------------------------------------
# Command line.

def define_flags() -> None:
  """The command line's flags, defined when it runs (this module is also imported as a
  library, beside other tools with flags of their own)."""
  if "results_dir" in flags.FLAGS:
    return
  flags.DEFINE_list("only", [], "Row names or prefixes to run / list (default: all).")
  flags.DEFINE_bool("dry_run", False, "List the rows and their commands; run nothing.")
  flags.DEFINE_bool("report", False,
                    "Collect the workdirs into tables and figures; run nothing.")
  flags.DEFINE_string("workdir_root", DEFAULT_ROOT,
                      "Row <name> runs in <workdir_root>/<name>.")
  flags.DEFINE_string("results_dir", "launch/results", "Where --report writes its files.")
  flags.DEFINE_string("gpus", "auto", "Comma-separated GPU ids (one row per GPU); 'auto' "
                      "(CUDA_VISIBLE_DEVICES, else nvidia-smi) or 'none' for the CPU.")
  flags.DEFINE_integer("parallel", 1, "Rows at a time on the CPU (no GPUs).")
  flags.DEFINE_integer("epochs", 0,
                       "Override train.num_epochs of the selected rows (0: the row's).")
  flags.DEFINE_multi_string("override", [], "CONFIG.PATH=VALUE for every selected row, "
                            "e.g. eval.mc_samples=10 (repeatable).")
  flags.DEFINE_string("module", "launch.run_row",
                      "Module each row runs (tests use a stand-in).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")

  def _main():
    extra = override_flags(flags.FLAGS.override, flags.FLAGS.epochs)
    root = flags.FLAGS.workdir_root
    if flags.FLAGS.report:
      report(root, flags.FLAGS.results_dir, extra)
      return
    rows = select(ROWS, flags.FLAGS.only)
    epochs = {r.name: requested_epochs(r, extra) for r in rows}
    runs = [as_run(r, root) for r in rows]
    done = lambda run: is_finished(run, epochs[run["name"]])
    if flags.FLAGS.dry_run:
      for r, run in zip(rows, runs):
        state = ("finished" if done(run) else
                 "partial" if os.path.isdir(run["workdir"]) else "not run")
        print(f"{r.name} [{state}; {r.where}; {epochs[r.name]} epochs]\n"
              f"  {command(r, root, extra)}")
      return
    g = flags.FLAGS.gpus
    gpus = [] if g == "none" else (sweep.detect_gpus() if g == "auto" else
                                   [x for x in g.split(",") if x.strip()])
    codes = sweep.run_all(runs, None, extra, gpus=gpus, parallel=flags.FLAGS.parallel,
                          module=flags.FLAGS.module, poll_s=2.0, is_finished=done)
    failed = [n for n, c in codes.items() if c != 0]
    if failed:
      raise UserError(f"{len(failed)} row(s) failed: {', '.join(failed)} "
                      "(see train.log in their workdirs)")

  run_main(_main)


if __name__ == "__main__":
  define_flags()
  app.run(main)
