"""IMDB sentiment classification (Maas et al. 2011), ``task="imdb"``:
``python -m vdrnn.train --config configs/imdb_lstm.py``.

A sequence task (``vdrnn.seq_task``) with the classification head
(``vdrnn.seq_eval.CLASSIFICATION``): ``model.out_dim`` logits, softmax cross-entropy; accuracy,
NLL, ECE, predictive entropy and mutual information, and a reliability diagram. The paper
reports no IMDB numbers; the model is its sentiment model with a two-class softmax.
"""

from __future__ import annotations

import ml_collections

from vdrnn import seq_task
from vdrnn.seq_eval import CLASSIFICATION

HEAD = CLASSIFICATION


def base_config() -> ml_collections.ConfigDict:
  """The sequence tasks' defaults (``seq_task.base_config``) with a two-class softmax."""
  c = seq_task.base_config()
  c.task = "imdb"
  c.model.out_dim = 2          # dense 2, softmax cross-entropy
  return c


# The sequence task's functions with this head (what ``vdrnn.tasks`` and the tests call).
validate, make_train_step, train_and_evaluate, evaluate_workdir = seq_task.bind(HEAD)
summary = seq_task.summary
