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


def validate(config) -> None:
  seq_task.validate(config, HEAD)


def make_train_step(config):
  """``seq_task.make_train_step`` with the classification head."""
  return seq_task.make_train_step(config, HEAD)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains an IMDB classifier in ``workdir``; returns the final results (``results.json``)."""
  return seq_task.train_and_evaluate(config, workdir, HEAD)


def evaluate_workdir(config, workdir: str, **kwargs) -> dict:
  """``seq_task.evaluate_workdir`` with the classification head (``kwargs``: ``checkpoint``,
  ``split``, ``progress``)."""
  return seq_task.evaluate_workdir(config, workdir, HEAD, **kwargs)


summary = seq_task.summary
