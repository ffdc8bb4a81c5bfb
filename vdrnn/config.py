"""Config defaults shared by the configs in ``configs/``, and config validation.

Each file in ``configs/`` starts from ``lm_base()`` (or ``seq_base()``) and sets the
paper's values, each commented with its source (``configs/PAPER.md``). A config file's
``get_config(arg)`` takes the text after the colon in ``--config file.py:arg``; ``parse_arg``
splits it into known options.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Optional, Sequence

import jax.numpy as jnp
import ml_collections

from vdrnn import masks, rnn
from vdrnn.errors import UserError


def parse_arg(arg: Optional[str], name: str, choices: Sequence[str], default: str,
              flags: Sequence[str] = ()) -> tuple[str, set]:
  """``"naive,paper"`` -> ``("naive", {"paper"})``: one of ``choices`` (else ``default``) and
  the ``flags`` present; anything else is a ValueError naming the config file ``name``."""
  opts = [a for a in (arg or "").split(",") if a]
  unknown = [a for a in opts if a not in choices and a not in flags]
  picked = [a for a in opts if a in choices]
  if unknown or len(picked) > 1:
    usage = "|".join(choices) + "".join(f"[,{f}]" for f in flags)
    raise ValueError(f"{name}: unknown arg {arg!r}; use {usage}")
  return (picked[0] if picked else default), {a for a in opts if a in flags}


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """``path/to/config.py[:arg]`` -> what its ``get_config(arg)`` returns (for tools that
  take a config outside absl flags; the entry points use ``config_flags``). A relative
  path is looked up from the current directory, then from the repository root."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, path)
  if not os.path.isfile(path):
    raise UserError(f"config file {spec.partition(':')[0]!r} not found")
  module_spec = importlib.util.spec_from_file_location("_vdrnn_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """A training run's config, from ``<workdir>/config.json``.

  A field the file lacks (the run was written before the field existed) takes its default
  (``with_defaults``), so an older run is evaluated as it was trained."""
  if not os.path.isdir(workdir):
    raise UserError(f"workdir {workdir} does not exist")
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise UserError(f"{path} not found; is {workdir} a training workdir?")
  with open(path) as f:
    return ml_collections.ConfigDict(with_defaults(json.load(f)))


def with_defaults(saved: dict) -> dict:
  """A config an older run saved (its ``config.json``, a checkpoint's metadata) with every
  field it lacks, at any depth, from its task's base config (``lm_base`` or ``seq_base``):
  each field added since defaults to the behaviour before it. The saved values are kept."""
  base = lm_base() if saved.get("task", "ptb") == "ptb" else seq_base()
  return _fill(saved, json.loads(base.to_json()))


def _fill(saved: dict, base: dict) -> dict:
  out = dict(saved)
  for k, v in base.items():
    if k not in out:
      out[k] = v
    elif isinstance(v, dict) and isinstance(out[k], dict):
      out[k] = _fill(out[k], v)
  return out


def compute_dtype(config):
  """The matmul operand dtype of ``train.compute_dtype`` (None: float32, no casts)."""
  name = config.train.compute_dtype
  return None if name == "float32" else jnp.dtype(name)


def lm_base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "ptb"
  c.seed = 0
  c.data_dir = ""            # see vdrnn/data/locate.py for the search order
  c.verify_checksums = True  # False: accept a corpus of your own under ptb/
  c.data_limit = 0           # >0: keep only the first data_limit tokens of each split (smoke runs)

  c.model = ml_collections.ConfigDict()
  c.model.vocab_size = 10000
  c.model.emb_dim = 200
  c.model.hidden = 200
  c.model.num_layers = 2
  c.model.init_scale = 0.1
  c.model.tie_embeddings = False   # Press & Wolf 2016 (an extra; not in the paper)
  c.model.lua_biases = False       # True: two biases per LSTM gate, as the Lua code's i2h/h2h
  c.model.scheme = "none"          # variational | naive | none
  c.model.tied_gates = False       # variational: one mask for all gates (True) or one per gate
  c.model.p_emb = 0.0              # word-type embedding dropout (dropout_x)
  c.model.p_x = 0.0  # LSTM-input dropout, every layer (dropout_i); naive: all non-recurrent
  c.model.p_h = 0.0                # recurrent dropout (dropout_h)
  c.model.p_out = 0.0              # dropout before the softmax (dropout_o)
  c.model.emb_shared_across_batch = False  # AWD-LSTM embedding dropout: one draw per type per batch
  # Beyond the paper, with any scheme (vdrnn/rnn.py lstm):
  c.model.p_weight_drop = 0.0  # AWD-LSTM weight drop: DropConnect on W_h, one mask per batch
  c.model.zoneout_c = 0.0      # zoneout (Krueger et al. 2016): P(a cell unit keeps its old value)
  c.model.zoneout_h = 0.0      # ... and a hidden unit (their PTB setting: 0.5 and 0.05)
  # Concrete dropout (Gal, Hron & Kendall 2017): learn p_emb, p_out and each layer's p_x, p_h
  # (variational scheme; the rates above are the initial values, each in (0, 1))
  c.model.concrete = False
  c.model.concrete_temperature = 0.1   # the paper's relaxation temperature
  c.model.concrete_length_scale = 0.1  # prior length-scale l of the KL's weight term (our choice)

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 20
  c.train.seq_length = 20
  c.train.num_epochs = 13
  c.train.lr = 1.0
  c.train.max_epoch = 4      # lr constant for epochs 1..max_epoch+1, then / lr_decay per epoch
  c.train.lr_decay = 2.0
  c.train.max_grad_norm = 5.0
  c.train.weight_decay = 0.0  # params -= weight_decay * params after each SGD step
  c.train.checkpoint_every_steps = 500  # plus one at every epoch end
  c.train.log_every_steps = 50
  c.train.unroll = 1          # lax.scan unroll
  c.train.rnn_impl = "scan"   # or pallas: the fused recurrent kernel (vdrnn/pallas_lstm.py; GPU)
  c.train.compute_dtype = "float32"  # or bfloat16 (matmul operands; fp32 accumulation)
  c.train.progress = True

  c.eval = ml_collections.ConfigDict()
  c.eval.seq_length = 35       # window for the deterministic valid/test passes (state carried)
  c.eval.mc_samples = 0        # >0: MC-dropout test at the end of training
  c.eval.mc_chunk = 250  # samples evaluated together (bounds memory: ~0.6 GB at medium shapes)
  c.eval.mc_emb_dropout = False  # released code: embedding dropout off in MC evaluation
  c.eval.temperature = 1.0     # Melis et al. 2018: softmax temperature at evaluation
  c.eval.rate_multiplier = 1.0  # Melis et al. 2018: multiply every dropout rate at evaluation
  # How MC samples are averaged (all three are reported, from one pass): arithmetic (the
  # paper's: the mean of the probabilities) | geometric | power (exponent mc_power); the last two
  # renormalised over the vocabulary (Melis et al. 2018)
  c.eval.mc_mean = "arithmetic"
  c.eval.mc_power = 0.5        # our choice, between geometric (-> 0) and arithmetic (1)
  c.eval.seed = 1

  # Population training (vdrnn/population.py): one value per member for any of these fields,
  # e.g. --config.population.p_h=0,0.1,0.2,0.3 (a tuple). Fields left empty take the model's
  # value (the config's seed).
  c.population = ml_collections.ConfigDict()
  for name in ("p_emb", "p_x", "p_h", "p_out", "seed"):
    c.population[name] = ()
  return c


SEQ_CHOICES = {"gate_act": rnn.GATE_ACTS, "candidate_act": rnn.CANDIDATE_ACTS,
               "dropout_scaling": ("inverted", "keras0"), "init": ("fused", "per_gate")}


def validate_rates(model, prefix: str = "model") -> None:
  """The scheme, the rates and (sequence models) the released-semantics switches."""
  if model.scheme not in masks.SCHEMES:
    raise UserError(f"{prefix}.scheme must be one of {masks.SCHEMES}, got {model.scheme!r}")
  for name in masks.RATE_FIELDS:
    check = masks.check_zoneout if name in masks.ZONEOUT_FIELDS else masks.check_rate
    try:
      if name in model:
        check(model[name], f"{prefix}.{name}")
    except ValueError as e:
      raise UserError(str(e)) from None
  for name, choices in SEQ_CHOICES.items():
    if name in model and model[name] not in choices:
      raise UserError(f"{prefix}.{name} must be one of {choices}, got {model[name]!r}")
  scale = model.get("ortho_scale", 1.0)
  if not (isinstance(scale, (int, float)) and scale > 0):
    raise UserError(f"{prefix}.ortho_scale must be a positive number, got {scale!r}")


def seq_base() -> ml_collections.ConfigDict:
  """Defaults for the sentiment tasks (``vdrnn/sentiment.py``): Pang & Lee regression
  (``task="sentiment"``) and IMDB classification (``task="imdb"``). Values are those of
  Sentiment_analysis_code/sentiment_lstm_regression.py (configs/PAPER.md)."""
  c = ml_collections.ConfigDict()
  c.task = "sentiment"
  c.seed = 0
  c.data_dir = ""            # see vdrnn/data/locate.py for the search order
  c.verify_checksums = True  # False: accept data of your own under scaledata/ or imdb/

  c.data = ml_collections.ConfigDict()
  # vocabulary: the most frequent words; ids offset by 3 (0 pad, 1 start, 2 OOV)
  c.data.num_words = 20000
  c.data.maxlen = 200          # segment length (sentiment) / cut-or-pad length (imdb)
  # sentiment: review (no review in two splits) | paper (the released split)
  c.data.split = "review"
  c.data.test_fraction = 0.2   # 80/20 train/test
  # of the training reviews, held out to pick the best checkpoint (0: none)
  c.data.valid_fraction = 0.1
  c.data.shuffle_seed = 0      # np.random.seed(0); np.random.shuffle
  # sentiment: whitespace | fork (the released script's split on " " of each line with its
  # newline: every review ends in a "\n" token; vdrnn/data/sentiment.py)
  c.data.tokens = "whitespace"
  # imdb: keep the last maxlen tokens (Keras pad_sequences) | post: the first
  c.data.truncating = "pre"
  c.data.max_train = 0         # >0: keep only the first max_train training examples (smoke runs)
  c.data.max_test = 0          # >0: likewise for test

  c.model = ml_collections.ConfigDict()
  c.model.vocab_size = 20003   # num_words + 3
  c.model.emb_dim = 128
  c.model.hidden = 128
  c.model.cell = "lstm"        # lstm | gru
  c.model.out_dim = 1          # 1: regression; 2: two-class softmax
  c.model.scheme = "variational"
  c.model.tied_gates = False   # Keras (Gal's dropout_W / dropout_U): one mask per gate
  c.model.p_emb = 0.5          # p_emb: word-type dropout of the embedding
  c.model.p_x = 0.5            # p_W: RNN-input dropout
  c.model.p_h = 0.5            # p_U: recurrent dropout
  c.model.p_out = 0.5          # p_dense: dropout before the dense layer
  # Keras Embedding(dropout=p): one mask over the vocabulary per batch
  c.model.emb_shared_across_batch = True
  # Semantics of the released code's Keras 0.x fork (github.com/yaringal/keras, branch
  # BayesianRNN, used by Sentiment_analysis_code/*.py). The defaults are the modern ones
  # (Keras 2 and later, what vdrnn's README compares against); ``released`` in
  # configs/sentiment_{lstm,gru}.py switches them all.
  # naive: a fresh mask per step *and gate* (the fork's NaiveDropoutLSTM/GRU draw B_W, B_U so)
  c.model.naive_per_gate = False
  # sigmoid | hard_sigmoid (the fork's inner_activation: clip(0.2 x + 0.5, 0, 1))
  c.model.gate_act = "sigmoid"
  c.model.candidate_act = "tanh"   # GRU candidate: tanh | sigmoid (the fork's GRU default)
  # inverted | keras0 (the fork: 0/1 masks while training, x keep probability at test)
  c.model.dropout_scaling = "inverted"
  # fused: Glorot / orthogonal over all gates' kernels (Keras 2+, Flax OptimizedLSTMCell);
  # per_gate: each gate's block on its own (the Keras 0.x fork; vdrnn/models.py init_seq)
  c.model.init = "fused"
  c.model.ortho_scale = 1.0        # orthogonal recurrent init gain (the fork: scale=1.1)
  # True: padded steps leave the state unchanged; False: the RNN runs over the left padding
  # (the fork: pad id 0 has a trained, dropped-out embedding, a noisy initial state)
  c.model.skip_padding = True

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 128
  c.train.num_epochs = 250
  c.train.lr = 1e-3  # Keras 'adam' defaults: lr 0.001, beta_1 0.9, beta_2 0.999, epsilon 1e-8
  c.train.b1 = 0.9
  c.train.b2 = 0.999
  c.train.eps = 1e-8
  c.train.weight_decay = 1e-6  # Keras l2(1e-6) on every weight: 1e-6 * sum(w^2) added to the loss
  # "all": every weight once; "fork": the Keras 0.x fork's slip (configs/PAPER.md), only the
  # recurrent layer's last gate block (G times), the embedding and the dense layer
  c.train.weight_decay_scope = "all"
  c.train.max_grad_norm = 0.0  # >0: clip the global gradient norm (the released code does not)
  # >0: also checkpoint within an epoch (always at every epoch end)
  c.train.checkpoint_every_steps = 0
  c.train.log_every_steps = 10
  c.train.unroll = 1           # lax.scan unroll
  c.train.compute_dtype = "float32"  # or bfloat16 (matmul operands; fp32 accumulation)
  c.train.progress = True

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 256      # rows per evaluation batch (the released code: 500)
  c.eval.mc_samples = 50       # MC-dropout samples at the end (the script's T = 50)
  c.eval.mc_chunk = 5          # samples evaluated together (bounds memory)
  # >0: also MC-evaluate the test set every that many epochs (ModelTest: 1, T = 10)
  c.eval.mc_every_epochs = 0
  c.eval.tau = 0.1             # model precision in the test log-likelihood (ModelTest(tau=0.1))
  # training examples evaluated (dropout approximation) after every epoch
  c.eval.train_examples = 1000
  c.eval.ece_bins = 15         # classification: equal-width confidence bins
  c.eval.seed = 1
  return c


def sentiment_recipe(cell: str, arg: Optional[str]) -> ml_collections.ConfigDict:
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
  c = seq_base()
  c.task = "sentiment"
  c.model.cell = cell
  c.model.out_dim = 1            # dense 1, MSE on standardised ratings
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
    seq_tiny(c)
  return c


def seq_tiny(c) -> ml_collections.ConfigDict:
  """Shrinks a sentiment config to toy size for tests and smoke runs (the tiny corpus in
  tests/data, seconds per run): same semantics, small shapes."""
  c.data.num_words = 40
  c.data.maxlen = 12
  c.model.vocab_size = 43
  c.model.emb_dim = 8
  c.model.hidden = 8
  c.train.batch_size = 8
  c.train.num_epochs = 2
  c.train.lr = 1e-2
  c.train.log_every_steps = 2
  c.train.progress = False
  c.eval.batch_size = 16
  c.eval.mc_samples = 3
  c.eval.mc_chunk = 2
  c.eval.train_examples = 16
  return c
