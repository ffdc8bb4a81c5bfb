"""Evaluation entry point: ``python -m vdrnn.evaluate --workdir DIR [--checkpoint latest|best|STEP]
[--split test|valid] [--config.eval.mc_samples=2000]``.

The workdir's ``config.json`` is the ``--config`` flag's value, so any field can be
overridden with ``--config.<field>=`` as in training. ``--checkpoint`` defaults to
``latest`` (the final model, the one ``results.json`` reports). A PTB workdir is evaluated
with the dropout approximation and MC dropout (``vdrnn.lm_eval``): one JSON line on stdout,
a summary on stderr, ``mc_<split>.json`` / ``.png`` in the workdir. A sentiment / IMDB
workdir (``vdrnn.sentiment``): RMSE or accuracy, NLL, ECE, predictive entropy and mutual
information, on stdout and in ``eval_<checkpoint>_<split>.json``.
"""

from __future__ import annotations

import json
import sys
from typing import Optional

from absl import app, flags, logging
from ml_collections import config_flags

from vdrnn import experiment
from vdrnn.config import load_run_config
from vdrnn.errors import UserError, parse_flags, run_main

def define_flags() -> None:
  """The command line's flags, defined when it runs (this module is also imported as a
  library, beside other tools with flags of their own)."""
  if "checkpoint" in flags.FLAGS:
    return
  flags.DEFINE_string("workdir", None, "Training workdir (config.json, checkpoints/).")
  flags.DEFINE_string("checkpoint", "latest", "latest, best or a step number.")
  flags.DEFINE_string("split", "test", "test or valid (sentiment: also train).")


def evaluate_workdir(config, workdir: str, *, checkpoint: str = "latest", split: str = "test",
                     progress: Optional[bool] = None) -> dict:
  """Evaluates a workdir's checkpoint (latest | best | step) on ``split`` with the task's
  ``evaluate_workdir`` (``vdrnn.experiment``); ``config`` None: the workdir's
  ``config.json``."""
  config = load_run_config(workdir) if config is None else config
  return experiment.evaluate_workdir(config, workdir, checkpoint=checkpoint, split=split,
                                     progress=progress)


def summary(result: dict) -> str:
  """A short human-readable line for stderr."""
  if "ppl" not in result:
    return (f"{result['split']} perplexity {result['det_ppl']:.2f} (dropout approximation, "
            f"step {result['step']})")
  s = (f"{result['split']} perplexity: MC dropout {result['ppl']:.2f} with {result['samples']} "
       f"samples ({result.get('mc_mean', 'arithmetic')} mean), dropout approximation "
       f"{result['det_ppl']:.2f}")
  if "det_ppl_temperature" in result:
    s += f" ({result['det_ppl_temperature']:.2f} at temperature {result['temperature']:g})"
  s += f"; step {result.get('step', '?')}; {result['sample_tokens_per_s']:.0f} sample-tokens/s"
  if "ppl_geometric" in result:
    s += (f"\nMC means side by side: arithmetic {result['ppl_arithmetic']:.2f}, geometric "
          f"{result['ppl_geometric']:.2f}, power (exponent {result['mc_power']:g}) "
          f"{result['ppl_power']:.2f}")
  if "files" in result:
    s += "\nwrote " + ", ".join(result["files"])
  return s


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
    config = load_run_config(flags.FLAGS.workdir)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if "config" in flags.FLAGS:  # a second call in one process (tests): this workdir's config
    delattr(flags.FLAGS, "config")
  config_flags.DEFINE_config_dict("config", config, "The run's config (its config.json).",
                                  sys_argv=argv)  # registers the --config.FIELD overrides in argv
  flags.FLAGS.unparse_flags()
  return parse_flags(argv)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO

  def _main():
    config = flags.FLAGS.config
    result = evaluate_workdir(config, flags.FLAGS.workdir, checkpoint=flags.FLAGS.checkpoint,
                              split=flags.FLAGS.split)
    print(json.dumps({k: v for k, v in result.items() if k != "data"}))
    if config.get("task", "ptb") == "ptb":
      print(summary(result), file=sys.stderr)

  run_main(_main)


def cli(argv: Optional[list[str]] = None) -> None:
  """The command line in this process (``argv`` defaults to ``sys.argv``)."""
  main(flags_parser(list(sys.argv if argv is None else argv)))


if __name__ == "__main__":
  app.run(main, flags_parser=flags_parser)
