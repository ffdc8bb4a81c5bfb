"""Evaluation of the PTB language model: the dropout approximation and MC dropout.

Language model (Gal & Ghahramani 2016, Sec. 5.1; the released ``run_MC_test``):

* deterministic perplexity: the dropout approximation (no masks), the split as one stream,
  state carried, every next-token prediction (``evaluate_split`` at batch 1);
* MC perplexity with S samples: sample ``s`` draws one set of masks from
  ``k_s = fold_in(key(eval.seed), s)`` and holds it over the whole stream (state carried
  from window to window). Per token ``t`` the predictive probability is the mean of the
  samples' probabilities, not of their log-probabilities::

    log pbar_t = logsumexp_s(log p_s(y_t)) - log S,     ppl = exp(-mean_t log pbar_t).

Vectorised: the masks of a chunk of C samples are drawn with ``jax.vmap`` over the sample
keys (each as a batch of one row) and the sample axis is folded into the batch, so the
stream runs as C rows carrying the same tokens with C mask sets (``[C, H] @ [H, 4H]``
matmuls). A chunk streams the split in segments of windows (a jitted scan each, sized to
take a couple of seconds, so progress shows; the state is carried between them); between
chunks only ``A[t] = logsumexp_{s < done}(log p_s(y_t))`` is kept for every token, so memory
does not depend on S. Within a chunk ``cumlogsumexp`` over the sample axis gives the
running ``A`` after every single sample, so one run yields perplexity against the number
of samples ``k = 1 .. S`` (written to the workdir as ``mc_<split>.json`` and ``.png``).

Masks per window: variational masks depend only on ``(k_s, row)`` and the word-type
embedding mask on ``(k_s, row, token id)``, so drawing them from ``k_s`` in every window
gives masks fixed over the stream. Naive (Zaremba) masks and zoneout's are fresh at every
step; MC samples draw window ``i``'s from ``fold_in(k_s, i)``. Weight drop gives every sample
its own recurrent matrix: the model is then vmapped over one-row samples instead of folding
them into the batch (batched matrix-vector products: much slower per sample-token). Sample
``s``'s masks never depend on the chunk size, so chunking changes nothing but float rounding.

Evaluation knobs: embedding (word-type) dropout is off unless ``eval.mc_emb_dropout``
(as in the released code); ``eval.rate_multiplier`` scales every rate (capped at
``MAX_RATE``) and ``eval.temperature`` divides the logits (Melis et al. 2018, "Pushing
the bounds of dropout"). The deterministic perplexity uses temperature 1; with another
temperature ``det_ppl_temperature`` is reported as well.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from vdrnn import checkpoint as ckpt_lib
from vdrnn import metrics, models, plots, sharding
from vdrnn.config import compute_dtype
from vdrnn.data import ptb
from vdrnn.errors import UserError

MAX_RATE = 0.99  # rate_multiplier * rate is capped here (a rate of 1 would drop everything)
MC_MEANS = ("arithmetic", "geometric", "power")  # eval.mc_mean
PROGRESS_SECONDS = 2.0  # MC evaluation calls the device for about this long at a time
SPLITS = ("test", "valid")


def mc_rates(config, params: Optional[dict] = None) -> dict:
  """Rates used by MC evaluation: the model's (a concrete-dropout model's learned ones, from
  ``params``), embedding off unless ``eval.mc_emb_dropout``, each times ``eval.rate_multiplier``
  and capped at ``MAX_RATE`` (Python floats; ``x`` and ``h`` one per layer when learned)."""
  m, e = config.model, config.eval
  if e.rate_multiplier < 0:
    raise UserError(f"eval.rate_multiplier must be >= 0, got {e.rate_multiplier}")
  rates = models.lm_rates(m)
  if m.get("concrete", False):
    if params is None:
      raise ValueError("a concrete-dropout model's MC rates come from its parameters")
    rates.update(jax.tree.map(float, jax.device_get(models.concrete_rates(params))))
  if not e.mc_emb_dropout:
    rates["emb"] = 0.0
  scale = lambda r: min(float(r) * float(e.rate_multiplier), MAX_RATE)  # noqa: E731
  return {k: [scale(x) for x in r] if isinstance(r, list) else scale(r) for k, r in rates.items()}


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


def make_mc_segment_fn(config, rates: dict, temperature: float = 1.0, power: float = 0.0):
  """``segment(params, carry, acc, sample_ids, first, xs, ys, ws[, geo, pow]) -> (carry, acc,
  sums[, geo, pow])``, jitted: C samples over ``n`` consecutive windows of the stream, state
  carried in and out. ``rates``: ``mc_rates``' (Python floats).

  Args:
    params: LM parameters.
    carry: the C sample rows' LSTM state (``models.lm_zero_carry(model, C)`` at the stream's start).
    acc: ``[n, T]`` float32, ``logsumexp`` of ``log p_s(y_t)`` over the samples done so far
      (``-inf`` before the first chunk of samples).
    sample_ids: ``[C]`` uint32 global sample indices; sample ``s`` uses
      ``k_s = fold_in(key(eval.seed), s)``.
    first: uint32 index of the first of these windows in the stream (naive masks use it).
    xs, ys, ws: ``[n, T]`` windows of the stream (``stream_windows``).
    geo, pow: with ``power`` > 0, ``[n, T, V]`` running ``sum_s log p_s(v)`` and
      ``logsumexp_s(power * log p_s(v))`` over every word ``v`` (the geometric and power means'
      sufficient statistics; zeros and ``-inf`` before the first chunk).
  Returns:
    The carry after the windows, ``acc`` updated with the C samples, and ``sums`` ``[C]``:
    ``sums[j] = sum_t w_t * logsumexp_{s <= sample_ids[j]}(log p_s(y_t))`` over these windows
    (the not yet normalised log predictive probability after ``j + 1`` samples of the chunk);
    with ``power`` > 0 also ``geo`` and ``pow`` updated.
  """
  m = config.model
  base = jax.random.key(config.eval.seed)
  naive = m.scheme == "naive"
  weight_drop = rates.get("weight", 0.0) > 0
  zoned = any(rates.get(k, 0.0) > 0 for k in ("zone_c", "zone_h"))
  unroll = config.train.unroll
  dtype = compute_dtype(config)

  modes = power > 0

  def segment(params, carry, acc, sample_ids, first, xs, ys, ws, geo=None, pw=None):
    C = sample_ids.shape[0]
    keys = jax.vmap(lambda s: jax.random.fold_in(base, s))(sample_ids)

    def sample_masks(k, i, x):
      """One sample's masks for window ``i`` (a batch of one row): fresh per window where the
      scheme's masks are fresh per step (naive; zoneout), else the same in every window."""
      k_win = jax.random.fold_in(k, i)
      masks = models.lm_masks(k_win if naive else k, m, x[None], rates)
      if zoned and not naive:
        fresh = models.lm_masks(k_win, m, x[None], rates)
        masks["zone_c"], masks["zone_h"] = fresh["zone_c"], fresh["zone_h"]
      return masks

    def body(carry, inp):
      i, x, y, w, a, g_acc, p_acc = inp  # x, y, w, a: [T]; g_acc, p_acc: [T, V] or None
      if weight_drop:  # a recurrent matrix per sample: the model vmapped over one-row samples
        def one(k, c):
          c1 = [(cc[None], hh[None]) for cc, hh in c]
          hs1, c1 = models.lm_hidden(params, c1, x[None], sample_masks(k, i, x), unroll=unroll,
                                     compute_dtype=dtype)
          return hs1[:, 0], [(cc[0], hh[0]) for cc, hh in c1]
        hs, carry = jax.vmap(one, out_axes=(1, 0))(keys, carry)
      else:
        masks = jax.vmap(lambda k: sample_masks(k, i, x))(keys)
        masks = jax.tree.map(_fold_samples, masks)
        tokens = jnp.broadcast_to(x[None], (C, x.shape[0]))  # [C, T]: the stream in every row
        # C sample rows make the batch large: a fused per-step matmul beats a hoisted [T, C, 4H]
        hs, carry = models.lm_hidden(params, carry, tokens, masks, unroll=unroll,
                                     compute_dtype=dtype, hoist_input=C < 64)

      def step_logp(inp):  # one time step at a time: the [C, V] logits stay in cache
        h_t, y_t, g_t, p_t = inp
        logits = models.lm_logits(params, h_t, dtype, temperature)  # [C, V]
        lse = jax.nn.logsumexp(logits, axis=-1)
        if not modes:
          return logits[:, y_t] - lse, None, None
        logp_v = logits - lse[:, None]  # [C, V]: every word's log-probability
        return (logp_v[:, y_t], g_t + logp_v.sum(0),
                jnp.logaddexp(p_t, jax.nn.logsumexp(power * logp_v, axis=0)))

      logp, g_acc, p_acc = jax.lax.map(step_logp, (hs, y, g_acc, p_acc))  # logp [T, C]
      tot = jnp.logaddexp(a[:, None], jax.lax.cumlogsumexp(logp, axis=1))  # [T, C]
      return carry, (tot[:, -1], (tot * w[:, None]).sum(0), g_acc, p_acc)

    index = first + jnp.arange(xs.shape[0], dtype=jnp.uint32)
    carry, (acc, sums, geo, pw) = jax.lax.scan(body, carry, (index, xs, ys, ws, acc, geo, pw))
    if modes:
      return carry, acc, sums.sum(0), geo, pw
    return carry, acc, sums.sum(0)

  return jax.jit(segment)


def normalised_log_pbar(stat: jax.Array, y: jax.Array, scale: float) -> jax.Array:
  """``log pbar(y)`` of a mean that is renormalised over the vocabulary: ``scale * stat[y] -
  logsumexp_v(scale * stat[v])`` for ``stat [..., V]`` and targets ``y [...]``."""
  s = scale * stat
  return jnp.take_along_axis(s, y[..., None], axis=-1)[..., 0] - jax.nn.logsumexp(s, axis=-1)


def zero_carry(config, C: int, mesh=None):
  """The LSTM state of C sample rows at the stream's start, split over the devices when C
  divides."""
  return _place(models.lm_zero_carry(config.model, C), C, mesh)


def _place(carry, C: int, mesh=None):
  """``carry`` of C sample rows split over the devices when C divides, as ``zero_carry``."""
  if mesh is not None and mesh.devices.size > 1 and C % mesh.devices.size == 0:
    return jax.device_put(carry, sharding.batch_sharding(mesh))
  return carry


def make_mc_chunk_fn(config, rates: dict, temperature: float = 1.0):
  """``chunk(params, acc, sample_ids, xs, ys, ws) -> (acc, sums)``, jitted: one chunk of
  samples over the whole stream in one call (``make_mc_segment_fn`` from a zero state)."""
  segment = make_mc_segment_fn(config, rates, temperature)

  def chunk(params, acc, sample_ids, xs, ys, ws):
    carry = models.lm_zero_carry(config.model, sample_ids.shape[0])
    _, acc, sums = segment(params, carry, acc, sample_ids, jnp.uint32(0), xs, ys, ws)
    return acc, sums

  return jax.jit(chunk)


SAVE_SECONDS = 300.0  # an MC pass with a ``partial`` file writes its state this often


def _fingerprint(config, params, ids, samples, chunk, rates, temperature, power) -> str:
  """What an MC pass's partial state is valid for: its settings, the stream and the model (a
  checksum of the parameters)."""
  return json.dumps({
      "samples": samples, "chunk": chunk, "rates": {k: float(v) for k, v in rates.items()},
      "temperature": float(temperature), "power": float(power), "seed": int(config.eval.seed),
      "seq_length": int(config.eval.seq_length), "emb": bool(config.eval.mc_emb_dropout),
      "tokens": int(len(ids)), "ids": int(np.asarray(ids, np.int64).sum()),
      "params": ckpt_lib.params_checksum(params)}, sort_keys=True)


def mc_log_pbar(config, params, ids: np.ndarray, *, samples: int, chunk: int, rates: dict,
                temperature: float = 1.0, progress: bool = False, desc: str = "MC samples",
                power: float = 0.0, partial: Optional[str] = None) -> dict:
  """Streams ``ids`` through S samples, a segment of windows at a time and, for each segment,
  chunk after chunk of samples (each chunk's state carried to its next segment); returns
  ``{"log_pbar": [S] float64 (mean over tokens of log pbar after k = 1..S samples, the
  arithmetic mean of the probabilities), "tokens", "compile_s", "run_s"}`` and, with
  ``power`` > 0, ``"log_pbar_geometric"`` and ``"log_pbar_power"`` (at S samples; the geometric
  mean and the power mean of exponent ``power`` of the samples' distributions, each
  renormalised over the vocabulary; Melis et al. 2018), from the same samples.

  Segments are sized (from the first call's time) to take about ``PROGRESS_SECONDS`` a chunk,
  so the progress bar moves; the results do not depend on the segment size.

  ``partial``: a file (``.npz``) where the pass writes its state every ``SAVE_SECONDS`` (the
  windows done, each chunk's LSTM state, the running sums) and which it resumes from when it
  holds the state of the same pass (settings, stream and parameters); removed at the end. A
  long MC test killed half-way (a session that ends) goes on where it stopped, with the same
  result as one uninterrupted pass."""
  if samples < 1 or chunk < 1:
    raise UserError(f"MC evaluation needs eval.mc_samples >= 1 and eval.mc_chunk >= 1, got "
                    f"{samples} and {chunk}")
  if not temperature > 0:
    raise UserError(f"eval.temperature must be > 0, got {temperature}")
  mesh = sharding.make_mesh()
  xs, ys, ws = stream_windows(ids, config.eval.seq_length)
  count = float(ws.sum())
  if count < 1:
    raise UserError("the evaluation stream needs at least 2 tokens")
  n = xs.shape[0]
  V = config.model.vocab_size
  modes = power > 0
  params = sharding.put_replicated(params, mesh)
  acc = np.full(xs.shape, -np.inf, np.float32)  # on the host: [n, T], small
  fn = make_mc_segment_fn(config, rates, temperature, power)
  compiled, timing = {}, {"compile_s": 0.0}
  chunks = [np.arange(s, min(s + chunk, samples), dtype=np.uint32)
            for s in range(0, samples, chunk)]
  carries = [zero_carry(config, len(c), mesh) for c in chunks]
  sums = np.zeros(samples, np.float64)
  mode_sums = {"geometric": 0.0, "power": 0.0}
  bar = tqdm(total=samples, desc=desc, unit="sample", disable=not progress, dynamic_ncols=True,
             file=sys.stderr, bar_format="{l_bar}{bar}| {n:.1f}/{total} [{elapsed}<{remaining}]")
  length, run_s, first = None, 0.0, 0
  fingerprint = partial and _fingerprint(config, params, ids, samples, chunk, rates,
                                         temperature, power)
  saved = ckpt_lib.load_npz(partial) if partial else None
  if saved is not None and str(saved.get("fingerprint")) == fingerprint:
    first, acc, sums = int(saved["first"]), saved["acc"], saved["sums"]
    mode_sums = {"geometric": float(saved["geometric"]), "power": float(saved["power"])}
    carries = [_place(jax.tree.unflatten(jax.tree.structure(c), [
        jnp.asarray(saved[f"carry_{j}_{i}"]) for i in range(len(jax.tree.leaves(c)))]),
                      len(chunks[j]), mesh) for j, c in enumerate(carries)]
    bar.update(samples * first / n)
  saved_at = time.time()
  # the modes' [windows, T, V] statistics: at most about 64 MB a segment
  max_len = max(1, int(64e6 // (8 * xs.shape[1] * V))) if modes else n
  while first < n:
    step = 1 if length is None else min(length, max_len, n - first)
    seg = slice(first, first + step)
    stats = (np.zeros((step, xs.shape[1], V), np.float32),
             np.full((step, xs.shape[1], V), -np.inf, np.float32)) if modes else ()
    t0 = time.time()
    for j, ids_c in enumerate(chunks):
      args = (params, carries[j], acc[seg], ids_c, np.uint32(first), xs[seg], ys[seg], ws[seg],
              *stats)
      key = (len(ids_c), step)
      if key not in compiled:
        tc = time.time()
        compiled[key] = fn.lower(*args).compile()
        timing["compile_s"] += time.time() - tc
        t0 += time.time() - tc
      out = compiled[key](*args)
      carries[j], acc_seg, part = out[:3]
      stats = tuple(out[3:])
      acc[seg] = np.asarray(acc_seg)
      start = int(ids_c[0])
      sums[start:start + len(ids_c)] += np.asarray(part, np.float64)
      bar.update(len(ids_c) * step / n)
    if modes:
      geo, pw = stats
      for name, stat, scale in (("geometric", geo, 1.0 / samples), ("power", pw, 1.0 / power)):
        lp = normalised_log_pbar(stat, jnp.asarray(ys[seg]), scale)
        mode_sums[name] += float((np.asarray(lp, np.float64) * ws[seg]).sum())
    spent = time.time() - t0
    run_s += spent
    if length is None:  # windows per segment for about PROGRESS_SECONDS a chunk
      length = int(min(n, max(1, PROGRESS_SECONDS * len(chunks) / max(spent, 1e-6))))
    first += step
    if partial and first < n and time.time() - saved_at > SAVE_SECONDS:
      _save_partial(partial, fingerprint, first, acc, sums, mode_sums, carries)
      saved_at = time.time()
  bar.close()
  if partial and os.path.exists(partial):
    os.remove(partial)
  k = np.arange(1, samples + 1, dtype=np.float64)
  result = {"log_pbar": (sums - count * np.log(k)) / count, "tokens": int(count),
            "compile_s": timing["compile_s"], "run_s": run_s}
  if modes:
    result["log_pbar_geometric"] = mode_sums["geometric"] / count
    result["log_pbar_power"] = mode_sums["power"] / count
  return result


def _save_partial(path: str, fingerprint: str, first: int, acc, sums, mode_sums: dict,
                  carries: list) -> None:
  """``mc_log_pbar``'s state (``checkpoint.save_npz``)."""
  carry = {f"carry_{j}_{i}": np.asarray(jax.device_get(leaf))
           for j, c in enumerate(carries) for i, leaf in enumerate(jax.tree.leaves(c))}
  ckpt_lib.save_npz(path, fingerprint=np.asarray(fingerprint), first=first, acc=acc, sums=sums,
                    geometric=mode_sums["geometric"], power=mode_sums["power"], **carry)


def make_eval_fn(config):
  """``eval_split(params, carry, xs, ys, ws) -> (nll_sum, count)`` over windows ``[n, B, T]``,
  deterministic (dropout approximation), state carried through the windows."""
  dtype = compute_dtype(config)

  def eval_split(params, carry, xs, ys, ws):
    def body(carry, inp):
      x, y, w = inp
      nll, carry = models.lm_nll(params, carry, x, y, None, unroll=config.train.unroll,
                                 compute_dtype=dtype, zoneout=models.lm_zoneout(config.model))
      return carry, (nll * w.T).sum()
    _, sums = jax.lax.scan(body, carry, (xs, ys, ws))
    return sums.sum(), ws.sum()

  return jax.jit(eval_split)


def member_ppls(config, eval_fn, params, ids: np.ndarray, batch_size: int, *, full: bool,
                mesh=None, lua: bool = False) -> list[float]:
  """Deterministic perplexity of a token stream cut into ``batch_size`` streams (state from 0),
  one value per member: ``eval_fn`` is ``make_eval_fn``'s (one member) or that vmapped over a
  population's stacked parameters (``nll_sum`` and ``count`` of shape ``[K]``).

  ``lua``: the released Lua code's validation value instead (``metrics.lua_valid_ppl``:
  windows of ``train.seq_length``, whole windows only, divided by the fractional count)."""
  streams = ptb.batchify(ids, batch_size)
  T = config.train.seq_length if lua else config.eval.seq_length
  xs, ys, ws = ptb.eval_windows(streams, T, full=full and not lua)
  data = (xs, ys, ws) if mesh is None else sharding.put_replicated((xs, ys, ws), mesh)
  nll, count = eval_fn(params, models.lm_zero_carry(config.model, batch_size), *data)
  nll, count = np.atleast_1d(np.asarray(nll, np.float64)), np.atleast_1d(np.asarray(count))
  if lua:
    return [metrics.lua_valid_ppl_from_sum(n, batch_size, streams.shape[1], T) for n in nll]
  return [metrics.perplexity(n / c) for n, c in zip(nll, count)]


def evaluate_split(config, eval_fn, params, ids: np.ndarray, batch_size: int, *, full: bool,
                   mesh, lua: bool = False) -> float:
  """``member_ppls`` of a single run."""
  return member_ppls(config, eval_fn, params, ids, batch_size, full=full, mesh=mesh, lua=lua)[0]


def deterministic_ppl(config, params, ids: np.ndarray) -> float:
  """Dropout-approximation perplexity of ``ids`` as one stream (batch 1, state carried)."""
  mesh = sharding.make_mesh()
  return evaluate_split(config, make_eval_fn(config), sharding.put_replicated(params, mesh), ids, 1,
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
  rate_multiplier, seed, seq_length, mc_mean, mc_power. Returns a dict with ``ppl`` (MC, S
  samples, averaged by ``mc_mean``), ``ppl_arithmetic`` (the paper's: the mean of the samples'
  probabilities), ``ppl_geometric`` and ``ppl_power`` (exponent ``mc_power``; both renormalised,
  Melis et al. 2018; all three from the same samples), ``det_ppl``, ``curve`` (the arithmetic
  perplexity at 1, 2, 5, ... S samples), the settings and timings (``sample_tokens_per_s`` =
  S * tokens / time of the MC passes, compilation excluded).
  With ``workdir``, writes ``mc_<split>.json`` (plus ``ppl_by_samples`` for every k) and
  ``mc_<split>.png``.
  """
  e = config.eval
  progress = config.train.get("progress", True) if progress is None else progress
  S = int(e.mc_samples)
  rates = mc_rates(config, params)
  mean = e.get("mc_mean", "arithmetic")
  if mean not in MC_MEANS:
    raise UserError(f"eval.mc_mean must be one of {MC_MEANS}, got {mean!r}")
  power = float(e.get("mc_power", 0.5))
  if not power > 0:
    raise UserError(f"eval.mc_power must be > 0, got {power}")
  res = mc_log_pbar(config, params, ids, samples=S, chunk=int(e.mc_chunk), rates=rates,
                    temperature=float(e.temperature), progress=progress, desc=f"MC {split}",
                    power=power,
                    partial=(os.path.join(workdir, f"mc_{split}.partial.npz")
                             if workdir and jax.process_count() == 1 else None))
  det_ppl = deterministic_ppl(config, params, ids)
  ppl_k = np.exp(-res["log_pbar"])
  pts = curve_points(S)
  means = {"arithmetic": float(ppl_k[-1]),
           "geometric": float(np.exp(-res["log_pbar_geometric"])),  # inf past float range
           "power": float(np.exp(-res["log_pbar_power"]))}
  result = {
      "split": split,
      "ppl": means[mean],
      "mc_mean": mean,
      "mc_power": power,
      **{f"ppl_{k}": v for k, v in means.items()},
      "det_ppl": det_ppl,
      "samples": S,
      "chunk": int(e.mc_chunk),
      "tokens": res["tokens"],
      "curve": {
          "samples": pts,
          "ppl": [float(ppl_k[k - 1]) for k in pts]
      },
      "temperature": float(e.temperature),
      "rate_multiplier": float(e.rate_multiplier),
      "emb_dropout": bool(e.mc_emb_dropout),
      "rates": rates,
      "scheme": config.model.scheme,
      "seed": int(e.seed),
      "compile_s": res["compile_s"],
      "mc_time_s": res["run_s"],
      "sample_tokens_per_s": S * res["tokens"] / max(res["run_s"], 1e-9)
  }
  if float(e.temperature) != 1.0:
    zero = {k: 0.0 for k in rates}
    det_t = mc_log_pbar(config,
                        params,
                        ids,
                        samples=1,
                        chunk=1,
                        rates=zero,
                        temperature=float(e.temperature))
    result["det_ppl_temperature"] = float(np.exp(-det_t["log_pbar"][-1]))
  if workdir:
    result["files"] = write_outputs(workdir, result, ppl_k)
  return result


def write_outputs(workdir: str, result: dict, ppl_k: np.ndarray) -> list[str]:
  """``mc_<split>.json`` (the result and ``ppl_by_samples``) and ``mc_<split>.png``."""
  os.makedirs(workdir, exist_ok=True)
  stem = os.path.join(workdir, f"mc_{result['split']}")
  with open(stem + ".json", "w") as f:
    json.dump({**result, "ppl_by_samples": [float(p) for p in ppl_k]}, f, indent=1)
  plots.mc_curve(stem + ".png", result, ppl_k)
  return [stem + ".json", stem + ".png"]
