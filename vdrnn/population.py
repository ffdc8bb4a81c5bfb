"""Population training: K runs that differ in dropout rates and seed, as one vmapped step.

The paper chose its dropout rates by grid search. At the PTB recipes' batch of 20 streams
one run leaves a modern accelerator mostly idle, so ``jax.vmap`` over K members trains a
K-point grid in one jitted step on one device, for little more than the cost of one run.

Select it from the config: any non-empty ``config.population.{p_emb,p_x,p_h,p_out,seed}``
(comma-separated values, one per member; empty fields take the model's value), e.g.

  python -m vdrnn.train --config configs/ptb_medium.py \\
      --config.population.p_emb=0,0.1,0.2,0.3 --config.population.p_h=0,0.1,0.2,0.3

Member ``k`` is exactly the single run of ``member_config(config, members[k])``: its
parameters are initialised from ``key(seed_k)``, its masks drawn from
``fold_in(key(seed_k), step)`` by the same step body (``vdrnn.lm.make_step_body``), with
the rates traced instead of static (a traced rate of 0 gives an all-ones mask where a
static 0 gives none; multiplying by exactly 1.0 changes nothing). All members see the same
batches and learning-rate schedule.

Workdir layout: ``checkpoints/`` holds the stacked state (leading axis K) and resumes the
population; ``member_XX/`` is laid out like a single run's workdir (``config.json`` with the
member's rates and seed, ``metrics.jsonl``, ``tb/``, ``checkpoints/`` with its best epoch and
its final state, ``results.json``); ``results.json`` lists every member's results.
"""

from __future__ import annotations

import json
import math
import os
import sys

import jax
import numpy as np

from vdrnn import checkpoint, lm, lm_eval, loop, masks
from vdrnn.config import validate_lm
from vdrnn.data import ptb
from vdrnn.errors import UserError
from vdrnn.metrics import MetricsWriter

RATES = {"p_emb": "emb", "p_x": "x", "p_h": "h", "p_out": "out"}  # config field -> mask rate key
FIELDS = (*RATES, "seed")


def parse_members(config) -> list[dict]:
  """``[{"seed", "p_emb", "p_x", "p_h", "p_out"}] * K`` from ``config.population``.

  Every non-empty field is a comma-separated list of K values; empty fields take the
  model's (or the config's seed) value for every member.
  """
  lists = {}
  for name in FIELDS:
    raw = str(config.population.get(name, "") or "").strip()
    if raw:
      lists[name] = [v.strip() for v in raw.split(",")]
  if not lists:
    raise UserError("no population: set one of config.population." + ", .".join(FIELDS) +
                    " to comma-separated values, e.g. --config.population.p_h=0,0.1,0.2,0.3")
  sizes = {len(v) for v in lists.values()}
  if len(sizes) > 1:
    counts = ", ".join(f"population.{n} has {len(v)}" for n, v in lists.items())
    raise UserError(f"population fields must have the same number of values: {counts}")
  members = []
  for k in range(sizes.pop()):
    m = {"seed": int(config.seed), **{n: float(config.model[n]) for n in RATES}}
    for name, values in lists.items():
      v = values[k]
      try:
        m[name] = int(v) if name == "seed" else float(v)
      except ValueError:
        raise UserError(
            f"population.{name}: {v!r} is not {'an integer' if name == 'seed' else 'a number'}"
        ) from None
    if not 0 <= m["seed"] < 2 ** 31:
      raise UserError(f"population.seed: {m['seed']} is not in [0, 2**31)")
    for name in RATES:
      try:
        masks.check_rate(m[name], f"population.{name} (member {k})")
      except ValueError as e:
        raise UserError(str(e)) from None
    members.append(m)
  return members


def member_config(config, member: dict):
  """The single-run config of one member: its seed and rates set, no population."""
  c = config.copy_and_resolve_references()
  c.seed = member["seed"]
  for name in RATES:
    c.model[name] = member[name]
  for name in FIELDS:
    c.population[name] = ""
  return c


def member_name(k: int) -> str:
  return f"member_{k:02d}"


def init_population_state(config, members: list[dict], batch_size: int | None = None) -> dict:
  """Stacked ``init_state`` of every member (leading axis K) plus their hyperparameters:
  ``{"params", "carry", "step", "acc"}`` as a single run's state, each leaf ``[K, ...]``, and
  ``"member": {"seed": int32[K], "rates": {"emb", "x", "h", "out": float32[K]}}``."""
  batch_size = config.train.batch_size if batch_size is None else batch_size
  states = jax.device_get([lm.init_state(member_config(config, m), batch_size) for m in members])
  state = jax.tree.map(lambda *xs: np.stack(xs), *states)  # stacked on the host: no compiles
  state["member"] = {
      "seed": np.asarray([m["seed"] for m in members], np.int32),
      "rates": {
          r: np.asarray([m[n] for m in members], np.float32) for n, r in RATES.items()
      }
  }
  return jax.device_put(state)


def make_population_train_step(config):
  """``step(state, x [B, T], y [B, T], lr) -> state`` for a stacked population state: the
  single-run step body vmapped over the members (same batch and lr for all)."""
  body = lm.make_step_body(config)

  def member_step(state, member, x, y, lr):
    return body(state, x, y, lr, jax.random.key(member["seed"]), member["rates"])

  def step(state, x, y, lr):
    member = state["member"]
    core = {k: v for k, v in state.items() if k != "member"}
    core = jax.vmap(member_step, in_axes=(0, 0, None, None, None))(core, member, x, y, lr)
    return {**core, "member": member}

  return step


def member_state(state: dict, k: int) -> dict:
  """Member ``k``'s slice of a stacked state, shaped like a single run's state (sliced on the host;
  pass ``jax.device_get(state)`` when taking several members)."""
  host = jax.device_get({n: v for n, v in state.items() if n != "member"})
  return jax.device_put(jax.tree.map(lambda a: a[k], host))


def is_population(config) -> bool:
  """True when any ``config.population`` field is set (``python -m vdrnn.train`` then trains
  a population)."""
  return any(str(config.get("population", {}).get(k, "") or "").strip() for k in FIELDS)


def _ppl(nll_sum, count) -> list[float]:
  return [float(np.exp(s / max(int(c), 1))) for s, c in zip(nll_sum, count)]


def make_task(config, workdir: str) -> loop.Task:
  """The population given by ``config.population`` as a ``loop.Task``. The loop checkpoints
  the stacked state in ``workdir/checkpoints``; this task writes each member's records,
  best and final checkpoints and results to ``workdir/member_XX``."""
  validate_lm(config)
  members = parse_members(config)
  K, t = len(members), config.train
  if config.model.scheme == "none" and any(config.population[n] for n in RATES):
    raise UserError("population rates need model.scheme variational or naive (scheme none draws "
                    "no masks)")
  if jax.process_count() > 1:
    raise UserError("population training runs in one process on one device; use launch/sweep.py "
                    "across hosts")
  splits, _ = lm.load_data(config)
  streams, epoch_size = lm.train_streams(config, splits["train"])
  train_step = jax.jit(make_population_train_step(config), donate_argnums=0)
  eval_fn = jax.jit(jax.vmap(lm_eval.make_eval_fn(config), in_axes=(0, None, None, None, None)))
  mdirs = [os.path.join(workdir, member_name(k)) for k in range(K)]
  mconfigs = [member_config(config, m) for m in members]
  lr = lm.lr_by_epoch(t)
  writers = {}  # opened at the first epoch end (truncated to the resumed epoch's start)
  reported_bad = set()

  def evaluate_ppl(params, ids, batch_size, full, lua=False) -> list[float]:
    return lm_eval.member_ppls(config, eval_fn, params, ids, batch_size, full=full, lua=lua)

  def member_meta(meta, k):
    hist = [{n: v[k] if isinstance(v, list) else v for n, v in r.items()} for r in meta["history"]]
    return {"config": json.loads(mconfigs[k].to_json()), "epoch_size": epoch_size, "history": hist,
            "best": _member_best(meta["history"], k)}

  def batch(epoch, i):
    x, y = ptb.window(streams, i, t.seq_length)
    return x, y, lr(epoch)

  def start_epoch(state, epoch):  # zero state, fresh accumulators
    state["carry"] = jax.device_put(
        jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), state["carry"]))
    zero = jax.device_get(lm.zero_acc())
    state["acc"] = jax.device_put(jax.tree.map(lambda a: np.stack([a] * K), zero))
    return state

  def running(acc, epoch):
    for k in np.flatnonzero(acc["bad_step"] >= 0):
      if k not in reported_bad:  # one member diverging does not stop the others
        reported_bad.add(k)
        print(f"member {k}: non-finite loss at step {int(acc['bad_step'][k])}; it keeps training "
              f"(its results will be nan)", file=sys.stderr)
    return {"train_ppl": _ppl(acc["nll_sum"], acc["count"]), "lr": lr(epoch)}

  def evaluate(state, epoch, meta):
    valid = evaluate_ppl(state["params"], splits["valid"], t.batch_size, full=False)
    step = loop.current_step(state)
    host = None
    for k in range(K):
      if k not in writers:
        writers[k] = MetricsWriter(mdirs[k], truncate_after_step=epoch * epoch_size)
      best = _member_best(meta["history"], k)
      if best is None or valid[k] < best["value"]:
        host = jax.device_get(state) if host is None else host
        record = {"epoch": epoch + 1, "step": step, "metric": "valid_ppl", "value": valid[k]}
        mmeta = {**member_meta(meta, k), "best": record}
        checkpoint.save(_member_ckpts(mdirs[k]),
                        step,
                        member_state(host, k),
                        mmeta,
                        metric=valid[k])
    return {"valid_ppl": valid,
            "valid_ppl_lua": evaluate_ppl(state["params"], splits["valid"], t.batch_size,
                                          full=False, lua=True)}

  def after_epoch(meta):
    r = meta["history"][-1]
    for k in range(K):
      writers[k].write("epoch",
                       r["epoch"] * epoch_size,
                       epoch=r["epoch"],
                       train_ppl=r["train_ppl"][k],
                       valid_ppl=r["valid_ppl"][k],
                       valid_ppl_lua=r["valid_ppl_lua"][k],
                       lr=r["lr"])

  def finish(state, meta):
    step = loop.current_step(state)
    test = evaluate_ppl(state["params"], splits["test"], 1, full=True)
    host = jax.device_get(state)
    out = []
    for k, m in enumerate(members):
      best = _member_best(meta["history"], k)
      last = meta["history"][-1] if meta["history"] else {}
      res = {"valid_ppl": last["valid_ppl"][k] if last else None,
             "valid_ppl_lua": last["valid_ppl_lua"][k] if "valid_ppl_lua" in last else None,
             "test_ppl": test[k], "best_valid_ppl": best["value"] if best else None, "step": step}
      if config.eval.mc_samples:
        mc = lm_eval.mc_lm(mconfigs[k], member_state(host, k)["params"], splits["test"],
                           workdir=mdirs[k])
        res["mc_test_ppl"], res["mc_samples"] = mc["ppl"], config.eval.mc_samples
      w = writers.get(k) or MetricsWriter(mdirs[k], truncate_after_step=step)
      w.write("test", step, **{n: v for n, v in res.items() if isinstance(v, float)})
      w.close()
      mckpts = _member_ckpts(mdirs[k])
      if mckpts.latest_step() != step:
        checkpoint.save(mckpts, step, member_state(host, k), member_meta(meta, k))
      with open(os.path.join(mdirs[k], "results.json"), "w") as f:
        json.dump(res, f, indent=2)
      out.append({**m, **res, "workdir": mdirs[k]})
    for r in sorted(out, key=lambda r: (not _finite(r["valid_ppl"]), r["valid_ppl"] or 0.0)):
      print("  ".join(f"{n} {r[n]:g}" for n in FIELDS) +
            f"  valid {r['valid_ppl']:.2f}  test {r['test_ppl']:.2f}", file=sys.stderr)
    return {"members": out, "step": step}

  def epoch_line(r):
    return (f"epoch {r['epoch']:3d}  valid " + " ".join(f"{v:.2f}" for v in r["valid_ppl"]) +
            f"  lr {r['lr']:.4g}  {r['time_s']:6.0f}s  {r['wps']:.0f} wps (all members)")

  for d, c in zip(mdirs, mconfigs):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
      f.write(c.to_json(indent=2))
  state = init_population_state(config, members)
  num_params = sum(p.size for p in jax.tree.leaves(state["params"])) // K
  return loop.Task(
      state=state, train_step=train_step, steps_per_epoch=epoch_size, batch=batch,
      start_epoch=start_epoch, running=running, evaluate=evaluate, finish=finish,
      resume_keys=lm.RESUME_KEYS, resume_defaults=lm.RESUME_DEFAULTS,
      meta={"members": members, "epoch_size": epoch_size},
      items_per_step=K * t.batch_size * t.seq_length, rate_name="wps", stop_on_nonfinite=False,
      describe=(f"population of {K}: {num_params / 1e6:.1f}M parameters each, {epoch_size} "
                f"windows/epoch"),
      epoch_line=epoch_line, after_epoch=after_epoch)


def _member_ckpts(mdir: str):
  return checkpoint.manager(os.path.join(mdir, "checkpoints"))


def _member_best(history: list[dict], k: int):
  """Member ``k``'s best epoch so far, ``{"epoch", "metric", "value"}``, or None."""
  best = None
  for r in history:
    v = r["valid_ppl"][k]
    if best is None or v < best["value"]:
      best = {"epoch": r["epoch"], "metric": "valid_ppl", "value": v}
  return best


def train_population(config, workdir: str) -> dict:
  """Trains the population given by ``config.population``; returns ``{"members": [...], "step"}``
  with each member's rates, seed, final valid / test and best valid perplexities."""
  return loop.run(make_task(config, workdir), config, workdir)


def _finite(v) -> bool:
  return isinstance(v, float) and math.isfinite(v)
