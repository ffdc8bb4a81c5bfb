"""launch/reproduce.py and the modules behind it (rows, running, collect, tables, report):
--dry_run lists every row with its command; the report is built from fixture workdirs (missing
rows "not run" with their command, seeds aggregated, committed rows kept); rows run, skip and
extend through the sweep queue; launch/run_row.py records the device."""

import csv
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from launch import collect, paper, report, run_row, running, tables
from launch.rows import DEFAULT_ROOT, ROWS

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, env=None, timeout=300):
  return subprocess.run([sys.executable, "-m", "launch.reproduce", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout, env=env)


def test_dry_run_lists_every_row_and_its_command(tmp_path):
  out = cli("--dry_run", "--workdir_root", str(tmp_path / "r"))
  assert out.returncode == 0, out.stderr
  for row in ROWS:
    overrides = [f"--config.{p}={v}" for p, v in row.overrides]
    want = shlex.join(["python", "-m", "vdrnn.train", "--config", row.config, "--workdir",
                       str(tmp_path / "r" / row.name), *overrides])
    assert f"{row.name} [not run" in out.stdout and want in out.stdout, row.name
  names = {r.name for r in ROWS}
  schemes = ("variational", "naive", "none")
  sentiment = [f"sentiment_{c}_{s}" for c in ("lstm", "gru") for s in schemes]
  for required in ("zaremba_small_seed0", "zaremba_small_seed1", "zaremba_small_seed2",
                   "medium_naive", "medium_variational_tied", "medium_variational_untied",
                   "large_variational_tied", "large_variational_untied", "large_zaremba",
                   "large_variational_untied_tied_embeddings", *sentiment):
    assert required in names
  # --only with a prefix, and overrides passed through to the commands.
  out = cli("--dry_run", "--only", "sentiment_gru", "--epochs", "7", "--override",
            "eval.mc_samples=10", "--workdir_root", str(tmp_path / "r"))
  assert out.returncode == 0, out.stderr
  assert out.stdout.count("python -m vdrnn.train") == 3 and "sentiment_lstm" not in out.stdout
  assert "--config.eval.mc_samples=10 --config.train.num_epochs=7" in out.stdout
  assert "7 epochs" in out.stdout
  # a whole row name picks that row alone, though others start with it
  out = cli("--dry_run", "--only", "sentiment_lstm_variational", "--workdir_root", str(tmp_path))
  assert out.stdout.count("python -m vdrnn.train") == 1 and "tuned" not in out.stdout
  bad = cli("--dry_run", "--only", "nope")
  assert bad.returncode == 2 and "matches no row" in bad.stderr


def write(path: Path, obj) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  if isinstance(obj, list):
    path.write_text("".join(json.dumps(r) + "\n" for r in obj))
  else:
    path.write_text(json.dumps(obj))


def fake_workdir(root: Path, name: str, *, seed=0, epochs=13, results=None, history=(),
                 device="cpu", wall=(100.0,)):
  wd = root / name
  write(wd / "config.json", {"seed": seed, "train": {"num_epochs": epochs}})
  write(wd / "metrics.jsonl", [{"event": "train", "step": 1, "epoch": 1}] +
        [{"event": "epoch", "step": i + 1, **h} for i, h in enumerate(history)])
  start = 1000.0
  sessions = []
  for w in wall:
    sessions.append({"command": f"python -m vdrnn.train --workdir {wd}", "device": device,
                     "start": start, "end": start + w, "exit": 0})
    start += w + 10
  write(wd / "run_info.json", {"sessions": sessions})
  if results is not None:
    write(wd / "results.json", results)


def test_report_from_fixture_workdirs(tmp_path):
  root, out = tmp_path / "root", tmp_path / "results"
  fake_workdir(root, "zaremba_small_seed0", seed=0, wall=(50.0, 70.0),
               results={"valid_ppl": 122.0, "valid_ppl_lua": 121.0, "test_ppl": 117.0})
  fake_workdir(root, "zaremba_small_lua_biases_seed2", seed=2,
               results={"valid_ppl": 121.0, "valid_ppl_lua": 120.0, "test_ppl": 116.0})
  fake_workdir(root, "zaremba_small_seed1", seed=1,
               results={"valid_ppl": 120.0, "valid_ppl_lua": 119.0, "test_ppl": 115.0})
  fake_workdir(root, "large_variational_untied", results={"valid_ppl": 79.0, "valid_ppl_lua": 78.0,
                                                          "test_ppl": 75.5, "mc_test_ppl": 73.6,
                                                          "mc_samples": 1000},
               device="NVIDIA H100 80GB HBM3 (gpu)", epochs=55,
               history=[{"epoch": 1, "valid_ppl_lua": 150.0}, {"epoch": 2, "valid_ppl_lua": 120.0}])
  # its MC curve: perplexity with the first k of its 1000 samples, and the figure
  write(root / "large_variational_untied" / "mc_test.json",
        {"ppl_by_samples": [73.6 + 10.0 / k for k in range(1, 1001)]})
  (root / "large_variational_untied" / "mc_test.png").write_bytes(b"png")
  hist = [{"epoch": e, "test_rmse": 0.2 - 0.01 * e, "train_rmse": 0.1} for e in range(1, 6)]
  fake_workdir(root, "sentiment_lstm_variational", epochs=5, history=hist,
               results={"test_rmse": 0.15, "test_rmse_mc": 0.149, "mc_samples": 10, "step": 50,
                        "test_ll": -2.07, "test_ll_mc": -2.07})
  # its final checkpoint re-evaluated by today's code: the fitted-tau metrics join its results
  write(root / "sentiment_lstm_variational" / "eval_latest_test.json",
        {"step": 50, "test_ll_fit": 0.41, "test_ll_fit_mc": 0.45, "test_std_epistemic_mc": 0.031,
         "test_std_aleatoric_fit_mc": 0.148, "test_rmse": 0.15})
  # Still running, its current session not ended: the epochs' times count toward its wall time.
  fake_workdir(root, "sentiment_lstm_naive", epochs=5, wall=(20.0,),
               history=[{**h, "time_s": 25.0, "eval_time_s": 5.0} for h in hist[:2]])

  recs = {r["row"]: r for r in report.report(str(root), str(out), [])}
  # commands as anyone runs them, under the default root: no path of this machine
  assert recs["zaremba_small_seed0"]["command"] == (
      "python -m vdrnn.train --workdir workdirs/reproduce/zaremba_small_seed0")
  assert str(tmp_path) not in (out / "results.json").read_text()
  assert recs["zaremba_small_seed0"]["wall_s"] == 120.0
  assert recs["zaremba_small_seed0"]["status"] == "done"
  assert recs["sentiment_lstm_naive"]["status"] == "partial (2/5 epochs)"
  assert recs["sentiment_lstm_naive"]["wall_s"] == 60.0
  assert recs["medium_naive"]["status"] == "not run"

  table = (out / "README_table.md").read_text()
  lines = table.splitlines()
  # Seeds aggregated: mean 116 +- sd 1.41 against 114.5.
  fam = next(l for l in lines if l.startswith("| zaremba_small (mean of 2 seeds) | test "))
  assert "| 114.5 | 116.00 ± 1.41 | 1.50 | 0,1 |" in fam
  lua = next(l for l in lines
             if l.startswith("| zaremba_small_lua_biases (mean of 1 seed) | test "))
  assert "| 114.5 | 116.00 | 1.50 | 2 |" in lua  # held against Zaremba small, its own family
  lua = next(l for l in lines if l.startswith("| large_variational_untied | valid (Lua formula)"))
  assert "| 77.9 ± 0.3 | 78.00 | 0.10 |" in lua and "NVIDIA H100 80GB HBM3 (gpu)" in lua
  # float32 on a GPU is XLA's default precision: TF32 matmuls, and the label says so
  assert "| NVIDIA H100 80GB HBM3 (gpu), float32 (TF32 matmuls) |" in lua
  assert recs["zaremba_small_seed0"]["device"] == "cpu, float32"
  mc = "| large_variational_untied | MC test (1000 samples) | 73.4 ± 0.0 | 73.60 | 0.20 |"
  assert any(l.startswith(mc) for l in lines)
  assert ("| large_variational_untied | 83.60 | 78.60 | 75.60 | 74.60 | 74.10 | 73.80 | 73.70 "
          "| 73.65 | 73.62 | 73.61 |") in lines
  assert (out / "large_variational_untied_mc_test.png").read_bytes() == b"png"
  assert (out / "ptb_valid.png").stat().st_size > 1000  # the validation curves
  # Rows without a result: "not run" with their command, never a number.
  med = next(l for l in lines if l.startswith("| medium_naive | test "))
  assert "| 82.7 | not run | – |" in med
  row = next(r for r in ROWS if r.name == "medium_naive")
  cmd = running.command(row, DEFAULT_ROOT, [])  # the reader's root, not this one
  assert f"* medium_naive (not run): `{cmd}`" in table and str(root) not in cmd
  partial = next(l for l in lines if l.startswith("| sentiment_lstm_naive | test RMSE, last epoch"))
  # a run still going: its latest epoch's value, marked partial with its epoch count
  assert "| 0.1800 |" in partial and "partial (2/5 epochs)" in partial
  # Sentiment: final numbers, the fixed-epoch table and one figure per cell with a curve.
  assert "| sentiment_lstm_variational | MC test RMSE (10 samples), last epoch | 0.1490 |" in table
  assert "tau fitted on training examples (dropout approx. / MC) | 0.4100 / 0.4500 |" in table
  assert "MC predictive std: epistemic / aleatoric (fitted tau) | 0.0310 / 0.1480 |" in table
  assert "| sentiment_lstm_variational | 0.1900 | 0.1800 | 0.1500 |" in table  # epochs 1, 2, 5
  # equal curves on the two epochs the partial naive row has: variational is not lower
  assert ("| sentiment_lstm_variational | sentiment_lstm_naive | 2 (to epoch 2) | 0 "
          "| not lower at epoch 2 | 0.1500 (epoch 5) | 0.1800 (epoch 2) |") in table
  assert (out / "sentiment_lstm.png").stat().st_size > 1000
  assert not (out / "sentiment_gru.png").exists()
  with open(out / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert {r["row"] for r in rows} >= {"medium_naive", "sentiment_gru_none",
                                      "zaremba_small (mean of 2 seeds)"}

  # Regenerated from the committed results alone (no workdirs): the done rows are kept, and a
  # partial row stays partial ("not run" would say it never ran).
  recs2 = {r["row"]: r for r in report.report(str(tmp_path / "empty"), str(out), [])}
  assert recs2["large_variational_untied"]["results"]["mc_test_ppl"] == 73.6
  assert recs2["large_variational_untied"]["device"] == (  # labelled once, not again
      "NVIDIA H100 80GB HBM3 (gpu), float32 (TF32 matmuls)")
  assert recs2["sentiment_lstm_naive"]["status"] == "partial (2/5 epochs)"
  assert (out / "README_table.md").read_text().count("NVIDIA H100") >= 3
  assert "| large_variational_untied | 83.60 | 78.60 |" in (out / "README_table.md").read_text()


def test_compare_curves_finds_where_one_curve_stays_below():
  # a over-fits after epoch 2; b starts worse, is lower at 3 and 4, not at 5, lower again at 6
  a = {1: 0.19, 2: 0.17, 3: 0.18, 4: 0.19, 5: 0.20, 6: 0.21}
  b = {1: 0.20, 2: 0.18, 3: 0.17, 4: 0.16, 5: 0.21, 6: 0.15, 7: 0.14}
  c = tables.compare_curves(b, a)
  assert c == {"epochs": 6, "last": 6, "lower": 3, "since": 6, "best_a": (7, 0.14),
               "best_b": (2, 0.17), "below_best": 4}
  c = tables.compare_curves(a, b)
  assert c["lower"] == 3 and c["since"] is None and c["best_a"] == (2, 0.17)
  assert c["below_best"] is None  # a never gets below b's 0.14 (b's epoch 7, beyond a's end)
  assert tables.compare_curves(a, {8: 0.1}) is None
  b[5] = 0.19  # lower from epoch 3 on
  assert tables.compare_curves(b, a)["since"] == 3
  b[6] = 0.22  # not lower at the last common epoch: no "since"
  assert tables.compare_curves(b, a)["since"] is None


def test_paper_values_are_the_papers():
  assert paper.PTB["zaremba_small"]["test"] == (114.5, None)
  assert paper.PTB["large_variational_untied"]["mc_test"] == (73.4, 0.0)
  assert paper.PTB["large_variational_untied_tied_embeddings"]["test"] == (73.2, None)
  for row in ROWS:
    assert (row.paper is not None) == (row.task == "ptb"), row.name


FAKE_TRAIN = '''
import json, os, sys
args = sys.argv[1:]
wd = args[args.index("--workdir") + 1]
ov = dict(a[len("--config."):].split("=", 1) for a in args if a.startswith("--config."))
calls = os.path.join(wd, "calls")
n = (int(open(calls).read()) if os.path.exists(calls) else 0) + 1
open(calls, "w").write(str(n))
cfg = {"seed": 0, "train": {"num_epochs": int(ov["train.num_epochs"])}}
json.dump(cfg, open(os.path.join(wd, "config.json"), "w"))
json.dump({"test_rmse": 0.2}, open(os.path.join(wd, "results.json"), "w"))
'''


def test_rows_run_skip_and_extend(tmp_path):
  (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
  env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
  args = ["--only", "sentiment_gru", "--gpus", "none", "--parallel", "2", "--module", "fake_train",
          "--workdir_root", str(tmp_path / "r")]
  first = cli(*args, "--epochs", "2", env=env)
  assert first.returncode == 0, first.stdout + first.stderr
  assert "3 runs: 0 finished, 3 to run on the CPU, 2 at a time" in first.stdout
  again = cli(*args, "--epochs", "2", env=env)
  assert "3 runs: 3 finished, 0 to run" in again.stdout
  more = cli(*args, "--epochs", "3", env=env)  # more epochs: the rows run again (resume and extend)
  assert "3 runs: 0 finished, 3 to run" in more.stdout
  assert (tmp_path / "r" / "sentiment_gru_none" / "calls").read_text() == "2"


def test_run_row_records_the_device_and_runs_vdrnn_train(tmp_path):
  wd = tmp_path / "tiny"
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
         "JAX_PLATFORMS": "cpu"}
  args = ["--config", "configs/ptb_tiny.py:none", "--workdir", str(wd),
          "--config.train.num_epochs=1", "--config.data_limit=1500"]
  out = subprocess.run([sys.executable, "-m", "launch.run_row", *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env=env)
  assert out.returncode == 0, out.stderr[-2000:]
  info = json.loads((wd / "run_info.json").read_text())
  (s,) = info["sessions"]
  assert s["device"] == f"{run_row.cpu_name()} (cpu)" and s["exit"] == 0 and s["end"] > s["start"]
  assert s["xla_flags"] == env["XLA_FLAGS"]  # the run's XLA flags (the GPU's determinism) kept
  assert s["command"].startswith("python -m vdrnn.train --config configs/ptb_tiny.py:none")
  res = json.loads((wd / "results.json").read_text())
  assert 0 < res["valid_ppl_lua"] < res["valid_ppl"]  # the Lua formula divides by more tokens


def test_report_rewrites_only_the_readme_results_block(tmp_path):
  """``--report`` writes the README's results table between its markers and nothing else."""
  readme = tmp_path / "README.md"
  readme.write_text(
      f"# title\n\n{tables.README_START}\nold table\n{tables.README_END}\n\nrest\n")
  root = tmp_path / "runs"
  fake_workdir(root, "large_variational_untied", results={"valid_ppl": 79.0, "valid_ppl_lua": 78.0,
                                                          "test_ppl": 75.5, "mc_test_ppl": 73.6,
                                                          "mc_samples": 1000},
               device="NVIDIA H100 80GB HBM3 (gpu)", epochs=55,
               history=[{"epoch": 1, "valid_ppl_lua": 150.0}, {"epoch": 2, "valid_ppl_lua": 120.0}])
  records = collect.merge([collect.collect(r, str(root), []) for r in ROWS], None)
  summary = tables.readme_summary(tables.ptb_lines(records),
                                  tables.sentiment_lines(records))
  assert report.update_readme(str(readme), summary)
  text = readme.read_text()
  assert text.startswith("# title\n\n") and text.endswith("\n\nrest\n") and "old table" not in text
  row = next(l for l in text.splitlines() if l.startswith("| large_variational_untied |"))
  assert "77.9 ± 0.3 / 75.2 ± 0.2 / 73.4 ± 0.0" in row and "78.0 / 75.5 / 73.6" in row
  assert "55 epochs" in row and "H100" in row
  assert "| medium_naive | 86.2 / 82.7 | not run | not run |" in text
  assert not report.update_readme(str(tmp_path / "missing.md"), summary)


def test_readme_summary_shows_each_seed_family_once_as_its_mean(tmp_path):
  """A family's seed rows are one README line, mean ± sd of the done seeds with their MC test
  and its sample count, where its first row stands; the full table keeps every seed row."""
  root = tmp_path / "runs"
  for seed, test, mc in ((0, 79.0, 78.0), (2, 80.0, 79.0)):
    fake_workdir(root, "medium_variational_tied" + (f"_seed{seed}" if seed else ""), seed=seed,
                 epochs=39, results={"valid_ppl": 83.0, "valid_ppl_lua": 82.0, "test_ppl": test,
                                     "mc_test_ppl": mc, "mc_samples": 100})
  records = collect.merge([collect.collect(r, str(root), []) for r in ROWS], None)
  ptb = tables.ptb_lines(records)
  lines = tables.readme_summary(ptb, tables.sentiment_lines(records)).splitlines()
  assert not [l for l in lines if l.startswith("| medium_variational_tied")
              and "(mean of" not in l]
  fam = [l for l in lines if l.startswith("| medium_variational_tied (mean of 2 seeds) |")]
  assert len(fam) == 1 and "| 82.0 ± 0.0 / 79.5 ± 0.7 / 78.5 ± 0.7 (100 MC samples) |" in fam[0]
  assert "| 2/3 seeds done, 3 min |" in fam[0]  # the seeds' wall times added: 2 x 100 s
  names = [l.split(" | ")[0] for l in lines if l.startswith("| ")]
  # in rows.py order: after medium_naive, before medium_variational_untied
  assert names.index("| medium_naive") < names.index("| medium_variational_tied (mean of 2 seeds)")
  assert names.index("| medium_variational_tied (mean of 2 seeds)") < names.index(
      "| medium_variational_untied")
  assert "| zaremba_small (mean of 0 seeds) | 120.7 / 114.5 | not run | 0/3 seeds done |" in (
      "\n".join(lines))
  mc = next(l for l in ptb if l["row"] == "medium_variational_tied (mean of 2 seeds)"
            and l["metric"] == "MC test")
  assert mc["vdrnn"] == 78.5 and mc["samples"] == 100
  # a family without an MC test anywhere has no MC line
  assert not [l for l in ptb if l["row"].startswith("zaremba_small (") and l["metric"] == "MC test"]


def test_commands_name_no_path_of_the_machine():
  """Both spellings of ``--workdir`` land under the default root, whatever root the row ran in."""
  ran = "python -m vdrnn.train --config configs/ptb_small.py --workdir /scratch/r/medium_naive"
  assert collect.portable(ran) == ("python -m vdrnn.train --config configs/ptb_small.py "
                                   "--workdir workdirs/reproduce/medium_naive")
  assert collect.portable("python -m vdrnn.train --workdir=/scratch/r/large_zaremba/") == (
      "python -m vdrnn.train --workdir=workdirs/reproduce/large_zaremba")


def test_committed_results_name_no_path_of_the_machine():
  """Every command in the committed results is as the report writes it (``collect.portable``)."""
  results = ROOT / "launch" / "results"
  for path in results.rglob("results.json"):
    for rec in json.loads(path.read_text())["rows"]:
      assert collect.portable(rec["command"]) == rec["command"], (path, rec["row"])
  for path in [*results.rglob("*.md"), *results.rglob("*.csv")]:
    assert not re.search(r"--workdir[= ]/", path.read_text()), path


def test_imdb_report_shows_the_deep_ensemble_population(tmp_path, capsys):
  """The ensemble row is a population workdir: its ensemble metrics (``seq_eval.
  ensemble_metrics`` of the members' saved predictions) against a direct computation on the
  mean of the members' probabilities (accuracy, NLL, OOD AUROC as a pairwise count); the
  report's table row and figure; kept from the committed results when the workdirs are gone."""
  import numpy as np
  from vdrnn import seq_eval
  root, out = tmp_path / "root", tmp_path / "results"
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 40)
  name = "imdb_lstm_none_ensemble"
  members, oods, dirs = [], [], []
  for k in range(5):
    logits = rng.normal(size=(40, 2)) + 1.5 * np.eye(2)[labels]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    q = rng.dirichlet([2.0, 2.0], 30)
    members.append(p)
    oods.append(q)
    d = root / name / f"member_{k:02d}"
    d.mkdir(parents=True)
    np.savez(d / "predictions_test.npz", labels=labels, probs=p)
    np.savez(d / "predictions_ood_ptb_test.npz", probs=q)
    dirs.append(str(d))
  ensemble = seq_eval.ensemble_metrics(dirs, 15)
  fake_workdir(root, name, epochs=15, results={"members": [{"seed": k} for k in range(5)],
                                               "ensemble": ensemble, "step": 9})
  fake_workdir(root, "imdb_lstm_variational_untied", epochs=15,
               results={"test_acc": 0.8, "test_acc_mc": 0.81, "test_nll_mc": 0.4, "mc_samples": 100,
                        "test_ood_ptb_auroc_entropy_mc": 0.7, "test_ood_ptb_auroc_mi_mc": 0.75,
                        "test_ood_ptb_aupr_entropy_mc": 0.6, "test_ood_ptb_aupr_mi_mc": 0.65})
  recs = {r["row"]: r for r in report.report(str(root), str(out), [])}
  ens = recs[name]
  p, q = np.mean(members, 0), np.mean(oods, 0)
  assert ens["status"] == "done" and ens["members"] == 5
  assert ens["results"]["test_acc"] == np.mean(p.argmax(1) == labels)
  assert abs(ens["results"]["test_nll"] + np.mean(np.log(p[np.arange(40), labels]))) < 1e-12
  h = lambda x: -np.sum(x * np.log(x), 1)  # noqa: E731
  pairs = np.mean([(o > i) + 0.5 * (o == i) for o in h(q) for i in h(p)])
  assert abs(ens["results"]["test_ood_ptb_auroc_entropy"] - pairs) < 1e-12
  assert "test_ood_ptb_auroc_mi" in ens["results"]  # disagreement between members
  assert "test_acc_mc" not in ens["results"]  # no member has MC samples
  table = (out / "README_table.md").read_text()
  assert f"| {name} | deep ensemble (5 members) |" in table
  assert "| imdb_lstm_variational_untied | MC dropout (100) | 0.8100 | 0.4000 |" in table
  assert "| 0.700 / 0.750 | 0.600 / 0.650 | – | – |" in table  # AUROC, AUPR; no Pang & Lee
  assert (out / "imdb_risk_coverage.png").stat().st_size > 1000
  assert (out / "imdb_reliability.png").stat().st_size > 1000
  # the figures' data is in the record: what the ensemble's members' mean gives directly
  fig = ens["figures"]
  assert fig["label"] == name and fig["risk_coverage"]["coverage"][-1] == 1.0
  assert fig["risk_coverage"]["accuracy"][-1] == ens["results"]["test_acc"]
  assert abs(fig["reliability"]["ece"] - ens["results"]["test_ece"]) < 1e-12
  assert sum(fig["reliability"]["count"]) == 40
  assert recs["imdb_lstm_variational_untied"].get("figures") is None  # no arrays: no figure
  for png in ("imdb_risk_coverage.png", "imdb_reliability.png"):
    (out / png).unlink()
  again = {r["row"]: r for r in report.report(str(tmp_path / "empty"), str(out), [])}
  assert again[name]["results"] == ens["results"] and again[name]["members"] == 5
  assert again[name]["figures"] == json.loads(json.dumps(fig))  # from the committed record
  assert (out / "imdb_risk_coverage.png").stat().st_size > 1000  # drawn again without workdirs
  assert (out / "imdb_reliability.png").stat().st_size > 1000
  # launch.check_predictions: the ensemble's table from its members' arrays, averaged
  from launch import check_predictions
  write(root / name / "config.json", {"seed": 0, "train": {"num_epochs": 15},
                                      "eval": {"ece_bins": 15}})
  assert check_predictions.check(str(out), str(root), 1e-6) == 1  # the other row has no arrays
  said = capsys.readouterr().out
  assert "imdb_lstm_variational_untied: cannot read its predictions" in said
  assert "1 row-modes checked, 1 beyond 1e-06: imdb_lstm_variational_untied\n" in said
  line = next(l for l in said.splitlines() if l.startswith(f"{name} probs:"))
  assert float(line.rsplit(" ", 1)[1]) <= 1e-12


FAKE_GPU_ROW = '''
import json, os, sys, time
args = sys.argv[1:]
wd = args[args.index("--workdir") + 1]
ov = dict(a[len("--config."):].split("=", 1) for a in args if a.startswith("--config."))
os.makedirs(os.path.join(wd, "checkpoints"), exist_ok=True)
open(os.path.join(wd, "checkpoints", "big"), "w").write("x")
open(os.path.join(wd, "metrics.jsonl"), "w").write('{"event": "epoch", "epoch": 1}\\n')
json.dump({"train": {"num_epochs": int(ov.get("train.num_epochs", 1))}},
          open(os.path.join(wd, "config.json"), "w"))
time.sleep(float(os.environ.get("FAKE_ROW_SECONDS", "2")))
env = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "VDRNN_DATA",
                                      "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_FLAGS")}
json.dump({"overrides": ov, "env": env}, open(os.path.join(wd, "results.json"), "w"))
seeds = ov["population.seed"].split(",") if "population.seed" in ov else []
for k, seed in enumerate(seeds):
  m = os.path.join(wd, f"member_{k:02d}")  # a population's member, laid out like a single run
  os.makedirs(os.path.join(m, "checkpoints"))
  json.dump({"seed": int(seed), "train": {"num_epochs": 1}},
            open(os.path.join(m, "config.json"), "w"))
  json.dump({"overrides": ov, "seed": int(seed)}, open(os.path.join(m, "results.json"), "w"))
'''


def test_gpu_rows_script_runs_each_row_with_its_precision_and_packs_it(tmp_path):
  """launch/gpu_rows.sh, as a lent GPU runs it (with a stand-in for vdrnn.train): every row
  starts at once through launch.reproduce with its own config and overrides and the given
  precision, and comes back as a tarball of its workdir without checkpoints."""
  import tarfile
  (tmp_path / "fake_gpu_row.py").write_text(FAKE_GPU_ROW)
  out = tmp_path / "out"
  env = {**os.environ, "PYTHONPATH": str(tmp_path), "JAX_PLATFORMS": "cpu", "OUT": str(out),
         "GPU_ROWS_DIR": str(tmp_path / "w"), "REPRODUCE_FLAGS": "--module fake_gpu_row",
         "ROWS": "medium_naive:bfloat16 imdb_lstm_naive"}
  run = lambda *a: subprocess.run(["bash", "launch/gpu_rows.sh", *a], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=120)
  first = run("start", "60")
  assert first.returncode == 0, first.stdout + first.stderr
  assert "=== medium_naive: ended" in first.stdout and "=== imdb_lstm_naive: ended" in first.stdout
  for row, dtype in (("medium_naive", "bfloat16"), ("imdb_lstm_naive", "float32")):
    with tarfile.open(out / f"{row}.tgz") as tar:
      names = set(tar.getnames())
      assert {f"{row}/config.json", f"{row}/metrics.jsonl", f"{row}/results.json"} <= names
      assert not any("checkpoints" in n for n in names)
      res = json.load(tar.extractfile(f"{row}/results.json"))
    assert res["overrides"]["train.compute_dtype"] == dtype
    assert res["overrides"]["train.checkpoint_every_steps"] == "0"
    assert res["env"] == {"CUDA_VISIBLE_DEVICES": "0", "VDRNN_DATA": str(ROOT / ".gpu" / "data"),
                          "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.450",
                          "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")
                                       + " --xla_gpu_deterministic_ops=true"}
  assert res["overrides"]["eval.mc_samples"] == "100"  # the row's own overrides (IMDB_EVAL)
  again = run("wait", "30")  # the second call: nothing left running, it packs and reports
  assert again.returncode == 0 and "=== medium_naive: ended" in again.stdout
  env["GPU_ROWS_DIR"] = str(tmp_path / "fresh")  # call 2 on a fresh machine: the rows are lost
  fresh = run("wait", "30")
  assert fresh.returncode == 2 and "ended" not in fresh.stdout
  assert "not started on this machine: medium_naive imdb_lstm_naive" in fresh.stdout
  env["GPU_ROWS_DIR"] = str(tmp_path / "w")
  # call 1 ends at its deadline with a row still running: a start of more rows is refused (their
  # memory shares would not fit beside it), a wait sees it to its end
  env.update(GPU_ROWS_DIR=str(tmp_path / "slow"), FAKE_ROW_SECONDS="10", ROWS="medium_naive")
  assert "still running after" in run("start", "1").stdout
  env["ROWS"] = "imdb_lstm_naive"
  more = run("start", "60")
  assert more.returncode == 2 and "still running on this machine: medium_naive" in more.stdout
  assert "started" not in more.stdout
  env["ROWS"] = "medium_naive"
  assert "=== medium_naive: ended" in run("wait", "90").stdout
  env.update(GPU_ROWS_DIR=str(tmp_path / "w"), FAKE_ROW_SECONDS="2")
  # two seeds of one row as one population: each row comes back as its own tarball
  seeds = "medium_variational_tied_seed1+medium_variational_tied_seed2"
  env.update(GPU_ROWS_DIR=str(tmp_path / "pop"), ROWS=f"{seeds}:bfloat16")
  pop = run("start", "60")
  assert pop.returncode == 0 and f"=== {seeds}: ended" in pop.stdout, pop.stdout + pop.stderr
  for k, row in enumerate(seeds.split("+")):
    with tarfile.open(out / f"{row}.tgz") as tar:
      res = json.load(tar.extractfile(f"{row}/results.json"))
      assert not any("checkpoints" in n for n in tar.getnames())
    assert res["seed"] == k + 1 and res["overrides"]["population.seed"] == "1,2"
    assert res["overrides"]["train.compute_dtype"] == "bfloat16"
  assert (out / "medium_variational_tied_seed1_population.tgz").exists()
  env["ROWS"] = "medium_variational_tied_seed2+medium_variational_tied_seed1"
  backwards = run("start", "60")
  assert backwards.returncode == 2 and "as rows.py orders them" in backwards.stdout
  env.update(GPU_ROWS_DIR=str(tmp_path / "w"))
  env["ROWS"] = "medium_naive no_such_row"  # a wrong name: one line, exit 2, nothing started
  bad = run("start", "60")
  assert bad.returncode == 2 and "--only no_such_row matches no row" in bad.stdout
  assert "started" not in bad.stdout
  env["ROWS"] = " ".join(f"medium_naive:{k}" for k in range(8))  # more than 8 files would return
  many = run("start", "60")
  assert many.returncode == 2 and "at most 7 a call" in many.stdout


def test_variational_against_naive_is_the_difference_of_the_two_rows_test_perplexities():
  """tables.ptb_comparisons: vdrnn's gain over naive is the variational row's test (and MC test)
  minus the naive row's test, shown only when both rows are done; the paper's likewise."""
  def line(row, metric, paper, v, status="done", device="dev"):
    return {"row": row, "metric": metric, "paper": paper, "vdrnn": v, "status": status,
            "device": device}
  ptb = [line("medium_naive", "test", (82.7, None), 82.0),
         line("medium_variational_untied", "test", (79.7, 0.1), 79.5),
         line("medium_variational_untied", "MC test", (78.6, 0.1), 78.25),
         line("medium_variational_tied", "test", (79.7, 0.1), 90.0, "partial (3/39 epochs)"),
         line("medium_variational_tied", "MC test", (79.0, 0.1), None, "partial (3/39 epochs)")]
  untied, tied = tables.ptb_comparisons(ptb)  # the large pair has no lines: left out
  assert (untied["naive"], untied["variational"]) == ("medium_naive", "medium_variational_untied")
  assert untied["vdrnn_gain"] == [79.5 - 82.0, 78.25 - 82.0]
  assert untied["paper_gain"] == [79.7 - 82.7, 78.6 - 82.7]
  paper, ours, device = tables.comparison_cells(untied)
  assert paper == "82.7 → 79.7, MC 78.6 (-3.0, MC -4.1)"
  assert ours == "82.0 → 79.5, MC 78.2 (-2.5, MC -3.8)" and device == "dev (both)"
  assert tied["vdrnn"] == [82.0, None, None] and tied["vdrnn_gain"] == [None, None]
  assert tables.comparison_cells(tied)[1] == (
      "waiting for medium_variational_tied: partial (3/39 epochs)")
  assert "| medium | medium_naive → medium_variational_untied |" in "\n".join(
      tables.comparison_table(ptb))


def test_a_committed_record_takes_its_rows_grouping_from_rows_py():
  """A row run elsewhere keeps its committed numbers, but its family (the seeds it is averaged
  with) is the one ``launch/rows.py`` gives it now."""
  now = {"row": "medium_variational_tied", "family": "medium_variational_tied", "task": "ptb",
         "note": "n", "status": "not run", "command": "python -m vdrnn.train"}
  old = {**now, "family": "", "status": "done", "results": {"test_ppl": 78.9},
         "device": "cpu, bfloat16"}
  (rec,) = collect.merge([now], {"rows": [old]})
  assert rec["status"] == "done" and rec["results"] == {"test_ppl": 78.9}
  assert rec["family"] == "medium_variational_tied"


def test_a_committed_partial_row_stays_until_a_run_here_gets_further():
  """A partial row committed from another machine is not erased by an empty workdir root (a
  fresh clone) or by a restart with fewer epochs; a run here with more epochs, or done, wins."""
  now = {"row": "sentiment_gru_naive", "family": "", "task": "sentiment", "note": "",
         "status": "not run", "command": "python -m vdrnn.train", "epochs": None}
  old = {**now, "status": "partial (83/250 epochs)", "epochs": 83, "device": "elsewhere"}
  def merged(**rec):
    (out,) = collect.merge([{**now, **rec}], {"rows": [old]})
    return out["status"], out["device"].split(",")[0]  # with its precision appended
  assert merged() == ("partial (83/250 epochs)", "elsewhere")
  assert merged(status="partial (3/250 epochs)", epochs=3, device="here") == (
      "partial (83/250 epochs)", "elsewhere")
  assert merged(status="partial (84/250 epochs)", epochs=84, device="here") == (
      "partial (84/250 epochs)", "here")
  assert merged(status="done", epochs=30, device="here") == ("done", "here")


def test_seeds_together_trains_rows_as_one_population_and_writes_each_rows_workdir(tmp_path):
  """``--seeds_together``: two rows that differ only in their seed train as one population; each
  member becomes its row's workdir (its config with the row's overrides and seed, curve,
  results, the population's run_info). Run again, it skips them; rows that differ in more
  than the seed, or a row workdir in the way, are one line and exit 2 before anything trains."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}  # batch 20
  small = ["--epochs", "1", "--override", "data_limit=1500", "--gpus", "none"]
  pair = ["--only", "zaremba_small_seed0,zaremba_small_seed1", *small]
  together = cli(*pair, "--seeds_together", "--workdir_root", str(tmp_path / "pop"), env=env)
  assert together.returncode == 0, together.stdout + together.stderr
  rows = {r.name: r for r in ROWS}
  for k, name in enumerate(("zaremba_small_seed0", "zaremba_small_seed1")):
    wd = tmp_path / "pop" / name
    cfg = json.loads((wd / "config.json").read_text())  # the row's config, overrides and seed
    assert (cfg["seed"], cfg["model"]["lua_biases"], cfg["data_limit"]) == (k, False, 1500)
    info = json.loads((wd / "run_info.json").read_text())
    assert info["population"]["member"] == k and "population.seed=0,1" in info["sessions"][-1][
        "command"]
    rec = collect.collect(rows[name], str(tmp_path / "pop"), [])
    assert rec["status"] == "done" and rec["seed"] == k and rec["epochs"] == 1
  # member k is the single run with its config (tests/test_population.py checks the numbers)
  got = json.loads((tmp_path / "pop" / "zaremba_small_seed1" / "results.json").read_text())
  assert got["seed"] == 1 and got["step"] == 3 and got["test_ppl"] > 1
  again = cli(*pair, "--seeds_together", "--workdir_root", str(tmp_path / "pop"))
  assert again.returncode == 0 and "1 runs: 1 finished, 0 to run" in again.stdout
  differ = cli("--only", "zaremba_small_seed0,medium_naive", *small, "--seeds_together",
               "--workdir_root", str(tmp_path / "x"))
  assert differ.returncode == 2 and "differ in more than their seed" in differ.stderr
  (tmp_path / "y" / "zaremba_small_seed1").mkdir(parents=True)
  in_way = cli(*pair, "--seeds_together", "--workdir_root", str(tmp_path / "y"))
  assert in_way.returncode == 2 and "move them aside" in in_way.stderr
  assert sorted(os.listdir(tmp_path / "y")) == ["zaremba_small_seed1"]
