"""A task from outside the package, to show that one needs no change to ``vdrnn``: copy the
last token. Random sequences of ``length`` tokens; an LSTM (``vdrnn.rnn.lstm``) reads each one
and a dense layer names its last token from the last state. It is both the task module
(``base_config``, ``train_and_evaluate``, ``evaluate_workdir``, ``summary``: what
``vdrnn.tasks`` asks of a task) and its own config file (``get_config``), named by its module
path: ``python -m vdrnn.train --config tests/toy_task.py`` with ``tests/`` on ``PYTHONPATH``.
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vdrnn import checkpoint as checkpoint_lib
from vdrnn import loop, rnn


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "toy_task"        # this module's import path
  c.seed = 0
  c.vocab = 6
  c.length = 5
  c.hidden = 16
  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 16
  c.train.steps_per_epoch = 12
  c.train.num_epochs = 3
  c.train.lr = 1.0
  c.train.log_every_steps = 4
  c.train.checkpoint_every_steps = 5
  c.train.progress = False
  c.eval = ml_collections.ConfigDict()
  c.eval.examples = 256
  return c


def get_config(arg=None):
  del arg
  return base_config()


def sequences(seed: int, n: int, c) -> np.ndarray:
  """``[n, length]`` tokens; the target is the last column."""
  return np.random.default_rng(seed).integers(0, c.vocab, (n, c.length)).astype(np.int32)


def init_params(c) -> dict:
  k = jax.random.split(jax.random.key(c.seed), 3)
  H, V = c.hidden, c.vocab
  return {"embed": 0.3 * jax.random.normal(k[0], (V, H)),
          "lstm": {"w_x": 0.3 * jax.random.normal(k[1], (H, 4 * H)),
                   "w_h": jnp.zeros((H, 4 * H)), "b": jnp.zeros((4 * H,))},
          "out": 0.3 * jax.random.normal(k[2], (H, V))}


def logits(params, x):
  """``[B, V]`` from tokens ``x [B, T]``."""
  B = x.shape[0]
  zero = jnp.zeros((B, params["lstm"]["w_h"].shape[0]))
  (_, h), _ = rnn.lstm(params["lstm"], (zero, zero), params["embed"][x.T])
  return h @ params["out"]


def make_train_step(c):
  def train_step(state, x):
    def loss_fn(params):
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits(params, x)), x[:, -1:], 1))

    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    params = optax.apply_updates(state["params"], jax.tree.map(lambda g: -c.train.lr * g, grads))
    acc = state["acc"]
    acc = {"loss_sum": acc["loss_sum"] + loss, "count": acc["count"] + 1,
           "bad_step": loop.mark_bad(acc, state["step"], jnp.isfinite(loss))}
    return {"params": params, "step": state["step"] + 1, "acc": acc}

  return jax.jit(train_step)


def zero_acc():
  return {"loss_sum": jnp.zeros(()), "count": jnp.zeros((), jnp.int32),
          "bad_step": jnp.full((), -1, jnp.int32)}


def accuracy(params, c) -> float:
  x = sequences(c.seed + 1, c.eval.examples, c)
  return float(np.mean(np.argmax(logits(params, x), -1) == x[:, -1]))


class CopyTask(loop.Task):
  select = "valid_err"
  resume_keys = ("task", "seed", "vocab", "length", "hidden", "train.batch_size")
  nonfinite_hint = "lower train.lr"

  def __init__(self, c, workdir):
    self.config, self.workdir = c, workdir
    self.steps_per_epoch, self.items_per_step = c.train.steps_per_epoch, c.train.batch_size
    self.train_step = make_train_step(c)
    self.data = sequences(c.seed, c.train.steps_per_epoch * c.train.batch_size, c)
    self.meta = {}

  def base_config(self):
    return base_config()

  def init_state(self):
    return {"params": init_params(self.config), "step": jnp.zeros((), jnp.int32),
            "acc": zero_acc()}

  def start_epoch(self, state, epoch):
    return {**state, "acc": zero_acc()}

  def batch(self, epoch, i):
    B = self.config.train.batch_size
    return (self.data[i * B:(i + 1) * B],)

  def train_metrics(self, acc, epoch):
    return {"train_loss": float(acc["loss_sum"]) / max(int(acc["count"]), 1)}

  def evaluate(self, state, epoch):
    return {"valid_err": 1.0 - accuracy(state["params"], self.config)}

  def finish(self, state, meta):
    return {"acc": accuracy(state["params"], self.config), "step": loop.current_step(state),
            "best_epoch": meta["best"]["epoch"] if meta["best"] else None}


def train_and_evaluate(config, workdir):
  return loop.run(CopyTask(config, workdir), config, workdir)


def evaluate_workdir(config, workdir, *, checkpoint="latest", split="test", progress=None):
  mngr, step = checkpoint_lib.find(workdir, checkpoint)
  target = CopyTask(config, workdir).init_state()
  state, _ = checkpoint_lib.restore(mngr, step, target)
  return {"workdir": os.fspath(workdir), "checkpoint": str(checkpoint), "step": int(step),
          "split": split, "acc": accuracy(state["params"], config)}


def summary(result):
  return f"copy accuracy {result['acc']:.3f} (step {result['step']})"

