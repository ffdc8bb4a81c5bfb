"""``python -m launch.mc_gap``: one MC sample, the MC predictive and the dropout approximation of
a trained classifier side by side, on the validation split and on training reviews: where MC
dropout's predictive scores below the dropout approximation (IMDB's variational rows, issue
28), this shows whether the samples are weak or only disagree.

  python -m launch.mc_gap --workdir DIR [--samples 10] [--train_examples 2560] [--checkpoint best]

For a sequence-classification workdir (``imdb``), with the run's own config and the checkpoint
its results report (``best`` where ``eval.checkpoint`` is, else ``latest``), each split gets
three rows: the dropout approximation (one deterministic pass), one MC sample (each sample's
accuracy, NLL, ECE and mean top-label confidence, averaged over the samples) and the MC
predictive (the samples' mean probability, as the evaluation's MC mode). The predictive's NLL is
never above one sample's mean NLL (Jensen); the difference is how much the samples disagree.
Samples come from ``eval.seed`` and the batch index as in the evaluation, so the test pass's
first samples are the same masks. Prints a Markdown table; writes nothing.
"""

from __future__ import annotations

import sys

import numpy as np
from absl import app, flags, logging

from vdrnn import evaluate, seq_eval, seq_task, tasks, uncertainty
from vdrnn.errors import UserError, run_main

PASSES = ("dropout approx.", "one MC sample", "MC predictive")


def metrics(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> dict:
  """Accuracy, NLL, ECE and the mean top-label confidence of ``probs [N, K]``."""
  s = uncertainty.summary({"probs": probs, "mi": np.zeros(len(probs))}, labels, n_bins)
  return {"acc": s["acc"], "nll": s["nll"], "ece": s["ece"],
          "conf": float(np.mean(np.max(probs, -1)))}


def passes(det: np.ndarray, mc: np.ndarray, labels: np.ndarray, n_bins: int) -> dict:
  """``{pass: metrics}`` from logits ``det [N, K]`` and ``mc [S, N, K]`` (``PASSES``)."""
  samples = uncertainty.softmax(mc)
  each = [metrics(p, labels, n_bins) for p in samples]
  one = {k: float(np.mean([m[k] for m in each])) for k in each[0]}
  return {PASSES[0]: metrics(uncertainty.softmax(det), labels, n_bins), PASSES[1]: one,
          PASSES[2]: metrics(samples.mean(0), labels, n_bins)}


def gap(workdir: str, samples: int = 10, train_examples: int = 2560,
        checkpoint: str = "") -> dict:
  """``{split: passes(...)}`` for ``valid`` (where the run holds one out) and the first
  ``train_examples`` training examples (``train[:n]``)."""
  if samples < 1:
    raise UserError(f"--samples must be at least 1, got {samples}")
  if train_examples < 0:
    raise UserError(f"--train_examples must be at least 0, got {train_examples}")
  config = tasks.load_run_config(workdir)
  task = tasks.of(config)
  head = getattr(task, "HEAD", None)
  if head is None or not head.classes:
    raise UserError(f"{workdir} is a {config.get('task', 'ptb')} run; mc_gap measures "
                    f"sequence classifiers (imdb)")
  state, _, splits, _, fns, mesh = seq_task.restore_workdir(
      config, workdir, head, checkpoint or evaluate.reported(config))
  chosen = {}
  if len(splits.get("valid", {}).get("y", ())):
    chosen["valid"] = splits["valid"]
  if train_examples:
    chosen[f"train[:{train_examples}]"] = {k: v[:train_examples]
                                           for k, v in splits["train"].items()}
  out = {}
  for name, split in chosen.items():
    det, mc = seq_eval.predict(config, fns, state["params"], split["x"], mesh, samples=samples)
    out[name] = passes(det, mc, np.asarray(split["y"]), config.eval.ece_bins)
  return out


def table(result: dict, samples: int) -> str:
  """``gap``'s result as a Markdown table."""
  lines = ["| split | pass | acc | NLL | ECE | mean confidence |", "|---|---|---|---|---|---|"]
  for split, by_pass in result.items():
    for name, m in by_pass.items():
      label = {PASSES[1]: f"one MC sample (mean of {samples})",
               PASSES[2]: f"MC predictive ({samples})"}.get(name, name)
      lines.append(f"| {split} | {label} | {m['acc']:.4f} | {m['nll']:.4f} | {m['ece']:.4f} | "
                   f"{m['conf']:.3f} |")
  return "\n".join(lines)


def define_flags() -> None:
  """The command line's flags, defined only when it runs: imported as a library (the tests),
  beside ``vdrnn.evaluate`` whose ``--workdir`` and ``--checkpoint`` share these names, it
  defines none."""
  flags.DEFINE_string("workdir", None, "A trained sequence-classification workdir.")
  flags.DEFINE_integer("samples", 10, "MC samples.")
  flags.DEFINE_integer("train_examples", 2560, "Training examples measured (the first n).")
  flags.DEFINE_string("checkpoint", "", "latest, best or a step (default: the one the run "
                      "reports).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS

  def _main():
    if not f.workdir:
      raise UserError("--workdir is required")
    result = gap(f.workdir, f.samples, f.train_examples, f.checkpoint)
    print(table(result, f.samples))
    sys.stdout.flush()

  run_main(_main)


if __name__ == "__main__":
  define_flags()
  app.run(main)
