"""PTB medium (2 x 650): Zaremba et al. 2014 recipe with the dropout scheme chosen by arg.

  variational_untied (default)  Gal & Ghahramani, untied gates: 81.9 val / 79.7 test, MC 78.6
  variational_tied               tied gates: 81.8 / 79.7, MC 79.0
  naive                          Zaremba et al.: dropout 0.5, non-recurrent: 86.2 / 82.7
  none                           no dropout (over-fits)
(configs/PAPER.md, Table 1.)

Dropout rates: the paper's (arXiv 1512.05287, Sec. 5.1, footnote 3): "Optimal probabilities
are 0.3 and 0.5 respectively for the large model ... and 0.2 and 0.35 respectively for the
medium model", the first tying the embedding with the recurrent rate, the second the input
with the output rate: p_emb = p_h = 0.2, p_x = p_out = 0.35.

Every LSTM gate has the Lua code's two trained biases (``model.lua_biases``, the i2h and h2h
``nn.Linear`` layers of LM_code/*.lua); ``--config.model.lua_biases=False`` gives one bias.
"""

from vdrnn.config import parse_arg
from vdrnn.lm import base_config


def get_config(arg=None):
  arg, _ = parse_arg(arg, "ptb_medium", ("variational_untied", "variational_tied", "naive", "none"),
                     "variational_untied")
  c = base_config()
  c.model.emb_dim = 650        # Zaremba medium: 2 x 650
  c.model.hidden = 650
  c.model.num_layers = 2
  c.model.init_scale = 0.05    # U(-0.05, 0.05)
  c.model.lua_biases = True    # Lua i2h and h2h: two trained biases per gate
  c.train.batch_size = 20
  c.train.seq_length = 35
  c.train.num_epochs = 39
  c.train.lr = 1.0
  c.train.max_epoch = 6        # / 1.2 every epoch after epoch 6 (Lua boundary)
  c.train.lr_decay = 1.2
  c.train.max_grad_norm = 5.0
  if arg.startswith("variational"):
    c.model.scheme = "variational"
    c.model.tied_gates = arg == "variational_tied"
    c.model.p_emb = 0.2        # the paper's medium rate, tied with p_h (footnote 3)
    c.model.p_h = 0.2
    c.model.p_x = 0.35         # the paper's medium rate, tied with p_out (footnote 3)
    c.model.p_out = 0.35
    c.eval.mc_samples = 1000   # the paper's MC test: 1000 samples
  elif arg == "naive":
    c.model.scheme = "naive"
    c.model.p_x = 0.5          # Zaremba medium: 50% dropout on non-recurrent connections
    c.model.p_out = 0.5
  return c
