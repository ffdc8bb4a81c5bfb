"""Sentiment experiments: Pang & Lee regression (``task="sentiment"``) and IMDB
classification (``task="imdb"``); ``python -m vdrnn.train --config configs/sentiment_lstm.py``.

Training follows Sentiment_analysis_code/sentiment_{lstm,gru}_regression.py of the released
code (``configs/PAPER.md``):

* model: embedding -> one LSTM or GRU layer (last state; padding skipped) -> dropout ->
  dense (``vdrnn.models.seq_apply``); masks for step ``s`` from ``fold_in(key(seed), s)``,
  one per sequence row (``vdrnn.models.seq_masks``);
* loss: the weighted batch mean of the squared error on standardised ratings (regression)
  or of the softmax cross-entropy (classification), **plus** ``weight_decay * sum(w^2)``
  over every parameter (Keras's ``l2(1e-6)`` regularisers are added to the loss, so Adam
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

MC dropout vmaps the model over sample indices: sample ``s`` of evaluation batch ``j`` uses
the masks of ``fold_in(fold_in(key(eval.seed), j), s)``; ``eval.mc_chunk`` samples are
evaluated together to bound memory. The step is jitted with ``NamedSharding``s over a
1-D device mesh (batch split over the ``data`` axis); re-running the same command on the
same workdir resumes exactly.
"""

from __future__ import annotations

import functools
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
import optax

from tqdm import tqdm

from vdrnn import checkpoint as ckpt_lib
from vdrnn import loop, models, plots, sharding, uncertainty
from vdrnn.config import compute_dtype, load_run_config, seq_base, validate_rates
from vdrnn.data import sentiment as data_lib
from vdrnn.errors import UserError

# Config fields that must match for a workdir's checkpoint to be resumed.
RESUME_KEYS = [
    "task", "seed", "data", "model", "train.batch_size", "train.lr", "train.weight_decay"
]
RESUME_DEFAULTS = json.loads(seq_base().to_json())  # a field a checkpoint lacks: its default


def is_regression(config) -> bool:
  return config.task == "sentiment"


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


def l2(params) -> jax.Array:
  """``sum(w^2)`` over every parameter (Keras's l2 regulariser sums, not means)."""
  return sum(jnp.sum(jnp.square(p)) for p in jax.tree.leaves(params))


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
      return loss + t.weight_decay * l2(params), (per, out)

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
# Prediction: dropout approximation and MC dropout.


def make_predict_fns(config):
  """``det(params, x) -> [B, K]`` and ``mc(params, x, key, ids [C]) -> [C, B, K]`` (jitted)."""
  m, t = config.model, config.train
  dtype = compute_dtype(config)

  def det(params, x):
    return models.seq_apply(params, x, None, **models.seq_semantics(m), unroll=t.unroll,
                            compute_dtype=dtype)

  def mc(params, x, key, ids):
    def one(s):
      masks = models.seq_masks(jax.random.fold_in(key, s), m, x)
      return models.seq_apply(params, x, masks, **models.seq_semantics(m), unroll=t.unroll,
                              compute_dtype=dtype)
    return jax.vmap(one)(ids)

  return jax.jit(det), jax.jit(mc)


def predict(config, fns, params, x: np.ndarray, mesh, *, samples: int = 0, progress: bool = False):
  """Outputs for every row of ``x [N, T]``: ``(det [N, K], mc [S, N, K] or None)``.

  Rows go in batches of ``eval.batch_size`` (the last padded and cut off again); MC samples
  in chunks of ``eval.mc_chunk`` (the last chunk padded with extra samples, dropped).
  """
  det_fn, mc_fn = fns
  e = config.eval
  B, C = e.batch_size, e.mc_chunk
  base = jax.random.key(e.seed)
  n = len(x)
  dets, mcs = [], []
  n_batches = -(-n // B)
  bar = tqdm(total=n_batches,
             desc=f"MC x{samples}" if samples else "eval",
             disable=not progress,
             leave=False,
             dynamic_ncols=True,
             file=sys.stderr)
  for j in range(n_batches):
    rows = x[j * B:(j + 1) * B]
    k = len(rows)
    xb = sharding.put_batch(np.concatenate([rows, np.zeros((B - k, x.shape[1]), np.int32)]), mesh)
    dets.append(sharding.to_host(det_fn(params, xb))[:k])
    if samples:
      key = jax.random.fold_in(base, j)
      outs = [
          sharding.to_host(mc_fn(params, xb, key, jnp.arange(s, s + C, dtype=jnp.uint32)))[:, :k]
          for s in range(0, samples, C)
      ]
      mcs.append(np.concatenate(outs)[:samples])
    bar.update(1)
  bar.close()
  return np.concatenate(dets), (np.concatenate(mcs, axis=1) if samples else None)


def ratings(info: dict, out: np.ndarray) -> np.ndarray:
  """Regression outputs ``[..., 1]`` (standardised) in rating units ``[...]``, float64."""
  return out[..., 0].astype(np.float64) * info["y_std"] + info["y_mean"]


def fit_taus(info: dict, y: np.ndarray, det: np.ndarray, mc: Optional[np.ndarray]) -> dict:
  """Model precisions fitted on ``(y, predictions)`` (``uncertainty.fit_tau``): ``det`` for the
  dropout approximation and, given samples, ``mc`` for MC dropout."""
  taus = {"det": uncertainty.fit_tau(y, ratings(info, det)[None])}
  if mc is not None:
    taus["mc"] = uncertainty.fit_tau(y, ratings(info, mc))
  return taus


def summarize(config, info: dict, y: np.ndarray, det: np.ndarray, mc: Optional[np.ndarray],
              taus: Optional[dict] = None) -> dict:
  """Metrics of one split: ``{name: value}`` for the dropout approximation and
  ``{name}_mc`` for MC dropout. Regression, in rating units: ``rmse``; ``ll`` with the config's
  ``eval.tau`` (the released scripts' 0.1); with ``taus`` (``fit_taus`` on training examples)
  also ``ll_fit`` and ``tau_fit``; MC dropout adds the predictive std and its parts,
  ``std_epistemic`` (the samples' spread) and ``std_aleatoric`` (``sqrt(1 / tau)``)."""
  e = config.eval
  if is_regression(config):
    def summary(pred, tau, suffix, keys):
      r = uncertainty.regression_summary(y, pred, tau)
      return {f"{k}{suffix}": r[k] for k in keys}
    out = summary(ratings(info, det)[None], e.tau, "", ("rmse", "ll"))
    if taus is not None:
      out.update(summary(ratings(info, det)[None], taus["det"], "_fit", ("ll",)))
      out["tau_fit"] = taus["det"]
    if mc is not None:
      out.update(summary(ratings(info, mc), e.tau, "_mc",
                         ("rmse", "ll", "pred_std", "std_epistemic", "std_aleatoric")))
      if taus is not None and "mc" in taus:
        out.update(summary(ratings(info, mc), taus["mc"], "_fit_mc", ("ll", "std_aleatoric")))
        out["tau_fit_mc"] = taus["mc"]
    return out
  out = uncertainty.classification_summary(uncertainty.softmax(det)[None], y, e.ece_bins)
  out = {k: v for k, v in out.items() if not k.startswith("mi")}  # 0 for a single pass
  if mc is not None:
    out.update({
        f"{k}_mc": v for k, v in uncertainty.classification_summary(uncertainty.softmax(mc), y,
                                                                    e.ece_bins).items()
    })
  return out


def evaluate(config,
             fns,
             params,
             split: dict,
             info: dict,
             mesh,
             *,
             samples: int = 0,
             progress: bool = False,
             reliability_png: Optional[str] = None,
             taus: Optional[dict] = None) -> dict:
  """``summarize`` of ``split``'s predictions (``taus``: see there)."""
  det, mc = predict(config, fns, params, split["x"], mesh, samples=samples, progress=progress)
  out = summarize(config, info, split["y"], det, mc, taus)
  if reliability_png and not is_regression(config):
    curves = {"dropout approx.": uncertainty.softmax(det)}
    if mc is not None:
      curves[f"MC dropout ({samples})"] = uncertainty.softmax(mc).mean(0)
    plots.reliability_diagram(reliability_png, curves, split["y"], config.eval.ece_bins)
  return out


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


def make_task(config, workdir: str) -> loop.Task:
  """The sentiment / IMDB run of ``config`` as a ``loop.Task`` (``workdir`` receives the plots)."""
  validate(config)
  t, e = config.train, config.eval
  mesh = sharding.make_mesh()
  sharding.check_batch(t.batch_size, mesh)
  sharding.check_batch(e.batch_size, mesh, "eval.batch_size")
  splits, info = load_data(config)
  if is_regression(config) and not info["y_std"] > 0:
    raise UserError("the training ratings are all equal (std 0); nothing to standardise")
  train = splits["train"]
  y_train = _targets(config, train, info)
  n_train = len(y_train)
  steps_per_epoch = -(-n_train // t.batch_size)
  select = _selection(config, splits)
  init, train_step, fns, shardings = compiled(config)
  regression = is_regression(config)
  sub = {k: v[: e.train_examples] for k, v in train.items()} if e.train_examples else None
  curve = os.path.join(workdir, "learning_curve.png")

  def batch(epoch, i):
    order = epoch_order(config.seed, epoch, n_train)
    x, y, w = batch_rows(train, order[i * t.batch_size:(i + 1) * t.batch_size], t.batch_size,
                         y_train)
    return tuple(sharding.put_batch(a, mesh) for a in (x, y, w))

  def start_epoch(state, epoch):
    state["acc"] = jax.device_put(zero_acc(), shardings["acc"])
    return state

  def running(acc, epoch) -> dict:
    count = max(float(acc["count"]), 1.0)
    if regression:
      return {"train_running_rmse": math.sqrt(float(acc["loss_sum"]) / count) * info["y_std"]}
    return {"train_running_nll": float(acc["loss_sum"]) / count,
            "train_running_acc": float(acc["correct"]) / count}

  def training_examples(params, samples: int) -> tuple[Optional[dict], dict]:
    """``(taus, metrics)`` of the first ``eval.train_examples`` training examples: model
    precisions fitted on them (regression; ``fit_taus``) and their own metrics."""
    if sub is None:
      return None, {}
    det, mc = predict(config, fns, params, sub["x"], mesh, samples=samples)
    taus = fit_taus(info, sub["y"], det, mc) if regression else None
    return taus, summarize(config, info, sub["y"], det, None, taus)

  def evaluate_epoch(state, epoch, meta) -> dict:
    t0 = time.time()
    params, record = state["params"], {}
    mc_now = e.mc_every_epochs and e.mc_samples and (epoch + 1) % e.mc_every_epochs == 0
    taus, train_metrics = training_examples(params, e.mc_samples if mc_now else 0)
    record.update({f"train_{k}": v for k, v in train_metrics.items()})
    if "valid" in splits:
      record.update({
          f"valid_{k}": v
          for k, v in evaluate(config, fns, params, splits["valid"], info, mesh, taus=taus).items()
      })
    test = evaluate(config, fns, params, splits["test"], info, mesh,
                    samples=e.mc_samples if mc_now else 0, taus=taus)
    record.update({f"test_{k}": v for k, v in test.items()})
    record["eval_time_s"] = time.time() - t0
    return record

  def epoch_line(r) -> str:
    metric = "rmse" if regression else "acc"
    shown = [(k, r.get(k))
             for k in (f"train_running_{metric}", f"train_{metric}", f"valid_{metric}",
                       f"test_{metric}", f"test_{metric}_mc")
             if r.get(k) is not None]
    return (f"epoch {r['epoch']:4d}  " + "  ".join(f"{k} {v:.4f}" for k, v in shown) +
            f"  {r['time_s']:5.0f}s (+{r['eval_time_s']:.0f}s eval)")

  def finish(state, meta) -> dict:
    taus, _ = training_examples(state["params"], e.mc_samples)
    test = evaluate(config, fns, state["params"], splits["test"], info, mesh, samples=e.mc_samples,
                    progress=t.progress and sharding.is_primary(),
                    reliability_png=os.path.join(workdir, "reliability_test.png"), taus=taus)
    results = {**{f"test_{k}": v for k, v in test.items()}, "mc_samples": e.mc_samples,
               "checkpoint": "last", "step": loop.current_step(state), "epochs": t.num_epochs,
               "best": meta["best"], "data": info}
    if regression:
      results["tau"] = e.tau
    if sharding.is_primary():
      plots.learning_curve(curve, meta["history"], regression, results)
    return results

  state = init()
  num_params = sum(p.size for p in jax.tree.leaves(state["params"]))
  sizes = ", ".join(f"{k} {len(v['y'])}" for k, v in splits.items())
  return loop.Task(
      state=state, train_step=train_step, steps_per_epoch=steps_per_epoch, batch=batch,
      start_epoch=start_epoch, running=running, evaluate=evaluate_epoch, finish=finish,
      resume_keys=RESUME_KEYS, resume_defaults=RESUME_DEFAULTS,
      meta={"steps_per_epoch": steps_per_epoch, "data": info},
      select=select, items_per_step=t.batch_size, rate_name="examples_per_s",
      nonfinite_hint="lower train.lr or set train.max_grad_norm",
      describe=(f"{config.task}: {num_params / 1e6:.2f}M parameters, {len(jax.devices())} "
                f"device(s), {sizes} examples, {steps_per_epoch} steps/epoch"),
      epoch_line=epoch_line,
      after_epoch=lambda meta: plots.learning_curve(curve, meta["history"], regression))


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains a sentiment model in ``workdir``; returns the final results (also ``results.json``)."""
  return loop.run(make_task(config, workdir), config, workdir)


def evaluate_workdir(config, workdir: str, checkpoint: str = "latest", split: str = "test") -> dict:
  """Re-evaluates a trained workdir: the dropout approximation and MC dropout
  (``eval.mc_samples``) on ``split`` (train, valid or test) with checkpoint ``latest``,
  ``best`` or a step. Writes ``eval_<checkpoint>_<split>.json`` (and, for classification,
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
                 progress=config.train.progress,
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
