"""The benchmark's driver: what to run (``plan``), running it (``run``), the table and the
command line (``python -m launch.bench``; see ``launch.bench``)."""

from __future__ import annotations

import json
import os
import sys
import time

import jax
from absl import app, flags

from launch.bench import peers
from launch.bench.common import (_load, _shape_str, device_info, gemm_probe, lm_config,
                                matmul_params, supports_bf16)
from launch.bench.sections import (bench_flax, bench_gemm, bench_mc, bench_population,
                                  bench_sentiment, bench_train, sentiment_config,
                                  sentiment_matmul_params)

SECTIONS = ("gemm", "train", "mc", "population", "sentiment", "peers", "flax")

# ----------------------------------------------------------------------------------------
# Driver.


def plan(quick: bool, tiny: bool) -> dict:
  """What to run: shapes, repetitions and sample counts."""
  if tiny:  # the smoke test: every section at toy size
    return {
        "shapes": ["tiny"],
        "gemm_sizes": [256],
        "steps": 1,
        "reps": 1,
        "min_time": 0.0,
        "mc_shape": "tiny",
        "mc_samples": [4, 8],
        "mc_windows": 1,
        "pop_shape": "tiny",
        "pop_k": [1, 2],
        "peer_shapes": ["tiny"],
        "rounds": 2,
        "target_shape": "tiny",
        "sentiment_cells": ["lstm"],
        "flax_shapes": ["tiny"]
    }
  gpu = jax.devices()[0].platform != "cpu"
  if quick:
    return {
        "shapes": ["small", "medium"],
        "gemm_sizes": [2048],
        "steps": 2,
        "reps": 3,
        "min_time": 0.5,
        "mc_shape": "medium",
        "mc_samples": [100],
        "mc_windows": 1,
        "pop_shape": "small",
        "pop_k": [1, 4],
        "peer_shapes": ["medium"],
        "rounds": 3,
        "target_shape": "medium",
        "sentiment_cells": ["lstm", "gru"],
        "flax_shapes": ["medium"]
    }
  return {
      "shapes": ["small", "medium", "large"],
      "gemm_sizes": [4096, 8192] if gpu else [2048, 4096],
      "steps": 10 if gpu else 3,
      "reps": 5 if gpu else 3,
      "min_time": 1.0,
      "mc_shape": "medium",
      "mc_samples": [100, 1000],
      "mc_windows": 1,
      "pop_shape": "medium",
      "pop_k": [1, 4, 16],
      "peer_shapes": ["small", "medium"],
      "rounds": 7,
      "target_shape": "medium",
      "sentiment_cells": ["lstm", "gru"],
      "flax_shapes": ["medium"]
  }


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def run(only=SECTIONS, quick: bool = False, tiny: bool = False, dtypes=None, log=_log,
        isolate_peers: bool = True, json_path: str | None = None) -> dict:
  """Runs the selected sections; returns the JSON-able report. Peers run in subprocesses
  unless ``isolate_peers=False``. With ``json_path`` the report so far is rewritten after
  every result, so a run cut short still leaves its numbers."""
  p = plan(quick, tiny)
  bf16 = supports_bf16()
  dtypes = dtypes or (["float32", "bfloat16"] if bf16 else ["float32"])
  report = {"device": device_info(), "plan": p, "dtypes": dtypes, "load_start": _load(), "gemm": {},
            "results": [], "skipped": [], "started": time.strftime("%Y-%m-%d %H:%M:%S")}
  t_start = time.perf_counter()

  def add(**r):
    r["load"] = _load()
    report["results"].append(r)
    if json_path:
      write_json(report, json_path)
    log(f"  {r['section']:10s} {r.get('shape', ''):6s} {r.get('impl', ''):6s} "
        f"{r.get('gates', ''):6s} "
        f"{r.get('dtype', ''):8s} {r.get('K', r.get('samples', '')) or '':>5} "
        f"{r.get('tokens_per_s', r.get('sample_tokens_per_s', 0)):10.0f}/s  load {r['load']}")

  if {"gemm", "train", "mc", "sentiment"} & set(only):
    log(f"GEMM {p['gemm_sizes']} ...")
    report["gemm"] = bench_gemm(p["gemm_sizes"], dtypes, p["reps"])
  # The yardstick timed after every repetition: a GEMM of the size that ran fastest above.
  best_n = {
      dt: max(p["gemm_sizes"], key=lambda n: report["gemm"].get(f"{dt}_{n}", 0.0)) for dt in dtypes
  }
  probes = {
      dt: gemm_probe(dt, best_n[dt]) for dt in dtypes
  } if {"train", "mc", "population", "sentiment"} & set(only) else {}
  if "train" in only:
    for shape in p["shapes"]:
      for dt in dtypes:
        for gates in ("tied", "untied"):
          cfg = lm_config(shape, gates, dt)
          r = bench_train(cfg, p["steps"], p["reps"], p["min_time"], probes[dt])
          add(section="train",
              impl="vdrnn",
              shape=shape,
              gates=gates,
              dtype=dt,
              dims=_shape_str(cfg),
              matmul_params=matmul_params(cfg),
              **r)
  if "mc" in only:
    for S in p["mc_samples"]:
      cfg = lm_config(p["mc_shape"], "untied", "float32")
      r = bench_mc(cfg, S, p["mc_windows"], p["reps"], p["min_time"], probes["float32"])
      add(section="mc",
          impl="vdrnn",
          shape=p["mc_shape"],
          gates="untied",
          dtype="float32",
          samples=S,
          dims=_shape_str(cfg),
          matmul_params=matmul_params(cfg),
          **r)
  if "population" in only:
    for K in p["pop_k"]:
      cfg = lm_config(p["pop_shape"], "untied", "float32")
      r = bench_population(cfg, K,
                           max(1, p["steps"] // 2) if K > 4 else p["steps"], p["reps"],
                           p["min_time"], probes["float32"])
      add(section="population",
          impl="vdrnn",
          shape=p["pop_shape"],
          gates="untied",
          dtype="float32",
          K=K,
          dims=_shape_str(cfg),
          matmul_params=matmul_params(cfg),
          **r)
  if "sentiment" in only:
    for cell in p["sentiment_cells"]:
      for scheme in ("variational", "naive"):
        cfg = sentiment_config(cell, scheme, tiny=tiny)
        r = bench_sentiment(cfg, p["steps"], p["reps"], p["min_time"], probes["float32"])
        add(section="sentiment",
            impl="vdrnn",
            shape=cell,
            gates="var" if scheme == "variational" else scheme,
            dtype="float32",
            dims=f"1x{cfg.model.hidden} B{cfg.train.batch_size} T{cfg.data.maxlen}",
            matmul_params=sentiment_matmul_params(cfg),
            **r)
  if "peers" in only:
    for dt in dtypes:
      for shape in p["peer_shapes"]:
        log(f"side by side: {shape} {dt}, {p['rounds']} interleaved rounds ...")
        rows, skipped = peers.side_by_side(shape, dt, p["rounds"], p["steps"], best_n[dt],
                                           isolate_peers, log)
        for r in rows:
          add(**r)
        report["skipped"] += [s for s in skipped if s not in report["skipped"]]
  if "flax" in only:
    for dt in dtypes:
      for shape in p["flax_shapes"]:
        log(f"flax front end vs core: {shape} {dt}, {p['rounds']} interleaved rounds ...")
        rows, costs = bench_flax(shape, dt, p["rounds"], p["steps"], best_n[dt], log)
        report.setdefault("xla_cost", []).extend(costs)
        for r in rows:
          add(**r)
  report["seconds"] = time.perf_counter() - t_start
  report["load_end"] = _load()
  report["summary"] = summarize(report, p["target_shape"])
  return report


def _find(results, **kw):
  for r in results:
    if all(r.get(k) == v for k, v in kw.items()):
      return r
  return None


def summarize(report: dict, shape: str) -> dict:
  """GEMM fractions (for results without their own per-repetition GEMM probe) and the
  headline ratios."""
  gemm, res = report["gemm"], report["results"]
  for r in res:
    if r.get("gemm_fraction") is None:  # no per-repetition GEMM probe: the GEMM section's rate
      g = gemm.get(r.get("dtype"))
      r["gemm_fraction"] = r["flops_per_s"] / g if g else None
  s = {}
  for dt in report["dtypes"]:
    tied = _find(res, section="train", shape=shape, gates="tied", dtype=dt)
    untied = _find(res, section="train", shape=shape, gates="untied", dtype=dt)
    if tied and untied:
      s[f"untied_slowdown_{dt}"] = tied["tokens_per_s"] / untied["tokens_per_s"]
  for r in res:
    if r["section"] == "peer":
      s[f"speedup_vs_{r['impl']}_{r['shape']}_{r['dtype']}"] = r["vdrnn_speedup"]
  for r in res:
    if r["section"] == "side" and r["shape"] == shape:
      s[f"side_by_side_{shape}_{r['gates']}_{r['dtype']}_gemm_fraction"] = r["gemm_fraction"]
  for r in res:
    if r["section"] == "mc":
      s[f"mc_S{r['samples']}_gemm_fraction"] = r["gemm_fraction"]
    if r["section"] == "sentiment":
      s[f"sentiment_{r['shape']}_{r['gates']}_gemm_fraction"] = r["gemm_fraction"]
      s[f"sentiment_{r['shape']}_{r['gates']}_matmul_floor_fraction"] = r["matmul_floor_fraction"]
    if r["section"] == "flax" and r["impl"] == "nnx":
      s[f"flax_nnx_time_vs_core_{r['shape']}_{r['gates']}_{r['dtype']}"] = r["ratio_to_core"]
    if r["section"] == "flax" and r["impl"] == "flax":
      s[f"flax_nnx_speedup_vs_nnx_rnn_{r['shape']}_{r['gates']}_{r['dtype']}"] = r["nnx_speedup"]
  t = _find(res, section="train", shape=shape, gates="untied", dtype="float32")
  if t:
    s[f"train_{shape}_untied_float32_gemm_fraction"] = t["gemm_fraction"]
  t = _find(res, section="train", shape=shape, gates="tied", dtype="float32")
  if t:
    s[f"train_{shape}_tied_float32_gemm_fraction"] = t["gemm_fraction"]
  return s


def _times(ratio: float | None) -> str:
  return "?" if ratio is None else f"{ratio:.4f}x"


def format_table(report: dict) -> str:
  d = report["device"]
  lines = [
      f"device: {d['platform']} ({d['device_kind']}; {d['processor']}; {d['cpu_count']} CPUs), "
      f"jax {d['jax']}; load average {report['load_start']} at start, {report['load_end']} at end; "
      f"{report['seconds']:.0f} s"
  ]
  g = report["gemm"]
  if g:
    lines.append("large-GEMM rate: " + ", ".join(
        f"{dt} {g[dt] / 1e9:.0f} GFLOP/s" for dt in report["dtypes"] if dt in g) +
                 "  (bfloat16: bf16 operands, float32 accumulation)")
  hdr = f"{'section':10s} {'impl':6s} {'shape':7s} {'dims':17s} {'gates':6s} {'dtype':8s} " \
        f"{'K/S':>5s} " \
        f"{'tokens/s':>10s} {'ms/step':>9s} {'GFLOP/s':>8s} {'%GEMM':>6s}  vs peer"
  lines += ["", hdr, "-" * len(hdr)]
  res = report["results"]
  for r in res:
    rate = r.get("tokens_per_s", r.get("sample_tokens_per_s"))
    ms = 1e3 * r.get("seconds_per_step", r.get("seconds", 0.0))
    frac = r.get("gemm_fraction")
    vs = ""
    if r["section"] == "side":
      peers = [
          p for p in res if p["section"] == "peer" and p["shape"] == r["shape"] and
          p["dtype"] == r["dtype"] and p["gates"] == r["gates"]
      ]
      vs = "  ".join(f"{p['vdrnn_speedup']:.2f}x {p['impl']}" for p in peers)
    if r["section"] == "flax" and r["impl"] != "core":
      vs = f"{r['ratio_to_core']:.2f}x core's time"
    kS = r.get("K", r.get("samples", ""))
    lines.append(
        f"{r['section']:10s} {r['impl']:6s} {r['shape']:7s} {r.get('dims', ''):17s} "
        f"{r.get('gates', ''):6s} "
        f"{r['dtype']:8s} {kS!s:>5s} {rate:10.0f} {ms:9.1f} {r['flops_per_s'] / 1e9:8.1f} "
        f"{'' if frac is None else f'{100 * frac:5.1f}%':>6s}  {vs}")
  legend = (
      "(mc: tokens/s is sample-tokens/s and ms/step the time of one chunk of S samples; "
      "population: tokens/s counts all K members; sentiment: the released recipe's step, shape "
      "lstm/gru, gates column the scheme (var: variational), padded steps counted; side/peer: "
      "vdrnn and the peers in interleaved rounds, medians over rounds, %GEMM against a GEMM "
      "timed in the same rounds, 'vs peer' the median of the per-round speed ratios at the same "
      "gates and precision")
  if any(r["section"] == "flax" for r in res):
    legend += ("; flax: the core's step (core), the same model from the vdrnn.nn NNX layers "
               "(nnx) and nnx.RNN(OptimizedLSTMCell) with recurrent dropout by hand (flax), in "
               "interleaved rounds, 'vs peer' the median of the per-round time ratios to the "
               "core's; xla cost: XLA's cost analysis of the compiled step, nnx_dense the NNX "
               "step with a dense embedding gradient")
  lines.append(legend + ")")
  for c in report.get("xla_cost", []):
    lines.append(
        f"xla cost, flax {c['shape']} {c['gates']} {c['dtype']} {c['impl']}: "
        f"{c['flops'] / 1e9:.4g} GFLOP ({_times(c['flops_vs_core'])} core's), "
        f"{c['transcendentals'] / 1e6:.4g} M transcendentals, "
        f"{c['bytes_accessed'] / 1e9:.4g} GB accessed ({_times(c['bytes_vs_core'])} core's)")
  for k, v in report["summary"].items():
    lines.append(f"{k}: {v:.2f}")
  for s in report["skipped"]:
    lines.append(f"skipped: {s['reason']}")
  return "\n".join(lines)


def define_flags() -> None:
  """The command line's flags, defined when it runs (this module is also imported as a
  library, beside other tools with flags of their own)."""
  if "peer_worker" in flags.FLAGS:
    return
  flags.DEFINE_bool("quick", False, "Fewer shapes and repetitions (about 2 minutes on a CPU).")
  flags.DEFINE_bool("tiny", False, "Toy shapes: a smoke test of every section in seconds.")
  flags.DEFINE_string("json", None, "Write the full report as JSON to this path.")
  flags.DEFINE_string("table", None, "Also write the table (with the command) to this path, "
                      "e.g. launch/results/bench/<machine>.txt.")
  flags.DEFINE_list("only", list(SECTIONS), f"Sections, from {','.join(SECTIONS)}.")
  flags.DEFINE_list("dtypes", [], "e.g. float32 (default: float32 and bfloat16 where the "
                    "device supports it).")
  flags.DEFINE_string("peer_worker", None, "Internal: NAME,SHAPE,DTYPE of a peer worker.")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if flags.FLAGS.peer_worker:
    peers.peer_worker(flags.FLAGS.peer_worker)
    return
  bad = [s for s in flags.FLAGS.only if s not in SECTIONS]
  if bad:
    raise app.UsageError(f"unknown section(s) {bad}; choose from {list(SECTIONS)}")
  f = flags.FLAGS
  report = run(f.only, quick=f.quick, tiny=f.tiny, dtypes=f.dtypes or None, json_path=f.json)
  table = format_table(report)
  print(table)
  if flags.FLAGS.table:
    os.makedirs(os.path.dirname(os.path.abspath(flags.FLAGS.table)), exist_ok=True)
    with open(flags.FLAGS.table, "w") as f:
      f.write(f"# python -m launch.bench {' '.join(sys.argv[1:])}\n{table}\n")
  if flags.FLAGS.json:
    write_json(report, flags.FLAGS.json)
    print(f"wrote {flags.FLAGS.json}", file=sys.stderr)


def write_json(report: dict, path: str) -> None:
  """Writes ``report`` to ``path`` atomically (a partial report while the run goes on)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(report, f, indent=1)
  os.replace(path + ".tmp", path)
