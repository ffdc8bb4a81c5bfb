"""Peak memory and throughput of MC-dropout evaluation (``vdrnn.evaluate``) at the PTB
medium shapes (2 x 650 LSTM, vocabulary 10,000, untied variational masks), random parameters.

  python benchmarks/mc_memory.py [--samples 100,1000] [--chunk 100] [--tokens 141]

Each S runs in a fresh subprocess that reports its own peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``), so the numbers do not mix. The stream is the first
``--tokens`` tokens of the PTB test split (random tokens if the data is not found): the
full split (82,430 tokens) takes hours per 100 samples on a CPU. Throughput is
samples x predicted tokens per second of the MC passes, compilation excluded.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(args):
  import importlib.util
  import jax
  import numpy as np
  from vdrnn import evaluate, models
  from vdrnn.errors import UserError
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(REPO, "configs", "ptb_medium.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  cfg = mod.get_config("variational_untied")
  try:
    from vdrnn.data import ptb
    ids, source = ptb.load()[0]["test"][: args.tokens], "PTB test"
  except UserError:
    ids, source = np.random.RandomState(0).randint(0, 10000, args.tokens).astype(np.int32), "random tokens"
  params = models.init_lm(jax.random.key(0), cfg.model)
  rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  r = evaluate.mc_log_pbar(cfg, params, ids, samples=args.child, chunk=args.chunk, rates=evaluate.mc_rates(cfg))
  print(json.dumps({"samples": args.child, "chunk": args.chunk, "tokens": r["tokens"], "source": source,
                    "ppl": float(np.exp(-r["log_pbar"][-1])), "compile_s": round(r["compile_s"], 2),
                    "mc_time_s": round(r["run_s"], 2),
                    "sample_tokens_per_s": round(args.child * r["tokens"] / r["run_s"], 1),
                    "rss_before_mc_mb": round(rss0, 1),
                    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                    "devices": str(jax.devices())}))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--samples", default="100,1000", help="comma-separated sample counts, one subprocess each")
  p.add_argument("--chunk", type=int, default=100, help="samples per chunk (eval.mc_chunk)")
  p.add_argument("--tokens", type=int, default=141, help="tokens of the test stream (predictions = tokens - 1)")
  p.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    return child(args)
  print("load average before:", os.getloadavg(), file=sys.stderr)
  for s in [int(x) for x in args.samples.split(",")]:
    t0 = time.time()
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", str(s), "--chunk", str(args.chunk),
                          "--tokens", str(args.tokens)], capture_output=True, text=True, cwd=REPO)
    if out.returncode:
      sys.exit(f"S={s} failed:\n{out.stderr[-2000:]}")
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    rec["wall_s"] = round(time.time() - t0, 1)
    rec["load_avg"] = os.getloadavg()
    print(json.dumps(rec), flush=True)


if __name__ == "__main__":
  main()
