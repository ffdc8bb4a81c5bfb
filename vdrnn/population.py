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

A sequence task (Pang & Lee, IMDB) has populations of seeds, ``config.population.seed`` only:
member ``k`` is the single run with seed ``k`` (its initialisation, masks and shuffle of the
training examples; ``SeqPopulation``), e.g. a deep ensemble of five IMDB LSTMs:

  python -m vdrnn.train --config configs/imdb_lstm.py:none --config.population.seed=0,1,2,3,4

Workdir layout: ``checkpoints/`` holds the stacked state (leading axis K) and resumes the
population; ``member_XX/`` is laid out like a single run's workdir (``config.json`` with the
member's rates and seed, ``metrics.jsonl``, ``tb/``, ``checkpoints/`` with its best epoch and
its final state, ``results.json``), written here through the training loop's hooks
(``vdrnn.loop.Task``) as the loop writes a single run's; ``results.json`` lists every member's
results (a sequence classification's also its ensemble's test metrics, ``"ensemble"``). A
member that diverges is reported and the others go on.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Optional

import jax
import numpy as np

from vdrnn import checkpoint, lm, lm_eval, loop, masks, plots, seq_eval, seq_task, sharding
from vdrnn.data import ptb
from vdrnn.errors import UserError
from vdrnn.metrics import MetricsWriter

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
  for name in c.population:
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
  return stacked([lm.init_state(member_config(config, m), batch_size) for m in members])


def stacked(trees: list):
  """The trees (one per member) as one, each leaf stacked on a new leading axis ``[K, ...]``
  (on the host, then put on the device)."""
  return jax.device_put(jax.tree.map(lambda *xs: np.stack(xs), *jax.device_get(trees)))


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


def member_state(state, k: int):
  """Member ``k``'s slice of a population's stacked state, shaped as a single run's."""
  return jax.tree.map(lambda a: a[k], jax.device_get(state))


def member_record(record: dict, k: int) -> dict:
  """Member ``k``'s values of a population record (list values are one per member)."""
  return {n: v[k] if isinstance(v, list) else v for n, v in record.items()}


def _ppl(nll_sum, count) -> list[float]:
  return [float(np.exp(s / max(int(c), 1))) for s, c in zip(nll_sum, count)]


class PopulationTask(loop.Task):
  """What every population shares as ``vdrnn.loop.run`` trains it: K members stacked on the
  state's leading axis, every metric a list with one value per member. The loop checkpoints
  the stacked state in ``workdir/checkpoints``; these hooks write each member's records, best
  and final checkpoints and results to ``workdir/member_XX``, laid out like a single run's
  workdir. A subclass gives the state, the step, the batches and the evaluation
  (``LMPopulation``, ``SeqPopulation``)."""

  nonfinite_hint = "lower train.lr or train.max_grad_norm"

  def __init__(self, config, workdir: str):
    if jax.process_count() > 1:
      raise UserError("population training runs in one process on one device; use "
                      "launch/sweep.py across hosts")
    self.config, self.workdir = config, workdir
    self.list = parse_members(config)
    self.configs = [member_config(config, m) for m in self.list]
    self.members = [(member_name(k), json.loads(c.to_json())) for k, c in enumerate(self.configs)]
    self.dirs = [os.path.join(workdir, name) for name, _ in self.members]
    self.writers, self.reported_bad, self.step0 = {}, set(), 0

  def start(self, step: int) -> None:
    """Each member's ``config.json``; its metrics are truncated to the resumed ``step``."""
    self.step0 = step
    if sharding.is_primary():
      for d, (_, cfg) in zip(self.dirs, self.members):
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "config.json"), "w") as f:
          json.dump(cfg, f, indent=2)

  def writer(self, k: int):
    if not sharding.is_primary():
      return loop.NoWriter()
    if k not in self.writers:  # truncated to the resumed step, as a single run's
      self.writers[k] = MetricsWriter(self.dirs[k], truncate_after_step=self.step0)
    return self.writers[k]

  def stop_step(self, acc: dict) -> int:
    """Names each member's first non-finite step once; the others go on (never stops)."""
    for k in np.flatnonzero(np.asarray(acc["bad_step"]) >= 0):
      if k not in self.reported_bad:
        self.reported_bad.add(k)
        print(f"member {k}: non-finite loss at step {int(acc['bad_step'][k])}; it keeps training "
              f"(its results will be nan)", file=sys.stderr)
    return -1

  def member_meta(self, meta: dict, k: int) -> dict:
    """Member ``k``'s checkpoint metadata: its config, history and best epoch."""
    history = [member_record(r, k) for r in meta["history"]]
    return {**{n: v for n, v in meta.items() if n not in ("history", "best", "member_best")},
            "config": self.members[k][1], "history": history,
            "best": meta["member_best"][k]}

  def end_epoch(self, state, meta: dict, step: int) -> None:
    """Each member's epoch record, and its checkpoint when it is its best so far."""
    record, host = meta["history"][-1], None
    meta.setdefault("member_best", [None] * len(self.dirs))
    for k, d in enumerate(self.dirs):
      rec = member_record(record, k)
      self.writer(k).write("epoch", step, **loop.finite(rec))
      value = rec.get(self.select)
      best = meta["member_best"][k]
      if value is not None and math.isfinite(value) and (best is None or value < best["value"]):
        meta["member_best"][k] = {"epoch": rec["epoch"], "step": step,
                                  "metric": self.select, "value": value}
        host = jax.device_get(state) if host is None else host
        checkpoint.save(_ckpts(d), step, member_state(host, k), self.member_meta(meta, k))

  def write_members(self, state, meta: dict, results: dict, step: int) -> None:
    """Each member's results, test record and final checkpoint."""
    host = jax.device_get(state)
    meta.setdefault("member_best", [None] * len(self.dirs))
    for k, (d, res) in enumerate(zip(self.dirs, results["members"])):
      w = self.writer(k)
      w.write("test", step, **loop.finite({n: v for n, v in res.items() if isinstance(v, float)}))
      w.close()
      mngr = _ckpts(d)
      if mngr.latest_step() != step:
        checkpoint.save(mngr, step, member_state(host, k), self.member_meta(meta, k))
      if sharding.is_primary():
        with open(os.path.join(d, "results.json"), "w") as f:
          json.dump(res, f, indent=2)


class LMPopulation(PopulationTask):
  """A PTB population: members differ in dropout rates and seed, all see the same batches."""

  select = "valid_ppl"
  resume_keys = lm.RESUME_KEYS

  def __init__(self, config, workdir: str):
    lm.validate(config)
    super().__init__(config, workdir)
    K, t = len(self.list), config.train
    if config.model.scheme == "none" and any(_values(config.population[n]) for n in RATES):
      raise UserError("population rates need model.scheme variational or naive (scheme none "
                      "draws no masks)")
    self.splits, _ = lm.load_data(config)
    self.streams, self.steps_per_epoch = lm.train_streams(config, self.splits["train"])
    self.items_per_step = K * t.batch_size * t.seq_length
    self.meta = {"members": self.list, "epoch_size": self.steps_per_epoch}
    self.train_step = jax.jit(make_population_train_step(config, self.list), donate_argnums=0)
    self.eval_fn = jax.jit(jax.vmap(lm_eval.make_eval_fn(config),
                                    in_axes=(0, None, None, None, None)))
    self.lr = lm.lr_by_epoch(t)
    self.summary = (f"population of {K}: {lm.num_params(config) / 1e6:.1f}M parameters each, "
                    f"{self.steps_per_epoch} windows/epoch")

  def base_config(self):
    return lm.base_config()

  def init_state(self):
    return init_population_state(self.config, self.list)

  def start_epoch(self, state, epoch: int):
    """A zero carry and fresh accumulators for every member."""
    K = len(self.list)
    state["carry"] = jax.device_put(
        jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), state["carry"]))
    state["acc"] = stacked([lm.zero_acc()] * K)
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

  def finish(self, state, meta: dict) -> dict:
    """Every member's results (each also written to ``member_XX/``: ``write_members``)."""
    step, history = loop.current_step(state), meta["history"]
    test = self.ppl(state["params"], "test", 1, full=True)
    out = []
    for k, m in enumerate(self.list):
      recs = [member_record(r, k) for r in history]
      valid = [r["valid_ppl"] for r in recs if math.isfinite(r["valid_ppl"])]
      res = {"valid_ppl": recs[-1]["valid_ppl"] if recs else None,
             "valid_ppl_lua": recs[-1]["valid_ppl_lua"] if recs else None,
             "test_ppl": test[k], "best_valid_ppl": min(valid) if valid else None, "step": step}
      if self.config.eval.mc_samples:
        mdir = os.path.join(self.workdir, member_name(k))
        mc = lm_eval.mc_lm(self.configs[k], member_state(state, k)["params"],
                           self.splits["test"], workdir=mdir)
        res["mc_test_ppl"], res["mc_samples"] = mc["ppl"], self.config.eval.mc_samples
      out.append({**m, **res, "workdir": os.path.join(self.workdir, member_name(k))})
    for r in sorted(out, key=lambda r: (not _finite(r["valid_ppl"]), r["valid_ppl"] or 0.0)):
      print("  ".join(f"{n} {r[n]:g}" for n in FIELDS) +
            f"  valid {r['valid_ppl']:.2f}  test {r['test_ppl']:.2f}", file=sys.stderr)
    results = {"members": out, "step": step}
    self.write_members(state, meta, results, step)
    return results


class SeqPopulation(PopulationTask):
  """A population of a sequence task (``vdrnn.seq_task``): members differ only in their seed
  (initialisation, masks and the order of the training examples), each exactly the single run
  with that seed, trained as one vmapped step. With K seeds and no dropout it is a deep
  ensemble (Lakshminarayanan et al. 2017); a classification's results add the ensemble's test
  metrics (``seq_eval.ensemble_metrics``, from the members' saved predictions)."""

  def __init__(self, config, workdir: str, head):
    super().__init__(config, workdir)
    K = len(self.list)
    # Every member's data, compiled evaluation and results are those of the single run.
    self.single = seq_task.SeqTask(config, workdir, head)
    self.head, self.select = head, self.single.select
    self.resume_keys = [*seq_task.RESUME_KEYS, "population"]
    self.steps_per_epoch = self.single.steps_per_epoch
    self.items_per_step = K * config.train.batch_size
    self.meta = {"members": self.list, **self.single.meta}
    body, seeds = seq_task.make_step_body(config, head), np.asarray([m["seed"] for m in self.list])

    def step(state, x, y, w):
      keys = jax.vmap(jax.random.key)(seeds)
      return jax.vmap(body)(state, x, y, w, keys)

    self.train_step = jax.jit(step, donate_argnums=0)
    self.summary = f"population of {K} seeds: {self.single.summary}"

  def base_config(self):
    return seq_task.base_config()

  def init_state(self):
    return stacked([seq_task.init_state(c) for c in self.configs])

  def start_epoch(self, state, epoch: int):
    state["acc"] = stacked([seq_task.zero_acc()] * len(self.list))
    return state

  def batch(self, epoch: int, i: int) -> tuple:
    """Each member's batch ``i`` of its own shuffle: ``x [K, B, T]``, ``y [K, B]``, ``w [K, B]``."""
    B, s = self.config.train.batch_size, self.single
    orders = [seq_task.epoch_order(m["seed"], epoch, len(s.y_train)) for m in self.list]
    rows = [seq_task.batch_rows(s.splits["train"], order[i * B:(i + 1) * B], B, s.y_train)
            for order in orders]
    return tuple(np.stack(a) for a in zip(*rows))

  def train_metrics(self, acc: dict, epoch: int) -> dict:
    return _lists([self.head.running(member_state(acc, k), self.single.info)
                   for k in range(len(self.list))])

  def evaluate(self, state, epoch: int) -> dict:
    params = jax.device_get(state["params"])
    return _lists([self.single.evaluate_params(member_state(params, k), epoch)
                   for k in range(len(self.list))])

  def finish(self, state, meta: dict) -> dict:
    """Every member's results (each also written to ``member_XX/`` with its predictions) and,
    for classification, the ensemble's (``seq_eval.ensemble_metrics``)."""
    step, host = loop.current_step(state), jax.device_get(state)
    meta.setdefault("member_best", [None] * len(self.dirs))
    out = []
    for k, m in enumerate(self.list):
      os.makedirs(self.dirs[k], exist_ok=True)
      best = meta["member_best"][k]  # eval.checkpoint=best: each member's own best epoch
      params, at, which = self.single.final_params(member_state(host, k), self.dirs[k], best)
      res = self.single.results(params, self.dirs[k], best, at, which)
      out.append({"seed": m["seed"], **res, "workdir": self.dirs[k]})
    results = {"members": out, "step": step}
    if self.head.classes:
      results["ensemble"] = seq_eval.ensemble_metrics(self.dirs, self.config.eval.ece_bins)
    if sharding.is_primary():  # the loop prints scalars only: the members' and ensemble's here
      for r in out:
        print(f"seed {r['seed']}: {seq_task.summary(r)}", file=sys.stderr)
      if "ensemble" in results:
        print(f"ensemble of {len(out)}: " + seq_task.summary(
            {**results["ensemble"], "mc_samples": self.config.eval.mc_samples,
             "checkpoint": f"each member's {self.config.eval.checkpoint}",
             "step": ",".join(str(r["step"]) for r in out)}), file=sys.stderr)
    self.write_members(state, meta, results, step)
    return results

  def plot(self, history: list[dict], results: Optional[dict] = None) -> None:
    """Each member's learning curve in its directory, as a single run draws it."""
    for k, d in enumerate(self.dirs):
      os.makedirs(d, exist_ok=True)
      plots.learning_curve(os.path.join(d, "learning_curve.png"),
                           [member_record(r, k) for r in history], self.head.metric,
                           None if results is None else results["members"][k])


def _lists(records: list[dict]) -> dict:
  """One record with a list per key (one value per member) from the members' records."""
  return {k: [r[k] for r in records] for k in records[0]}


def train_and_evaluate(config, workdir: str, head=None) -> dict:
  """Trains the population given by ``config.population``: a PTB one (``head`` None) or one of
  a sequence task with ``head`` (``vdrnn.seq_eval.Head``). Returns ``{"members": [...],
  "step"}`` with each member's results (and a sequence classification's ``"ensemble"``)."""
  task = LMPopulation(config, workdir) if head is None else SeqPopulation(config, workdir, head)
  return loop.run(task, config, workdir)


def _ckpts(d: str):
  return checkpoint.manager(os.path.join(d, "checkpoints"))


def _finite(v) -> bool:
  return isinstance(v, float) and math.isfinite(v)
