"""Evaluation entry point: ``python -m vdrnn.evaluate --workdir DIR [--checkpoint latest|best|STEP]
[--split test|valid] [--config.eval.mc_samples=2000]``.

The workdir's ``config.json`` is the ``--config`` flag's value (read once), so any field can
be overridden with ``--config.<field>=`` as in training. ``--checkpoint`` defaults to the one
``results.json`` reports: ``best`` where the run's ``eval.checkpoint`` is ``best`` (IMDB), else
``latest`` (the final model). The evaluation is the task's
(``vdrnn.tasks.evaluate_workdir``): one JSON line on stdout, the task's ``summary`` line on
stderr. PTB (``vdrnn.lm``): the dropout approximation and MC dropout, ``mc_<split>.json`` /
``.png`` in the workdir; Pang & Lee and IMDB (``vdrnn.seq_task``): RMSE or accuracy, NLL, ECE,
predictive entropy and mutual information, also in ``eval_<checkpoint>_<split>.json``.
"""

from __future__ import annotations

import json
import sys
from absl import app, flags, logging
from ml_collections import config_flags

from vdrnn import tasks
from vdrnn.errors import UserError, parse_flags, run_main


def define_flags() -> None:
  """The command line's flags, defined when it runs (this module is also imported as a
  library, beside other tools with flags of their own)."""
  if "checkpoint" in flags.FLAGS:
    return
  flags.DEFINE_string("workdir", None, "Training workdir (config.json, checkpoints/).")
  flags.DEFINE_string("checkpoint", "", "latest, best or a step number (default: the one "
                      "results.json reports, the run's eval.checkpoint: best, else latest).")
  flags.DEFINE_string("split", "test", "test or valid (sentiment: also train).")


def flags_parser(argv: list[str]) -> list[str]:
  """Parses ``--workdir`` first, makes that run's ``config.json`` the ``--config`` flag
  (``config_flags.DEFINE_config_dict``), then parses everything with one-line errors."""
  define_flags()
  try:
    flags.FLAGS(argv, known_only=True)
  except flags.Error as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)
  if not flags.FLAGS.workdir:
    print("error: --workdir is required: the directory a training run wrote", file=sys.stderr)
    sys.exit(2)
  try:
    config = tasks.load_run_config(flags.FLAGS.workdir)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if "config" in flags.FLAGS:  # a second call in one process (tests): this workdir's config
    delattr(flags.FLAGS, "config")
  config_flags.DEFINE_config_dict("config", config, "The run's config (its config.json).",
                                  sys_argv=argv)  # registers the --config.FIELD overrides in argv
  flags.FLAGS.unparse_flags()
  return parse_flags(argv)


def reported(config) -> str:
  """The checkpoint a run's results report: ``best`` where its ``eval.checkpoint`` is ``best``
  (IMDB), else ``latest`` (the final model)."""
  return "best" if getattr(config.eval, "checkpoint", "last") == "best" else "latest"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO

  def _main():
    config = flags.FLAGS.config
    result = tasks.evaluate_workdir(config, flags.FLAGS.workdir,
                                    checkpoint=flags.FLAGS.checkpoint or reported(config),
                                    split=flags.FLAGS.split)
    print(json.dumps({k: v for k, v in result.items() if k != "data"}))
    print(tasks.of(config).summary(result), file=sys.stderr)

  run_main(_main)


if __name__ == "__main__":
  app.run(main, flags_parser=flags_parser)
