"""Training entry point: ``python -m vdrnn.train --config configs/ptb_large.py[:arg]``.

Flags only; the work is ``vdrnn.tasks.train_and_evaluate`` (the config's ``task``). Re-running
the same command on the same workdir resumes exactly.
Multi-host: ``--distributed`` (or ``--coordinator_address``, ``--num_processes``,
``--process_id``) calls ``jax.distributed.initialize``; every process runs this command.
"""

from __future__ import annotations

import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from vdrnn.errors import UserError, config_value, parse_flags, run_main
from vdrnn.tasks import train_and_evaluate


def default_workdir(config_spec: str) -> str:
  """``workdirs/<config file stem>[_<arg>]`` for ``path/to/config.py[:arg]`` (commas in the
  arg become underscores)."""
  path, _, arg = (config_spec or "run").partition(":")
  stem = os.path.splitext(os.path.basename(path))[0]
  return os.path.join("workdirs", stem + (f"_{arg.replace(',', '_')}" if arg else ""))


def define_flags() -> None:
  """The command line's flags, defined when it runs."""
  if "distributed" in flags.FLAGS:
    return
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/ptb_large.py[:arg].")
  flags.DEFINE_string("workdir", None, "Output directory (default: workdirs/<config>[_<arg>]).")
  flags.DEFINE_bool("distributed", False, "Multi-host: call jax.distributed.initialize() and let "
                    "it detect the cluster (SLURM, Open MPI, Cloud TPU).")
  flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0 (give "
                      "--num_processes and --process_id too).")
  flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
  flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")


def init_distributed() -> None:
  """``jax.distributed.initialize`` from the flags; a no-op when none of them is given.

  Each process then feeds its share of the global batch (``vdrnn.sharding.put_batch``).
  On CPU the cross-process collectives are gloo's (TCP).
  """
  f = flags.FLAGS
  explicit = (f.coordinator_address, f.num_processes, f.process_id)
  if not f.distributed and all(v is None for v in explicit):
    return
  if any(v is not None for v in explicit) and any(v is None for v in explicit):
    raise UserError("--coordinator_address, --num_processes and --process_id go together; "
                    "or pass only --distributed to detect them (SLURM, Open MPI)")
  if not jax.config.jax_cpu_collectives_implementation:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(*explicit)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO

  def _main():
    config = config_value(flags.FLAGS["config"])
    if config is None:
      raise UserError("--config is required, e.g. --config configs/ptb_small.py")
    init_distributed()
    workdir = flags.FLAGS.workdir or default_workdir(
        config_flags.get_config_filename(flags.FLAGS["config"]))
    train_and_evaluate(config, workdir)

  run_main(_main)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags)
