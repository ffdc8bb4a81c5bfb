"""Population training: K runs that differ in dropout rates and seed, as one vmapped step.

The paper chose its dropout rates by grid search. At the PTB recipes' batch of 20 streams
one run leaves a modern accelerator mostly idle, so ``jax.vmap`` over K members trains a
K-point grid in one jitted step on one device, for little more than the cost of one run.

Select it from the config: any non-empty ``config.population.{p_emb,p_x,p_h,p_out,seed}``
(one value per member; empty fields take the model's value), e.g.

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
its final state, ``results.json``), written by the training loop (``vdrnn.loop``) as it writes
a single run's; ``results.json`` lists every member's results.
"""

from __future__ import annotations

import json
import math
import os
import sys

import jax
import numpy as np

from vdrnn import lm, lm_eval, loop, masks
from vdrnn.data import ptb
from vdrnn.errors import UserError

RATES = {f: masks.RATE_FIELDS[f] for f in masks.DROPOUT_FIELDS}  # config field -> rate key
FIELDS = (*RATES, "seed")


def _values(raw) -> list:
  """A population field's values: a tuple or list (a comma-separated string, as configs from
  before the fields were tuples wrote them)."""
  if isinstance(raw, str):
    return [v.strip() for v in raw.split(",") if v.strip()]
  return list(raw or ())


def parse_members(config) -> list[dict]:
  """``[{"seed", "p_emb", "p_x", "p_h", "p_out"}] * K`` from ``config.population``.

  Every non-empty field has K values; empty fields take the model's (or the config's seed)
  value for every member.
  """
  lists = {n: _values(config.population.get(n, ())) for n in FIELDS}
  lists = {n: v for n, v in lists.items() if v}
  if not lists:
    raise UserError("no population: set one of config.population." + ", .".join(FIELDS) +
                    " to one value per member, e.g. --config.population.p_h=0,0.1,0.2,0.3")
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
        if name == "seed" and float(v) != int(float(v)):
          raise ValueError
        m[name] = int(float(v)) if name == "seed" else float(v)
      except (TypeError, ValueError):
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
    c.population[name] = ()
  return c


def member_name(k: int) -> str:
  return f"member_{k:02d}"


def member_arrays(members: list[dict]) -> dict:
  """The members' hyperparameters as arrays: ``{"seed": int32[K], "rates": {"emb", "x", "h",
  "out": float32[K]}}`` (what the vmapped step maps over)."""
  return {"seed": np.asarray([m["seed"] for m in members], np.int32),
          "rates": {r: np.asarray([m[n] for m in members], np.float32) for n, r in RATES.items()}}


def init_population_state(config, members: list[dict], batch_size: int | None = None) -> dict:
  """Stacked ``lm.init_state`` of every member: a single run's state, each leaf ``[K, ...]``."""
  batch_size = config.train.batch_size if batch_size is None else batch_size
  states = jax.device_get([lm.init_state(member_config(config, m), batch_size) for m in members])
  return jax.device_put(jax.tree.map(lambda *xs: np.stack(xs), *states))  # stacked on the host


def make_population_train_step(config, members: list[dict]):
  """``step(state, x [B, T], y [B, T], lr) -> state`` for a stacked population state: the
  single-run step body vmapped over the members (their seeds and rates; same batch and lr)."""
  body = lm.make_step_body(config)
  hyper = member_arrays(members)

  def member_step(state, member, x, y, lr):
    return body(state, x, y, lr, jax.random.key(member["seed"]), member["rates"])

  def step(state, x, y, lr):
    return jax.vmap(member_step, in_axes=(0, 0, None, None, None))(state, hyper, x, y, lr)

  return step


def is_population(config) -> bool:
  """True when any ``config.population`` field is set (``python -m vdrnn.train`` then trains
  a population)."""
  return any(_values(config.get("population", {}).get(k, ())) for k in FIELDS)


def _ppl(nll_sum, count) -> list[float]:
  return [float(np.exp(s / max(int(c), 1))) for s, c in zip(nll_sum, count)]


class PopulationTask:
  """The population given by ``config.population`` as ``vdrnn.loop.run`` trains it: K members
  stacked on the state's leading axis, every metric a list with one value per member. The loop
  checkpoints the stacked state in ``workdir/checkpoints`` and writes each member's records,
  best and final checkpoints and results to ``workdir/member_XX`` (``Task.members``)."""

  select = "valid_ppl"
  resume_keys = lm.RESUME_KEYS
  nonfinite_hint = "lower train.lr or train.max_grad_norm"

  def __init__(self, config, workdir: str):
    lm.validate(config)
    self.config, self.workdir = config, workdir
    self.list = parse_members(config)
    K, t = len(self.list), config.train
    if config.model.scheme == "none" and any(_values(config.population[n]) for n in RATES):
      raise UserError("population rates need model.scheme variational or naive (scheme none "
                      "draws no masks)")
    if jax.process_count() > 1:
      raise UserError("population training runs in one process on one device; use "
                      "launch/sweep.py across hosts")
    self.splits, _ = lm.load_data(config)
    self.streams, self.steps_per_epoch = lm.train_streams(config, self.splits["train"])
    self.items_per_step = K * t.batch_size * t.seq_length
    self.meta = {"members": self.list, "epoch_size": self.steps_per_epoch}
    self.configs = [member_config(config, m) for m in self.list]
    self.members = [(member_name(k), json.loads(c.to_json())) for k, c in enumerate(self.configs)]
    self.train_step = jax.jit(make_population_train_step(config, self.list), donate_argnums=0)
    self.eval_fn = jax.jit(jax.vmap(lm_eval.make_eval_fn(config),
                                    in_axes=(0, None, None, None, None)))
    self.lr = lm.lr_by_epoch(t)
    self.summary = (f"population of {K}: {lm.num_params(config) / 1e6:.1f}M parameters each, "
                    f"{self.steps_per_epoch} windows/epoch")

  def init_state(self):
    return init_population_state(self.config, self.list)

  def start_epoch(self, state, epoch: int):
    """A zero carry and fresh accumulators for every member."""
    K = len(self.list)
    state["carry"] = jax.device_put(
        jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), state["carry"]))
    zero = jax.device_get(lm.zero_acc())
    state["acc"] = jax.device_put(jax.tree.map(lambda a: np.stack([a] * K), zero))
    return state

  def batch(self, epoch: int, i: int) -> tuple:
    x, y = ptb.window(self.streams, i, self.config.train.seq_length)
    return x, y, self.lr(epoch)

  def train_metrics(self, acc: dict, epoch: int) -> dict:
    return {"train_ppl": _ppl(acc["nll_sum"], acc["count"]), "lr": self.lr(epoch)}

  def ppl(self, params, split: str, batch_size: int, full: bool, lua: bool = False):
    return lm_eval.member_ppls(self.config, self.eval_fn, params, self.splits[split], batch_size,
                               full=full, lua=lua)

  def evaluate(self, state, epoch: int) -> dict:
    B = self.config.train.batch_size
    return {"valid_ppl": self.ppl(state["params"], "valid", B, full=False),
            "valid_ppl_lua": self.ppl(state["params"], "valid", B, full=False, lua=True)}

  def finish(self, state, history: list[dict]) -> dict:
    """Every member's results (each written to ``member_XX/results.json`` by the loop)."""
    step = loop.current_step(state)
    test = self.ppl(state["params"], "test", 1, full=True)
    out = []
    for k, m in enumerate(self.list):
      recs = [loop.member_record(r, k) for r in history]
      valid = [r["valid_ppl"] for r in recs if math.isfinite(r["valid_ppl"])]
      res = {"valid_ppl": recs[-1]["valid_ppl"] if recs else None,
             "valid_ppl_lua": recs[-1]["valid_ppl_lua"] if recs else None,
             "test_ppl": test[k], "best_valid_ppl": min(valid) if valid else None, "step": step}
      if self.config.eval.mc_samples:
        mdir = os.path.join(self.workdir, member_name(k))
        mc = lm_eval.mc_lm(self.configs[k], loop.member_state(state, k)["params"],
                           self.splits["test"], workdir=mdir)
        res["mc_test_ppl"], res["mc_samples"] = mc["ppl"], self.config.eval.mc_samples
      out.append({**m, **res, "workdir": os.path.join(self.workdir, member_name(k))})
    for r in sorted(out, key=lambda r: (not _finite(r["valid_ppl"]), r["valid_ppl"] or 0.0)):
      print("  ".join(f"{n} {r[n]:g}" for n in FIELDS) +
            f"  valid {r['valid_ppl']:.2f}  test {r['test_ppl']:.2f}", file=sys.stderr)
    return {"members": out, "step": step}

  def plot(self, history: list[dict], results=None) -> None:
    pass


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains the population given by ``config.population``; returns ``{"members": [...], "step"}``
  with each member's rates, seed, final valid / test and best valid perplexities."""
  return loop.run(PopulationTask(config, workdir), config, workdir)


def _finite(v) -> bool:
  return isinstance(v, float) and math.isfinite(v)
