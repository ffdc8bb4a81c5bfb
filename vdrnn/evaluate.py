"""MC-dropout evaluation: ``python -m vdrnn.evaluate --workdir DIR [--config.eval.mc_samples=2000]
[--checkpoint latest|best|STEP] [--split test|valid]``.

The workdir's ``config.json`` is the config; any field can be overridden with
``--config.<field>=``. ``--checkpoint`` defaults to ``latest`` (the final model, the one
``results.json`` reports). The result goes to stdout as one JSON line, a short summary to
stderr, and ``mc_<split>.json`` / ``mc_<split>.png`` to the workdir. From Python:
``evaluate_workdir(config, workdir, checkpoint=..., split=...)``, or ``mc_lm(config,
params, ids)`` for parameters in hand (what ``vdrnn.train`` calls at the end of training
when ``eval.mc_samples > 0``).

Language model (Gal & Ghahramani 2016, Sec. 5.1; the released ``run_MC_test``):

* deterministic perplexity: the dropout approximation (no masks), the split as one stream,
  state carried, every next-token prediction (``train.evaluate_split`` at batch 1);
* MC perplexity with S samples: sample ``s`` draws one set of masks from
  ``k_s = fold_in(key(eval.seed), s)`` and holds it over the whole stream (state carried
  from window to window). Per token ``t`` the predictive probability is the mean of the
  samples' probabilities, not of their log-probabilities::

    log pbar_t = logsumexp_s(log p_s(y_t)) - log S,     ppl = exp(-mean_t log pbar_t).

Vectorised: the masks of a chunk of C samples are drawn with ``jax.vmap`` over the sample
keys (each as a batch of one row) and the sample axis is folded into the batch, so the
stream runs as C rows carrying the same tokens with C mask sets (``[C, H] @ [H, 4H]``
matmuls). One jitted call streams the whole split for one chunk; between chunks the
device holds only ``A[t] = logsumexp_{s < done}(log p_s(y_t))`` for every token, so memory
does not depend on S. Within a chunk ``cumlogsumexp`` over the sample axis gives the
running ``A`` after every single sample, so one run yields perplexity against the number
of samples ``k = 1 .. S`` (written to the workdir as ``mc_<split>.json`` and ``.png``).

Masks per window: variational masks depend only on ``(k_s, row)`` and the word-type
embedding mask on ``(k_s, row, token id)``, so drawing them from ``k_s`` in every window
gives masks fixed over the stream. Naive (Zaremba) masks are fresh at every step; MC
samples draw window ``i`` from ``fold_in(k_s, i)``. Sample ``s``'s masks never depend on
the chunk size, so chunking changes nothing but float rounding.

Evaluation knobs: embedding (word-type) dropout is off unless ``eval.mc_emb_dropout``
(as in the released code); ``eval.rate_multiplier`` scales every rate (capped at
``MAX_RATE``) and ``eval.temperature`` divides the logits (Melis et al. 2018, "Pushing
the bounds of dropout"). The deterministic perplexity uses temperature 1; with another
temperature ``det_ppl_temperature`` is reported as well.

Sentiment / IMDB workdirs (``config.task``) are evaluated by ``vdrnn.sentiment``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vdrnn import models, sharding
from vdrnn.data import ptb
from vdrnn.errors import UserError

MAX_RATE = 0.99  # rate_multiplier * rate is capped here (a rate of 1 would drop everything)
SPLITS = ("test", "valid")


# ----------------------------------------------------------------------------------------
# MC dropout for the language model.


def mc_rates(config) -> dict:
  """Rates used by MC evaluation: the model's, embedding off unless ``eval.mc_emb_dropout``,
  each times ``eval.rate_multiplier`` and capped at ``MAX_RATE`` (Python floats)."""
  m, e = config.model, config.eval
  if e.rate_multiplier < 0:
    raise UserError(f"eval.rate_multiplier must be >= 0, got {e.rate_multiplier}")
  rates = models.lm_rates(m)
  if not e.mc_emb_dropout:
    rates["emb"] = 0.0
  return {k: min(float(r) * float(e.rate_multiplier), MAX_RATE) for k, r in rates.items()}


def stream_windows(ids: np.ndarray, seq_length: int):
  """The split as one stream cut into windows: ``x, y, w`` each ``[n, T]`` (``w`` is 0 on
  the padding of the last window; ``w.sum() == len(ids) - 1``)."""
  x, y, w = ptb.eval_windows(np.asarray(ids)[None], seq_length, full=True)
  return x[:, 0], y[:, 0], w[:, 0]


def _fold_samples(m: jax.Array) -> jax.Array:
  """One mask leaf drawn for a batch of one row, vmapped over C samples, as a C-row mask.

  ``[C, 1, D] -> [C, D]`` (tied / output / word-type masks);
  ``[C, A, 1, D] -> [A, C, D]`` (untied ``A = G`` gates, or naive ``A = T`` steps).
  """
  if m.ndim == 3:
    return m[:, 0]
  return jnp.swapaxes(m[:, :, 0], 0, 1)


def make_mc_chunk_fn(config, rates: dict, temperature: float = 1.0, mesh=None):
  """``chunk(params, acc, sample_ids, xs, ys, ws) -> (acc, sums)``, jitted.

  Args:
    params: LM parameters.
    acc: ``[n, T]`` float32, ``logsumexp`` of ``log p_s(y_t)`` over the samples done so far
      (``-inf`` before the first chunk).
    sample_ids: ``[C]`` uint32 global sample indices of this chunk; sample ``s`` uses
      ``k_s = fold_in(key(eval.seed), s)``.
    xs, ys, ws: ``[n, T]`` stream windows (``stream_windows``).
  Returns:
    ``acc`` updated with the chunk's C samples, and ``sums`` ``[C]``:
    ``sums[j] = sum_t w_t * logsumexp_{s <= sample_ids[j]}(log p_s(y_t))`` (the not yet
    normalised log predictive probability after ``j + 1`` samples of the chunk).
  """
  m = config.model
  base = jax.random.key(config.eval.seed)
  naive = m.scheme == "naive"
  unroll = config.train.unroll
  dtype = None if config.train.compute_dtype == "float32" else jnp.dtype(config.train.compute_dtype)

  def chunk(params, acc, sample_ids, xs, ys, ws):
    C = sample_ids.shape[0]
    keys = jax.vmap(lambda s: jax.random.fold_in(base, s))(sample_ids)
    carry = models.lm_zero_carry(m, C)
    if mesh is not None and mesh.devices.size > 1 and C % mesh.devices.size == 0:
      carry = jax.lax.with_sharding_constraint(carry, sharding.batch_sharding(mesh))

    def body(carry, inp):
      i, x, y, w, a = inp  # x, y, w, a: [T]
      wkeys = jax.vmap(lambda k: jax.random.fold_in(k, i))(keys) if naive else keys
      masks = jax.vmap(lambda k: models.lm_masks(k, m, x[None], rates))(wkeys)
      masks = jax.tree.map(_fold_samples, masks)
      tokens = jnp.broadcast_to(x[None], (C, x.shape[0]))  # [C, T]: the same stream in every row
      # C sample rows make the batch large: a fused per-step matmul beats a hoisted [T, C, 4H]
      hs, carry = models.lm_hidden(params, carry, tokens, masks, unroll=unroll, compute_dtype=dtype,
                                   hoist_input=C < 64)

      def step_logp(inp):  # one time step at a time: the [C, V] logits stay in cache
        h_t, y_t = inp
        logits = models.lm_logits(params, h_t, dtype, temperature)  # [C, V]
        return logits[:, y_t] - jax.nn.logsumexp(logits, axis=-1)

      logp = jax.lax.map(step_logp, (hs, y))  # [T, C]
      tot = jnp.logaddexp(a[:, None], jax.lax.cumlogsumexp(logp, axis=1))  # [T, C]
      return carry, (tot[:, -1], (tot * w[:, None]).sum(0))

    n = xs.shape[0]
    _, (acc, sums) = jax.lax.scan(body, carry, (jnp.arange(n, dtype=jnp.uint32), xs, ys, ws, acc))
    return acc, sums.sum(0)

  return jax.jit(chunk)


def mc_log_pbar(config, params, ids: np.ndarray, *, samples: int, chunk: int, rates: dict,
                temperature: float = 1.0, progress: bool = False, desc: str = "MC samples") -> dict:
  """Streams ``ids`` once per chunk of samples; returns
  ``{"log_pbar": [S] float64 (mean over tokens of log pbar after k = 1..S samples),
  "tokens", "compile_s", "run_s"}``."""
  from tqdm import tqdm
  if samples < 1 or chunk < 1:
    raise UserError(f"MC evaluation needs eval.mc_samples >= 1 and eval.mc_chunk >= 1, got {samples} and {chunk}")
  if not temperature > 0:
    raise UserError(f"eval.temperature must be > 0, got {temperature}")
  mesh = sharding.make_mesh()
  xs, ys, ws = stream_windows(ids, config.eval.seq_length)
  count = float(ws.sum())
  if count < 1:
    raise UserError("the evaluation stream needs at least 2 tokens")
  params, data = sharding.put_replicated((params, (xs, ys, ws)), mesh)
  acc = sharding.put_replicated(jnp.full(xs.shape, -jnp.inf, jnp.float32), mesh)
  fn = make_mc_chunk_fn(config, rates, temperature, mesh)
  starts = list(range(0, samples, chunk))
  sizes = [min(chunk, samples - s) for s in starts]
  t0 = time.time()
  compiled = {c: fn.lower(params, acc, np.zeros(c, np.uint32), *data).compile() for c in sorted(set(sizes))}
  compile_s = time.time() - t0
  out = np.empty(samples, np.float64)
  bar = tqdm(total=samples, desc=desc, unit="sample", disable=not progress, dynamic_ncols=True, file=sys.stderr)
  t0 = time.time()
  for start, c in zip(starts, sizes):
    ids_c = np.arange(start, start + c, dtype=np.uint32)
    acc, sums = compiled[c](params, acc, ids_c, *data)
    k = np.arange(start + 1, start + c + 1, dtype=np.float64)
    out[start:start + c] = (np.asarray(sums, np.float64) - count * np.log(k)) / count
    bar.update(c)
    bar.set_postfix(ppl=f"{math.exp(-out[start + c - 1]):.2f}")
  bar.close()
  return {"log_pbar": out, "tokens": int(count), "compile_s": compile_s, "run_s": time.time() - t0}


def deterministic_ppl(config, params, ids: np.ndarray) -> float:
  """Dropout-approximation perplexity of ``ids`` as one stream (batch 1, state carried)."""
  from vdrnn import train
  mesh = sharding.make_mesh()
  return train.evaluate_split(config, train.make_eval_fn(config), sharding.put_replicated(params, mesh), ids, 1,
                              full=True, mesh=mesh)


def curve_points(samples: int) -> list[int]:
  """1, 2, 5, 10, 20, 50, ... up to ``samples``, and ``samples`` itself."""
  pts, p = [], 1
  while p <= samples:
    pts += [k for k in (p, 2 * p, 5 * p) if k <= samples]
    p *= 10
  return sorted(set(pts + [samples]))


def mc_lm(config, params, ids: np.ndarray, *, workdir: Optional[str] = None, split: str = "test",
          progress: Optional[bool] = None) -> dict:
  """Deterministic and MC-dropout perplexity of a token stream.

  Uses ``config.eval``: mc_samples (S), mc_chunk, mc_emb_dropout, temperature,
  rate_multiplier, seed, seq_length. Returns a dict with ``ppl`` (MC, S samples),
  ``det_ppl``, ``curve`` (perplexity at 1, 2, 5, ... S samples), the settings and timings
  (``sample_tokens_per_s`` = S * tokens / time of the MC passes, compilation excluded).
  With ``workdir``, writes ``mc_<split>.json`` (plus ``ppl_by_samples`` for every k) and
  ``mc_<split>.png``.
  """
  e = config.eval
  progress = config.train.get("progress", True) if progress is None else progress
  S = int(e.mc_samples)
  rates = mc_rates(config)
  res = mc_log_pbar(config, params, ids, samples=S, chunk=int(e.mc_chunk), rates=rates,
                    temperature=float(e.temperature), progress=progress, desc=f"MC {split}")
  ppl_k = np.exp(-res["log_pbar"])
  pts = curve_points(S)
  result = {"split": split, "ppl": float(ppl_k[-1]), "det_ppl": deterministic_ppl(config, params, ids),
            "samples": S, "chunk": int(e.mc_chunk), "tokens": res["tokens"],
            "curve": {"samples": pts, "ppl": [float(ppl_k[k - 1]) for k in pts]},
            "temperature": float(e.temperature), "rate_multiplier": float(e.rate_multiplier),
            "emb_dropout": bool(e.mc_emb_dropout), "rates": rates, "scheme": config.model.scheme,
            "seed": int(e.seed), "compile_s": res["compile_s"], "mc_time_s": res["run_s"],
            "sample_tokens_per_s": S * res["tokens"] / max(res["run_s"], 1e-9)}
  if float(e.temperature) != 1.0:
    zero = {k: 0.0 for k in rates}
    det_t = mc_log_pbar(config, params, ids, samples=1, chunk=1, rates=zero, temperature=float(e.temperature))
    result["det_ppl_temperature"] = float(np.exp(-det_t["log_pbar"][-1]))
  if workdir:
    result["files"] = write_outputs(workdir, result, ppl_k)
  return result


def write_outputs(workdir: str, result: dict, ppl_k: np.ndarray) -> list[str]:
  """``mc_<split>.json`` (the result and ``ppl_by_samples``) and ``mc_<split>.png``."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib import ticker
  os.makedirs(workdir, exist_ok=True)
  stem = os.path.join(workdir, f"mc_{result['split']}")
  with open(stem + ".json", "w") as f:
    json.dump({**result, "ppl_by_samples": [float(p) for p in ppl_k]}, f, indent=1)
  fig, ax = plt.subplots(figsize=(6, 4))
  k = np.arange(1, len(ppl_k) + 1)
  ax.plot(k, ppl_k, label=f"MC dropout ({len(ppl_k)} samples: {ppl_k[-1]:.2f})")
  ax.axhline(result["det_ppl"], color="k", ls="--", lw=1, label=f"dropout approximation ({result['det_ppl']:.2f})")
  if "det_ppl_temperature" in result:
    ax.axhline(result["det_ppl_temperature"], color="k", ls=":", lw=1,
               label=f"dropout approximation at T={result['temperature']:g} ({result['det_ppl_temperature']:.2f})")
  ax.set_xscale("log")
  ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
  ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
  ax.xaxis.set_minor_formatter(ticker.NullFormatter())
  ax.set_xlabel("MC samples")
  ax.set_ylabel(f"{result['split']} perplexity")
  ax.set_title(f"T={result['temperature']:g}, rate x{result['rate_multiplier']:g}, "
               f"embedding dropout {'on' if result['emb_dropout'] else 'off'}", fontsize=9)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(stem + ".png", dpi=120)
  plt.close(fig)
  return [stem + ".json", stem + ".png"]


# ----------------------------------------------------------------------------------------
# Evaluating a workdir.


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config from ``<workdir>/config.json``."""
  if not os.path.isdir(workdir):
    raise UserError(f"workdir {workdir} does not exist")
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise UserError(f"{path} not found; is {workdir} a training workdir?")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def find_checkpoint(workdir: str, which: str):
  """``(manager, step)`` for ``which`` = latest | best | a step number."""
  from vdrnn import checkpoint
  which = str(which)
  if which in ("latest", "best"):
    d = os.path.join(workdir, "checkpoints" if which == "latest" else "best")
    mngr = checkpoint.manager(d) if os.path.isdir(d) else None
    if mngr is None or mngr.latest_step() is None:
      raise UserError(f"no {which} checkpoint in {workdir} (looked in {d})")
    return mngr, mngr.latest_step()
  if not which.isdigit():
    raise UserError(f"--checkpoint must be latest, best or a step number, got {which!r}")
  steps = {}
  for sub in ("checkpoints", "best"):
    d = os.path.join(workdir, sub)
    if os.path.isdir(d):
      mngr = checkpoint.manager(d)
      steps.update({s: mngr for s in mngr.all_steps() if s not in steps})
  if int(which) not in steps:
    raise UserError(f"no checkpoint at step {which} in {workdir}; available: {sorted(steps) or 'none'}")
  return steps[int(which)], int(which)


def restore_params(config, workdir: str, which: str = "latest") -> tuple[dict, int]:
  """LM parameters and step of checkpoint ``which`` of a ``train_lm`` workdir."""
  from vdrnn import checkpoint, train
  mngr, step = find_checkpoint(workdir, which)
  state, _ = checkpoint.restore(mngr, step, train.init_state(config, config.train.batch_size))
  return state["params"], int(step)


def evaluate_workdir(config, workdir: str, *, checkpoint: str = "latest", split: str = "test",
                     progress: Optional[bool] = None) -> dict:
  """Evaluates a workdir's checkpoint (latest | best | step) on ``split``; writes
  ``mc_<split>.json/.png`` there.

  ``config`` (None: the workdir's ``config.json``) supplies the model and the ``eval``
  settings. With ``eval.mc_samples == 0`` only the deterministic perplexity is computed.
  Sentiment / IMDB workdirs go to ``vdrnn.sentiment.evaluate_workdir`` (best | latest;
  splits train | valid | test).
  """
  config = load_config(workdir) if config is None else config
  task = config.get("task", "ptb")
  if task in ("sentiment", "imdb"):  # prints its own JSON line
    from vdrnn import sentiment
    return sentiment.evaluate_workdir(config, workdir, checkpoint=checkpoint, split=split)
  if task != "ptb":
    raise UserError(f"unknown task {task!r} in {workdir}/config.json")
  if split not in SPLITS:
    raise UserError(f"--split must be one of {SPLITS}, got {split!r}")
  if any(config.get("population", {}).get(k) for k in ("p_emb", "p_x", "p_h", "p_out", "seed")):
    raise UserError(f"{workdir} holds a population run; evaluate a member's workdir instead, "
                    f"e.g. {os.path.join(workdir, 'member_00')}")
  from vdrnn import train
  from vdrnn.config import validate_lm
  validate_lm(config)
  splits, _ = train.load_data(config)
  params, step = restore_params(config, workdir, checkpoint)
  if config.eval.mc_samples:
    result = mc_lm(config, params, splits[split], workdir=workdir, split=split, progress=progress)
  else:
    result = {"split": split, "det_ppl": deterministic_ppl(config, params, splits[split]),
              "tokens": int(len(splits[split]) - 1)}
  return {"workdir": workdir, "checkpoint": str(checkpoint), "step": step, **result}


def summary(result: dict) -> str:
  """A short human-readable line for stderr."""
  if "ppl" not in result:
    return f"{result['split']} perplexity {result['det_ppl']:.2f} (dropout approximation, step {result['step']})"
  s = (f"{result['split']} perplexity: MC dropout {result['ppl']:.2f} with {result['samples']} samples, "
       f"dropout approximation {result['det_ppl']:.2f}")
  if "det_ppl_temperature" in result:
    s += f" ({result['det_ppl_temperature']:.2f} at temperature {result['temperature']:g})"
  s += f"; step {result.get('step', '?')}; {result['sample_tokens_per_s']:.0f} sample-tokens/s"
  if "files" in result:
    s += "\nwrote " + ", ".join(result["files"])
  return s


# ----------------------------------------------------------------------------------------
# Command line.


def _flag_value(argv: list[str], name: str) -> Optional[str]:
  """The value of ``--name=V`` or ``--name V`` in ``argv`` (the last one wins), else None."""
  value = None
  for i, a in enumerate(argv):
    if a.startswith(f"--{name}="):
      value = a.split("=", 1)[1]
    elif a == f"--{name}" and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def cli(argv: Optional[list[str]] = None) -> None:
  """Entry point (``argv`` defaults to ``sys.argv``). The workdir's config.json becomes the
  ``--config`` flag's default, so any field can be overridden, e.g.
  ``--config.eval.mc_samples=2000``. Flags live in a private ``FlagValues``, so this does
  not clash with ``vdrnn.train``'s flags and can be called more than once in a process."""
  from vdrnn.errors import run_main
  argv = list(sys.argv if argv is None else argv)
  run_main(lambda: _cli(argv))


def _cli(argv: list[str]) -> None:
  from absl import flags, logging
  from ml_collections import config_flags
  if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
    print(__doc__)
    return
  workdir = _flag_value(argv[1:], "workdir")
  if not workdir:
    raise UserError("--workdir is required: the directory a training run wrote")
  config, fv = load_config(workdir), flags.FlagValues()
  try:  # overrides of fields the config lacks fail here
    cfg = config_flags.DEFINE_config_dict("config", config, "The run's config.", flag_values=fv, sys_argv=argv)
  except (AttributeError, KeyError, flags.Error) as e:
    field = str(e).strip().strip("\"' ")
    raise UserError(f"bad --config override ({field}); {workdir}/config.json has no such field") from None
  flags.DEFINE_string("workdir", None, "Training workdir (config.json, checkpoints/, best/).", flag_values=fv)
  ckpt = flags.DEFINE_string("checkpoint", "latest", "latest, best or a step number.", flag_values=fv)
  split = flags.DEFINE_string("split", "test", "test or valid.", flag_values=fv)
  try:
    rest = fv(argv)
  except flags.Error as e:
    raise UserError(str(e).strip().splitlines()[0]) from None
  if len(rest) > 1:
    raise UserError(f"unexpected arguments {rest[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  result = evaluate_workdir(cfg.value, workdir, checkpoint=ckpt.value, split=split.value)
  if cfg.value.get("task", "ptb") == "ptb":  # vdrnn.sentiment prints its own results
    print(json.dumps(result))
    print(summary(result), file=sys.stderr)


if __name__ == "__main__":
  cli()
