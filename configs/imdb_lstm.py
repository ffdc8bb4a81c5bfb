"""IMDB sentiment classification with an LSTM (Maas et al. 2011 data, standard 25k/25k
split). The paper reports no IMDB numbers; the model is the sentiment model of the paper
with a two-class softmax, and ``keras`` is Keras's examples/imdb_lstm.py (configs/PAPER.md).

Arg: comma-separated. ``variational`` (default; the paper's sentiment rates), ``naive``,
``none``, or ``keras``: embedding 128 -> LSTM 128 with dropout 0.2 and recurrent_dropout 0.2
(per-sequence masks, one per gate: Keras's LSTM is variational), 20k words, maxlen 80,
batch 32, 15 epochs, and all 25k training reviews (``data.valid_fraction=0``): the example's
``validation_data`` is the test set, reported here every epoch too, while the best checkpoint
is picked on training examples, never on test. The other args hold out 10% of the training
reviews (``data.valid_fraction``, seeded by ``data.shuffle_seed``) to pick the checkpoint, so
the test set is used for nothing but the reported numbers (and temperature scaling is
fitted on the held-out reviews). ``tiny`` shrinks the shapes for tests and smoke runs
(tests/data).

A deep ensemble of five, trained as one vmapped population (``vdrnn.population``):
``python -m vdrnn.train --config configs/imdb_lstm.py:none --config.population.seed=0,1,2,3,4``
(``python -m launch.reproduce --only imdb_lstm_none_ensemble``).
"""

from vdrnn.config import parse_arg
from vdrnn.imdb import base_config
from vdrnn.seq_task import tiny

ARGS = ("variational", "naive", "none", "keras")


def get_config(arg=None):
  scheme, opts = parse_arg(arg, "imdb_lstm", ARGS, "variational", flags=("tiny",))
  c = base_config()
  c.data.num_words = 20000       # 20,000 most frequent training words (Keras max_features = 20000)
  c.data.maxlen = 200            # cut / left-pad to 200 tokens (issue default; Keras example: 80)
  c.data.truncating = "pre"      # keep the last maxlen tokens (Keras pad_sequences default)
  c.data.valid_fraction = 0.1    # 2,500 training reviews held out to pick the best checkpoint
                                 # (the vocabulary is fitted without them; 0: none, as keras)
  c.model.vocab_size = 20003
  c.model.cell = "lstm"
  c.model.out_dim = 2            # dense 2, softmax cross-entropy
  c.model.emb_dim = 128          # embedding 128
  c.model.hidden = 128           # LSTM 128
  c.train.batch_size = 128       # the paper's sentiment batch
  c.train.num_epochs = 15        # Keras imdb_lstm: 15 epochs (no paper value)
  c.train.weight_decay = 1e-6    # the paper's sentiment L2
  c.eval.test_every_epoch = False  # the test set once, at the end (validation watches training)
  c.eval.checkpoint = "best"     # ... of the epoch with the lowest validation NLL
  c.model.scheme = "variational" if scheme == "keras" else scheme
  if scheme == "variational":    # the paper's sentiment rates p_emb = p_W = p_U = p_dense = 0.5
    c.model.p_emb, c.model.p_x, c.model.p_h, c.model.p_out = 0.5, 0.5, 0.5, 0.5
  elif scheme == "naive":        # fresh mask per step on the LSTM input and before the dense layer
    c.model.p_emb, c.model.p_x, c.model.p_h, c.model.p_out = 0.0, 0.5, 0.0, 0.5
  elif scheme == "none":
    c.model.p_emb = c.model.p_x = c.model.p_h = c.model.p_out = 0.0
  else:                          # Keras examples/imdb_lstm.py
    # dropout=0.2, recurrent_dropout=0.2
    c.model.p_emb, c.model.p_x, c.model.p_h, c.model.p_out = 0.0, 0.2, 0.2, 0.0
    c.data.maxlen = 80           # maxlen = 80
    c.data.valid_fraction = 0.0  # validation_data=(x_test, y_test): all 25k reviews train;
                                 # test reported every epoch, best picked on train examples
    c.train.batch_size = 32      # batch_size = 32
    c.train.num_epochs = 15      # epochs=15
    c.train.weight_decay = 0.0   # no regulariser
    c.eval.test_every_epoch = True  # validation_data is the test set: reported every epoch
    c.eval.checkpoint = "last"   # the model after the last epoch, as the example evaluates it
  if "tiny" in opts:
    tiny(c)
  return c
