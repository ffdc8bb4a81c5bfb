"""GPU timings for issue 14: the recurrent step (lax.scan vs the Pallas kernel), scan unroll
settings, and the strong PyTorch peers, at the PTB medium and large shapes.

  python -m launch.gpu_lstm --sections=layer,step,peers,tiles --json=gpu_lstm.json

Sections (each result is appended to the JSON file as soon as it is measured):

* ``layer``: one LSTM layer's recurrence, forward + backward (``jax.grad`` of a fixed linear
  function of ``ys``), ``rnn.lstm(impl="scan")`` vs ``impl="pallas"``, B 20, T 35, H 650 /
  1500 (``--shapes=tiny``: the tiny config, for a smoke run on the CPU), tied and untied
  masks, float32 (TF32 on the GPU at default precision) and bfloat16 operands. Also records
  the max difference of the two paths' outputs and gradients.
* ``step``: the complete training step (``vdrnn.lm.make_train_step``), tokens/s, with
  ``lax.scan`` unroll 1, 5 and 35 (= T: the full unroll) and with the Pallas kernel, for
  the untied medium and large recipes; the Pallas arm sets ``train.rnn_impl = "pallas"``.
* ``peers``: vdrnn's untied medium step (scan and Pallas) side by side with PyTorch
  ``nn.LSTM`` (cuDNN, no recurrent dropout) and AWD-LSTM (DropConnect on ``W_hh``, then
  cuDNN) from ``launch.bench.peers``, in interleaved rounds; medians of per-round times.
* ``tiles``: the Pallas kernel's block_h / num_warps at the untied large layer, bfloat16.

XLA flags (command buffers) are per process: run the script once per setting (see
launch/gpu_check.sh). Timings are medians over repetitions after one compiling call.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from vdrnn import lm, pallas_lstm, rnn
from vdrnn import masks as masks_lib
from launch.bench import peers
from vdrnn.config import load_config_file

_SECTIONS = flags.DEFINE_list("sections", ["layer", "step", "peers", "tiles"], "what to run")
_JSON = flags.DEFINE_string("json", "", "JSON file for the results (rewritten after each)")
_SHAPES = flags.DEFINE_list("shapes", ["medium", "large"], "PTB shapes")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "matmul operand dtypes")
_UNROLLS = flags.DEFINE_list("unrolls", ["1", "5", "35"], "lax.scan unroll factors (35 = T)")
_REPS = flags.DEFINE_integer("reps", 5, "timed repetitions (median)")
_STEPS = flags.DEFINE_integer("steps", 10, "calls per repetition")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "interleaved rounds in the peers section")
_BLOCK_B = flags.DEFINE_integer("block_b", 16, "Pallas rows per program")
_BLOCK_H = flags.DEFINE_integer("block_h", 64, "Pallas hidden units per tile")
_NUM_WARPS = flags.DEFINE_integer("num_warps", 4, "Pallas Triton warps per program")
_TAG = flags.DEFINE_string("tag", "", "a label stored with every result (e.g. the XLA flags)")
_APPEND = flags.DEFINE_bool("append", False, "add to the results already in --json")



def _config(shape: str, gates: str, dtype: str, unroll: int = 1, impl: str = "scan"):
  """The recipe's config (medium, large; tiny: ptb_tiny with vocabulary 50, for smoke runs)."""
  c = load_config_file(f"configs/ptb_{shape}.py:" +
                       (gates if shape == "large" else f"variational_{gates}"))
  if shape == "tiny":
    c.model.vocab_size = 50
  c.train.compute_dtype, c.train.unroll, c.train.progress = dtype, unroll, False
  c.train.rnn_impl = impl
  return c


def _dims(cfg) -> tuple[int, int, int]:
  return cfg.train.batch_size, cfg.train.seq_length, cfg.model.hidden


def _kernel_cfg(**over) -> pallas_lstm.Config:
  kw = {"block_b": _BLOCK_B.value, "block_h": _BLOCK_H.value, "num_warps": _NUM_WARPS.value}
  return pallas_lstm.Config(**{**kw, **over})


def _median_time(f, n: int, reps: int) -> tuple[float, float]:
  """``(compile + first call seconds, median seconds per call)``; ``f()`` blocks."""
  t0 = time.perf_counter()
  f()
  first = time.perf_counter() - t0
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    for _ in range(n):
      f()
    times.append((time.perf_counter() - t0) / n)
  return first, float(np.median(times))


class Report:
  def __init__(self, path: str):
    self.path = path
    d = jax.devices()[0]
    self.data = {"device": {"platform": d.platform, "kind": d.device_kind, "jax": jax.__version__,
                            "xla_flags": os.environ.get("XLA_FLAGS", "")},
                 "tag": _TAG.value, "results": []}
    if _APPEND.value and path and os.path.exists(path):
      with open(path) as f:
        self.data["results"] = json.load(f)["results"]

  def add(self, **r):
    r["tag"] = _TAG.value
    self.data["results"].append(r)
    print(json.dumps(r), flush=True)
    if self.path:
      with open(self.path + ".tmp", "w") as f:
        json.dump(self.data, f, indent=1)
      os.replace(self.path + ".tmp", self.path)


def _guard(report: Report, section: str, **what):
  """Records an exception of one measurement and goes on with the next."""
  @contextlib.contextmanager
  def ctx():
    try:
      yield
    except Exception as e:  # noqa: BLE001 - a failed arm is a result too
      report.add(section=section, error=f"{type(e).__name__}: {str(e)[:2000]}", **what)
  return ctx()


# ----------------------------------------------------------------------------------------
# Sections.


def layer_section(report: Report) -> None:
  for shape in _SHAPES.value:
    B, T, H = _dims(_config(shape, "untied", "float32"))
    k = jax.random.split(jax.random.key(0), 6)
    p = {"w_x": jax.random.uniform(k[0], (H, 4 * H), minval=-0.05, maxval=0.05),
         "w_h": jax.random.uniform(k[1], (H, 4 * H), minval=-0.05, maxval=0.05),
         "b": jnp.zeros((4 * H,))}
    xs = jax.random.normal(k[2], (T, B, H))
    cot = jax.random.normal(k[3], (T, B, H))
    z = jnp.zeros((B, H))
    for gates in ("tied", "untied"):
      shape_m = (H,) if gates == "tied" else (4, H)
      mx = masks_lib.per_row(k[4], B, shape_m, 0.5)
      mh = masks_lib.per_row(k[5], B, shape_m, 0.3)
      if gates == "untied":
        mx, mh = jnp.swapaxes(mx, 0, 1), jnp.swapaxes(mh, 0, 1)
      for dtype in _DTYPES.value:
        cdt = None if dtype == "float32" else jnp.dtype(dtype)
        outs = {}
        for impl in ("scan", "pallas"):
          what = {"shape": shape, "gates": gates, "dtype": dtype, "impl": impl}
          with _guard(report, "layer", **what):
            def loss(p, impl=impl):
              _, ys = rnn.lstm(p, (z, z), xs, mx, mh, compute_dtype=cdt, impl=impl,
                               pallas_config=_kernel_cfg())
              return (ys * cot).sum(), ys
            fwd = jax.jit(lambda p, impl=impl: loss(p, impl)[1])
            fb = jax.jit(jax.grad(loss, has_aux=True))
            n, reps = _STEPS.value, _REPS.value
            c_fwd, t_fwd = _median_time(lambda: jax.block_until_ready(fwd(p)), n, reps)
            c_fb, t_fb = _median_time(lambda: jax.block_until_ready(fb(p)), n, reps)
            g, ys = fb(p)
            outs[impl] = (np.asarray(ys), jax.tree.map(np.asarray, g))
            report.add(section="layer", **what, B=B, T=T, H=H, fwd_ms=1e3 * t_fwd,
                       fwd_bwd_ms=1e3 * t_fb, compile_s=c_fwd + c_fb,
                       tokens_per_s_fwd_bwd=B * T / t_fb)
        if len(outs) == 2:
          (ys_s, g_s), (ys_p, g_p) = outs["scan"], outs["pallas"]
          report.add(section="layer_check", shape=shape, gates=gates, dtype=dtype,
                     ys_max_abs_diff=float(np.abs(ys_s - ys_p).max()),
                     grad_max_rel_diff={n: float(np.abs(g_s[n] - g_p[n]).max()
                                                 / (np.abs(g_s[n]).max() + 1e-30)) for n in g_s})


def _time_step(cfg, report: Report, **what) -> None:
  B, T, _ = _dims(cfg)
  step = jax.jit(lm.make_train_step(cfg), donate_argnums=0)
  state = lm.init_state(cfg, cfg.train.batch_size)
  rng = np.random.RandomState(0)
  toks = rng.randint(0, cfg.model.vocab_size, (4, B, T + 1)).astype(np.int32)
  batches = [(jax.device_put(t[:, :-1]), jax.device_put(t[:, 1:])) for t in toks]
  i = 0

  def run():
    nonlocal state, i
    state = step(state, *batches[i % 4], 1.0)
    i += 1
    jax.block_until_ready(state)

  c, t = _median_time(run, _STEPS.value, _REPS.value)
  nll = float(state["acc"]["nll_sum"] / state["acc"]["count"])
  report.add(section="step", **what, ms_per_step=1e3 * t, tokens_per_s=B * T / t, compile_s=c,
             mean_nll=nll, finite=bool(np.isfinite(nll)))


def step_section(report: Report) -> None:
  for shape in reversed(_SHAPES.value):  # large first: the headline
    for dtype in _DTYPES.value:
      for u in _UNROLLS.value:
        what = {"shape": shape, "gates": "untied", "dtype": dtype, "impl": "scan", "unroll": int(u)}
        with _guard(report, "step", **what):
          _time_step(_config(shape, "untied", dtype, int(u)), report, **what)
      what = {"shape": shape, "gates": "untied", "dtype": dtype, "impl": "pallas", "unroll": None}
      with _guard(report, "step", **what):
        _time_step(_config(shape, "untied", dtype, impl="pallas"), report, **what)


def peers_section(report: Report) -> None:
  shape = "tiny" if _SHAPES.value == ["tiny"] else "medium"
  for dtype in _DTYPES.value:
    cfg = _config(shape, "untied", dtype)
    B, T, _ = _dims(cfg)
    runs = {}
    for name in ("scan", "pallas"):
      step = jax.jit(lm.make_train_step(_config(shape, "untied", dtype, impl=name)),
                     donate_argnums=0)
      state = {"s": lm.init_state(cfg, cfg.train.batch_size)}
      rng = np.random.RandomState(0)
      toks = rng.randint(0, cfg.model.vocab_size, (B, T + 1)).astype(np.int32)
      x, y = jax.device_put(toks[:, :-1]), jax.device_put(toks[:, 1:])

      def run(n, step=step, state=state, x=x, y=y):
        t0 = time.perf_counter()
        for _ in range(n):
          state["s"] = step(state["s"], x, y, 1.0)
        jax.block_until_ready(state["s"])
        return (time.perf_counter() - t0) / n
      with _guard(report, "peers", impl=f"vdrnn_{name}", dtype=dtype):
        run(1)
        runs[f"vdrnn_{name}"] = run
    for name in ("cudnn", "awd"):
      with _guard(report, "peers", impl=name, dtype=dtype):
        run, info = peers.PEERS[name](_config(shape, "untied", "float32"), dtype)
        runs[name] = run
        report.add(section="peer_info", impl=name, dtype=dtype, **info)
    times = {k: [] for k in runs}
    for run in runs.values():  # warm-up round (lazy initialisation in the first calls)
      run(_STEPS.value)
    for _ in range(_ROUNDS.value):
      for k, run in runs.items():
        times[k].append(run(_STEPS.value))
    base = np.asarray(times.get("cudnn", [np.nan] * _ROUNDS.value))
    for k, ts in times.items():
      ts = np.asarray(ts)
      report.add(section="peers", impl=k, dtype=dtype, shape=shape,
                 ms_per_step=1e3 * float(np.median(ts)), tokens_per_s=B * T / float(np.median(ts)),
                 rounds_ms=(1e3 * ts).tolist(),
                 time_vs_cudnn=float(np.median(ts / base)))


def tiles_section(report: Report) -> None:
  shape = "tiny" if _SHAPES.value == ["tiny"] else "large"
  B, T, H = _dims(_config(shape, "untied", "float32"))
  k = jax.random.split(jax.random.key(1), 4)
  gx = jax.random.normal(k[0], (T, 4, B, H))
  w = (0.04 * jax.random.normal(k[1], (4, H, H))).astype(jnp.bfloat16)
  mh = masks_lib.per_row(k[2], B, (4, H), 0.3).swapaxes(0, 1)
  z = jnp.zeros((B, H))
  cot = jax.random.normal(k[3], (T, B, H))
  for block_h in (32, 64, 128):
    for num_warps in (4, 8):
      what = {"block_h": block_h, "num_warps": num_warps, "shape": shape, "gates": "untied",
              "dtype": "bfloat16"}
      with _guard(report, "tiles", **what):
        cfg = _kernel_cfg(block_h=block_h, num_warps=num_warps)

        def loss(gx, w, cfg=cfg):
          _, ys = pallas_lstm.lstm_recurrence(gx, w, z, z, mh, cfg=cfg)
          return (ys * cot).sum()
        fb = jax.jit(jax.grad(loss, argnums=(0, 1)))
        c, t = _median_time(lambda: jax.block_until_ready(fb(gx, w)), _STEPS.value, _REPS.value)
        report.add(section="tiles", **what, fwd_bwd_ms=1e3 * t, compile_s=c)


def main(argv):
  del argv
  report = Report(_JSON.value)
  sections = {"layer": layer_section, "step": step_section, "peers": peers_section,
              "tiles": tiles_section}
  for s in _SECTIONS.value:
    if s not in sections:
      raise app.UsageError(f"unknown section {s!r}; choose from {sorted(sections)}")
  for s in _SECTIONS.value:
    t0 = time.perf_counter()
    with _guard(report, s):
      sections[s](report)
    print(f"section {s}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)


if __name__ == "__main__":
  app.run(main)
