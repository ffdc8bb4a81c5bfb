"""A sequence task: one RNN reads a sequence, one output per sequence. Shared by Pang & Lee
regression (``vdrnn.sentiment``) and IMDB classification (``vdrnn.imdb``), which differ only in
their ``Head`` (``vdrnn.seq_eval``: the loss, the targets, the metrics).

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
  ``eval.train_examples`` training examples, the validation set (if any) and the test set
  (unless ``eval.test_every_epoch`` is False);
  the best checkpoint is picked on validation (RMSE / NLL), or, without a validation set,
  on those training examples (never on test);
* at the end, the test set with the dropout approximation and with MC dropout
  (``eval.mc_samples`` passes; ``vdrnn.uncertainty``), by the head's ``summarize``.

Prediction and the metrics are ``vdrnn.seq_eval``'s. The step is jitted with
``NamedSharding``s over a 1-D device mesh (batch split over the ``data`` axis); re-running the
same command on the same workdir resumes exactly.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vdrnn import checkpoint as ckpt_lib
from vdrnn import loop, models, plots, sharding
from vdrnn.config import (check_compute_dtype, check_positive_ints, compute_dtype,
                          validate_rates)
from vdrnn.data import sentiment as data_lib
from vdrnn.errors import UserError
from vdrnn.seq_eval import MC_VECTORISE, Head, evaluate, fit_taus, make_predict_fns, predict

def base_config() -> ml_collections.ConfigDict:
  """Defaults of the sequence tasks: Pang & Lee regression (``vdrnn.sentiment``,
  ``task="sentiment"``) and IMDB classification (``vdrnn.imdb``, ``task="imdb"``) start from
  these. Values are those of Sentiment_analysis_code/sentiment_lstm_regression.py
  (configs/PAPER.md)."""
  c = ml_collections.ConfigDict()
  c.task = ""                # each task sets its name (vdrnn.sentiment, vdrnn.imdb)
  c.seed = 0
  c.data_dir = ""            # see vdrnn/data/locate.py for the search order
  c.verify_checksums = True  # False: accept data of your own under scaledata/ or imdb/

  c.data = ml_collections.ConfigDict()
  # vocabulary: the most frequent words; ids offset by 3 (0 pad, 1 start, 2 OOV)
  c.data.num_words = 20000
  c.data.maxlen = 200          # segment length (sentiment) / cut-or-pad length (imdb)
  # sentiment: review (no review in two splits) | paper (the released split)
  c.data.split = "review"
  c.data.test_fraction = 0.2   # 80/20 train/test
  # of the training reviews, held out to pick the best checkpoint (0: none)
  c.data.valid_fraction = 0.1
  c.data.shuffle_seed = 0      # np.random.seed(0); np.random.shuffle
  # sentiment: whitespace | fork (the released script's split on " " of each line with its
  # newline: every review ends in a "\n" token; vdrnn/data/sentiment.py)
  c.data.tokens = "whitespace"
  # imdb: keep the last maxlen tokens (Keras pad_sequences) | post: the first
  c.data.truncating = "pre"
  c.data.max_train = 0         # >0: keep only the first max_train training examples (smoke runs)
  c.data.max_test = 0          # >0: likewise for test

  c.model = ml_collections.ConfigDict()
  c.model.vocab_size = 20003   # num_words + 3
  c.model.emb_dim = 128
  c.model.hidden = 128
  c.model.cell = "lstm"        # lstm | gru
  c.model.out_dim = 1          # 1: regression; 2: two-class softmax
  c.model.scheme = "variational"
  c.model.tied_gates = False   # Keras (Gal's dropout_W / dropout_U): one mask per gate
  c.model.p_emb = 0.5          # p_emb: word-type dropout of the embedding
  c.model.p_x = 0.5            # p_W: RNN-input dropout
  c.model.p_h = 0.5            # p_U: recurrent dropout
  c.model.p_out = 0.5          # p_dense: dropout before the dense layer
  # Keras Embedding(dropout=p): one mask over the vocabulary per batch
  c.model.emb_shared_across_batch = True
  # Semantics of the released code's Keras 0.x fork (github.com/yaringal/keras, branch
  # BayesianRNN, used by Sentiment_analysis_code/*.py). The defaults are the modern ones
  # (Keras 2 and later, what vdrnn's README compares against); ``released`` in
  # configs/sentiment_{lstm,gru}.py switches them all.
  # naive: a fresh mask per step *and gate* (the fork's NaiveDropoutLSTM/GRU draw B_W, B_U so)
  c.model.naive_per_gate = False
  # sigmoid | hard_sigmoid (the fork's inner_activation: clip(0.2 x + 0.5, 0, 1))
  c.model.gate_act = "sigmoid"
  c.model.candidate_act = "tanh"   # GRU candidate: tanh | sigmoid (the fork's GRU default)
  # inverted | keras0 (the fork: 0/1 masks while training, x keep probability at test)
  c.model.dropout_scaling = "inverted"
  # fused: Glorot / orthogonal over all gates' kernels (Keras 2+, Flax OptimizedLSTMCell);
  # per_gate: each gate's block on its own (the Keras 0.x fork; vdrnn/models.py init_seq)
  c.model.init = "fused"
  c.model.ortho_scale = 1.0        # orthogonal recurrent init gain (the fork: scale=1.1)
  # True: padded steps leave the state unchanged; False: the RNN runs over the left padding
  # (the fork: pad id 0 has a trained, dropped-out embedding, a noisy initial state)
  c.model.skip_padding = True

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 128
  c.train.num_epochs = 250
  c.train.lr = 1e-3  # Keras 'adam' defaults: lr 0.001, beta_1 0.9, beta_2 0.999, epsilon 1e-8
  c.train.b1 = 0.9
  c.train.b2 = 0.999
  c.train.eps = 1e-8
  c.train.weight_decay = 1e-6  # Keras l2(1e-6) on every weight: 1e-6 * sum(w^2) added to the loss
  # "all": every weight once; "fork": the Keras 0.x fork's slip (configs/PAPER.md), only the
  # recurrent layer's last gate block (G times), the embedding and the dense layer
  c.train.weight_decay_scope = "all"
  c.train.max_grad_norm = 0.0  # >0: clip the global gradient norm (the released code does not)
  # >0: also checkpoint within an epoch (always at every epoch end)
  c.train.checkpoint_every_steps = 0
  c.train.log_every_steps = 10
  c.train.unroll = 1           # lax.scan unroll
  c.train.compute_dtype = "float32"  # or bfloat16 (matmul operands; fp32 accumulation)
  c.train.progress = True

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 256      # rows per evaluation batch (the released code: 500)
  c.eval.mc_samples = 50       # MC-dropout samples at the end (the script's T = 50)
  c.eval.mc_chunk = 5          # samples evaluated together (bounds memory)
  # how a chunk's samples run: "vmap" (vectorised, one wide pass), "map" (one after another,
  # lax.map) or "auto" (vmap on accelerators, map on the CPU, where at IMDB's shape it ran
  # 1.1-1.4x faster with the same outputs: launch/results/bench/seq_mc_ab.md)
  c.eval.mc_vectorise = "auto"
  # the test set after every epoch (the sentiment figure's curves: the released scripts report
  # it every epoch); False: only at the end (a held-out validation set watches training)
  c.eval.test_every_epoch = True
  # the checkpoint the final test evaluates: "last" (the released scripts: the model after the
  # last epoch) or "best" (the epoch with the lowest validation metric, ``select``)
  c.eval.checkpoint = "last"
  # >0: also MC-evaluate the test set every that many epochs (ModelTest: 1, T = 10)
  c.eval.mc_every_epochs = 0
  c.eval.tau = 0.1             # model precision in the test log-likelihood (ModelTest(tau=0.1))
  # training examples evaluated (dropout approximation) after every epoch
  c.eval.train_examples = 1000
  c.eval.ece_bins = 15         # classification: equal-width confidence bins
  c.eval.ood = ""              # IMDB: OOD sets at the test evaluation, e.g. "ptb,scaledata"
  c.eval.seed = 1

  # A seed population (vdrnn/population.py): one member per seed, trained as one vmapped step,
  # e.g. --config.population.seed=0,1,2,3,4 (a deep ensemble, Lakshminarayanan et al. 2017).
  c.population = ml_collections.ConfigDict()
  c.population.seed = ()
  return c



def tiny(c) -> ml_collections.ConfigDict:
  """Shrinks a sequence-task config to toy size for tests and smoke runs (the tiny corpus in
  tests/data, seconds per run): same semantics, small shapes."""
  c.data.num_words = 40
  c.data.maxlen = 12
  c.model.vocab_size = 43
  c.model.emb_dim = 8
  c.model.hidden = 8
  c.train.batch_size = 8
  c.train.num_epochs = 2
  c.train.lr = 1e-2
  c.train.log_every_steps = 2
  c.train.progress = False
  c.eval.batch_size = 16
  c.eval.mc_samples = 3
  c.eval.mc_chunk = 2
  c.eval.train_examples = 16
  return c


# Config fields that must match for a workdir's checkpoint to be resumed.
RESUME_KEYS = [
    "task", "seed", "data", "model", "train.batch_size", "train.lr", "train.weight_decay",
    "train.weight_decay_scope"
]


def ood_sets(config) -> list[str]:
  """The OOD sets named in ``eval.ood`` (comma-separated; classification only)."""
  return [n.strip() for n in config.eval.get("ood", "").split(",") if n.strip()]


def validate(config, head: Head) -> None:
  """One-line ``UserError`` for the first bad field."""
  m, d, t, e = config.model, config.data, config.train, config.eval
  validate_rates(m)
  if m.cell not in models.GATES:
    raise UserError(f"model.cell must be one of {sorted(models.GATES)}, got {m.cell!r}")
  if not head.classes and m.out_dim != 1:
    raise UserError(f"model.out_dim must be 1 for {config.task} (regression), got {m.out_dim}")
  if head.classes and m.out_dim < 2:
    raise UserError(f"model.out_dim must be >= 2 (classes) for {config.task}, got {m.out_dim}")
  check_positive_ints(config, ("data.num_words", "data.maxlen", "model.emb_dim", "model.hidden",
                               "train.batch_size", "train.num_epochs", "eval.batch_size",
                               "eval.mc_chunk"))
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
  check_compute_dtype(config)
  for name in ood_sets(config):
    if not head.classes or name not in data_lib.OOD_SETS:
      raise UserError(f"eval.ood: {name!r} is not an OOD set of {config.task} (IMDB has "
                      f"{', '.join(data_lib.OOD_SETS)})")
  if e.mc_samples < 0 or e.mc_every_epochs < 0 or e.train_examples < 0:
    raise UserError("eval.mc_samples, eval.mc_every_epochs and eval.train_examples must be >= 0")
  if e.tau <= 0 or e.ece_bins < 1:
    raise UserError(f"eval.tau must be > 0 and eval.ece_bins >= 1, got {e.tau!r}, {e.ece_bins!r}")
  if e.get("mc_vectorise", "auto") not in MC_VECTORISE:
    raise UserError(f"eval.mc_vectorise must be one of {', '.join(MC_VECTORISE)}, "
                    f"got {e.mc_vectorise!r}")
  if e.checkpoint not in ("last", "best"):
    raise UserError(f"eval.checkpoint must be 'last' or 'best', got {e.checkpoint!r}")
  if e.mc_every_epochs and not e.test_every_epoch:
    raise UserError("eval.mc_every_epochs > 0 MC-evaluates the test set every epoch: it needs "
                    "eval.test_every_epoch=True")


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


def make_step_body(config, head: Head):
  """``body(state, x [B, T] int, y [B], w [B], key) -> state``, pure: one training step with
  masks from ``fold_in(key, step)``; ``key`` may be traced, so a population can ``vmap`` the
  body over its members' seeds (``vdrnn.population``).

  Loss ``sum_b w_b l_b / sum_b w_b + weight_decay * sum(params^2)`` with ``l_b`` the head's
  per-example loss.
  """
  m, t = config.model, config.train
  dtype = compute_dtype(config)
  opt = make_optimizer(t)

  def body(state, x, y, w, key):
    step = state["step"]
    masks = models.seq_masks(jax.random.fold_in(key, step), m, x)

    def loss_fn(params):
      out = models.seq_apply(params, x, masks, **models.seq_semantics(m), unroll=t.unroll,
                             compute_dtype=dtype)
      per = head.loss(out, y)
      loss = jnp.sum(w * per) / jnp.maximum(jnp.sum(w), 1.0)
      return loss + t.weight_decay * l2(params, t.weight_decay_scope), (per, out)

    (loss, (per, out)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = opt.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    acc = state["acc"]
    correct = jnp.sum(w * (jnp.argmax(out, -1) == y)) if head.classes else 0.0
    bad = loop.mark_bad(acc, step, jnp.isfinite(loss))
    acc = {"loss_sum": acc["loss_sum"] + jnp.sum(w * per), "count": acc["count"] + jnp.sum(w),
           "correct": acc["correct"] + correct, "bad_step": bad}
    return {"params": params, "opt": opt_state, "step": step + 1, "acc": acc}

  return body


def make_train_step(config, head: Head):
  """``train_step(state, x [B, T] int, y [B], w [B]) -> state``, pure: ``make_step_body``
  with masks from ``fold_in(key(config.seed), step)``."""
  body, key = make_step_body(config, head), jax.random.key(config.seed)
  return lambda state, x, y, w: body(state, x, y, w, key)


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


def _selection(head: Head, splits) -> str:
  """The epoch-record key (lower is better) that picks the best checkpoint: validation RMSE
  or NLL, or, without a validation set, those of the training examples (never test)."""
  return f"{'valid' if 'valid' in splits else 'train'}_{head.select}"


def _function_key(config) -> str:
  """The config fields the jitted functions depend on, as a JSON string."""
  d = json.loads(config.to_json())
  for k in ("num_epochs", "progress", "log_every_steps", "checkpoint_every_steps"):
    d["train"].pop(k, None)
  return json.dumps({k: d[k] for k in ("task", "seed", "model", "train", "eval")}, sort_keys=True)


def compiled(config, head: Head):
  """``(init, train_step, (det, mc), shardings)``, jitted once per process, config and head
  (a resumed or re-evaluated run in the same process reuses the compiled code)."""
  return _compiled(_function_key(config), head)


@functools.lru_cache(maxsize=8)
def _compiled(key: str, head: Head):
  config = ml_collections.ConfigDict(json.loads(key))
  mesh = sharding.make_mesh()
  rep, bat = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  shardings = jax.tree.map(lambda _: rep, jax.eval_shape(lambda: init_state(config)))
  init = jax.jit(lambda: init_state(config), out_shardings=shardings)
  train_step = sharding.jit_train_step(make_train_step(config, head), shardings, (bat, bat, bat))
  return init, train_step, make_predict_fns(config), shardings


class SeqTask(loop.Task):
  """The sequence-task run of ``config`` (its ``head``: regression or classification) as
  ``vdrnn.loop.run`` trains it; ``workdir`` receives the learning curve and, for
  classification, the reliability diagram."""

  resume_keys = RESUME_KEYS
  nonfinite_hint = "lower train.lr or set train.max_grad_norm"

  def __init__(self, config, workdir: str, head: Head):
    validate(config, head)
    t, e = config.train, config.eval
    self.config, self.workdir, self.head = config, workdir, head
    self.mesh = sharding.make_mesh()
    sharding.check_batch(t.batch_size, self.mesh)
    sharding.check_batch(e.batch_size, self.mesh, "eval.batch_size")
    self.splits, self.info = load_data(config)
    if head.fits_tau and not self.info["y_std"] > 0:
      raise UserError("the training ratings are all equal (std 0); nothing to standardise")
    train = self.splits["train"]
    self.y_train = head.targets(train, self.info)
    self.steps_per_epoch = -(-len(self.y_train) // t.batch_size)
    self.items_per_step = t.batch_size
    self.meta = {"steps_per_epoch": self.steps_per_epoch, "data": self.info}
    self.select = _selection(head, self.splits)
    self._init, self.train_step, self.fns, self.shardings = compiled(config, head)
    self.sub = {k: v[:e.train_examples] for k, v in train.items()} if e.train_examples else None
    sizes = ", ".join(f"{k} {len(v['y'])}" for k, v in self.splits.items())
    n = loop.num_params(lambda: models.init_seq(jax.random.key(0), config.model))
    self.summary = (f"{config.task}: {n / 1e6:.2f}M parameters, {len(jax.devices())} device(s), "
                    f"{sizes} examples, {self.steps_per_epoch} steps/epoch")

  def base_config(self):
    return base_config()

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
    return self.head.running(acc, self.info)

  def training_examples(self, params, samples: int) -> tuple[Optional[dict], dict]:
    """``(taus, metrics)`` of the first ``eval.train_examples`` training examples: model
    precisions fitted on them (regression; ``fit_taus``) and their own metrics."""
    if self.sub is None:
      return None, {}
    samples = samples if self.head.fits_tau else 0  # MC only to fit tau (regression)
    det, mc = predict(self.config, self.fns, params, self.sub["x"], self.mesh, samples=samples)
    taus = fit_taus(self.info, self.sub["y"], det, mc) if self.head.fits_tau else None
    return taus, self.head.summarize(self.config, self.info, self.sub["y"], det, None, taus)

  def evaluate(self, state, epoch: int) -> dict:
    return self.evaluate_params(state["params"], epoch)

  def evaluate_params(self, params, epoch: int) -> dict:
    """The epoch record of ``params``: the training examples, the validation set (if any) and,
    with ``eval.test_every_epoch``, the test set, with the dropout approximation (and MC
    dropout every ``eval.mc_every_epochs`` epochs)."""
    config, e, head = self.config, self.config.eval, self.head
    mc_now = e.mc_every_epochs and e.mc_samples and (epoch + 1) % e.mc_every_epochs == 0
    taus, train_metrics = self.training_examples(params, e.mc_samples if mc_now else 0)
    record = {f"train_{k}": v for k, v in train_metrics.items()}
    if "valid" in self.splits:
      valid = evaluate(config, head, self.fns, params, self.splits["valid"], self.info,
                       self.mesh, taus=taus)
      record.update({f"valid_{k}": v for k, v in valid.items()})
    if e.test_every_epoch:
      test = evaluate(config, head, self.fns, params, self.splits["test"], self.info, self.mesh,
                      samples=e.mc_samples if mc_now else 0, taus=taus)
      record.update({f"test_{k}": v for k, v in test.items()})
    return record

  def finish(self, state, meta: dict) -> dict:
    params, step, which = self.final_params(state, self.workdir, meta["best"])
    return self.results(params, self.workdir, meta["best"], step, which)

  def final_params(self, state, workdir: str, best: Optional[dict]) -> tuple:
    """``(params, step, "last" | "best")`` the final test evaluates: with
    ``eval.checkpoint=best`` those of the best epoch (``best``, ``meta["best"]``), restored
    from ``workdir``'s checkpoints (the loop keeps the best one); else, or before any epoch
    had a finite metric, ``state``'s own."""
    step = loop.current_step(state)
    if self.config.eval.checkpoint != "best" or best is None:
      return state["params"], step, "last"
    if best["step"] == step:
      return state["params"], step, "best"
    mngr, found = ckpt_lib.find(workdir, "best")
    if found != best["step"]:
      raise UserError(f"{workdir}: the best checkpoint is at step {found}, its metadata says "
                      f"{best['step']}")
    restored, _ = ckpt_lib.restore(mngr, found, state)
    return restored["params"], found, "best"

  def results(self, params, workdir: str, best: Optional[dict], step: int,
              which: str = "last") -> dict:
    """The final results of ``params`` (checkpoint ``which`` at ``step``): the test set with the
    dropout approximation and ``eval.mc_samples`` MC samples, its predictions saved in
    ``workdir``; ``best``: the best epoch's record (``meta["best"]``)."""
    config, e = self.config, self.config.eval
    taus, _ = self.training_examples(params, e.mc_samples)
    test = evaluate(config, self.head, self.fns, params, self.splits["test"], self.info,
                    self.mesh, samples=e.mc_samples,
                    progress=config.train.progress and sharding.is_primary(), taus=taus,
                    workdir=workdir, tag="test", ood=ood_sets(config),
                    calibration=self.splits.get("valid"))
    results = {**{f"test_{k}": v for k, v in test.items()}, "mc_samples": e.mc_samples,
               "checkpoint": which, "step": step,
               "epochs": config.train.num_epochs,
               "best": None if best is None else {k: best[k] for k in ("epoch", "metric", "value")},
               "data": self.info}
    if self.head.fits_tau:
      results["tau"] = e.tau
    return results

  def plot(self, history: list[dict], results: Optional[dict] = None) -> None:
    plots.learning_curve(os.path.join(self.workdir, "learning_curve.png"), history,
                         self.head.metric, results)


def train_and_evaluate(config, workdir: str, head: Head) -> dict:
  """Trains a sequence model in ``workdir``; returns the final results (also
  ``results.json``)."""
  return loop.run(SeqTask(config, workdir, head), config, workdir)


def restore_workdir(config, workdir: str, head: Head, checkpoint: str = "latest") -> tuple:
  """What an evaluation of a trained workdir starts from, ``(state, meta, splits, info, fns,
  mesh)``: the config validated, ``eval.batch_size`` checked against the mesh, the data loaded,
  the predict functions (``compiled``) and checkpoint ``checkpoint`` (``latest``, ``best`` or a
  step) restored."""
  validate(config, head)
  mngr, step = ckpt_lib.find(workdir, checkpoint)
  mesh = sharding.make_mesh()
  sharding.check_batch(config.eval.batch_size, mesh, "eval.batch_size")
  splits, info = load_data(config)
  init, _, fns, _ = compiled(config, head)
  state, meta = ckpt_lib.restore(mngr, step, init())
  return state, meta, splits, info, fns, mesh


def evaluate_workdir(config, workdir: str, head: Head, *, checkpoint: str = "latest",
                     split: str = "test", progress: Optional[bool] = None) -> dict:
  """Re-evaluates a trained workdir: the dropout approximation and MC dropout
  (``eval.mc_samples``) on ``split`` (train, valid or test) with checkpoint ``latest``,
  ``best`` or a step; regression fits ``tau`` on the first ``eval.train_examples`` training
  examples. Writes ``eval_<checkpoint>_<split>.json`` (and, for classification,
  ``reliability_<checkpoint>_<split>.png``) in the workdir and returns the metrics.
  """
  state, meta, splits, info, fns, mesh = restore_workdir(config, workdir, head, checkpoint)
  if split not in splits:
    raise UserError(f"split must be one of {sorted(splits)} for this config, got {split!r}")
  n = config.eval.mc_samples
  taus = None
  if head.fits_tau and config.eval.train_examples:  # tau fitted on training examples
    sub = splits["train"]["x"][:config.eval.train_examples]
    det, mc = predict(config, fns, state["params"], sub, mesh, samples=n)
    taus = fit_taus(info, splits["train"]["y"][:config.eval.train_examples], det, mc)
  out = evaluate(config, head, fns, state["params"], splits[split], info, mesh, samples=n,
                 progress=config.train.progress if progress is None else progress, taus=taus,
                 workdir=workdir, tag=f"{checkpoint}_{split}",
                 ood=ood_sets(config) if split == "test" else (),
                 calibration=splits.get("valid") if split == "test" else None)
  results = {**{f"{split}_{k}": v for k, v in out.items()}, "mc_samples": n,
             "checkpoint": checkpoint, "step": int(state["step"]),
             "epoch": len(meta.get("history", []))}
  if head.fits_tau:
    results["tau"] = config.eval.tau
  if sharding.is_primary():
    with open(os.path.join(workdir, f"eval_{checkpoint}_{split}.json"), "w") as f:
      json.dump(results, f, indent=2)
  return results


def summary(result: dict) -> str:
  """One line on an evaluation's headline metrics (``vdrnn.evaluate`` prints it)."""
  shown = [f"{k} {v:.4g}" for k, v in result.items()
           if isinstance(v, float) and k.split("_", 1)[-1] in ("rmse", "rmse_mc", "acc", "acc_mc",
                                                               "nll", "nll_mc", "ece", "ece_mc")]
  return (f"{', '.join(shown)} ({result['mc_samples']} MC samples; checkpoint "
          f"{result['checkpoint']}, step {result['step']})")


def bind(head: Head) -> tuple:
  """``(validate, make_train_step, train_and_evaluate, evaluate_workdir)`` with ``head`` bound:
  what a sequence task's module exports for ``vdrnn.tasks`` (``vdrnn.sentiment``,
  ``vdrnn.imdb``)."""
  return tuple(functools.partial(f, head=head)
               for f in (validate, make_train_step, train_and_evaluate, evaluate_workdir))

