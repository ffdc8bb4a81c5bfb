"""Training entry point: ``python -m vdrnn.train --config configs/ptb_large.py [--workdir DIR]``.

PTB language modelling follows the released code (LM_code/main_new_dropout_SOTA_v3.lua)
and Zaremba et al. 2014 (../shared/PAPER.md):

* B parallel streams, windows of T tokens, hidden state carried from window to window
  and reset to zero at the start of every epoch;
* masks drawn anew for every window from ``fold_in(key(seed), step)``, one per sequence
  row, fixed over the window;
* gradient of ``sum_t mean_b NLL``; global-norm clip at ``max_grad_norm`` (Torch rule:
  scale by ``max / norm`` when ``norm > max``); plain SGD; then
  ``params -= weight_decay * params`` (not scaled by the learning rate);
* learning rate ``lr / lr_decay ** max(0, e - max_epoch)`` in 0-based epoch ``e``: the Lua
  code divides after finishing epoch ``k > max_epoch`` (1-based), so epoch
  ``max_epoch + 2`` is the first with a smaller rate;
* validation after every epoch with the dropout approximation, state reset, same batching;
  test at the end on one stream (batch 1), state carried, every next-token prediction.

The step is ``jax.jit``-ted with ``NamedSharding``s over a 1-D device mesh (data parallel).
Re-running the same command on the same workdir resumes exactly (bit-identical on CPU).
Other tasks (``config.task``: sentiment, imdb) are dispatched to ``vdrnn.sentiment``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from vdrnn import checkpoint, metrics, models, sharding
from vdrnn.config import validate_lm
from vdrnn.data import ptb
from vdrnn.errors import UserError, check_finite, config_value, parse_flags, run_main
from vdrnn.metrics import MetricsWriter

# Config fields that must match for a workdir's checkpoint to be resumed.
RESUME_KEYS = ["task", "seed", "data_limit", "model", "train.batch_size", "train.seq_length"]


def compute_dtype(config):
  return None if config.train.compute_dtype == "float32" else jnp.dtype(config.train.compute_dtype)


def lr_for_epoch(t, epoch: int) -> float:
  """Learning rate of 0-based ``epoch`` (the released Lua code's boundary)."""
  return float(t.lr / t.lr_decay ** max(0, epoch - t.max_epoch))


def zero_acc():
  return {"nll_sum": jnp.zeros((), jnp.float32), "count": jnp.zeros((), jnp.int32),
          "bad_step": jnp.full((), -1, jnp.int32)}


def init_state(config, batch_size: int) -> dict:
  """``{"params", "carry", "step", "acc"}``: everything a run needs to resume exactly."""
  params = models.init_lm(jax.random.key(config.seed), config.model)
  return {"params": params, "carry": models.lm_zero_carry(config.model, batch_size),
          "step": jnp.zeros((), jnp.int32), "acc": zero_acc()}


def make_step_body(config):
  """``body(state, x [B, T], y [B, T], lr, key, rates) -> state``: one SGD step, pure.

  ``key`` is the run's base key (``key(seed)``) and ``rates`` the ``{"emb", "x", "h", "out"}``
  drop probabilities; both may be traced, so a population can ``vmap`` the body over them
  (``vdrnn.population``). Masks come from ``fold_in(key, step)``, row ``b`` from ``fold_in(., b)``.
  """
  m, t = config.model, config.train
  dtype = compute_dtype(config)

  def body(state, x, y, lr, key, rates):
    step = state["step"]
    masks = models.lm_masks(jax.random.fold_in(key, step), m, x, rates)

    params = state["params"]

    def loss_fn(params, rows=None):
      nll, carry = models.lm_nll(params, state["carry"], x, y, masks, unroll=t.unroll, compute_dtype=dtype,
                                 embedded=rows)
      return nll.mean(axis=1).sum(), (nll, carry)

    if m.tie_embeddings:  # the embedding is also the softmax matrix: a dense gradient
      (loss, (nll, carry)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads)))
      scale = jnp.where(norm > t.max_grad_norm, t.max_grad_norm / norm, 1.0)
      params = jax.tree.map(lambda p, g: p - lr * scale * g, params, grads)
    else:  # only the T*B looked-up rows have a gradient: no dense [V, E] gradient is formed
      embed = params["embed"]
      rest = {k: v for k, v in params.items() if k != "embed"}
      ids = x.T.reshape(-1)  # [T*B], the rows' order in ``rows``
      rows = jnp.take(embed, x.T, axis=0)  # [T, B, E]
      (loss, (nll, carry)), (grads, g_rows) = jax.value_and_grad(
          lambda r, e: loss_fn({**r, "embed": embed}, e), argnums=(0, 1), has_aux=True)(rest, rows)
      g_rows = g_rows.reshape(ids.shape[0], -1)
      norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads)) + embedding_grad_sq(ids, g_rows))
      scale = jnp.where(norm > t.max_grad_norm, t.max_grad_norm / norm, 1.0)
      params = jax.tree.map(lambda p, g: p - lr * scale * g, rest, grads)
      params["embed"] = embed.at[ids].add(-lr * scale * g_rows)  # in place (the state is donated)
    if t.weight_decay:
      params = jax.tree.map(lambda p: p - t.weight_decay * p, params)
    acc = state["acc"]
    finite = jnp.isfinite(loss) & jnp.isfinite(norm)
    bad = jnp.where((acc["bad_step"] < 0) & ~finite, step, acc["bad_step"])
    acc = {"nll_sum": acc["nll_sum"] + nll.sum(), "count": acc["count"] + nll.size, "bad_step": bad}
    return {"params": params, "carry": carry, "step": step + 1, "acc": acc}

  return body


def embedding_grad_sq(ids: jax.Array, g_rows: jax.Array) -> jax.Array:
  """``sum(G**2)`` of the dense embedding gradient ``G [V, E]`` whose row ``v`` is the sum of
  the row gradients ``g_rows [N, E]`` of the tokens ``ids [N]`` equal to ``v``, without
  forming ``G``: the rows are sorted by id and summed per distinct id."""
  order = jnp.argsort(ids)
  sorted_ids = ids[order]
  first = jnp.concatenate([jnp.ones((1,), bool), sorted_ids[1:] != sorted_ids[:-1]])
  per_type = jax.ops.segment_sum(g_rows[order], jnp.cumsum(first) - 1, num_segments=ids.shape[0])
  return jnp.sum(per_type * per_type)


def make_train_step(config):
  """``train_step(state, x [B, T], y [B, T], lr) -> state``, pure: ``make_step_body`` with the
  config's seed and (static) rates."""
  body = make_step_body(config)
  base_key = jax.random.key(config.seed)
  rates = models.lm_rates(config.model)

  def train_step(state, x, y, lr):
    return body(state, x, y, lr, base_key, rates)

  return train_step


def make_eval_fn(config):
  """``eval_split(params, carry, xs, ys, ws) -> (nll_sum, count)`` over windows ``[n, B, T]``,
  deterministic (dropout approximation), state carried through the windows."""
  dtype = compute_dtype(config)

  def eval_split(params, carry, xs, ys, ws):
    def body(carry, inp):
      x, y, w = inp
      nll, carry = models.lm_nll(params, carry, x, y, None, unroll=config.train.unroll, compute_dtype=dtype)
      return carry, (nll * w.T).sum()
    _, sums = jax.lax.scan(body, carry, (xs, ys, ws))
    return sums.sum(), ws.sum()

  return jax.jit(eval_split)


def evaluate_split(config, eval_fn, params, ids: np.ndarray, batch_size: int, *, full: bool, mesh,
                   lua: bool = False) -> float:
  """Deterministic perplexity of a token stream cut into ``batch_size`` streams (state from 0).

  ``lua``: the released Lua code's validation value instead (``metrics.lua_valid_ppl``:
  windows of ``train.seq_length``, whole windows only, divided by the fractional count)."""
  streams = ptb.batchify(ids, batch_size)
  T = config.train.seq_length if lua else config.eval.seq_length
  xs, ys, ws = ptb.eval_windows(streams, T, full=full and not lua)
  data = sharding.put_replicated((xs, ys, ws), mesh)
  nll, count = eval_fn(params, models.lm_zero_carry(config.model, batch_size), *data)
  if lua:
    return metrics.lua_valid_ppl_from_sum(float(nll), batch_size, streams.shape[1], T)
  return float(np.exp(float(nll) / float(count)))


def load_data(config):
  splits, vocab = ptb.load(config.data_dir or None, verify=config.verify_checksums)
  if len(vocab) != config.model.vocab_size:
    raise UserError(f"the training data has {len(vocab)} word types but model.vocab_size={config.model.vocab_size}; "
                    f"pass --config.model.vocab_size={len(vocab)}")
  if config.data_limit:
    splits = {k: v[: config.data_limit] for k, v in splits.items()}
  return splits, vocab


def _shardings(mesh, state):
  rep, bat = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  return {"params": jax.tree.map(lambda _: rep, state["params"]),
          "carry": jax.tree.map(lambda _: bat, state["carry"]),
          "step": rep, "acc": jax.tree.map(lambda _: rep, state["acc"])}


class _NoWriter:
  """Stands in for ``MetricsWriter`` on processes other than 0 (multi-host)."""

  def write(self, *args, **kwargs):
    pass

  def close(self):
    pass


def train_lm(config, workdir: str) -> dict:
  """Trains and evaluates a PTB language model; returns the final results dict.

  Under ``jax.distributed`` every process runs this with the same config and workdir (a
  shared filesystem, for the checkpoints); only process 0 writes metrics, results and logs.
  """
  validate_lm(config)
  primary = jax.process_index() == 0
  t = config.train
  mesh = sharding.make_mesh()
  sharding.check_batch(t.batch_size, mesh)
  splits, _ = load_data(config)
  streams = ptb.batchify(splits["train"], t.batch_size)
  epoch_size = ptb.num_windows(streams, t.seq_length)
  if epoch_size < 1:
    raise UserError(f"the training data is too short for batch_size={t.batch_size} x seq_length={t.seq_length}")

  state = init_state(config, t.batch_size)
  shardings = _shardings(mesh, state)
  state = jax.device_put(state, shardings)
  bat = sharding.batch_sharding(mesh)
  train_step = jax.jit(make_train_step(config), in_shardings=(shardings, bat, bat, None),
                       out_shardings=shardings, donate_argnums=0)
  eval_fn = make_eval_fn(config)

  os.makedirs(workdir, exist_ok=True)
  latest = checkpoint.manager(os.path.join(workdir, "checkpoints"), max_to_keep=2)
  best = checkpoint.manager(os.path.join(workdir, "best"), max_to_keep=1)
  cfg_dict = json.loads(config.to_json())
  meta = {"config": cfg_dict, "epoch_size": epoch_size, "history": [], "best_valid": None}
  if latest.latest_step() is not None:
    saved = checkpoint.read_meta(latest)
    checkpoint.check_compatible(saved["config"], cfg_dict, RESUME_KEYS, workdir)
    state, meta = checkpoint.restore(latest, latest.latest_step(), state)
    meta["config"] = cfg_dict
    if primary:
      print(f"resuming from step {int(state['step'])} in {workdir}", file=sys.stderr)
  step = int(state["step"])
  if primary:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))
  writer = MetricsWriter(workdir, truncate_after_step=step) if primary else _NoWriter()

  def save(mngr, at_step):
    checkpoint.save(mngr, at_step, state, meta)

  from tqdm import tqdm
  num_params = sum(p.size for p in jax.tree.leaves(state["params"]))
  if primary:
    print(f"{num_params / 1e6:.1f}M parameters, {len(jax.devices())} device(s), {jax.process_count()} "
          f"process(es), {epoch_size} windows/epoch, workdir {workdir}", file=sys.stderr)
  tokens_per_step = t.batch_size * t.seq_length
  for epoch in range(step // epoch_size, t.num_epochs):
    lr = lr_for_epoch(t, epoch)
    start = step % epoch_size
    if start == 0:  # epoch start: zero state, fresh accumulators
      state["carry"] = jax.device_put(models.lm_zero_carry(config.model, t.batch_size), shardings["carry"])
      state["acc"] = jax.device_put(zero_acc(), shardings["acc"])
    bar = tqdm(total=epoch_size, initial=start, desc=f"epoch {epoch + 1}/{t.num_epochs}",
               disable=not (t.progress and primary), dynamic_ncols=True, file=sys.stderr)
    t0, done = time.time(), 0
    for i in range(start, epoch_size):
      x, y = ptb.window(streams, i, t.seq_length)
      state = train_step(state, sharding.put_batch(x, mesh), sharding.put_batch(y, mesh), lr)
      step, done = step + 1, done + 1
      last = i == epoch_size - 1
      log = step % t.log_every_steps == 0 or last
      ckpt = bool(t.checkpoint_every_steps) and step % t.checkpoint_every_steps == 0 and not last
      if log or ckpt:  # never save (or report) past a non-finite step
        acc = jax.device_get(state["acc"])
        if acc["bad_step"] >= 0:
          bar.close()
          writer.close()
        check_finite(acc, epoch=epoch + 1, kept_step=latest.latest_step(), workdir=workdir,
                     hint="lower train.lr or train.max_grad_norm")
      if log:
        ppl = float(np.exp(acc["nll_sum"] / max(int(acc["count"]), 1)))
        wps = done * tokens_per_step / (time.time() - t0)
        bar.update(i + 1 - bar.n)
        bar.set_postfix(ppl=f"{ppl:.1f}", wps=f"{wps:.0f}", lr=f"{lr:.4g}")
        writer.write("train", step, epoch=epoch + 1, train_ppl=ppl, lr=lr, wps=wps)
      if ckpt:
        save(latest, step)
    bar.close()
    elapsed = time.time() - t0
    valid = evaluate_split(config, eval_fn, state["params"], splits["valid"], t.batch_size, full=False, mesh=mesh)
    valid_lua = evaluate_split(config, eval_fn, state["params"], splits["valid"], t.batch_size,
                               full=False, mesh=mesh, lua=True)
    record = {"epoch": epoch + 1, "train_ppl": ppl, "valid_ppl": valid, "valid_ppl_lua": valid_lua,
              "lr": lr, "time_s": elapsed, "wps": done * tokens_per_step / elapsed}
    meta["history"].append(record)
    writer.write("epoch", step, **record)
    if primary:
      print(f"epoch {epoch + 1:3d}  train {ppl:8.2f}  valid {valid:8.2f}  lr {lr:.4g}  "
            f"{elapsed:6.0f}s  {record['wps']:.0f} wps", file=sys.stderr)
    if meta["best_valid"] is None or valid < meta["best_valid"]:
      meta["best_valid"] = valid
      save(best, step)
    save(latest, step)

  params = state["params"]
  results = {"valid_ppl": meta["history"][-1]["valid_ppl"] if meta["history"] else None,
             "valid_ppl_lua": meta["history"][-1].get("valid_ppl_lua") if meta["history"] else None,
             "test_ppl": evaluate_split(config, eval_fn, params, splits["test"], 1, full=True, mesh=mesh),
             "best_valid_ppl": meta["best_valid"], "step": step}
  if config.eval.mc_samples:
    from vdrnn import evaluate
    mc = evaluate.mc_lm(config, params, splits["test"], workdir=workdir)
    results["mc_test_ppl"] = mc["ppl"]
    results["mc_samples"] = config.eval.mc_samples
  writer.write("test", step, **{k: v for k, v in results.items() if isinstance(v, float)})
  writer.close()
  if primary:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=2)
    print(json.dumps(results))
  return results


def train_and_evaluate(config, workdir: str) -> dict:
  if config.task == "ptb":
    if any(config.get("population", {}).get(k) for k in ("p_emb", "p_x", "p_h", "p_out", "seed")):
      from vdrnn import population
      return population.train_population(config, workdir)
    return train_lm(config, workdir)
  if config.task in ("sentiment", "imdb"):
    from vdrnn import sentiment
    return sentiment.train_and_evaluate(config, workdir)
  raise UserError(f"unknown task {config.task!r}; use ptb, sentiment or imdb")


def default_workdir(config_arg: str) -> str:
  """``workdirs/<config file stem>[_<arg>]`` under the current directory."""
  path, _, arg = (config_arg or "run").partition(":")
  stem = os.path.splitext(os.path.basename(path))[0]
  return os.path.join("workdirs", stem + (f"_{arg}" if arg else ""))


_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/ptb_large.py[:arg].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default: workdirs/<config>[_<arg>]).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Multi-host: call jax.distributed.initialize() and let it "
                                 "detect the cluster (SLURM, Open MPI, Cloud TPU).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0 "
                                   "(implies --distributed; give --num_processes and --process_id too).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index, 0..num_processes-1.")


def init_distributed() -> None:
  """``jax.distributed.initialize`` from the flags; a no-op when none of them is given.

  Each process then feeds its share of the global batch (``vdrnn.sharding.put_batch``).
  On CPU the cross-process collectives are gloo's (TCP).
  """
  explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if not _DISTRIBUTED.value and all(v is None for v in explicit):
    return
  if any(v is not None for v in explicit) and any(v is None for v in explicit):
    raise UserError("--coordinator_address, --num_processes and --process_id go together; "
                    "or pass only --distributed to detect them (SLURM, Open MPI)")
  if not jax.config.jax_cpu_collectives_implementation:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(*explicit)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO

  def _main():
    config = config_value(_CONFIG)
    if config is None:
      raise UserError("--config is required, e.g. --config configs/ptb_small.py")
    init_distributed()
    workdir = _WORKDIR.value or default_workdir(config_flags.get_config_filename(flags.FLAGS["config"]) +
                                                _config_arg())
    train_and_evaluate(config, workdir)

  run_main(_main)


def _config_arg() -> str:
  raw = next((a.split("=", 1)[1] if "=" in a else None for a in sys.argv if a.startswith("--config=")), None)
  if raw is None and "--config" in sys.argv and sys.argv.index("--config") + 1 < len(sys.argv):
    raw = sys.argv[sys.argv.index("--config") + 1]
  return ":" + raw.partition(":")[2] if raw and ":" in raw else ""


if __name__ == "__main__":
  # Modules that import vdrnn.train later (vdrnn.population, ...) get this module, not a
  # second copy that would define the flags again.
  sys.modules.setdefault("vdrnn.train", sys.modules["__main__"])
  app.run(main, flags_parser=parse_flags)
