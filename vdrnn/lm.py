"""The Penn Treebank language-model task, as the training loop (``vdrnn.loop``) runs it.

Training follows the released code (LM_code/main_new_dropout_SOTA_v3.lua) and Zaremba et
al. 2014 (``configs/PAPER.md``):

* B parallel streams, windows of T tokens, hidden state carried from window to window
  and reset to zero at the start of every epoch;
* masks drawn anew for every window from ``fold_in(key(seed), step)``, one per sequence
  row, fixed over the window;
* gradient of ``sum_t mean_b NLL``; global-norm clip at ``max_grad_norm``; plain SGD; then
  ``params -= weight_decay * params`` (not scaled by the learning rate);
* learning rate ``lr / lr_decay ** max(0, e - max_epoch)`` in 0-based epoch ``e``: the Lua
  code divides after finishing epoch ``k > max_epoch`` (1-based), so epoch
  ``max_epoch + 2`` is the first with a smaller rate;
* validation after every epoch with the dropout approximation (``vdrnn.lm_eval``), state
  reset, same batching: ``valid_ppl`` exact and ``valid_ppl_lua`` as the released Lua
  ``run_valid`` computed it (the paper's validation numbers; ``metrics.lua_valid_ppl``);
  test at the end on one stream (batch 1), state carried, and the MC-dropout test when
  ``eval.mc_samples > 0``.

The step is ``jax.jit``-ted with ``NamedSharding``s over a 1-D device mesh (data parallel).
"""

from __future__ import annotations

import math
import os
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vdrnn import loop, lm_eval, metrics, models, plots, sharding
from vdrnn import checkpoint as ckpt_lib
from vdrnn.config import (check_compute_dtype, check_positive_ints, compute_dtype,
                          validate_rates)
from vdrnn.data import ptb
from vdrnn.errors import UserError

def base_config() -> ml_collections.ConfigDict:
  """Defaults every PTB config starts from (``configs/ptb_*.py``): Zaremba et al.'s small
  model without dropout; the config files set the paper's values."""
  c = ml_collections.ConfigDict()
  c.task = "ptb"
  c.seed = 0
  c.data_dir = ""            # see vdrnn/data/locate.py for the search order
  c.verify_checksums = True  # False: accept a corpus of your own under ptb/
  c.data_limit = 0           # >0: keep only the first data_limit tokens of each split (smoke runs)

  c.model = ml_collections.ConfigDict()
  c.model.vocab_size = 10000
  c.model.emb_dim = 200
  c.model.hidden = 200
  c.model.num_layers = 2
  c.model.init_scale = 0.1
  c.model.tie_embeddings = False   # Press & Wolf 2016 (an extra; not in the paper)
  c.model.lua_biases = False       # True: two biases per LSTM gate, as the Lua code's i2h/h2h
  c.model.scheme = "none"          # variational | naive | none
  c.model.tied_gates = False       # variational: one mask for all gates (True) or one per gate
  c.model.p_emb = 0.0              # word-type embedding dropout (dropout_x)
  c.model.p_x = 0.0  # LSTM-input dropout, every layer (dropout_i); naive: all non-recurrent
  c.model.p_h = 0.0                # recurrent dropout (dropout_h)
  c.model.p_out = 0.0              # dropout before the softmax (dropout_o)
  c.model.emb_shared_across_batch = False  # AWD-LSTM embedding dropout: one draw per type per batch
  # Beyond the paper, with any scheme (vdrnn/rnn.py lstm):
  c.model.p_weight_drop = 0.0  # AWD-LSTM weight drop: DropConnect on W_h, one mask per batch
  c.model.zoneout_c = 0.0      # zoneout (Krueger et al. 2016): P(a cell unit keeps its old value)
  c.model.zoneout_h = 0.0      # ... and a hidden unit (their PTB setting: 0.5 and 0.05)
  # Concrete dropout (Gal, Hron & Kendall 2017): learn p_emb, p_out and each layer's p_x, p_h
  # (variational scheme; the rates above are the initial values, each in (0, 1))
  c.model.concrete = False
  c.model.concrete_temperature = 0.1   # the paper's relaxation temperature
  c.model.concrete_length_scale = 0.1  # prior length-scale l of the KL's weight term (our choice)

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 20
  c.train.seq_length = 20
  c.train.num_epochs = 13
  c.train.lr = 1.0
  c.train.max_epoch = 4      # lr constant for epochs 1..max_epoch+1, then / lr_decay per epoch
  c.train.lr_decay = 2.0
  c.train.max_grad_norm = 5.0
  c.train.weight_decay = 0.0  # params -= weight_decay * params after each SGD step
  c.train.checkpoint_every_steps = 500  # plus one at every epoch end
  c.train.log_every_steps = 50
  c.train.unroll = 1          # lax.scan unroll
  c.train.rnn_impl = "scan"   # or pallas: the fused recurrent kernel (vdrnn/pallas_lstm.py; GPU)
  c.train.compute_dtype = "float32"  # or bfloat16 (matmul operands; fp32 accumulation)
  c.train.progress = True

  c.eval = ml_collections.ConfigDict()
  c.eval.seq_length = 35       # window for the deterministic valid/test passes (state carried)
  c.eval.mc_samples = 0        # >0: MC-dropout test at the end of training
  c.eval.mc_chunk = 250  # samples evaluated together (bounds memory: ~0.6 GB at medium shapes)
  c.eval.mc_emb_dropout = False  # released code: embedding dropout off in MC evaluation
  c.eval.temperature = 1.0     # Melis et al. 2018: softmax temperature at evaluation
  c.eval.rate_multiplier = 1.0  # Melis et al. 2018: multiply every dropout rate at evaluation
  # How MC samples are averaged (all three are reported, from one pass): arithmetic (the
  # paper's: the mean of the probabilities) | geometric | power (exponent mc_power); the last two
  # renormalised over the vocabulary (Melis et al. 2018)
  c.eval.mc_mean = "arithmetic"
  c.eval.mc_power = 0.5        # our choice, between geometric (-> 0) and arithmetic (1)
  c.eval.seed = 1

  # Population training (vdrnn/population.py): one value per member for any of these fields,
  # e.g. --config.population.p_h=0,0.1,0.2,0.3 (a tuple). Fields left empty take the model's
  # value (the config's seed).
  c.population = ml_collections.ConfigDict()
  for name in ("p_emb", "p_x", "p_h", "p_out", "seed"):
    c.population[name] = ()
  return c


# Config fields that must match for a workdir's checkpoint to be resumed.
RESUME_KEYS = ["task", "seed", "data_limit", "model", "train.batch_size", "train.seq_length"]


def validate(c) -> None:
  """One-line ``UserError`` for the first bad field of a PTB config."""
  validate_rates(c.model)
  if not (isinstance(c.data_limit, int) and not isinstance(c.data_limit, bool) and
          c.data_limit >= 0):
    raise UserError(f"data_limit must be an integer >= 0 (0: the whole corpus), got "
                    f"{c.data_limit!r}")
  t = c.train
  check_positive_ints(c, ("train.batch_size", "train.seq_length", "train.num_epochs"))
  for name in ("lr", "lr_decay", "max_grad_norm"):
    if not (isinstance(t[name], (int, float)) and math.isfinite(t[name]) and t[name] > 0):
      raise UserError(f"train.{name} must be a positive finite number, got {t[name]!r}")
  check_compute_dtype(c)
  if t.get("rnn_impl", "scan") not in ("scan", "pallas"):
    raise UserError(f"train.rnn_impl must be scan or pallas, got {t.rnn_impl!r}")
  if c.eval.mc_samples < 0 or c.eval.mc_chunk < 1:
    raise UserError("eval.mc_samples must be >= 0 and eval.mc_chunk >= 1")
  if c.eval.get("mc_mean", "arithmetic") not in lm_eval.MC_MEANS:
    raise UserError(f"eval.mc_mean must be one of {lm_eval.MC_MEANS}, got {c.eval.mc_mean!r}")
  if not c.eval.get("mc_power", 0.5) > 0:
    raise UserError(f"eval.mc_power must be > 0, got {c.eval.mc_power!r}")
  _validate_concrete(c)


def _validate_concrete(c) -> None:
  """Concrete dropout learns the variational rates of one run from their config values."""
  m = c.model
  if not m.get("concrete", False):
    return
  if m.scheme != "variational":
    raise UserError(f"model.concrete learns variational (per-sequence) rates: it needs "
                    f"model.scheme=variational, got {m.scheme!r}")
  zero = [k for k in ("p_emb", "p_x", "p_h", "p_out") if not m[k] > 0]
  if zero:
    raise UserError(f"model.concrete starts each learned rate from its config value, which "
                    f"must be in (0, 1): {', '.join(f'model.{k}={m[k]}' for k in zero)}")
  if any(c.get("population", {}).values()):  # a field with values (lists, or legacy strings)
    raise UserError("model.concrete learns the rates a population would set: use one or the "
                    "other")
  for k in ("concrete_temperature", "concrete_length_scale"):
    if not (isinstance(m[k], (int, float)) and math.isfinite(m[k]) and m[k] > 0):
      raise UserError(f"model.{k} must be a positive number, got {m[k]!r}")


def lr_schedule(t) -> optax.Schedule:
  """Learning rate by 0-based epoch (the released Lua code's boundary): ``lr`` up to epoch
  ``max_epoch``, then divided by ``lr_decay`` per epoch."""
  return optax.exponential_decay(t.lr, transition_steps=1, decay_rate=1.0 / t.lr_decay,
                                 transition_begin=t.max_epoch, staircase=True)


def lr_for_epoch(t, epoch: int) -> float:
  return float(lr_schedule(t)(epoch))


def lr_by_epoch(t):
  """``lr(epoch)``: ``lr_for_epoch`` computed once per epoch (not once per step)."""
  rates = {}

  def lr(epoch: int) -> float:
    if epoch not in rates:
      rates[epoch] = lr_for_epoch(t, epoch)
    return rates[epoch]

  return lr


def zero_acc() -> dict:
  """Running sums of an epoch: ``nll_sum``, token ``count``, first non-finite ``bad_step``."""
  return {"nll_sum": jnp.zeros((), jnp.float32), "count": jnp.zeros((), jnp.int32),
          "bad_step": jnp.full((), -1, jnp.int32)}


def init_state(config, batch_size: int) -> dict:
  """``{"params", "carry", "step", "acc"}``: everything a run needs to resume exactly."""
  params = models.init_lm(jax.random.key(config.seed), config.model)
  return {"params": params, "carry": models.lm_zero_carry(config.model, batch_size),
          "step": jnp.zeros((), jnp.int32), "acc": zero_acc()}


def embedding_grad_sq(ids: jax.Array, g_rows: jax.Array) -> jax.Array:
  """``sum(G**2)`` of the dense embedding gradient ``G [V, E]`` whose row ``v`` is the sum of
  the row gradients ``g_rows [N, E]`` of the tokens ``ids [N]`` equal to ``v``, without
  forming ``G``: the rows are sorted by id and summed per distinct id."""
  order = jnp.argsort(ids)
  sorted_ids = ids[order]
  first = jnp.concatenate([jnp.ones((1,), bool), sorted_ids[1:] != sorted_ids[:-1]])
  per_type = jax.ops.segment_sum(g_rows[order], jnp.cumsum(first) - 1, num_segments=ids.shape[0])
  return jnp.sum(per_type * per_type)


def sparse_row_sgd(embed: jax.Array, ids: jax.Array, g_rows: jax.Array, step_size) -> jax.Array:
  """``embed [V, E]`` after an SGD step whose gradient is nonzero only in the rows ``ids [N]``
  (row gradients ``g_rows [N, E]``, repeats summed): a scatter-add, no dense ``[V, E]``
  gradient (in place when the state is donated)."""
  return embed.at[ids].add(-step_size * g_rows)


def _sgd_clipped(max_norm: float, lr) -> optax.GradientTransformation:
  """Global-norm clipping, then plain SGD (stateless: ``init`` is empty)."""
  return optax.chain(optax.clip_by_global_norm(max_norm), optax.sgd(lr))


def make_step_body(config, n_tokens: Optional[int] = None):
  """``body(state, x [B, T], y [B, T], lr, key, rates) -> state``: one SGD step, pure.

  ``key`` is the run's base key (``key(seed)``) and ``rates`` the ``{"emb", "x", "h", "out"}``
  drop probabilities; both may be traced, so a population can ``vmap`` the body over them
  (``vdrnn.population``). Masks come from ``fold_in(key, step)``, row ``b`` from ``fold_in(., b)``.

  ``model.concrete``: the rates are the parameters' (``models.concrete_rates``), the masks are
  relaxed and drawn inside the loss, which adds ``seq_length`` times the regulariser per token
  (``models.concrete_regularizer``; ``n_tokens``: the training tokens, N).
  """
  m, t = config.model, config.train
  dtype = compute_dtype(config)
  concrete = m.get("concrete", False)
  if concrete and not n_tokens:
    raise ValueError("model.concrete needs the number of training tokens (n_tokens)")

  def body(state, x, y, lr, key, rates):
    step = state["step"]
    mask_key = jax.random.fold_in(key, step)
    masks = None if concrete else models.lm_masks(mask_key, m, x, rates)
    params = state["params"]

    def loss_fn(params, rows=None):
      window_masks = masks
      if concrete:  # relaxed masks of the learned rates: the loss is differentiable in them
        window_masks = models.lm_masks(mask_key, m, x, models.concrete_rates(params),
                                       concrete=m.concrete_temperature)
      nll, carry = models.lm_nll(params, state["carry"], x, y, window_masks, unroll=t.unroll,
                                 compute_dtype=dtype, embedded=rows,
                                 impl=t.get("rnn_impl", "scan"))
      loss = nll.mean(axis=1).sum()
      if concrete:
        loss = loss + t.seq_length * models.concrete_regularizer(params, m, n_tokens)
      return loss, (nll, carry)

    if m.tie_embeddings or concrete:  # a dense embedding gradient (the softmax / the KL's)
      (loss, (nll, carry)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      norm = optax.tree.norm(grads)
      tx = _sgd_clipped(t.max_grad_norm, lr)
      updates, _ = tx.update(grads, tx.init(params), params)
      params = optax.apply_updates(params, updates)
    else:  # only the T*B looked-up rows have a gradient: no dense [V, E] gradient is formed
      embed = params["embed"]
      rest = {k: v for k, v in params.items() if k != "embed"}
      ids = x.T.reshape(-1)  # [T*B], the rows' order in ``rows``
      rows = jnp.take(embed, x.T, axis=0)  # [T, B, E]
      (loss, (nll, carry)), (grads, g_rows) = jax.value_and_grad(
          lambda r, e: loss_fn({**r, "embed": embed}, e), argnums=(0, 1), has_aux=True)(rest, rows)
      g_rows = g_rows.reshape(ids.shape[0], -1)
      norm = jnp.sqrt(optax.tree.norm(grads) ** 2 + embedding_grad_sq(ids, g_rows))
      scale = jnp.where(norm > t.max_grad_norm, t.max_grad_norm / norm, 1.0)
      params = jax.tree.map(lambda p, g: p - lr * scale * g, rest, grads)
      params["embed"] = sparse_row_sgd(embed, ids, g_rows, lr * scale)
    if t.weight_decay:
      logits = params.pop("dropout_logit", None)  # learned rates are not weights: no decay
      params = jax.tree.map(lambda p: p - t.weight_decay * p, params)
      if logits is not None:
        params["dropout_logit"] = logits
    loss = jnp.where(nll.mean() < metrics.MAX_MEAN_NLL, loss, jnp.inf)  # inf perplexity: diverged
    acc = state["acc"]
    finite = jnp.isfinite(loss) & jnp.isfinite(norm)
    bad = loop.mark_bad(acc, step, finite)
    acc = {"nll_sum": acc["nll_sum"] + nll.sum(), "count": acc["count"] + nll.size, "bad_step": bad}
    return {"params": params, "carry": carry, "step": step + 1, "acc": acc}

  return body


def make_train_step(config, n_tokens: Optional[int] = None):
  """``train_step(state, x [B, T], y [B, T], lr) -> state``, pure: ``make_step_body`` with the
  config's seed and (static) rates (``n_tokens``: see there)."""
  body = make_step_body(config, n_tokens)
  base_key = jax.random.key(config.seed)
  rates = models.lm_rates(config.model)

  def train_step(state, x, y, lr):
    return body(state, x, y, lr, base_key, rates)

  return train_step


def load_data(config):
  splits, vocab = ptb.load(config.data_dir or None, verify=config.verify_checksums)
  if len(vocab) != config.model.vocab_size:
    raise UserError(f"the training data has {len(vocab)} word types but model.vocab_size="
                    f"{config.model.vocab_size}; pass --config.model.vocab_size={len(vocab)}")
  if config.data_limit:
    splits = {k: v[: config.data_limit] for k, v in splits.items()}
  return splits, vocab


def train_streams(config, ids: np.ndarray) -> tuple[np.ndarray, int]:
  """``(streams [B, N // B], windows per epoch)``; a ``UserError`` when there is no window."""
  t = config.train
  streams = ptb.batchify(ids, t.batch_size)
  epoch_size = ptb.num_windows(streams, t.seq_length)
  if epoch_size < 1:
    raise UserError(f"the training data is too short for batch_size={t.batch_size} x "
                    f"seq_length={t.seq_length}")
  return streams, epoch_size


def shardings(mesh, state) -> dict:
  rep, bat = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  return {"params": jax.tree.map(lambda _: rep, state["params"]),
          "carry": jax.tree.map(lambda _: bat, state["carry"]),
          "step": rep, "acc": jax.tree.map(lambda _: rep, state["acc"])}


class LMTask(loop.Task):
  """The PTB run of ``config`` as ``vdrnn.loop.run`` trains it (``loop.Task``); ``workdir``
  receives the MC test's files and the learned rates' figure."""

  items_per_step: int
  select = "valid_ppl"
  resume_keys = RESUME_KEYS
  nonfinite_hint = "lower train.lr or train.max_grad_norm"

  def __init__(self, config, workdir: str):
    validate(config)
    t = config.train
    self.config, self.workdir = config, workdir
    self.mesh = sharding.make_mesh()
    sharding.check_batch(t.batch_size, self.mesh)
    self.splits, _ = load_data(config)
    self.streams, self.steps_per_epoch = train_streams(config, self.splits["train"])
    self.items_per_step = t.batch_size * t.seq_length
    self.meta = {"epoch_size": self.steps_per_epoch}
    self.lr = lr_by_epoch(t)
    self.eval_fn = lm_eval.make_eval_fn(config)
    self.shardings = shardings(self.mesh, jax.eval_shape(lambda: init_state(config, t.batch_size)))
    bat = sharding.batch_sharding(self.mesh)
    self.train_step = sharding.jit_train_step(
        make_train_step(config, n_tokens=len(self.splits["train"])), self.shardings,
        (bat, bat, None))
    self.summary = (f"{num_params(config) / 1e6:.1f}M parameters, {len(jax.devices())} "
                    f"device(s), {jax.process_count()} process(es), {self.steps_per_epoch} "
                    f"windows/epoch")

  def base_config(self):
    return base_config()

  def init_state(self):
    return jax.device_put(init_state(self.config, self.config.train.batch_size), self.shardings)

  def start_epoch(self, state, epoch: int):
    """A zero carry and fresh accumulators (the released code resets the state every epoch)."""
    m, t = self.config.model, self.config.train
    state["carry"] = jax.device_put(models.lm_zero_carry(m, t.batch_size), self.shardings["carry"])
    state["acc"] = jax.device_put(zero_acc(), self.shardings["acc"])
    return state

  def batch(self, epoch: int, i: int) -> tuple:
    x, y = ptb.window(self.streams, i, self.config.train.seq_length)
    return sharding.put_batch(x, self.mesh), sharding.put_batch(y, self.mesh), self.lr(epoch)

  def train_metrics(self, acc: dict, epoch: int) -> dict:
    return {"train_ppl": float(np.exp(acc["nll_sum"] / max(int(acc["count"]), 1))),
            "lr": self.lr(epoch)}

  def evaluate(self, state, epoch: int) -> dict:
    """Validation perplexity, exact and as the paper's (Lua) code computed it; concrete
    dropout's learned rates."""
    params = state["params"]
    out = {k: lm_eval.evaluate_split(self.config, self.eval_fn, params, self.splits["valid"],
                                     self.config.train.batch_size, full=False, mesh=self.mesh,
                                     lua=lua)
           for k, lua in (("valid_ppl", False), ("valid_ppl_lua", True))}
    return {**out, **learned_rates(self.config, params)}

  def finish(self, state, meta: dict) -> dict:
    """The test perplexity (one stream, batch 1) and, with ``eval.mc_samples``, MC dropout's."""
    config, params, history = self.config, state["params"], meta["history"]
    test = lm_eval.evaluate_split(config, self.eval_fn, params, self.splits["test"], 1, full=True,
                                  mesh=self.mesh)
    last = history[-1] if history else {}
    valid = [h["valid_ppl"] for h in history if math.isfinite(h["valid_ppl"])]
    results = {"valid_ppl": last.get("valid_ppl"), "valid_ppl_lua": last.get("valid_ppl_lua"),
               "test_ppl": test, "best_valid_ppl": min(valid) if valid else None,
               "step": loop.current_step(state), **learned_rates(config, params)}
    if config.eval.mc_samples:
      primary = sharding.is_primary()  # only process 0 writes files
      mc = lm_eval.mc_lm(config, params, self.splits["test"],
                         workdir=self.workdir if primary else None,
                         progress=config.train.progress and primary)
      results["mc_test_ppl"] = mc["ppl"]
      results["mc_samples"] = config.eval.mc_samples
    return results

  def plot(self, history: list[dict], results=None) -> None:
    plots.learned_rates(os.path.join(self.workdir, "learned_rates.png"), history)


def learned_rates(config, params) -> dict:
  """Concrete dropout's rates now: ``rate_emb``, ``rate_out``, ``rate_{x,h}_l<layer>``."""
  if not config.model.get("concrete", False):
    return {}
  r = jax.device_get(models.concrete_rates(params))
  out = {"rate_emb": float(r["emb"]), "rate_out": float(r["out"])}
  for k in ("x", "h"):
    out.update({f"rate_{k}_l{l}": float(v) for l, v in enumerate(r[k])})
  return out


def num_params(config) -> int:
  return loop.num_params(lambda: models.init_lm(jax.random.key(0), config.model))


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains and evaluates a PTB language model in ``workdir``; returns the final results."""
  return loop.run(LMTask(config, workdir), config, workdir)


def evaluate_workdir(config, workdir: str, *, checkpoint: str = "latest", split: str = "test",
                     progress: Optional[bool] = None) -> dict:
  """Evaluates a PTB workdir's checkpoint (latest | best | step) on ``split`` (test | valid):
  the dropout approximation and, with ``eval.mc_samples``, MC dropout (``mc_<split>.json`` /
  ``.png`` written to the workdir). ``config`` (the workdir's ``config.json``, overrides
  applied) supplies the model and the ``eval`` settings."""
  if split not in lm_eval.SPLITS:
    raise UserError(f"--split must be one of {lm_eval.SPLITS}, got {split!r}")
  validate(config)
  splits, _ = load_data(config)
  mngr, step = ckpt_lib.find(workdir, checkpoint)
  state, _ = ckpt_lib.restore(mngr, step, init_state(config, config.train.batch_size))
  params = state["params"]
  if config.eval.mc_samples:
    result = lm_eval.mc_lm(config, params, splits[split], workdir=workdir, split=split,
                           progress=progress)
  else:
    result = {"split": split, "det_ppl": lm_eval.deterministic_ppl(config, params, splits[split]),
              "tokens": int(len(splits[split]) - 1)}
  return {"workdir": workdir, "checkpoint": str(checkpoint), "step": int(step), **result}


def summary(result: dict) -> str:
  """A short human-readable line on an evaluation (``vdrnn.evaluate`` prints it)."""
  if "ppl" not in result:
    return (f"{result['split']} perplexity {result['det_ppl']:.2f} (dropout approximation, "
            f"step {result['step']})")
  s = (f"{result['split']} perplexity: MC dropout {result['ppl']:.2f} with {result['samples']} "
       f"samples ({result.get('mc_mean', 'arithmetic')} mean), dropout approximation "
       f"{result['det_ppl']:.2f}")
  if "det_ppl_temperature" in result:
    s += f" ({result['det_ppl_temperature']:.2f} at temperature {result['temperature']:g})"
  s += f"; step {result.get('step', '?')}; {result['sample_tokens_per_s']:.0f} sample-tokens/s"
  if "ppl_geometric" in result:
    s += (f"\nMC means side by side: arithmetic {result['ppl_arithmetic']:.2f}, geometric "
          f"{result['ppl_geometric']:.2f}, power (exponent {result['mc_power']:g}) "
          f"{result['ppl_power']:.2f}")
  if "files" in result:
    s += "\nwrote " + ", ".join(result["files"])
  return s
