"""Writing the report: every row's workdir collected and merged with the committed records,
then ``results.json``, ``results.csv``, ``README_table.md``, the sentiment learning curves
(``sentiment_{lstm,gru}.png``), each MC curve's figure, and, when the results directory is the
repository's ``launch/results``, the README's results block (between its markers; nothing
else in the README changes). Rows without a result show "not run" and their command, never a
number.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time

from launch.collect import collect, merge, read_json
from launch.rows import ROWS
from launch.tables import (README_END, README_START, markdown, ptb_lines, readme_summary,
                           sentiment_lines)


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


def plot_ptb(records: list[dict], results_dir: str) -> list[str]:
  """``ptb_valid.png``: validation perplexity (the Lua formula's) against epochs for every PTB
  row with a curve (seed families as their seed rows), each with its paper value dashed."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  recs = [r for r in records if r["task"] == "ptb" and
          any(c.get("valid_ppl_lua") is not None for c in r["curve"])]
  if not recs:
    return []
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for r in recs:
    pts = [(c["epoch"], c["valid_ppl_lua"]) for c in r["curve"] if c.get("valid_ppl_lua")]
    line, = ax.plot(*zip(*pts), lw=1.2, label=f"{r['row']} ({r['device'] or '?'})")
    paper_row = next((row for row in ROWS if row.name == r["row"]), None)
    pap = paper_row.paper if paper_row else None
    if pap and pap.get("valid"):
      ax.axhline(pap["valid"][0], color=line.get_color(), ls="--", lw=0.8)
  ax.set_yscale("log")
  ax.set_ylim(top=min(200, ax.get_ylim()[1]))
  ax.set_xlabel("epoch")
  ax.set_ylabel("validation perplexity (Lua formula)")
  ax.set_title("PTB validation curves (dashed: the paper's final value)", fontsize=9)
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=7)
  fig.tight_layout()
  path = os.path.join(results_dir, "ptb_valid.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return [path]


def plot_imdb(records: list[dict], results_dir: str) -> list[str]:
  """``imdb_risk_coverage.png``: accuracy against coverage (inputs accepted by predictive
  entropy) of each done IMDB row (MC dropout where it ran, else the dropout approximation),
  and of each deep ensemble (its members' mean); ``imdb_reliability.png``: the same
  predictions' reliability diagram (15 bins, as the table's ECE). Drawn from the records'
  ``figures`` (``collect.imdb_figure_data``), so rows run on other machines are in them."""
  from vdrnn import plots  # noqa: PLC0415
  data = [r["figures"] for r in records
          if r["task"] == "imdb" and r["status"] == "done" and r.get("figures")]
  if not data:
    return []
  paths = [os.path.join(results_dir, f"imdb_{name}.png") for name in ("risk_coverage",
                                                                     "reliability")]
  plots.draw_risk_coverage(paths[0], {d["label"]: d["risk_coverage"] for d in data})
  plots.draw_reliability(paths[1], {d["label"]: d["reliability"] for d in data})
  return paths


def report(root: str, results_dir: str, extra: list[str]) -> list[dict]:
  """Collects every row from ``<root>/<row>`` (``extra``: the flags a not-run row's command
  gets), writes the report into ``results_dir`` and returns the records."""
  os.makedirs(results_dir, exist_ok=True)
  committed = read_json(os.path.join(results_dir, "results.json"))
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
  figures = (plot_ptb(records, results_dir) + plot_sentiment(records, results_dir) +
             plot_imdb(records, results_dir))
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

