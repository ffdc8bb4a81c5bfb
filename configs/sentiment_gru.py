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

from vdrnn.sentiment import recipe


def get_config(arg=None):
  return recipe("gru", arg)
