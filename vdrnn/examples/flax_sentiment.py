"""Worked example: an IMDB sentiment classifier in Flax NNX with variational dropout.

``python -m vdrnn.examples.flax_sentiment [--data_dir DIR] [--steps 300] [--mc_samples 50]``
(``--tiny --data_dir tests/data --noverify_checksums``: the test corpus at toy sizes, seconds).

The model is the paper's sentiment model (Gal & Ghahramani 2016, Sec. 5.2) with a two-class
softmax, written as an ordinary NNX module from ``vdrnn.nn`` layers: embedding -> word-type
embedding dropout -> variational LSTM (last state after the last real token) -> dropout
with one mask per sequence -> dense. It trains with optax (Adam) for a few steps, then
predicts with the dropout approximation (``model.eval()``) and with MC dropout: ``nnx.vmap``
over ``samples`` keys split from the model's ``dropout`` streams. The block between the
``readme`` markers is the README's "Use it in your Flax model" code (a test checks this).
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from vdrnn.data import sentiment as data_lib
from vdrnn.errors import run_main

# [readme-start]
import jax
import optax
from flax import nnx

from vdrnn import nn as vnn


class SentimentLSTM(nnx.Module):
  """tokens [B, T] (0 = padding) -> logits [B, classes]; every dropout is variational."""

  def __init__(self, vocab, emb_dim, hidden, classes, *, p_emb=0.5, p_x=0.5, p_h=0.5, p_out=0.5,
               rngs: nnx.Rngs):
    self.embed = nnx.Embed(vocab, emb_dim, rngs=rngs)
    self.emb_drop = vnn.WordTypeDropout(p_emb, rngs=rngs)  # drops word types, per sequence
    self.lstm = vnn.VariationalLSTM(emb_dim, hidden, rate_x=p_x, rate_h=p_h, return_carry=True,
                                    rngs=rngs)
    self.out_drop = vnn.LockedDropout(p_out, rngs=rngs)  # one mask per sequence
    self.dense = nnx.Linear(hidden, classes, rngs=rngs)

  def __call__(self, tokens):
    x = self.emb_drop(self.embed(tokens), tokens)
    (_, h), _ = self.lstm(x, valid=tokens != 0)  # h: the state after the last real token
    return self.dense(self.out_drop(h))


def loss_fn(model, tokens, labels):
  return optax.softmax_cross_entropy_with_integer_labels(model(tokens), labels).mean()


@nnx.jit
def train_step(model, optimizer, tokens, labels):
  loss, grads = nnx.value_and_grad(loss_fn)(model, tokens, labels)
  optimizer.update(model, grads)
  return loss


@nnx.jit(static_argnums=2)
def mc_predict(model, tokens, samples):
  """MC dropout: class probabilities [B, classes] averaged over `samples` sets of masks."""
  @nnx.split_rngs(splits=samples, only="dropout")
  @nnx.vmap(in_axes=(nnx.StateAxes({"dropout": 0, ...: None}), None))
  def sample(model, tokens):
    return jax.nn.softmax(model(tokens))
  return sample(model, tokens).mean(axis=0)


# model = SentimentLSTM(20003, 128, 128, 2, rngs=nnx.Rngs(params=0, dropout=1))
# optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
# for tokens, labels in batches:
#   loss = train_step(model, optimizer, tokens, labels)
# model.eval(); p_approx = jax.nn.softmax(model(test_tokens))  # the dropout approximation
# model.train(); p_mc = mc_predict(model, test_tokens, 50)     # MC dropout, 50 samples
# [readme-end]

# Sizes: Keras's examples/imdb_lstm.py (20k words, maxlen 80, 128 units, batch 32, Adam 1e-3)
# and, for tests and smoke runs, those of vdrnn.seq_task.tiny (the corpus in tests/data).
SIZES = {"full": dict(num_words=20000, maxlen=80, emb_dim=128, hidden=128, batch_size=32, lr=1e-3),
         "tiny": dict(num_words=40, maxlen=12, emb_dim=8, hidden=8, batch_size=8, lr=1e-2)}


def load_imdb(data_dir, num_words: int, maxlen: int, verify: bool = True) -> dict:
  """``{"train", "test"}`` splits of ``{"x": int32 [N, maxlen], "y": int32 [N]}`` (see
  ``vdrnn.data.sentiment``: words ids offset by 3, left-padded, the last maxlen tokens kept)."""
  data = ml_collections.ConfigDict({"num_words": num_words, "maxlen": maxlen, "truncating": "pre",
                                    "valid_fraction": 0.0, "shuffle_seed": 0})
  splits, _ = data_lib.load("imdb", data, data_dir, verify=verify)
  return splits


def deterministic_loss(model, x, y) -> float:
  """Mean cross-entropy with the dropout approximation (the model is left in training mode)."""
  model.eval()
  loss = float(loss_fn(model, jnp.asarray(x), jnp.asarray(y)))
  model.train()
  return loss


def train_and_evaluate(data_dir=None, *, steps: int = 300, mc_samples: int = 50, tiny: bool = False,
                       verify: bool = True, seed: int = 0, log=lambda msg: None) -> dict:
  """Trains ``SentimentLSTM`` for ``steps`` Adam steps on IMDB and evaluates it on the test
  set. Returns the training losses, the deterministic training-set loss before and after,
  and the test accuracy / NLL with the dropout approximation and with MC dropout."""
  s = SIZES["tiny" if tiny else "full"]
  splits = load_imdb(data_dir, s["num_words"], s["maxlen"], verify)
  train, test = splits["train"], splits["test"]
  model = SentimentLSTM(s["num_words"] + 3, s["emb_dim"], s["hidden"], 2,
                        rngs=nnx.Rngs(params=seed, dropout=seed + 1))
  optimizer = nnx.Optimizer(model, optax.adam(s["lr"]), wrt=nnx.Param)
  before = deterministic_loss(model, train["x"], train["y"])
  rng = np.random.RandomState(seed)
  n, B = len(train["y"]), min(s["batch_size"], len(train["y"]))
  order, pos, losses = rng.permutation(n), 0, []
  for step in range(steps):
    if pos + B > n:  # a new epoch
      order, pos = rng.permutation(n), 0
    idx = order[pos:pos + B]
    pos += B
    tokens, labels = jnp.asarray(train["x"][idx]), jnp.asarray(train["y"][idx])
    losses.append(float(train_step(model, optimizer, tokens, labels)))
    if (step + 1) % max(1, steps // 10) == 0:
      log(f"step {step + 1}: loss {np.mean(losses[-max(1, steps // 10):]):.4f}")
  after = deterministic_loss(model, train["x"], train["y"])
  x, y = jnp.asarray(test["x"]), np.asarray(test["y"])
  model.eval()
  p_det = np.asarray(jax.nn.softmax(model(x)))
  model.train()
  p_mc = np.asarray(mc_predict(model, x, mc_samples))

  def nll(p):
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y], 1e-12))))

  return {"losses": losses, "train_loss_before": before, "train_loss_after": after,
          "test_examples": len(y), "det_accuracy": float(np.mean(p_det.argmax(-1) == y)),
          "det_nll": nll(p_det), "mc_accuracy": float(np.mean(p_mc.argmax(-1) == y)),
          "mc_nll": nll(p_mc), "mc_probs": p_mc}


def define_flags() -> None:
  """The example's flags (defined when it runs: tests import this module)."""
  flags.DEFINE_string("data_dir", None, "folder holding imdb/ (default: vdrnn/data/locate.py)")
  flags.DEFINE_integer("steps", 300, "Adam steps")
  flags.DEFINE_integer("mc_samples", 50, "MC-dropout samples at test time")
  flags.DEFINE_bool("tiny", False, "toy sizes (for the corpus in tests/data)")
  flags.DEFINE_bool("verify_checksums", True, "check the data files' sha256 (off: your own data)")


def main(argv) -> None:
  del argv
  FLAGS = flags.FLAGS
  r = train_and_evaluate(FLAGS.data_dir, steps=FLAGS.steps, mc_samples=FLAGS.mc_samples,
                         tiny=FLAGS.tiny, verify=FLAGS.verify_checksums, log=print)
  print(f"training loss (dropout approximation): {r['train_loss_before']:.4f} -> "
        f"{r['train_loss_after']:.4f}")
  print(f"test: accuracy {r['det_accuracy']:.4f} / NLL {r['det_nll']:.4f} (dropout approximation), "
        f"{r['mc_accuracy']:.4f} / {r['mc_nll']:.4f} (MC dropout, {FLAGS.mc_samples} samples)")


if __name__ == "__main__":
  define_flags()
  app.run(lambda argv: run_main(lambda: main(argv)))
