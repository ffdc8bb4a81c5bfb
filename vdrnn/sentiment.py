"""Pang & Lee sentiment regression (Gal & Ghahramani 2016, Sec. 5.2), ``task="sentiment"``:
``python -m vdrnn.train --config configs/sentiment_lstm.py``.

A sequence task (``vdrnn.seq_task``) with the regression head (``vdrnn.seq_eval.REGRESSION``):
one output, the squared error on standardised ratings; RMSE and the predictive
log-likelihood in rating units. ``recipe`` is the released scripts' recipe, shared by
``configs/sentiment_lstm.py`` and ``configs/sentiment_gru.py``.
"""

from __future__ import annotations

from typing import Optional

import ml_collections

from vdrnn import seq_task
from vdrnn.config import parse_arg
from vdrnn.seq_eval import REGRESSION

HEAD = REGRESSION


def base_config() -> ml_collections.ConfigDict:
  """The sequence tasks' defaults (``seq_task.base_config``): the regression of the released
  sentiment scripts."""
  c = seq_task.base_config()
  c.task = "sentiment"
  c.model.out_dim = 1          # dense 1, MSE on standardised ratings
  return c


def recipe(cell: str, arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """The released sentiment scripts' recipe (Sentiment_analysis_code/sentiment_{lstm,gru}_
  regression{,_naive}.py; configs/PAPER.md) for ``cell`` ("lstm" | "gru"), shared by
  ``configs/sentiment_lstm.py`` and ``configs/sentiment_gru.py`` (whose docstrings document the
  arg: a scheme, ``variational`` | ``naive`` | ``none``, and the flags ``paper``, ``released``,
  ``tiny`` and, for the LSTM, ``tuned``)."""
  name = f"sentiment_{cell}"
  flags = ("paper", "released", "tiny") + (("tuned",) if cell == "lstm" else ())
  scheme, opts = parse_arg(arg, name, ("variational", "naive", "none"), "variational", flags=flags)
  if "tuned" in opts and scheme != "variational":
    raise ValueError(f"{name}: tuned is the variational setting, not {scheme!r}")
  c = base_config()
  c.model.cell = cell
  c.model.emb_dim = 128          # embedding 128
  c.model.hidden = 128           # LSTM / GRU 128
  c.train.batch_size = 128       # batch_size 128
  c.train.weight_decay = 1e-6    # W/U/b_regularizer l2(1e-6) on every layer
  # nb_epoch=250 (the variational LSTM script), 1250 (the GRU and naive scripts)
  c.train.num_epochs = 250 if cell == "lstm" and scheme != "naive" else 1250
  c.model.scheme = scheme
  if scheme == "variational":    # p_W, p_U, p_dense, p_emb = 0.5, 0.5, 0.5, 0.5 (script defaults)
    c.model.p_emb, c.model.p_x, c.model.p_h, c.model.p_out = 0.5, 0.5, 0.5, 0.5
    if "tuned" in opts:          # appendix B / Example/sentiment_lstm_regression.py
      c.model.p_emb, c.model.p_x, c.model.p_h, c.model.p_out = 0.25, 0.25, 0.25, 0.25
      c.train.weight_decay = 1e-4
  elif scheme == "naive":        # sentiment_*_regression_naive.py: p_W, p_U, p_dense, p_emb
    c.model.p_emb, c.model.p_x, c.model.p_h, c.model.p_out = 0.5, 0.5, 0.5, 0.5
    c.model.naive_per_gate = True  # NaiveDropoutLSTM / GRU: B_W [G, T, B, D], B_U [T, G, B, H]
  else:
    c.model.p_emb = c.model.p_x = c.model.p_h = c.model.p_out = 0.0
  if "released" in opts:         # the Keras 0.x fork's semantics (the config files' docstrings)
    c.model.gate_act = "hard_sigmoid"     # inner_activation='hard_sigmoid'
    if cell == "gru":
      c.model.candidate_act = "sigmoid"   # GRU activation='sigmoid' (the fork's default)
    c.model.dropout_scaling = "keras0"    # x *= binomial(keep) while training, x *= keep at test
    c.model.init = "per_gate"             # the fork's W_i, U_i, ... one block per gate
    c.model.ortho_scale = 1.1             # initializations.orthogonal(shape, scale=1.1)
    c.data.tokens = "fork"                # Tokenizer(filters='') on list(f): a newline token
    c.model.skip_padding = False          # the fork's RNN runs over the pad embeddings
  if "paper" in opts or "released" in opts:
    c.data.split = "paper"       # the released protocol: segment-level 80/20 split, no validation
    c.data.valid_fraction = 0.0
  if "tiny" in opts:
    seq_task.tiny(c)
  return c


# The sequence task's functions with this head (what ``vdrnn.tasks`` and the tests call).
validate, make_train_step, train_and_evaluate, evaluate_workdir = seq_task.bind(HEAD)
summary = seq_task.summary
