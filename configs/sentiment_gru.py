"""Pang & Lee sentiment regression with a GRU (Gal & Ghahramani 2016, Sec. 5.2;
Sentiment_analysis_code/sentiment_gru_regression{,_naive}.py; configs/PAPER.md).

Arg: comma-separated. Scheme: ``variational`` (default), ``naive`` or ``none``; ``paper``
uses the released segment-level train/test split instead of the review-level default;
``tiny`` shrinks the shapes for tests and smoke runs (tests/data). E.g. ``:naive,paper``.
"""

from vdrnn.config import seq_base, seq_tiny


def get_config(arg=None):
  opts = [a for a in (arg or "variational").split(",") if a]
  scheme = next((a for a in opts if a in ("variational", "naive", "none")), "variational")
  unknown = set(opts) - {"variational", "naive", "none", "paper", "tiny"}
  if unknown:
    raise ValueError(f"sentiment_gru: unknown arg {sorted(unknown)}; use variational|naive|none[,paper][,tiny]")
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
  elif scheme == "naive":        # fresh mask per step on the GRU input (p_W) and before the dense
    # layer (p_dense); vdrnn's naive scheme (Zaremba) has no recurrent or word-type dropout, so
    # the naive script's p_U = p_emb = 0.5 have no counterpart here.
    c.model.p_emb, c.model.p_x, c.model.p_h, c.model.p_out = 0.0, 0.5, 0.0, 0.5
    c.train.num_epochs = 1250    # nb_epoch=1250 (naive script)
  else:
    c.model.p_emb = c.model.p_x = c.model.p_h = c.model.p_out = 0.0
  if "paper" in opts:
    c.data.split = "paper"       # the released protocol: segment-level 80/20 split, no validation
    c.data.valid_fraction = 0.0
  if "tiny" in opts:
    seq_tiny(c)
  return c
