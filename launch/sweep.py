"""Grid sweeps over config fields, one training process per grid point.

  python -m launch.sweep --config configs/ptb_medium.py \\
      --grid p_emb,p_h=0,0.1,0.2,0.3 --grid p_x,p_out=0.3,0.4,0.5 \\
      --workdir_root workdirs/sweep_medium [--gpus 0,1,2,3 | --parallel 2] \\
      [--config.train.num_epochs=20]

Each ``--grid KEYS=VALUES`` is one axis: keys joined by a comma move together (the paper
tied the embedding rate to the recurrent one and the input rate to the output one), and
the sweep is the Cartesian product of the axes. A key is a config path (``model.p_h``,
``train.lr``), a top-level field (``seed``) or a bare field name found in exactly one of
``model``, ``train`` and ``eval``. Further ``--config.FIELD=VALUE`` flags go to every run.

Runs are ``python -m vdrnn.train`` processes, each in ``<workdir_root>/<name>`` with its
log in ``train.log`` there: one per GPU (``CUDA_VISIBLE_DEVICES``; ``--gpus`` defaults to
the GPUs ``nvidia-smi`` lists) or ``--parallel`` at a time on the CPU, the rest queued.
Re-running the command skips runs with a ``results.json`` and resumes the others from
their checkpoints. At the end a table of final validation and test perplexities, best
validation first, goes to stdout and ``<workdir_root>/summary.csv``.

``--slurm FILE`` writes a SLURM array script for the same grid instead (one array task
per run; re-submitting it also skips finished runs and resumes the rest);
``--summary_only`` prints the table of whatever has finished.

Bad input (a flag, a grid spec, a config file or field) is one ``error: ...`` line on stderr
and exit status 2, as everywhere in the project (``vdrnn.errors``); a run that fails makes the
sweep exit 1 after the summary.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

from absl import app, flags

from vdrnn.config import load_config_file
from vdrnn.errors import UserError, run_main

SECTIONS = ("", "model", "train", "eval")  # where a bare key is looked up


def resolve_key(config, key: str) -> str:
  """The dotted config path of ``key``: a path, a top-level field, or a bare name found in exactly
  one of ``model``, ``train``, ``eval``."""
  has = lambda path: _is_field(config, path)  # noqa: E731
  if "." in key:
    if not has(key):
      raise UserError(f"--grid key {key!r} is not a config field")
    return key
  if has(key):  # a top-level field (seed) wins over eval.seed
    return key
  found = [f"{s}.{key}" for s in SECTIONS[1:] if has(f"{s}.{key}")]
  if len(found) != 1:
    where = f"in {' and '.join(found)}" if found else "not a field of the config, " + ", ".join(
        SECTIONS[1:])
    raise UserError(f"--grid key {key!r} is {where}; give its full path, e.g. "
                    f"{(found or ['model.' + key])[0]}")
  return found[0]


def parse_grid(config, specs: list[str]) -> list[list[dict]]:
  """``["p_emb,p_h=0,0.1"]`` -> one axis per spec, each a list of ``{path: value}`` points:
  ``[[{"model.p_emb": "0", "model.p_h": "0"}, {"model.p_emb": "0.1", "model.p_h": "0.1"}]]``."""
  axes, seen = [], set()
  for spec in specs:
    keys, sep, values = spec.partition("=")
    if not sep or not keys or not values:
      raise UserError(f"--grid {spec!r}: expected KEY[,KEY...]=VALUE[,VALUE...]")
    paths = [resolve_key(config, k.strip()) for k in keys.split(",")]
    for p in paths:
      if p in seen:
        raise UserError(f"{p} appears in two --grid axes")
      seen.add(p)
    vals = [v.strip() for v in values.split(",")]
    if len(set(vals)) != len(vals):
      raise UserError(f"--grid {spec!r}: a value appears twice")
    for p in paths:
      for v in vals:
        check_value(config, p, v, "--grid ")
    axes.append([{p: v for p in paths} for v in vals])
  return axes


def check_value(config, path: str, value: str, prefix: str) -> None:
  """A ``UserError`` unless ``value`` parses as the type of the scalar field ``path`` (bool, int,
  float; other fields take any value, as ml_collections does)."""
  kind = type(_get(config, path))
  try:
    if kind is bool:
      ["false", "true"].index(value.lower())
    elif kind in (int, float):
      kind(value)
  except ValueError:
    name = kind.__name__
    raise UserError(f"{prefix}{path}={value!r} is not {'an' if name == 'int' else 'a'} {name}") \
        from None


def check_overrides(config, extra: list[str], grid_paths: set) -> None:
  """The pass-through ``--config.PATH[=VALUE]`` flags: each a field of the config, its value of
  the field's type, and none a ``--grid`` key (it would override the grid in every run)."""
  for flag in extra:
    path, sep, value = flag.removeprefix("--config.").partition("=")
    if not _is_field(config, path):
      raise UserError(f"{flag.partition('=')[0]}: {path!r} is not a config field")
    if path in grid_paths:
      raise UserError(f"{flag.partition('=')[0]} is also a --grid key; give it in one place")
    if sep:
      check_value(config, path, value, "--config.")


def _is_field(config, path: str) -> bool:
  """``path`` names a leaf field (not a section) of ``config``."""
  node = config
  for part in path.split("."):
    if not hasattr(node, "keys") or part not in node:
      return False
    node = node[part]
  return not hasattr(node, "keys")


def _get(config, path):
  for part in path.split("."):
    config = config[part]
  return config


def plan(config, specs: list[str], workdir_root: str) -> list[dict]:
  """Every grid point as ``{"name", "workdir", "point": {path: value}}`` (Cartesian product)."""
  axes = parse_grid(config, specs)
  runs = []
  for combo in itertools.product(*axes):
    point = {k: v for d in combo for k, v in d.items()}
    name = "_".join(f"{p.rsplit('.', 1)[-1]}={v}" for p, v in point.items())
    runs.append({"name": name, "workdir": os.path.join(workdir_root, name), "point": point})
  return runs


def train_command(run: dict,
                  config_spec: str,
                  extra: list[str],
                  module: str = "vdrnn.train") -> list[str]:
  """The run's command line; a run may carry its own ``config`` (then ``config_spec`` is unused)."""
  return [sys.executable, "-m", module, "--config", run.get("config") or config_spec,
          "--workdir", run["workdir"], *(f"--config.{p}={v}" for p, v in run["point"].items()),
          *extra]


def finished(run: dict) -> bool:
  return os.path.exists(os.path.join(run["workdir"], "results.json"))


def detect_gpus() -> list[str]:
  """The GPUs to place runs on: ``CUDA_VISIBLE_DEVICES`` if set, else those ``nvidia-smi`` lists."""
  if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
    return [g for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
  if shutil.which("nvidia-smi") is None:
    return []
  try:
    out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                         capture_output=True,
                         text=True,
                         timeout=30,
                         check=True).stdout
  except (subprocess.SubprocessError, OSError):
    return []
  return [l.strip() for l in out.splitlines() if l.strip()]


def run_all(runs: list[dict], config_spec: str, extra: list[str], *, gpus: list[str], parallel: int,
            module: str = "vdrnn.train", poll_s: float = 0.2, is_finished=finished) -> dict:
  """Runs the unfinished runs (``is_finished``), one per GPU or ``parallel`` at a time; returns
  ``{name: exit code}``."""
  finished = is_finished
  todo = [r for r in runs if not finished(r)]
  skipped = len(runs) - len(todo)
  slots = [{"gpu": g} for g in gpus] if gpus else [{"gpu": None} for _ in range(max(1, parallel))]
  where = f"GPUs {','.join(gpus)}" if gpus else f"the CPU, {len(slots)} at a time"
  print(f"{len(runs)} runs: {skipped} finished, {len(todo)} to run on {where}", flush=True)
  codes, active, n = {}, {}, 0  # active: slot index -> (run, process, log file)
  signal.signal(signal.SIGTERM, _interrupt)  # kill / scancel: stop the runs as Ctrl-C does
  try:
    while todo or active:
      for i, slot in enumerate(slots):
        if i in active or not todo:
          continue
        run = todo.pop(0)
        n += 1
        os.makedirs(run["workdir"], exist_ok=True)
        env = dict(os.environ)
        if slot["gpu"] is not None:
          env["CUDA_VISIBLE_DEVICES"] = slot["gpu"]
        log = open(os.path.join(run["workdir"], "train.log"), "a")
        cmd = train_command(run, config_spec, extra, module)
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        active[i] = (run, proc, log)
        ckpts = os.path.join(run["workdir"], "checkpoints")
        resumed = " (resuming)" if os.path.isdir(ckpts) and any(
            d.isdigit() for d in os.listdir(ckpts)) else ""
        on = f"GPU {slot['gpu']}" if slot["gpu"] is not None else "CPU"
        print(f"[{n}/{len(runs) - skipped}] start {run['name']} on {on}{resumed}", flush=True)
      for i, (run, proc, log) in list(active.items()):
        if proc.poll() is None:
          continue
        log.close()
        del active[i]
        codes[run["name"]] = proc.returncode
        status = "done" if proc.returncode == 0 and finished(run) else \
            f"FAILED (exit {proc.returncode}; see {os.path.join(run['workdir'], 'train.log')})"
        print(f"{status}: {run['name']}", flush=True)
      time.sleep(poll_s)
  except KeyboardInterrupt:
    for run, proc, log in active.values():
      proc.terminate()
    for run, proc, log in active.values():
      proc.wait()
      log.close()
    print("interrupted; re-run the same command to resume the unfinished runs", file=sys.stderr)
    raise SystemExit(130)
  return codes


def _interrupt(signum, frame):
  raise KeyboardInterrupt


def summarize(runs: list[dict], workdir_root: str, codes: dict | None = None) -> list[dict]:
  """Rows with the grid values and final perplexities, best validation first; prints them as a
  table and writes ``<workdir_root>/summary.csv``. ``codes``: exit codes of this invocation's
  runs."""
  rows = []
  for run in runs:
    row = {p.rsplit(".", 1)[-1]: v for p, v in run["point"].items()}
    res = {}
    if finished(run):
      with open(os.path.join(run["workdir"], "results.json")) as f:
        res = json.load(f)
    for k in ("valid_ppl", "test_ppl", "best_valid_ppl", "mc_test_ppl"):
      row[k] = res.get(k)
    failed = (codes or {}).get(run["name"], 0) != 0
    row["status"] = "done" if res else "failed" if failed else "partial" if os.path.isdir(
        run["workdir"]) else "pending"
    row["workdir"] = run["workdir"]
    rows.append(row)

  def key(r):
    v = r["valid_ppl"]
    ok = isinstance(v, (int, float)) and math.isfinite(v)
    return (not ok, v if ok else 0.0)
  rows.sort(key=key)
  cols = [
      c for c in rows[0] if c != "mc_test_ppl" or any(r["mc_test_ppl"] is not None for r in rows)
  ] if rows else []
  os.makedirs(workdir_root, exist_ok=True)
  with open(os.path.join(workdir_root, "summary.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)

  def fmt(v):
    return f"{v:.2f}" if isinstance(v, float) else ("-" if v is None else str(v))

  table = [[c for c in cols if c != "workdir"]
          ] + [[fmt(r[c]) for c in cols if c != "workdir"] for r in rows]
  widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))] if rows else []
  for line in table:
    print("  ".join(s.rjust(w) for s, w in zip(line, widths)))
  print(f"summary: {os.path.join(workdir_root, 'summary.csv')}")
  return rows


def slurm_script(runs: list[dict],
                 config_spec: str,
                 extra: list[str],
                 workdir_root: str,
                 summary_cmd: str,
                 *,
                 max_parallel: int = 0,
                 sbatch: list[str] = (),
                 module: str = "vdrnn.train") -> str:
  """A SLURM array script, one task per run (``--gres=gpu:1`` each); a task whose run has a
  ``results.json`` exits at once, the others start or resume their run."""
  cases = []
  for i, run in enumerate(runs):
    cmd = train_command(run, config_spec, extra)[3:]  # after "python -m vdrnn.train"
    cases.append(f"  {i}) WORKDIR={shlex.quote(run['workdir'])}; ARGS=({shlex.join(cmd)}) ;;")
  limit = f"%{max_parallel}" if max_parallel else ""
  lines = [
      "#!/bin/bash",
      "#SBATCH --job-name=vdrnn-sweep",
      f"#SBATCH --array=0-{len(runs) - 1}{limit}",
      "#SBATCH --ntasks=1",
      "#SBATCH --gres=gpu:1",
      "#SBATCH --cpus-per-task=4",
      f"#SBATCH --output={os.path.abspath(workdir_root)}/slurm-%A_%a.out",
      *(f"#SBATCH {s}" for s in sbatch),
      "# Generated by launch/sweep.py. Submit with `sbatch THIS_FILE`; submit it again to resume",
      "# unfinished runs (finished ones exit at once). When all are done, the summary table:",
      f"#   {summary_cmd}",
      "set -euo pipefail",
      f"cd {shlex.quote(os.getcwd())}",
      f"PYTHON=${{PYTHON:-{shlex.quote(sys.executable)}}}",
      'case "$SLURM_ARRAY_TASK_ID" in',
      *cases,
      '  *) echo "no run for array task $SLURM_ARRAY_TASK_ID" >&2; exit 1 ;;',
      "esac",
      'if [ -f "$WORKDIR/results.json" ]; then echo "finished: $WORKDIR"; exit 0; fi',
      'mkdir -p "$WORKDIR"',
      f'exec "$PYTHON" -m {module} "${{ARGS[@]}}" >> "$WORKDIR/train.log" 2>&1',
      "",
  ]
  return "\n".join(lines)


def define_flags() -> None:
  """This tool's flags (defined only when it runs: ``launch.reproduce`` imports this module
  for its process queue and has flags of its own)."""
  flags.DEFINE_string("config", None, "Config file[:arg], as for vdrnn.train.")
  flags.DEFINE_multi_string("grid", [], "One axis, e.g. p_emb,p_h=0,0.1,0.2 (keys joined by a "
                            "comma move together).")
  flags.DEFINE_string("workdir_root", None, "Each run gets <workdir_root>/<name>.")
  flags.DEFINE_string("gpus", "auto", "Comma-separated GPU ids, one run per GPU; 'auto' "
                      "(CUDA_VISIBLE_DEVICES, else nvidia-smi) or 'none' for the CPU.")
  flags.DEFINE_integer("parallel", 1, "Runs at a time on the CPU (no GPUs).")
  flags.DEFINE_string("slurm", None, "Write a SLURM array script for the grid and exit.")
  flags.DEFINE_integer("slurm_max_parallel", 0, "Array tasks running at once (0: no limit).")
  flags.DEFINE_multi_string("sbatch", [], "Extra #SBATCH line, e.g. --sbatch=--time=24:00:00.")
  flags.DEFINE_bool("summary_only", False, "Print the table of finished runs and exit.")
  flags.DEFINE_bool("dry_run", False, "Print the commands and exit.")
  flags.DEFINE_string("module", "vdrnn.train", "The training module (tests use a stand-in).")


def load_config(spec: str):
  """The sweep's config; a missing file or one that fails to load (a bad ``:arg``, an error
  inside it) is a ``UserError``."""
  try:
    return load_config_file(spec)
  except UserError:
    raise
  except Exception as e:  # noqa: BLE001 - whatever the config file raises is the user's input
    msg = " ".join(str(e).split()) or type(e).__name__
    raise UserError(f"--config {spec}: {msg}") from None


def write_file(path: str, text: str) -> None:
  try:
    with open(path, "w") as f:
      f.write(text)
  except OSError as e:
    raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def sweep(argv) -> int:
  """The tool: ``argv[1:]`` are the ``--config.FIELD=VALUE`` flags that pass through to every
  run. Returns the exit status (1 when a run failed)."""
  FLAGS = flags.FLAGS
  extra = argv[1:]
  bad = [a for a in extra if not a.startswith("--config.")]
  if bad:
    raise UserError(f"unrecognized arguments: {' '.join(bad)} (only --config.FIELD=VALUE "
                    "flags pass through)")
  if not FLAGS.config or not FLAGS.workdir_root:
    raise UserError("--config and --workdir_root are required")
  if not FLAGS.grid:
    raise UserError("give at least one --grid KEYS=VALUES")
  if FLAGS.parallel < 1:
    raise UserError(f"--parallel {FLAGS.parallel}: give 1 or more")
  config = load_config(FLAGS.config)
  root = FLAGS.workdir_root
  runs = plan(config, FLAGS.grid, root)
  if len({r["name"] for r in runs}) != len(runs):
    raise UserError("two grid points map to the same run name; check --grid for repeated values")
  check_overrides(config, extra, set(runs[0]["point"]))
  try:
    os.makedirs(root, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create --workdir_root {root}: {e.strerror or e}") from None
  write_file(os.path.join(root, "sweep.json"),
             json.dumps({"argv": sys.argv[1:], "config": FLAGS.config, "extra": extra,
                         "runs": runs}, indent=2))
  if FLAGS.slurm:
    summary_cmd = shlex.join(["python", "-m", "launch.sweep", "--config", FLAGS.config,
                              *(f"--grid={g}" for g in FLAGS.grid), "--workdir_root", root,
                              *extra, "--summary_only"])
    write_file(FLAGS.slurm, slurm_script(runs, FLAGS.config, extra, root, summary_cmd,
                                         max_parallel=FLAGS.slurm_max_parallel,
                                         sbatch=FLAGS.sbatch, module=FLAGS.module))
    print(f"wrote {FLAGS.slurm}: {len(runs)} array tasks; submit with sbatch {FLAGS.slurm}")
    return 0
  if FLAGS.dry_run:
    for r in runs:
      print(("# finished: " if finished(r) else "") +
            shlex.join(train_command(r, FLAGS.config, extra, FLAGS.module)))
    return 0
  codes = {}
  if not FLAGS.summary_only:
    gpus = [] if FLAGS.gpus == "none" else (detect_gpus() if FLAGS.gpus == "auto" else
                                             [g for g in FLAGS.gpus.split(",") if g.strip()])
    codes = run_all(runs, FLAGS.config, extra, gpus=gpus, parallel=FLAGS.parallel,
                    module=FLAGS.module)
  summarize(runs, root, codes)
  failed = [n for n, c in codes.items() if c != 0]
  if failed:
    print(f"{len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
  return 1 if failed else 0


def main(argv) -> int:
  """``sweep`` with the project's convention for bad input: one ``error:`` line, exit 2."""
  code = 0

  def _main():
    nonlocal code
    code = sweep(argv)

  run_main(_main)
  return code


def parse_known(argv: list[str]) -> list[str]:
  """absl parses this tool's flags; the ``--config.FIELD=VALUE`` overrides stay in ``argv``
  for the runs. A flag absl cannot parse (``--parallel x``) is one ``error:`` line, exit 2."""
  try:
    return flags.FLAGS(argv, known_only=True)
  except Exception as e:  # noqa: BLE001 - any parsing failure is the user's input
    print(f"error: {' '.join(str(e).split())[:500]}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_known)
