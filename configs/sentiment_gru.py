"""Pang & Lee sentiment regression with a GRU (Gal & Ghahramani 2016, Sec. 5.2;
Sentiment_analysis_code/sentiment_gru_regression{,_naive}.py; configs/PAPER.md).

Arg: comma-separated. Scheme: ``variational`` (default), ``naive`` or ``none``; ``paper``
uses the released segment-level train/test split instead of the review-level default;
``released`` turns on everything the released scripts do differently from the modern
defaults (implies ``paper``); ``tiny`` shrinks the shapes for tests and smoke runs
(tests/data). E.g. ``:naive,paper`` or ``:naive,released``.

``naive`` is the scheme of ``sentiment_gru_regression_naive.py`` (``NaiveDropoutGRU``):
a fresh mask at every time step and for every gate on the GRU input (p_W) *and* on its
recurrent state (p_U), word-type embedding dropout (``DropoutEmbedding``, p_emb) and
dropout before the dense layer (p_dense), all 0.5.

``released``: the Keras 0.x fork the scripts import (github.com/yaringal/keras, branch
BayesianRNN; configs/PAPER.md, "Details of the released code"): gates ``hard_sigmoid``
(the fork's ``inner_activation``), the GRU candidate ``sigmoid`` (the fork GRU's default
``activation``), non-inverted dropout (0/1 masks while training, times the keep probability
at test), the per-gate Glorot / orthogonal init with scale 1.1, the
script's tokens (``data.tokens = "fork"``: every review ends in a newline token), the GRU
run over the left padding (``model.skip_padding = False``: the pad id's trained, dropped-out
embedding acts as a noisy initial state) and the released split. Not reproduced: the fork's
L2 registration slip (one regulariser object per kind re-pointed at each gate block in turn,
so only the last-registered block of the layer is regularised, and that one 3x).
"""

from vdrnn.config import parse_arg, seq_base, seq_tiny

def get_config(arg=None):
  scheme, opts = parse_arg(arg, "sentiment_gru", ("variational", "naive", "none"), "variational",
                           flags=("paper", "released", "tiny"))
  c = seq_base()
  c.task = "sentiment"
  c.model.cell = "gru"
  c.model.out_dim = 1            # dense 1, MSE on standardised ratings
  c.model.emb_dim = 128          # embedding 128
  c.model.hidden = 128           # GRU 128
  c.train.batch_size = 128       # batch_size 128
  c.train.weight_decay = 1e-6    # W/U/b_regularizer l2(1e-6) on every layer
  c.train.num_epochs = 1250      # nb_epoch=1250 (GRU scripts); override for short runs
  c.model.scheme = scheme
  if scheme == "variational":    # p_W, p_U, p_dense, p_emb = 0.5, 0.5, 0.5, 0.5 (script defaults)
    c.model.p_emb, c.model.p_x, c.model.p_h, c.model.p_out = 0.5, 0.5, 0.5, 0.5
  elif scheme == "naive":        # sentiment_gru_regression_naive.py: p_W, p_U, p_dense, p_emb
    c.model.p_emb, c.model.p_x, c.model.p_h, c.model.p_out = 0.5, 0.5, 0.5, 0.5
    c.model.naive_per_gate = True  # NaiveDropoutGRU: B_W [G, T, B, D], B_U [T, G, B, H] per step
    c.train.num_epochs = 1250    # nb_epoch=1250 (naive script)
  else:
    c.model.p_emb = c.model.p_x = c.model.p_h = c.model.p_out = 0.0
  if "released" in opts:         # the Keras 0.x fork's semantics (see the docstring)
    c.model.gate_act = "hard_sigmoid"     # inner_activation='hard_sigmoid'
    c.model.candidate_act = "sigmoid"     # GRU activation='sigmoid' (the fork's default)
    c.model.dropout_scaling = "keras0"    # x *= binomial(keep) while training, x *= keep at test
    c.model.init = "per_gate"             # the fork's W_i, U_i, ... one block per gate
    c.model.ortho_scale = 1.1             # initializations.orthogonal(shape, scale=1.1)
    c.data.tokens = "fork"                # Tokenizer(filters='') on list(f): a newline token
    c.model.skip_padding = False          # the fork's RNN runs over the pad embeddings
  if "paper" in opts or "released" in opts:
    c.data.split = "paper"       # the released protocol: segment-level 80/20 split, no validation
    c.data.valid_fraction = 0.0
  if "tiny" in opts:
    seq_tiny(c)
  return c
