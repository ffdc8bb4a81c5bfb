"""Sentiment experiments: Pang & Lee regression (``task="sentiment"``) and IMDB
classification (``task="imdb"``); ``python -m vdrnn.train --config configs/sentiment_lstm.py``.

Training follows Sentiment_analysis_code/sentiment_{lstm,gru}_regression.py of the released
code (``configs/PAPER.md``):

* model: embedding -> one LSTM or GRU layer (last state; padding skipped) -> dropout ->
  dense (``vdrnn.models.seq_apply``); masks for step ``s`` from ``fold_in(key(seed), s)``,
  one per sequence row (``vdrnn.models.seq_masks``);
* loss: the weighted batch mean of the squared error on standardised ratings (regression)
  or of the softmax cross-entropy (classification), **plus** ``weight_decay * sum(w^2)``
  over every parameter, or over the fork's blocks with ``train.weight_decay_scope="fork"``
  (``l2``; Keras's ``l2(1e-6)`` regularisers are added to the loss, so Adam
  sees their gradient ``2 * weight_decay * w`` with its adaptive scaling; this is not
  AdamW's decoupled decay);
* Adam with Keras's defaults; the training set is reshuffled every epoch (Keras
  ``fit(shuffle=True)``) with a permutation from ``(seed, epoch)``; the last, partial batch
  is padded with rows of weight 0, so every example counts once per epoch;
* after every epoch, the dropout approximation (all masks 1) on the first
  ``eval.train_examples`` training examples, the validation set (if any) and the test set;
  the best checkpoint is picked on validation (RMSE / NLL), or, without a validation set,
  on those training examples (never on test);
* at the end, the test set with the dropout approximation and with MC dropout
  (``eval.mc_samples`` passes; ``vdrnn.uncertainty``): RMSE in rating units, the predictive
  log-likelihood with model precision ``tau`` and the predictive std (regression); accuracy,
  NLL, ECE, predictive entropy and mutual information, and a reliability diagram
  (classification).

Prediction and the metrics are ``vdrnn.sentiment_eval``'s. The step is jitted with
``NamedSharding``s over a 1-D device mesh (batch split over the ``data`` axis); re-running the
same command on the same workdir resumes exactly.
"""

from __future__ import annotations

import functools
import json
import math
import os
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vdrnn import checkpoint as ckpt_lib
from vdrnn import loop, models, plots, sharding
from vdrnn.config import compute_dtype, load_run_config, validate_rates
from vdrnn.data import sentiment as data_lib
from vdrnn.errors import UserError
from vdrnn.sentiment_eval import (evaluate, fit_taus, is_regression, make_predict_fns, predict,
                                  summarize)

# Config fields that must match for a workdir's checkpoint to be resumed.
RESUME_KEYS = [
    "task", "seed", "data", "model", "train.batch_size", "train.lr", "train.weight_decay",
    "train.weight_decay_scope"
]


def validate(config) -> None:
  """One-line ``UserError`` for the first bad field."""
  if config.task not in ("sentiment", "imdb"):
    raise UserError(f"task must be sentiment or imdb here, got {config.task!r}")
  m, d, t, e = config.model, config.data, config.train, config.eval
  validate_rates(m)
  if m.cell not in models.GATES:
    raise UserError(f"model.cell must be one of {sorted(models.GATES)}, got {m.cell!r}")
  if is_regression(config) and m.out_dim != 1:
    raise UserError(f"model.out_dim must be 1 for the sentiment regression, got {m.out_dim}")
  if not is_regression(config) and m.out_dim < 2:
    raise UserError(f"model.out_dim must be >= 2 (classes) for imdb, got {m.out_dim}")
  for name, v in (("data.num_words", d.num_words), ("data.maxlen", d.maxlen),
                  ("model.emb_dim", m.emb_dim), ("model.hidden", m.hidden),
                  ("train.batch_size", t.batch_size), ("train.num_epochs", t.num_epochs),
                  ("eval.batch_size", e.batch_size), ("eval.mc_chunk", e.mc_chunk)):
    if int(v) < 1:
      raise UserError(f"{name} must be a positive integer, got {v!r}")
  if m.vocab_size != d.num_words + data_lib.OFFSET:
    raise UserError(
        f"model.vocab_size must be data.num_words + {data_lib.OFFSET} = "
        f"{d.num_words + data_lib.OFFSET} (ids 0, 1, 2 are pad, start, OOV), got {m.vocab_size}")
  for name in ("test_fraction", "valid_fraction"):
    if not 0 <= d[name] < 1:
      raise UserError(f"data.{name} must be in [0, 1), got {d[name]!r}")
  if d.split not in ("paper", "review"):
    raise UserError(f"data.split must be paper or review, got {d.split!r}")
  if d.truncating not in ("pre", "post"):
    raise UserError(f"data.truncating must be pre or post, got {d.truncating!r}")
  if t.lr <= 0 or t.weight_decay < 0 or t.max_grad_norm < 0:
    raise UserError("train.lr must be > 0, train.weight_decay and train.max_grad_norm >= 0")
  if t.weight_decay_scope not in L2_SCOPES:
    raise UserError(f"train.weight_decay_scope must be one of {L2_SCOPES}, "
                    f"got {t.weight_decay_scope!r}")
  if t.compute_dtype not in ("float32", "bfloat16"):
    raise UserError(f"train.compute_dtype must be float32 or bfloat16, got {t.compute_dtype!r}")
  if e.mc_samples < 0 or e.mc_every_epochs < 0 or e.train_examples < 0:
    raise UserError("eval.mc_samples, eval.mc_every_epochs and eval.train_examples must be >= 0")
  if e.tau <= 0 or e.ece_bins < 1:
    raise UserError(f"eval.tau must be > 0 and eval.ece_bins >= 1, got {e.tau!r}, {e.ece_bins!r}")


def load_data(config) -> tuple[dict, dict]:
  splits, info = data_lib.load(config.task,
                               config.data,
                               config.data_dir or None,
                               verify=config.verify_checksums)
  if len(splits["train"]["y"]) == 0 or len(splits["test"]["y"]) == 0:
    raise UserError(f"the {config.task} data gives an empty train or test split ({info})")
  return splits, info


# ----------------------------------------------------------------------------------------
# Training step.


def make_optimizer(t) -> optax.GradientTransformation:
  """Adam (Keras defaults); with ``max_grad_norm > 0``, global-norm clipping first."""
  adam = optax.adam(t.lr, b1=t.b1, b2=t.b2, eps=t.eps)
  return optax.chain(optax.clip_by_global_norm(t.max_grad_norm), adam) if t.max_grad_norm else adam


def zero_acc() -> dict:
  z = lambda: jnp.zeros((), jnp.float32)  # distinct buffers: the state is donated
  return {"loss_sum": z(), "count": z(), "correct": z(), "bad_step": jnp.full((), -1, jnp.int32)}


def init_state(config) -> dict:
  """``{"params", "opt", "step", "acc"}``: everything a run needs to resume exactly."""
  params = models.init_seq(jax.random.key(config.seed), config.model)
  return {"params": params, "opt": make_optimizer(config.train).init(params),
          "step": jnp.zeros((), jnp.int32), "acc": zero_acc()}


L2_SCOPES = ("all", "fork")


def l2(params, scope: str = "all") -> jax.Array:
  """The L2 penalty's ``sum(w^2)`` (Keras's l2 regulariser sums, not means).

  Args:
    params: ``init_seq``'s tree; ``rnn`` kernels ``[E, G*H]``, ``[H, G*H]``, bias ``[G*H]``.
    scope: ``"all"``: every parameter once. ``"fork"``: what the Keras 0.x fork of the released
      code computes (``configs/PAPER.md``): its recurrent layer registers one regulariser object
      per kind once per gate block and each registration re-points it, so only the last block
      (the LSTM's ``W_o, U_o, b_o``, the GRU's ``W_h, U_h, b_h``: vdrnn's last gate in both
      orders) is regularised, counted G times; the embedding and the dense layer once each.
  """
  if scope == "all":
    return sum(jnp.sum(jnp.square(p)) for p in jax.tree.leaves(params))
  rnn = params["rnn"]
  G = rnn["w_h"].shape[1] // rnn["w_h"].shape[0]
  H = rnn["w_h"].shape[0]
  last = sum(jnp.sum(jnp.square(p[..., (G - 1) * H:])) for p in jax.tree.leaves(rnn))
  rest = sum(jnp.sum(jnp.square(p)) for k, v in params.items() if k != "rnn"
             for p in jax.tree.leaves(v))
  return rest + G * last


def per_example_loss(config, out: jax.Array, y: jax.Array) -> jax.Array:
  """``[B]`` squared error of ``out[:, 0]`` (standardised targets) or softmax cross-entropy."""
  if is_regression(config):
    return jnp.square(out[:, 0] - y)
  return -jnp.take_along_axis(jax.nn.log_softmax(out, axis=-1), y[:, None], axis=-1)[:, 0]


def make_train_step(config):
  """``train_step(state, x [B, T] int, y [B], w [B]) -> state``, pure.

  Loss ``sum_b w_b l_b / sum_b w_b + weight_decay * sum(params^2)``; masks from
  ``fold_in(key(seed), step)``.
  """
  m, t = config.model, config.train
  base_key = jax.random.key(config.seed)
  dtype = compute_dtype(config)
  opt = make_optimizer(t)

  def train_step(state, x, y, w):
    step = state["step"]
    masks = models.seq_masks(jax.random.fold_in(base_key, step), m, x)

    def loss_fn(params):
      out = models.seq_apply(params, x, masks, **models.seq_semantics(m), unroll=t.unroll,
                             compute_dtype=dtype)
      per = per_example_loss(config, out, y)
      loss = jnp.sum(w * per) / jnp.maximum(jnp.sum(w), 1.0)
      return loss + t.weight_decay * l2(params, t.weight_decay_scope), (per, out)

    (loss, (per, out)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = opt.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    acc = state["acc"]
    correct = jnp.sum(w * (jnp.argmax(out, -1) == y)) if not is_regression(config) else 0.0
    bad = jnp.where((acc["bad_step"] < 0) & ~jnp.isfinite(loss), step, acc["bad_step"])
    acc = {"loss_sum": acc["loss_sum"] + jnp.sum(w * per), "count": acc["count"] + jnp.sum(w),
           "correct": acc["correct"] + correct, "bad_step": bad}
    return {"params": params, "opt": opt_state, "step": step + 1, "acc": acc}

  return train_step


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
  """The training permutation of ``epoch`` (a function of ``(seed, epoch)`` only)."""
  return np.random.default_rng([seed, epoch]).permutation(n)


def batch_rows(split: dict, idx: np.ndarray, batch_size: int, y: np.ndarray):
  """``x [B, T]``, ``y [B]``, ``w [B]`` for rows ``idx``, padded to ``batch_size`` with weight 0."""
  n = len(idx)
  x = np.zeros((batch_size, split["x"].shape[1]), np.int32)
  yb = np.zeros((batch_size,), y.dtype)
  w = np.zeros((batch_size,), np.float32)
  x[:n], yb[:n], w[:n] = split["x"][idx], y[idx], 1.0
  return x, yb, w


# ----------------------------------------------------------------------------------------
# Train and evaluate.


def _targets(config, split: dict, info: dict) -> np.ndarray:
  if is_regression(config):
    return ((split["y"] - info["y_mean"]) / info["y_std"]).astype(np.float32)
  return split["y"].astype(np.int32)


def _selection(config, splits) -> str:
  """The epoch-record key (lower is better) that picks the best checkpoint: validation RMSE
  or NLL, or, without a validation set, those of the training examples (never test)."""
  where = "valid" if "valid" in splits else "train"
  return f"{where}_rmse" if is_regression(config) else f"{where}_nll"


def _function_key(config) -> str:
  """The config fields the jitted functions depend on, as a JSON string."""
  d = json.loads(config.to_json())
  for k in ("num_epochs", "progress", "log_every_steps", "checkpoint_every_steps"):
    d["train"].pop(k, None)
  return json.dumps({k: d[k] for k in ("task", "seed", "model", "train", "eval")}, sort_keys=True)


def compiled(config):
  """``(init, train_step, (det, mc), shardings)``, jitted once per process and config (a
  resumed or re-evaluated run in the same process reuses the compiled code)."""
  return _compiled(_function_key(config))


@functools.lru_cache(maxsize=8)
def _compiled(key: str):
  config = ml_collections.ConfigDict(json.loads(key))
  mesh = sharding.make_mesh()
  rep, bat = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  shardings = jax.tree.map(lambda _: rep, jax.eval_shape(lambda: init_state(config)))
  init = jax.jit(lambda: init_state(config), out_shardings=shardings)
  train_step = jax.jit(make_train_step(config), in_shardings=(shardings, bat, bat, bat),
                       out_shardings=shardings, donate_argnums=0)
  return init, train_step, make_predict_fns(config), shardings


class SentimentTask:
  """The sentiment / IMDB run of ``config`` as ``vdrnn.loop.run`` trains it (``loop.Task``);
  ``workdir`` receives the learning curve and, for classification, the reliability diagram."""

  resume_keys = RESUME_KEYS
  nonfinite_hint = "lower train.lr or set train.max_grad_norm"
  members = ()

  def __init__(self, config, workdir: str):
    validate(config)
    t, e = config.train, config.eval
    self.config, self.workdir = config, workdir
    self.mesh = sharding.make_mesh()
    sharding.check_batch(t.batch_size, self.mesh)
    sharding.check_batch(e.batch_size, self.mesh, "eval.batch_size")
    self.splits, self.info = load_data(config)
    if is_regression(config) and not self.info["y_std"] > 0:
      raise UserError("the training ratings are all equal (std 0); nothing to standardise")
    train = self.splits["train"]
    self.y_train = _targets(config, train, self.info)
    self.steps_per_epoch = -(-len(self.y_train) // t.batch_size)
    self.items_per_step = t.batch_size
    self.meta = {"steps_per_epoch": self.steps_per_epoch, "data": self.info}
    self.select = _selection(config, self.splits)
    self._init, self.train_step, self.fns, self.shardings = compiled(config)
    self.sub = {k: v[:e.train_examples] for k, v in train.items()} if e.train_examples else None
    sizes = ", ".join(f"{k} {len(v['y'])}" for k, v in self.splits.items())
    shapes = jax.eval_shape(lambda: models.init_seq(jax.random.key(0), config.model))
    n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes))
    self.summary = (f"{config.task}: {n / 1e6:.2f}M parameters, {len(jax.devices())} device(s), "
                    f"{sizes} examples, {self.steps_per_epoch} steps/epoch")

  def init_state(self):
    return self._init()

  def start_epoch(self, state, epoch: int):
    state["acc"] = jax.device_put(zero_acc(), self.shardings["acc"])
    return state

  def batch(self, epoch: int, i: int) -> tuple:
    B = self.config.train.batch_size
    order = epoch_order(self.config.seed, epoch, len(self.y_train))
    x, y, w = batch_rows(self.splits["train"], order[i * B:(i + 1) * B], B, self.y_train)
    return tuple(sharding.put_batch(a, self.mesh) for a in (x, y, w))

  def train_metrics(self, acc: dict, epoch: int) -> dict:
    count = max(float(acc["count"]), 1.0)
    if is_regression(self.config):
      return {"train_running_rmse": math.sqrt(float(acc["loss_sum"]) / count) *
                                    self.info["y_std"]}
    return {"train_running_nll": float(acc["loss_sum"]) / count,
            "train_running_acc": float(acc["correct"]) / count}

  def training_examples(self, params, samples: int) -> tuple[Optional[dict], dict]:
    """``(taus, metrics)`` of the first ``eval.train_examples`` training examples: model
    precisions fitted on them (regression; ``fit_taus``) and their own metrics."""
    if self.sub is None:
      return None, {}
    det, mc = predict(self.config, self.fns, params, self.sub["x"], self.mesh, samples=samples)
    taus = fit_taus(self.info, self.sub["y"], det, mc) if is_regression(self.config) else None
    return taus, summarize(self.config, self.info, self.sub["y"], det, None, taus)

  def evaluate(self, state, epoch: int) -> dict:
    """The training examples, the validation set (if any) and the test set, with the dropout
    approximation (and MC dropout every ``eval.mc_every_epochs`` epochs)."""
    config, e, params = self.config, self.config.eval, state["params"]
    mc_now = e.mc_every_epochs and e.mc_samples and (epoch + 1) % e.mc_every_epochs == 0
    taus, train_metrics = self.training_examples(params, e.mc_samples if mc_now else 0)
    record = {f"train_{k}": v for k, v in train_metrics.items()}
    if "valid" in self.splits:
      valid = evaluate(config, self.fns, params, self.splits["valid"], self.info, self.mesh,
                       taus=taus)
      record.update({f"valid_{k}": v for k, v in valid.items()})
    test = evaluate(config, self.fns, params, self.splits["test"], self.info, self.mesh,
                    samples=e.mc_samples if mc_now else 0, taus=taus)
    record.update({f"test_{k}": v for k, v in test.items()})
    return record

  def finish(self, state, history: list[dict]) -> dict:
    """The test set with the dropout approximation and ``eval.mc_samples`` MC samples."""
    config, e, params = self.config, self.config.eval, state["params"]
    taus, _ = self.training_examples(params, e.mc_samples)
    test = evaluate(config, self.fns, params, self.splits["test"], self.info, self.mesh,
                    samples=e.mc_samples, progress=config.train.progress and sharding.is_primary(),
                    reliability_png=os.path.join(self.workdir, "reliability_test.png"), taus=taus)
    valid = [h[self.select] for h in history if math.isfinite(h.get(self.select, math.nan))]
    best = min(range(len(valid)), key=lambda i: valid[i]) if valid else None
    results = {**{f"test_{k}": v for k, v in test.items()}, "mc_samples": e.mc_samples,
               "checkpoint": "last", "step": loop.current_step(state),
               "epochs": config.train.num_epochs,
               "best": None if best is None else {"epoch": history[best]["epoch"],
                                                  "metric": self.select, "value": valid[best]},
               "data": self.info}
    if is_regression(config):
      results["tau"] = e.tau
    return results

  def plot(self, history: list[dict], results: Optional[dict] = None) -> None:
    plots.learning_curve(os.path.join(self.workdir, "learning_curve.png"), history,
                         is_regression(self.config), results)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains a sentiment model in ``workdir``; returns the final results (also ``results.json``)."""
  return loop.run(SentimentTask(config, workdir), config, workdir)


def evaluate_workdir(config, workdir: str, checkpoint: str = "latest", split: str = "test",
                     progress: Optional[bool] = None) -> dict:
  """Re-evaluates a trained workdir: the dropout approximation and MC dropout
  (``eval.mc_samples``) on ``split`` (train, valid or test) with checkpoint ``latest``,
  ``best`` or a step, with ``tau`` fitted on the first ``eval.train_examples`` training
  examples. Writes ``eval_<checkpoint>_<split>.json`` (and, for classification,
  ``reliability_<checkpoint>_<split>.png``) in the workdir and returns the metrics.
  ``config`` None: the workdir's ``config.json``.
  """
  config = load_run_config(workdir) if config is None else config
  validate(config)
  mngr, step = ckpt_lib.find(workdir, checkpoint)
  mesh = sharding.make_mesh()
  sharding.check_batch(config.eval.batch_size, mesh, "eval.batch_size")
  splits, info = load_data(config)
  if split not in splits:
    raise UserError(f"split must be one of {sorted(splits)} for this config, got {split!r}")
  init, _, fns, _ = compiled(config)
  state, meta = ckpt_lib.restore(mngr, step, init())
  n = config.eval.mc_samples
  taus = None
  if is_regression(config) and config.eval.train_examples:  # tau fitted on training examples
    sub = splits["train"]["x"][:config.eval.train_examples]
    det, mc = predict(config, fns, state["params"], sub, mesh, samples=n)
    taus = fit_taus(info, splits["train"]["y"][:config.eval.train_examples], det, mc)
  out = evaluate(config, fns, state["params"], splits[split], info, mesh, samples=n,
                 progress=config.train.progress if progress is None else progress,
                 reliability_png=os.path.join(workdir, f"reliability_{checkpoint}_{split}.png"),
                 taus=taus)
  results = {**{f"{split}_{k}": v for k, v in out.items()}, "mc_samples": n,
             "checkpoint": checkpoint, "step": int(state["step"]),
             "epoch": len(meta.get("history", []))}
  if is_regression(config):
    results["tau"] = config.eval.tau
  if sharding.is_primary():
    with open(os.path.join(workdir, f"eval_{checkpoint}_{split}.json"), "w") as f:
      json.dump(results, f, indent=2)
  return results
