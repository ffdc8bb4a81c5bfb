"""Movie-review data: Pang & Lee's scale dataset v1.0 (regression) and IMDB (classification).

Pang & Lee (``scaledata/<Author>/{subj,rating}.<Author>``, 4 critics, 5,006 reviews, one
review per line, ratings in [0, 1]) follows Sentiment_analysis_code/sentiment_lstm_regression.py
of the released code (configs/PAPER.md, "The sentiment experiment"):

* tokens: lower-case, split on whitespace (the reviews are already tokenised);
* vocabulary: the ``num_words`` most frequent words, ties broken by first occurrence (the
  Keras ``Tokenizer`` order). Ids are offset by 3: ``0`` pad, ``1`` start, ``2`` OOV, and the
  k-th most frequent word (k = 0, 1, ...) is ``3 + k``; the embedding has ``num_words + 3`` rows;
* every review becomes ``[1] + ids`` and is cut into consecutive segments of ``maxlen``
  tokens (the last one shorter), each labelled with the review's rating;
* the reviews are shuffled with ``np.random.RandomState(shuffle_seed)`` (the script's
  ``np.random.seed(0); np.random.shuffle``) before segmenting;
* targets are standardised with the mean and (population) std of the training segments;
  evaluation reports errors in the original rating units;
* segments are left-padded with 0 to ``maxlen`` (Keras ``pad_sequences``).

Two train/test protocols (``split``):

* ``"paper"`` (the released script): the vocabulary is fitted on *all* reviews (test ones
  included) and the first 80% of the *segments* are train, the rest test. Because the
  reviews are shuffled before segmenting, a review's segments are adjacent, so only the one
  review that straddles the 80% boundary has segments on both sides (``straddling`` in the
  returned info says how many); the test vocabulary leak is the larger difference.
* ``"review"`` (default): the first 80% of the shuffled *reviews* are train (of which the
  last ``valid_fraction`` are held out for validation), the rest test; the vocabulary comes
  from the training reviews only. No review contributes to two splits.

Tokens (``tokens``): ``"whitespace"`` (default) splits each review on any whitespace;
``"fork"`` is the released script's ``Tokenizer(filters='')`` over ``list(f)``: every line
keeps its newline and is split on single spaces, and since every review line ends in
``" \n"`` the newline becomes a token of its own at the end of each review (10,620 / 2,655
paper-split segments instead of 10,599 / 2,650). A difference kept on purpose: because
Keras's word index starts at 1, the script's ``+3`` offset and ``id >= 20000 -> OOV`` kept
19,996 words and never used id 3.

IMDB (``imdb/{train,test}.jsonl.gz``, 25,000 / 25,000 labelled reviews, Maas et al. 2011): the
standard split; ``<br />`` removed, lower-cased, words and punctuation marks as separate
tokens (our choice: the paper has no IMDB experiment, and the released
``imdb_*_regression.py`` scripts, despite their names, read the Pang & Lee data); vocabulary
of the ``num_words`` most frequent training words with the same offset; ``[1] + ids`` cut or
left-padded to ``maxlen``. ``truncating="pre"`` (default, Keras ``pad_sequences``) keeps the
*last* ``maxlen`` tokens of a long review, ``"post"`` the first. The training reviews are
shuffled with ``RandomState(shuffle_seed)`` (the files are sorted by label) and the last
``valid_fraction`` of them held out for validation (``imdb_held_out``): the vocabulary is fitted
without them and the best checkpoint is picked on them, so no choice depends on the test set
(still reported every epoch). ``valid_fraction = 0`` is Keras's examples/imdb_lstm.py setting:
all 25,000 reviews train and the test set is the only held-out data (the example's
``validation_data``); the best checkpoint is then picked on training examples, never on test.

Out-of-distribution text for an IMDB model (``ood_inputs``): the Pang & Lee reviews (near
shift) or the PTB test sentences grouped into review-length pseudo-documents (far shift), put
through exactly the IMDB test set's tokens, vocabulary, ``START``, cut and padding.
"""

from __future__ import annotations

import collections
import gzip
import json
import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from vdrnn.data import locate
from vdrnn.data import ptb as ptb_lib
from vdrnn.errors import UserError

PAD, START, OOV = 0, 1, 2
OFFSET = 3  # ids 0, 1, 2 are reserved

AUTHORS = ("Dennis+Schwartz", "James+Berardinelli", "Scott+Renshaw", "Steve+Rhodes")
# sha256 of the files the reader uses (../shared/data/SOURCES.md, section 2).
SCALEDATA_FILES = {
    "Dennis+Schwartz/subj.Dennis+Schwartz":
        "cb26f952c091c510c786627a45a5af3fb5c87a986f9aa3eb7eef6e4ed1797a02",
    "Dennis+Schwartz/rating.Dennis+Schwartz":
        "b9057227d5b1324f49d5f402f1cad0ae472f3d130f35a24a5334ab7db6726be7",
    "James+Berardinelli/subj.James+Berardinelli":
        "1b612ca24494cc675f5e58c1fc320501446da2ed2520a00edb3522b565640658",
    "James+Berardinelli/rating.James+Berardinelli":
        "91abefa233432a2b92a82e0cb40706bd38e48e1ce4165e7a16584a6ec1dd8ed0",
    "Scott+Renshaw/subj.Scott+Renshaw":
        "c1b0b7b80fa4161053fee1125e7fb7bfba987fcfa08a8ab525504eff4c988cec",
    "Scott+Renshaw/rating.Scott+Renshaw":
        "cbe4f07da184e0c68a1051503c91c2474bb23c8d6b433e57d99dc2a8ae43760c",
    "Steve+Rhodes/subj.Steve+Rhodes":
        "33ef24625d183f6f9ecf03f356e055e9ff998ac7773f48939a364e9900bbf10a",
    "Steve+Rhodes/rating.Steve+Rhodes":
        "bbbe28efbe998827cfe2737a25d19977091a2deea141461eb8e241ce6f5bc03d",
}
# sha256 of the repackaged files (../shared/data/SOURCES.md, section 3). No public URL
# serves these exact bytes, so there is no download: a missing file is one clear error.
IMDB_FILES = {
    "train.jsonl.gz": "e55e309d06079745593e06ca25c2b277b708e3428b2ac84414c677226154513d",
    "test.jsonl.gz": "fa95c381230370e549a41ab5b9805e5548a8d179f9ad3f50a388afd65d0bf58d",
}


# ----------------------------------------------------------------------------------------
# Readers.


def read_scaledata(folder: Path) -> tuple[list[str], np.ndarray]:
  """All reviews of the 4 critics in the released code's order; ``(texts, ratings [N])``."""
  texts, ratings = [], []
  for a in AUTHORS:
    with open(folder / a / f"subj.{a}", encoding="latin-1") as f:
      t = f.read().splitlines()
    with open(folder / a / f"rating.{a}", encoding="latin-1") as f:
      r = [float(line) for line in f.read().splitlines() if line.strip()]
    if len(t) != len(r):
      raise UserError(
          f"{folder / a}: subj.{a} has {len(t)} reviews but rating.{a} has {len(r)} ratings")
    texts += t
    ratings += r
  return texts, np.asarray(ratings, np.float32)


def read_imdb(folder: Path, split: str) -> tuple[list[str], np.ndarray]:
  """``(texts, labels [N])`` of ``imdb/<split>.jsonl.gz`` (label 0 = negative, 1 = positive)."""
  texts, labels = [], []
  with gzip.open(folder / f"{split}.jsonl.gz", "rt", encoding="utf-8") as f:
    for line in f:
      if line.strip():
        r = json.loads(line)
        texts.append(r["text"])
        labels.append(int(r["label"]))
  return texts, np.asarray(labels, np.int32)


# ----------------------------------------------------------------------------------------
# Tokens, vocabulary, ids.

_WORDS = re.compile(r"\w+(?:'\w+)*|[^\w\s]")


TOKENS = ("whitespace", "fork")  # Pang & Lee tokenisations (``data.tokens``)


def tokenize(text: str, style: str = "whitespace") -> list[str]:
  """``"whitespace"``: lower-case and split on whitespace (Pang & Lee).
  ``"fork"``: the released script's split of the line *with* its newline on single spaces
  (``text`` is the line without it), so a line ending in ``" "`` gets a final ``"\n"`` token.
  ``"words"``: also drop ``<br />`` and split punctuation marks off words (IMDB)."""
  text = text.lower()
  if style == "whitespace":
    return text.split()
  if style == "fork":
    return [w for w in (text + "\n").split(" ") if w]
  if style == "words":
    return _WORDS.findall(text.replace("<br />", " "))
  raise ValueError(f"unknown tokenizer style {style!r}; use whitespace or words")


def build_vocab(docs: Sequence[Sequence[str]], num_words: int) -> dict[str, int]:
  """The ``num_words`` most frequent words -> ids ``OFFSET, OFFSET + 1, ...`` (most frequent
  first, ties by first occurrence, as Keras's ``Tokenizer``)."""
  counts = collections.Counter()
  for d in docs:
    counts.update(d)
  ordered = sorted(counts.items(), key=lambda kv: -kv[1])  # stable: ties keep first-seen order
  return {w: OFFSET + i for i, (w, _) in enumerate(ordered[:num_words])}


def encode(tokens: Sequence[str], vocab: dict[str, int]) -> list[int]:
  """``[START] + ids``; words outside the vocabulary become ``OOV``."""
  return [START] + [vocab.get(w, OOV) for w in tokens]


def segment(ids: Sequence[int], length: int) -> list[list[int]]:
  """Consecutive pieces of ``length`` ids (the last one shorter), as the released code."""
  return [list(ids[i:i + length]) for i in range(0, len(ids), length)]


def pad(seqs: Sequence[Sequence[int]], maxlen: int, truncating: str = "pre") -> np.ndarray:
  """``[N, maxlen]`` int32, left-padded with ``PAD`` (Keras ``pad_sequences``, padding="pre").

  A longer sequence keeps its last ``maxlen`` ids (``truncating="pre"``, Keras's default)
  or its first (``"post"``).
  """
  if truncating not in ("pre", "post"):
    raise ValueError(f"truncating must be pre or post, got {truncating!r}")
  out = np.zeros((len(seqs), maxlen), np.int32)
  for i, s in enumerate(seqs):
    s = s[-maxlen:] if truncating == "pre" else s[:maxlen]
    if len(s):
      out[i, maxlen - len(s):] = s
  return out


def shuffled(n: int, seed: int) -> np.ndarray:
  """The permutation ``np.random.seed(seed); np.random.shuffle(x)`` applies to a list of n."""
  order = np.arange(n)
  np.random.RandomState(seed).shuffle(order)
  return order


# ----------------------------------------------------------------------------------------
# Datasets. Each split is {"x": int32 [N, maxlen], "y": [N], "review": int32 [N]}.


def _split(x, y, review) -> dict:
  return {"x": x, "y": y, "review": np.asarray(review, np.int32)}


def scaledata_splits(texts: Sequence[str], ratings: np.ndarray, *, num_words: int, maxlen: int,
                     split: str = "review", test_fraction: float = 0.2, valid_fraction: float = 0.0,
                     shuffle_seed: int = 0, tokens: str = "whitespace") -> tuple[dict, dict]:
  """Segments, splits and standardises Pang & Lee reviews (see the module docstring).

  Returns ``(splits, info)``: ``splits`` maps train / test (and valid when
  ``valid_fraction > 0``, review split only) to ``{"x": int32 [N, maxlen], "y": float32 [N]
  ratings, "review": int32 [N] index of the source review in shuffled order}``; ``info``
  holds ``y_mean`` and ``y_std`` of the training segments (the trainer standardises with
  them) and counts.
  """
  if split not in ("paper", "review"):
    raise UserError(f"data.split must be paper or review, got {split!r}")
  if split == "paper" and valid_fraction:
    raise UserError(
        "data.valid_fraction must be 0 with data.split=paper (the released protocol has no "
        "validation set)"
    )
  if tokens not in TOKENS:
    raise UserError(f"data.tokens must be one of {TOKENS}, got {tokens!r}")
  order = shuffled(len(texts), shuffle_seed)
  docs = [tokenize(texts[i], tokens) for i in order]
  ys = ratings[order]
  n_train_rev = int(len(docs) * (1 - test_fraction))
  if split == "paper":
    vocab = build_vocab(docs, num_words)
    pieces = [(s, ys[r], r) for r, d in enumerate(docs) for s in segment(encode(d, vocab), maxlen)]
    cut = int(len(pieces) * (1 - test_fraction))
    parts = {"train": pieces[:cut], "test": pieces[cut:]}
  else:
    n_valid_rev = int(n_train_rev * valid_fraction)
    fit = n_train_rev - n_valid_rev
    vocab = build_vocab(docs[:fit], num_words)
    ranges = {
        "train": range(0, fit),
        "valid": range(fit, n_train_rev),
        "test": range(n_train_rev, len(docs))
    }
    parts = {k: [(s, ys[r], r) for r in rs for s in segment(encode(docs[r], vocab), maxlen)]
             for k, rs in ranges.items() if len(rs)}
  splits = {
      k:
          _split(pad([p[0]
                      for p in v], maxlen), np.asarray([p[1]
                                                        for p in v], np.float32), [p[2]
                                                                                   for p in v])
      for k, v in parts.items()
  }
  y_train = splits["train"]["y"]
  info = {
      "y_mean": float(np.mean(y_train)),
      "y_std": float(np.std(y_train)),
      "vocab_words": len(vocab),
      "reviews": len(docs),
      **{
          f"{k}_segments": len(v["y"]) for k, v in splits.items()
      }, "straddling":
          len(set(splits["train"]["review"].tolist()) & set(splits["test"]["review"].tolist()))
  }
  return splits, info


def imdb_held_out(n: int, valid_fraction: float, shuffle_seed: int) -> tuple[np.ndarray,
                                                                              np.ndarray]:
  """``(fit, held)``: indices of the ``n`` IMDB training reviews kept for training and held out
  for validation (checkpoint selection), the last ``int(n * valid_fraction)`` of the
  ``shuffled(n, shuffle_seed)`` order. ``valid_fraction = 0``: all of them train, none held."""
  order = shuffled(n, shuffle_seed)
  n_valid = int(n * valid_fraction)
  return order[:n - n_valid], order[n - n_valid:]


def imdb_vocab(train_texts: Sequence[str], *, num_words: int, valid_fraction: float = 0.0,
               shuffle_seed: int = 0) -> dict[str, int]:
  """The vocabulary ``imdb_splits`` uses: the ``num_words`` most frequent words of the
  training reviews that are not held out for validation."""
  fit, _ = imdb_held_out(len(train_texts), valid_fraction, shuffle_seed)
  return build_vocab([tokenize(train_texts[i], "words") for i in fit], num_words)


def imdb_inputs(docs: Sequence[Sequence[str]], vocab: dict[str, int], maxlen: int,
                truncating: str = "pre") -> np.ndarray:
  """``[N, maxlen]`` int32 model inputs of tokenised documents, as every IMDB split:
  ``[START] + ids`` (``OOV`` outside ``vocab``), cut or left-padded to ``maxlen``."""
  return pad([encode(d, vocab) for d in docs], maxlen, truncating)


def imdb_splits(train: tuple[list[str], np.ndarray],
                test: tuple[list[str], np.ndarray],
                *,
                num_words: int,
                maxlen: int,
                truncating: str = "pre",
                valid_fraction: float = 0.0,
                shuffle_seed: int = 0) -> tuple[dict, dict]:
  """IMDB train / valid / test arrays (see the module docstring); ``y`` int32 labels, ``review``
  the index of the review in its file. ``valid`` (``imdb_held_out``) exists when
  ``valid_fraction > 0``; the vocabulary never sees it or the test set."""
  fit, held = imdb_held_out(len(train[0]), valid_fraction, shuffle_seed)
  tok = {"train": [tokenize(train[0][i], "words") for i in fit],
         "valid": [tokenize(train[0][i], "words") for i in held],
         "test": [tokenize(t, "words") for t in test[0]]}
  labels = {"train": train[1][fit], "valid": train[1][held], "test": test[1]}
  index = {"train": fit, "valid": held, "test": np.arange(len(test[0]))}
  vocab = build_vocab(tok["train"], num_words)
  splits = {
      k: _split(imdb_inputs(docs, vocab, maxlen, truncating), labels[k], index[k])
      for k, docs in tok.items()
      if len(docs)
  }
  lengths = np.asarray([len(d) + 1 for d in tok["train"]])
  info = {"vocab_words": len(vocab), **{f"{k}_reviews": len(v["y"]) for k, v in splits.items()},
          "train_truncated_fraction": float(np.mean(lengths > maxlen)) if len(lengths) else 0.0}
  return splits, info


def load(task: str,
         data,
         data_dir: Optional[str] = None,
         *,
         verify: bool = True) -> tuple[dict, dict]:
  """``(splits, info)`` for ``task`` ``"sentiment"`` (Pang & Lee) or ``"imdb"``.

  ``data`` is the config's ``data`` block: num_words, maxlen, split, test_fraction,
  valid_fraction, shuffle_seed, truncating, max_train / max_test (>0: keep only the first
  that many examples of train / test, for smoke runs).
  """
  if task == "sentiment":
    folder = locate.find("scaledata", SCALEDATA_FILES, data_dir, verify=verify)
    splits, info = scaledata_splits(*read_scaledata(folder),
                                    num_words=data.num_words,
                                    maxlen=data.maxlen,
                                    split=data.split,
                                    test_fraction=data.test_fraction,
                                    valid_fraction=data.valid_fraction,
                                    shuffle_seed=data.shuffle_seed,
                                    tokens=data.get("tokens", "whitespace"))
  elif task == "imdb":
    folder = locate.find("imdb", IMDB_FILES, data_dir, verify=verify)
    splits, info = imdb_splits(read_imdb(folder, "train"),
                               read_imdb(folder, "test"),
                               num_words=data.num_words,
                               maxlen=data.maxlen,
                               truncating=data.truncating,
                               valid_fraction=data.valid_fraction,
                               shuffle_seed=data.shuffle_seed)
  else:
    raise UserError(f"unknown task {task!r}; use sentiment or imdb")
  for k, limit in (("train", data.get("max_train", 0)), ("test", data.get("max_test", 0))):
    if limit and k in splits:
      splits[k] = {f: v[:limit] for f, v in splits[k].items()}
  if task == "sentiment":  # the standardisation always uses the training segments in use
    info["y_mean"], info["y_std"] = float(np.mean(splits["train"]["y"])), float(
        np.std(splits["train"]["y"]))
  info["folder"] = str(folder)
  return splits, info


# ----------------------------------------------------------------------------------------
# Out-of-distribution inputs for an IMDB model (Hendrycks & Gimpel 2017's protocol: the
# in-distribution test set against text from elsewhere, scored by the model's uncertainty).

OOD_SETS = ("ptb", "scaledata")


def ptb_tokens(line: str) -> list[str]:
  """A PTB line through the IMDB tokenizer (``tokenize(., "words")``), except that PTB's
  ``<unk>`` (a word outside PTB's 10k vocabulary) stays one token: the IMDB tokenizer never
  yields it (``<`` and ``>`` are tokens of their own), so it can be in no IMDB vocabulary
  and encodes as ``OOV``, where the rare word it replaced would most likely have gone."""
  return [t for w in line.split() for t in ([w] if w == "<unk>" else tokenize(w, "words"))]


def ptb_documents(sentences: Sequence[Sequence[str]],
                  lengths: Sequence[int]) -> tuple[list[list[str]], list[int]]:
  """Consecutive sentences grouped into pseudo-documents, document ``i`` taking sentences
  until it has at least ``lengths[i % len(lengths)]`` tokens (at least 1); a last document
  short of its length is dropped. Returns ``(documents, first)``, ``first[i]`` the index of
  document ``i``'s first sentence.

  Why not one sentence per input: PTB test sentences have about 21 tokens, IMDB test reviews
  about 265 (half of them over 200), so per sentence the inputs would differ from reviews in
  length (and in how much of the ``maxlen`` window is padding) before they differ in content,
  and a detector could score length alone. Given the IMDB test reviews' lengths, the
  pseudo-documents have about the same length distribution (each overshoots its length by
  less than one sentence; the PTB test file gives 294 of mean length 281, 58% over 200).
  """
  docs, first, i = [], [], 0
  while i < len(sentences):
    want, doc, start = max(int(lengths[len(docs) % len(lengths)]), 1), [], i
    while i < len(sentences) and len(doc) < want:
      doc += list(sentences[i])
      i += 1
    if len(doc) < want:
      break
    docs.append(doc)
    first.append(start)
  return docs, first


def _ood_documents(name: str, config, imdb_folder: Path) -> tuple[list[list[str]], list[int],
                                                                   Path]:
  """``(documents, source, folder)`` of OOD set ``name``, tokenised as IMDB reviews."""
  data_dir, verify = config.data_dir or None, config.verify_checksums
  if name == "scaledata":  # near shift: movie reviews by 4 critics (Pang & Lee 2005)
    folder = locate.find("scaledata", SCALEDATA_FILES, data_dir, verify=verify)
    texts, _ = read_scaledata(folder)
    return [tokenize(t, "words") for t in texts], list(range(len(texts))), folder
  # far shift: Wall Street Journal sentences (PTB test, Mikolov's preprocessing: lower-case,
  # no punctuation, numbers as N), grouped to the IMDB test reviews' lengths.
  f = "ptb.test.txt"
  folder = locate.find("ptb", {f: ptb_lib.FILES[f]}, data_dir, verify=verify,
                       urls={f: ptb_lib.URLS[f]})
  with open(folder / f, encoding="utf-8") as fh:
    sentences = [ptb_tokens(line) for line in fh.read().splitlines()]
  lengths = [len(tokenize(t, "words")) for t in read_imdb(imdb_folder, "test")[0]]
  docs, first = ptb_documents(sentences, lengths)
  return docs, first, folder


def ood_inputs(config, name: str) -> tuple[dict, dict]:
  """Out-of-distribution inputs for an IMDB model, preprocessed exactly as the IMDB test set
  (``imdb_inputs``): the ``"words"`` tokens, the IMDB vocabulary of ``config.data``
  (``imdb_vocab``: the same training reviews, num_words, valid_fraction and shuffle_seed),
  ``OOV`` for other words, ``START``, cut or left-padded to ``data.maxlen`` with
  ``data.truncating``; ``data.max_test > 0`` keeps only the first that many, as for test.

  ``name``: ``"scaledata"``, the Pang & Lee reviews, one input per review (a near shift:
  the same genre, other writers and years); ``"ptb"``, the PTB test sentences grouped into
  pseudo-documents of IMDB review lengths (a far shift; ``ptb_documents`` says why grouped).

  Returns ``({"x": int32 [N, maxlen], "source": int32 [N]}, info)``; ``source`` is the
  index of the review (scaledata, reader order) or of the first sentence (ptb test line);
  ``info`` has the counts, mean length (with ``START``), the share of inputs cut to
  ``maxlen``, the share of ``OOV`` tokens and the folder.
  """
  if name not in OOD_SETS:
    raise UserError(f"unknown OOD set {name!r}; use one of {', '.join(OOD_SETS)}")
  if config.task != "imdb":
    raise UserError(f"OOD inputs use the IMDB vocabulary: task must be imdb, got {config.task!r}")
  d = config.data
  imdb_folder = locate.find("imdb", IMDB_FILES, config.data_dir or None,
                            verify=config.verify_checksums)
  vocab = imdb_vocab(read_imdb(imdb_folder, "train")[0], num_words=d.num_words,
                     valid_fraction=d.valid_fraction, shuffle_seed=d.shuffle_seed)
  docs, source, folder = _ood_documents(name, config, imdb_folder)
  if d.get("max_test", 0):
    docs, source = docs[:d.max_test], source[:d.max_test]
  lengths = np.asarray([len(doc) + 1 for doc in docs])
  tokens = sum(len(doc) for doc in docs)
  info = {"ood": name, "documents": len(docs),
          "mean_tokens": float(np.mean(lengths)) if len(docs) else 0.0,
          "truncated_fraction": float(np.mean(lengths > d.maxlen)) if len(docs) else 0.0,
          "oov_fraction": sum(w not in vocab for doc in docs for w in doc) / max(tokens, 1),
          "folder": str(folder)}
  return {"x": imdb_inputs(docs, vocab, d.maxlen, d.truncating),
          "source": np.asarray(source, np.int32)}, info
