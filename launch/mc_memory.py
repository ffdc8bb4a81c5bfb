"""Peak memory and throughput of MC-dropout evaluation (``vdrnn.lm_eval``) at the PTB
medium shapes (2 x 650 LSTM, vocabulary 10,000, untied variational masks), random parameters.

  python -m launch.mc_memory [--samples 100,1000] [--chunk 100] [--tokens 141]

Each S runs in a fresh subprocess that reports its own peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``), so the numbers do not mix. The stream is the first
``--tokens`` tokens of the PTB test split (random tokens if the data is not found): the
full split (82,430 tokens) takes hours per 100 samples on a CPU. Throughput is
samples x predicted tokens per second of the MC passes, compilation excluded.
"""

import json
import os
import resource
import subprocess
import sys
import time

import jax
import numpy as np
from absl import app, flags

from vdrnn import lm_eval, models
from vdrnn.config import load_config_file
from vdrnn.data import ptb
from vdrnn.errors import UserError

_SAMPLES = flags.DEFINE_list("samples", ["100", "1000"], "Sample counts, one subprocess each.")
_CHUNK = flags.DEFINE_integer("chunk", 100, "Samples per chunk (eval.mc_chunk).")
_TOKENS = flags.DEFINE_integer("tokens", 141,
                               "Tokens of the test stream (predictions = tokens - 1).")
_CHILD = flags.DEFINE_integer("child", 0, "Internal: run S samples in this process.")


def child(samples: int, chunk: int, tokens: int) -> dict:
  cfg = load_config_file("configs/ptb_medium.py:variational_untied")
  try:
    ids, source = ptb.load()[0]["test"][:tokens], "PTB test"
  except UserError:
    ids, source = np.random.RandomState(0).randint(0, 10000,
                                                   tokens).astype(np.int32), "random tokens"
  params = models.init_lm(jax.random.key(0), cfg.model)
  rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  r = lm_eval.mc_log_pbar(cfg, params, ids, samples=samples, chunk=chunk,
                          rates=lm_eval.mc_rates(cfg))
  return {"samples": samples, "chunk": chunk, "tokens": r["tokens"], "source": source,
          "ppl": float(np.exp(-r["log_pbar"][-1])), "compile_s": round(r["compile_s"], 2),
          "mc_time_s": round(r["run_s"], 2),
          "sample_tokens_per_s": round(samples * r["tokens"] / r["run_s"], 1),
          "rss_before_mc_mb": round(rss0, 1),
          "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
          "devices": str(jax.devices())}


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if _CHILD.value:
    print(json.dumps(child(_CHILD.value, _CHUNK.value, _TOKENS.value)))
    return
  print("load average before:", os.getloadavg(), file=sys.stderr)
  for s in [int(x) for x in _SAMPLES.value]:
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", "launch.mc_memory", f"--child={s}",
                          f"--chunk={_CHUNK.value}", f"--tokens={_TOKENS.value}"],
                         capture_output=True, text=True)
    if out.returncode:
      sys.exit(f"S={s} failed:\n{out.stderr[-2000:]}")
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    rec["wall_s"] = round(time.time() - t0, 1)
    rec["load_avg"] = os.getloadavg()
    print(json.dumps(rec), flush=True)


if __name__ == "__main__":
  app.run(main)
