"""The paper's experiments as named rows, one command each, and a report that sets vdrnn's
numbers beside the published ones: the command line.

  python -m launch.reproduce --dry_run                        # every row and its command
  python -m launch.reproduce --only sentiment_ --epochs 20 --parallel 2 \\
      --override eval.mc_samples=10
  python -m launch.reproduce --only zaremba_small              # the three seeds, one at a time
  python -m launch.reproduce --only large_variational_untied   # on a GPU machine (one run per GPU)
  python -m launch.reproduce --only medium_variational_tied_seed --seeds_together  # 2 seeds, 1 step
  python -m launch.reproduce --report                         # tables, CSV/JSON and figures

One home per concern: the rows and their configs in ``launch/rows.py`` (the paper's numbers in
``launch/paper.py``); running them in ``launch/running.py``, through the process queue of
``launch/sweep.py`` (one process per GPU, or ``--parallel`` on the CPU), each wrapped by
``launch/run_row.py``, which records the device and the wall time in the workdir's
``run_info.json``; reading a workdir in ``launch/collect.py``; the tables in
``launch/tables.py``; writing the report in ``launch/report.py``.

Re-running the same command resumes unfinished rows from their checkpoints and skips finished
ones (a ``results.json`` from a run with the requested number of epochs; asking for more epochs
extends a finished row from its last checkpoint).

``--report`` reads every row's workdir, merges them with the records already in
``--results_dir`` (``results.json``: rows run elsewhere, e.g. on a GPU machine, keep their
committed numbers), and writes ``results.json``, ``results.csv``, ``README_table.md`` and the
figures; with the default ``--results_dir`` it also rewrites the README's results block.
Commands in the results name the workdir under the default root (``workdirs/reproduce/<row>``),
never a path of the machine a row ran on.
"""

from __future__ import annotations

import os
import shlex

from absl import app, flags

from launch import sweep
from launch.report import report
from launch.rows import DEFAULT_ROOT, ROWS, select
from launch.running import (as_run, command, is_finished, override_flags, requested_epochs,
                            seeds_together, split_members)
from vdrnn.errors import UserError, run_main


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
  flags.DEFINE_bool("seeds_together", False,
                    "Train the selected rows, which differ only in their seed, as one population "
                    "(one vmapped step: on a GPU 4 medium runs train at 1.9x the rate of one), "
                    "then make each member its row's workdir.")
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
    if flags.FLAGS.seeds_together:
      together = seeds_together(rows, root)
      finished = all(done(run) for run in runs)
      started = [run["workdir"] for run in runs if os.path.exists(run["workdir"])]
      if started and not finished:
        raise UserError(f"{', '.join(started)} exist: move them aside before --seeds_together "
                        f"(each row's workdir is written from its population's member)")
      runs, done = [together], lambda run: finished
      if flags.FLAGS.dry_run:
        cmd = shlex.join(["python", *sweep.train_command(together, None, extra)[1:]])
        print(f"{together['name']} [{'finished' if finished else 'not run'}; one population]\n"
              f"  {cmd}")
        return
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
    if flags.FLAGS.seeds_together and codes:
      split_members(runs[0], rows, root)

  run_main(_main)


if __name__ == "__main__":
  define_flags()
  app.run(main)
