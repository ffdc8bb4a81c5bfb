"""The report's tables, from the collected records: per-metric lines (the paper's value beside
vdrnn's, seed families aggregated), the sentiment curves compared, the markdown of
``README_table.md`` and the README's results block (``readme_summary``, between
``README_START`` and ``README_END``). Pure functions: ``launch/report.py`` writes the files.
"""

from __future__ import annotations

import math
from typing import Optional

from launch.rows import ROWS, SCHEMES_NOTE

SENTIMENT_EPOCHS = (1, 2, 5, 10, 20, 50, 100, 250, 500, 1250)  # the fixed-epoch table's columns


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
    for label, key, pkey in PTB_METRICS:
      vals = [r["results"][key] for r in done if r["results"].get(key) is not None]
      if key == "mc_test_ppl" and not vals and not pap.get(pkey):
        continue  # no MC test in this experiment
      n = f"{len(vals)} seed" + "s" * (len(vals) != 1)
      line = {"row": f"{fam} (mean of {n})", "metric": label,
              "paper": pap.get(pkey) if pkey else None, "vdrnn": None, "vdrnn_sd": None,
              "diff": None,
              "seeds": ",".join(str(r["seed"]) for r in done),
              "status": f"{len(done)}/{len(recs)} seeds done",
              "device": ", ".join(sorted({r["device"] for r in done if r["device"]})) or None,
              "wall_s": sum(r["wall_s"] or 0 for r in done) or None, "epochs": None,
              "command": "see the seed rows"}
      samples = {r["results"].get("mc_samples") for r in done} - {None}
      if key == "mc_test_ppl" and len(samples) == 1:
        line["samples"] = samples.pop()
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


# The paper's claim is a comparison: variational dropout against Zaremba's naive dropout at the
# same size, from the same code. (size, naive row, variational rows.)
PTB_PAIRS = (("medium", "medium_naive", ("medium_variational_untied", "medium_variational_tied")),
             ("large", "large_zaremba", ("large_variational_untied", "large_variational_tied")))


def ptb_comparisons(ptb: list[dict]) -> list[dict]:
  """One line per (naive row, variational row) of ``PTB_PAIRS``: test perplexity of each and the
  variational row's MC test, the paper's and vdrnn's, and vdrnn's gain over naive (test and MC
  test minus the naive test; None until both rows are done)."""
  def get(row, metric):
    return next((l for l in ptb if l["row"] == row and l["metric"] == metric), None)

  out = []
  for size, naive, variational in PTB_PAIRS:
    for var in variational:
      n, v, mc = get(naive, "test"), get(var, "test"), get(var, "MC test")
      if n is None or v is None:
        continue
      paper = [x["paper"][0] if x and x["paper"] else None for x in (n, v, mc)]
      ours = [x["vdrnn"] if x and x["status"] == "done" else None for x in (n, v, mc)]
      gain = lambda vals: [None if vals[0] is None or x is None else x - vals[0]  # noqa: E731
                           for x in vals[1:]]
      out.append({"size": size, "naive": naive, "variational": var, "paper": paper,
                  "vdrnn": ours, "paper_gain": gain(paper), "vdrnn_gain": gain(ours),
                  "status": [n["status"], v["status"]], "device": [n["device"], v["device"]]})
  return out


def comparison_cells(c: dict) -> tuple[str, str, str]:
  """A comparison line's paper cell, vdrnn cell and device cell: "82.7 → 79.7, MC 78.6
  (-3.0, MC -4.1)"; vdrnn's cell says which row is not finished or not run."""
  def cell(vals, gains):
    s = f"{_fmt(vals[0], 1)} → {_fmt(vals[1], 1)}"
    s += f", MC {_fmt(vals[2], 1)}" if vals[2] is not None else ""
    g = [f"{x:+.1f}" for x in gains if x is not None]
    return s + (f" ({g[0]}" + (f", MC {g[1]}" if len(g) > 1 else "") + ")" if g else "")

  if all(x is not None for x in c["vdrnn"][:2]):
    ours = cell(c["vdrnn"], c["vdrnn_gain"])
  else:
    ours = "waiting for " + ", ".join(f"{row}: {st}" for row, st in
                                      zip((c["naive"], c["variational"]), c["status"])
                                      if st != "done")
  devs = [d for d in c["device"] if d]
  dev = ("–" if not devs else devs[0] + " (both)" if len(devs) == 2 and devs[0] == devs[1]
         else " / ".join(d or "–" for d in c["device"]))
  return cell(c["paper"], c["paper_gain"]), ours, dev


def comparison_table(ptb: list[dict]) -> list[str]:
  """The markdown lines of the variational-against-naive table (empty without pairs)."""
  comps = ptb_comparisons(ptb)
  if not comps:
    return []
  out = ["Variational against naive dropout, same code: test perplexity of the naive row → the "
         "variational row, and its MC test; in brackets the change from naive.", "",
         "| size | naive → variational | paper | vdrnn | device |", "|---|---|---|---|---|"]
  for c in comps:
    paper, ours, dev = comparison_cells(c)
    out.append(f"| {c['size']} | {c['naive']} → {c['variational']} | {paper} | {ours} | {dev} |")
  return out


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
  def status(line):
    return line["status"] if line["status"] != "done" else f"{line['epochs']} epochs"

  out = ["<!-- generated by `python -m launch.reproduce --report`; do not edit by hand -->", "",
         "### Penn Treebank (perplexity)", "",
         "Paper: Gal & Ghahramani 2016, Table 1 (Zaremba et al. 2014 for the no-dropout small "
         "model, Press & Wolf 2016 for tied embeddings). Paper validation numbers are the Lua "
         "formula's (`valid (Lua formula)`); `valid (exact)` has no paper counterpart. The "
         "validation curves of every row: `ptb_valid.png`.", "",
         "| row | metric | paper | vdrnn | difference | seeds | run | device | wall time |",
         "|---|---|---|---|---|---|---|---|---|"]
  for l in ptb:
    v = _fmt(l["vdrnn"]) + ("" if l["vdrnn_sd"] is None else f" ± {l['vdrnn_sd']:.2f}")
    v = v if l["vdrnn"] is not None else _missing(l)
    diff = _fmt(l["diff"]) if l["diff"] is not None else "–"
    metric = l["metric"] + (f" ({l['samples']} samples)" if l.get("samples") else "")
    out.append(f"| {l['row']} | {metric} | {_fmt(l['paper'])} | {v} | {diff} "
               f"| {l['seeds'] or '–'} | {status(l)} | {l['device'] or '–'} "
               f"| {_wall(l['wall_s'])} |")
  curves = [r for r in records if r.get("mc_curve")]
  if curves:
    cols = sorted({int(k) for r in curves for k in r["mc_curve"]})
    out += ["", "MC test perplexity against the number of samples (masks held over the whole "
            "test stream, probabilities averaged; figure `<row>_mc_test.png`):", "",
            "| row | " + " | ".join(str(k) for k in cols) + " |", "|---|" + "---|" * len(cols)]
    for r in curves:
      at = {int(k): v for k, v in r["mc_curve"].items()}
      out.append(f"| {r['row']} | " + " | ".join(_fmt(at.get(k)) for k in cols) + " |")
  comparison = comparison_table(ptb)
  out += ["", *comparison] if comparison else []
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
               f"| {l['device'] or '–'} | {_wall(l['wall_s'])} |")
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
  out += imdb_table(records)
  schemes = [r for r in records if r["task"] == "schemes"]
  if schemes:
    out += ["", "### Regularisers beyond the paper (PTB, small shape and recipe, 6 epochs)", "",
            f"One seed each, {SCHEMES_NOTE} (see `launch/rows.py`). It shows that each "
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
                 f"| {run} | {r['device'] or '–'} | {_wall(r['wall_s'])} |")
    learned = [r for r in schemes if any(k.startswith("rate_") for k in (r["results"] or {}))]
    for r in learned:
      rates = ", ".join(f"{k[5:]} {v:.3f}" for k, v in sorted(r["results"].items())
                        if k.startswith("rate_"))
      out += ["", f"{r['row']}: learned rates at the end: {rates}."]
  out += ["", "Commands (as run, or to run for the rows marked not run):", ""]
  out += [f"* {r['row']} ({r['status']}): `{r['command']}`" for r in records]
  return "\n".join(out) + "\n"


def imdb_modes(rec: dict) -> list[tuple[str, str]]:
  """``(label, suffix)`` of each predictive mode an IMDB record has results for."""
  res = rec["results"] or {}
  if rec.get("members"):  # the members' mean of each mode
    modes = [(f"deep ensemble ({rec['members']} members)", "")]
    if res.get("test_acc_mc") is not None:
      modes.append(("deep ensemble of MC dropout", "_mc"))
    if res.get("test_acc_ts") is not None:
      modes.append(("deep ensemble, members temperature-scaled", "_ts"))
    return modes
  modes = [("dropout approx.", "")]
  if res.get("test_acc_mc") is not None:
    modes.append((f"MC dropout ({res.get('mc_samples')})", "_mc"))
  if res.get("test_acc_ts") is not None:
    t = res.get("test_ts_temperature")
    modes.append(("temperature-scaled" + (f" (T = {t:.2f})" if t else ""), "_ts"))
  if res.get("test_acc_mc_ts") is not None:
    t = res.get("test_mc_ts_temperature")
    modes.append(("MC dropout temperature-scaled" + (f" (T = {t:.2f})" if t else ""), "_mc_ts"))
  return modes


def imdb_table(records: list[dict]) -> list[str]:
  """The uncertainty benchmark's table: each IMDB row and mode (dropout approximation, MC
  dropout, temperature scaling, the deep ensemble) with accuracy, NLL, Brier, ECE, the area
  under the risk-coverage curve (entropy) and OOD detection AUROC (entropy / mutual
  information)."""
  recs = [r for r in records if r["task"] == "imdb"]
  if not recs:
    return []
  out = ["", "### IMDB: uncertainty (test set; 10% of the training reviews held out to pick the "
         "checkpoint)", "",
         "OOD detection: AUROC and AUPR (OOD the positive class) of the predictive entropy / "
         "the mutual information (MC dropout, ensemble), IMDB test reviews against PTB test "
         "text (far shift) and the Pang & Lee reviews (near shift), prepared as the test set. "
         "AURC: area under the risk-coverage curve, inputs accepted by entropy (lower is "
         "better). ECE: 15 equal-width bins of the top-label confidence. Temperature scaling "
         "(Guo et al. 2017): one temperature fitted on the held-out reviews' NLL (MC dropout: "
         "each sample's logits divided by it before the mean). Figures: "
         "`imdb_risk_coverage.png`, `imdb_reliability.png`. The table's accuracy, NLL and ECE "
         "are recomputed from the saved predictions by `python -m launch.check_predictions`.",
         "", "| row | mode | acc | NLL | Brier | ECE | AURC | AUROC PTB | AUPR PTB "
         "| AUROC Pang & Lee | AUPR Pang & Lee | run | device |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in recs:
    res = r["results"] or {}
    run = r["status"] if r["status"] != "done" else f"{r['epochs']} epochs"
    if r["status"] != "done":
      out.append(f"| {r['row']} | – | {_missing(r)} | | | | | | | | | {run} "
                 f"| {r['device'] or '–'} |")
      continue
    for label, sfx in imdb_modes(r):
      ens = bool(r.get("members"))
      get = lambda k: _fmt(res.get(f"test_{k}{sfx}"), 4)  # noqa: E731

      def ood(name, metric):  # entropy / mutual information (where there are several passes)
        h = res.get(f"test_ood_{name}_{metric}_entropy{sfx}")
        mi = res.get(f"test_ood_{name}_{metric}_mi{sfx}")
        if h is None:
          return "–"
        return _fmt(h, 3) + (f" / {_fmt(mi, 3)}" if (sfx or ens) and mi is not None else "")
      oods = " | ".join(ood(n, m) for n in ("ptb", "scaledata") for m in ("auroc", "aupr"))
      out.append(f"| {r['row']} | {label} | {get('acc')} | {get('nll')} | {get('brier')} "
                 f"| {get('ece')} | {get('aurc')} | {oods} | {run} | {r['device'] or '–'} |")
  return out


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def readme_summary(ptb: list[dict], sent: list[dict]) -> str:
  """The README's results tables: one line per experiment (a seed family's mean ± sd stands for
  its seed rows), every metric in one cell each, the naive-against-variational comparison and
  the sentiment rows (every line of every row, commands and figures: launch/results/)."""
  def cells(lines, metrics, digits):
    by = {l["metric"]: l for l in lines}
    paper_ = " / ".join(_fmt(by[m]["paper"]) for m in metrics if m in by and by[m]["paper"])
    ours = [by[m] for m in metrics if m in by]
    if ours and all(l["vdrnn"] is None for l in ours):
      return paper_ or "–", _missing(ours[0])
    vals = [_fmt(l["vdrnn"], digits) + ("" if l["vdrnn_sd"] is None else f" ± {l['vdrnn_sd']:.1f}")
            for l in ours]
    samples = next((l["samples"] for l in ours if l.get("samples")), None)
    return paper_ or "–", " / ".join(vals) + (f" ({samples} MC samples)" if samples else "")

  family = {r.name: r.family for r in ROWS}
  out = [README_START,
         "| experiment | paper (valid Lua / test / MC test) | vdrnn (same) | run, wall time "
         "| device |",
         "|---|---|---|---|---|"]
  shown = []
  for row in dict.fromkeys(l["row"] for l in ptb):
    fam = family.get(row)
    if fam:  # its family's mean line, once, where the family's first row is
      row = next((l["row"] for l in ptb if l["row"].startswith(f"{fam} (mean of ")), row)
    if row in shown:
      continue
    shown.append(row)
    lines = [l for l in ptb if l["row"] == row]
    pap, ours = cells(lines, ("valid (Lua formula)", "test", "MC test"), 1)
    first = lines[0]
    run = first["status"] if first["status"] != "done" else f"{first['epochs']} epochs"
    run += f", {_wall(first['wall_s'])}" if first["wall_s"] and first["vdrnn"] is not None else ""
    out.append(f"| {row} | {pap} | {ours} | {run} | {first['device'] or '–'} |")
  comparison = comparison_table(ptb)
  out += ["", *comparison] if comparison else []
  out += ["", "| sentiment row (released semantics) | test RMSE: last epoch / MC / lowest "
          "| run, wall time | device |", "|---|---|---|---|"]
  for row in dict.fromkeys(l["row"] for l in sent):
    lines = [l for l in sent if l["row"] == row]
    pick = lambda prefix: next((l["vdrnn"] for l in lines if l["metric"].startswith(prefix)), None)
    vals = " / ".join(_fmt(pick(p), 4) for p in ("test RMSE, last", "MC test", "lowest"))
    first = lines[0]
    run = first["status"] if first["status"] != "done" else f"{first['epochs']} epochs"
    run += f", {_wall(first['wall_s'])}" if first["wall_s"] else ""
    out.append(f"| {row} | {vals} | {run} | {first['device'] or '–'} |")
  return "\n".join(out + [README_END])


def _wall(s) -> str:
  """A wall time in seconds as minutes or hours ("–" when unknown)."""
  return "–" if not s else (f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min")


def _missing(line: dict) -> str:
  """The value cell of a line without a number."""
  none = line["status"] == "not run" or line["status"].startswith("0/")
  return "not run" if none else "not finished"

