"""launch/sweep.py: grid expansion, queueing, skip / resume, summary, SLURM script.

Runs use a stand-in for ``vdrnn.train`` (``--module``) that writes a ``results.json`` at once,
so these tests take seconds; the stand-in fails its first call for one grid point, as an
interrupted run would.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs import ptb_tiny
from launch import sweep
from vdrnn.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

FAKE_TRAIN = '''
import json, os, sys, time
args = sys.argv[1:]
wd = args[args.index("--workdir") + 1]
ov = dict(a[len("--config."):].split("=", 1) for a in args if a.startswith("--config."))
calls = os.path.join(wd, "calls")
n = (int(open(calls).read()) if os.path.exists(calls) else 0) + 1
open(calls, "w").write(str(n))
if ov["model.p_h"] == "0.2" and ov["model.p_x"] == "0.5" and n == 1:
  sys.exit("simulated crash")
time.sleep(0.2)
ph, px = float(ov["model.p_h"]), float(ov["model.p_x"])
valid = 100 + 100 * (ph - 0.1) ** 2 + 10 * px
res = {"valid_ppl": valid, "test_ppl": valid - 3, "best_valid_ppl": valid, "step": 1,
       "overrides": ov, "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}
json.dump(res, open(os.path.join(wd, "results.json"), "w"))
'''

GRID = ["--grid", "p_emb,p_h=0,0.1,0.2", "--grid", "p_x,p_out=0.3,0.5"]


def run_sweep(tmp_path, *extra):
  (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
  env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
  cmd = [
      sys.executable, "-m", "launch.sweep", "--config", "configs/ptb_tiny.py", *GRID,
      "--workdir_root",
      str(tmp_path / "sweep"), "--module", "fake_train", "--config.train.num_epochs=2", *extra
  ]
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_plan_ties_keys_and_takes_the_product():
  runs = sweep.plan(ptb_tiny.get_config(), ["p_emb,p_h=0,0.1", "p_x,p_out=0.3,0.5", "train.lr=1"],
                    "root")
  assert len(runs) == 4
  assert runs[1]["point"] == {
      "model.p_emb": "0",
      "model.p_h": "0",
      "model.p_x": "0.5",
      "model.p_out": "0.5",
      "train.lr": "1"
  }
  assert runs[1]["workdir"] == os.path.join("root", "p_emb=0_p_h=0_p_x=0.5_p_out=0.5_lr=1")
  assert sweep.resolve_key(ptb_tiny.get_config(), "seed") == "seed"
  for bad in ["seq_length=5", "p_q=1", "p_h=x", "p_h"]:
    with pytest.raises(UserError):
      sweep.plan(ptb_tiny.get_config(), [bad], "root")


BAD_INPUTS = [
    ("--grid", "p_zz=0,1"),  # not a field
    ("--grid", "p_h"),  # no values
    ("--grid", "p_h=x"),  # not a float
    ("--grid", "p_h=0", "--grid", "model.p_h=1"),  # one key in two axes
    ("--grid", "p_h=0", "--parallel", "x"),  # a flag absl cannot parse
    ("--grid", "p_h=0", "--config.model.nope=1"),  # a pass-through field that does not exist
    ("--grid", "p_h=0", "--config.model.p_h=0.5"),  # a pass-through that would override the grid
    ("--grid", "p_h=0", "stray"),
    ("--grid", "p_h=0", "--config", "configs/ptb_tiny.py:nope"),  # the config file rejects its arg
]


def test_bad_input_is_one_line_and_exit_2(tmp_path):
  """Every bad grid or flag: ``error: ...`` alone on stderr, exit status 2, nothing run."""
  for bad in BAD_INPUTS:
    cmd = [sys.executable, "-m", "launch.sweep", "--config", "configs/ptb_tiny.py",
           "--workdir_root", str(tmp_path / "sweep"), "--dry_run", *bad]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, (bad, out.returncode, out.stderr)
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (bad, out.stderr)
    assert "Traceback" not in out.stderr and not out.stdout, bad
  assert not (tmp_path / "sweep").exists()


def test_sweep_runs_queues_skips_resumes_and_summarizes(tmp_path):
  first = run_sweep(tmp_path, "--gpus", "none", "--parallel", "2")
  assert first.returncode == 1, first.stdout + first.stderr  # the simulated crash
  assert "6 runs: 0 finished, 6 to run on the CPU, 2 at a time" in first.stdout
  assert "FAILED (exit 1" in first.stdout
  assert "1 run(s) failed: p_emb=0.2_p_h=0.2_p_x=0.5_p_out=0.5" in first.stderr
  root = tmp_path / "sweep"
  res = json.loads((root / "p_emb=0.1_p_h=0.1_p_x=0.3_p_out=0.3" / "results.json").read_text())
  assert res["overrides"] == {
      "model.p_emb": "0.1",
      "model.p_h": "0.1",
      "model.p_x": "0.3",
      "model.p_out": "0.3",
      "train.num_epochs": "2"
  }

  second = run_sweep(tmp_path, "--gpus", "none", "--parallel", "2")
  assert second.returncode == 0, second.stdout + second.stderr
  assert "6 runs: 5 finished, 1 to run" in second.stdout
  calls = {d.name: int((d / "calls").read_text()) for d in root.iterdir() if d.is_dir()}
  assert calls.pop("p_emb=0.2_p_h=0.2_p_x=0.5_p_out=0.5") == 2 and set(calls.values()) == {1}

  with open(root / "summary.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 6 and all(r["status"] == "done" for r in rows)
  valid = [float(r["valid_ppl"]) for r in rows]
  assert valid == sorted(valid)
  assert (rows[0]["p_h"], rows[0]["p_x"]) == ("0.1", "0.3")
  header = next(l for l in second.stdout.splitlines() if l.lstrip().startswith("p_emb")).split()
  assert header[:4] == ["p_emb", "p_h", "p_x", "p_out"] and "test_ppl" in header


def test_sweep_puts_one_run_per_gpu(tmp_path):
  out = run_sweep(tmp_path, "--gpus", "3,5")
  assert "6 runs: 0 finished, 6 to run on GPUs 3,5" in out.stdout
  gpus = {json.loads(p.read_text())["gpu"] for p in (tmp_path / "sweep").glob("*/results.json")}
  assert gpus <= {"3", "5"} and len(gpus) >= 1


def test_slurm_script(tmp_path):
  script = tmp_path / "sweep.sbatch"
  out = run_sweep(tmp_path, "--slurm", str(script))
  assert out.returncode == 0, out.stderr
  text = script.read_text()
  assert "#SBATCH --array=0-5" in text and "--config.model.p_h=0.1" in text
  subprocess.run(["bash", "-n", str(script)], check=True)
  env = {**os.environ, "SLURM_ARRAY_TASK_ID": "3", "PYTHONPATH": str(tmp_path)}
  subprocess.run(["bash", str(script)], check=True, env=env, timeout=60)
  done = list((tmp_path / "sweep").glob("*/results.json"))
  assert [p.parent.name for p in done] == ["p_emb=0.1_p_h=0.1_p_x=0.5_p_out=0.5"]
  again = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
  assert again.returncode == 0 and again.stdout.startswith("finished:")
