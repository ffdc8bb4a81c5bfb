"""PTB large (2 x 1500). Default: the released variational recipe
(LM_code/main_new_dropout_SOTA_v3.lua): untied gates, 77.9 val / 75.2 test, MC 73.4.

  (default) / untied   Gal & Ghahramani, untied: 77.9 / 75.2, MC 73.4
  tied                 tied gates: 77.3 / 75.0, MC 74.1
  zaremba              Zaremba et al. naive dropout 0.65: 82.2 / 78.4
(configs/PAPER.md, Table 1 and "The released large variational recipe".)

Every LSTM gate has the Lua code's two trained biases (``model.lua_biases``: i2h and h2h);
``--config.model.lua_biases=False`` gives one bias.
"""

from vdrnn.config import parse_arg
from vdrnn.lm import base_config


def get_config(arg=None):
  arg, _ = parse_arg(arg, "ptb_large", ("untied", "tied", "zaremba"), "untied")
  c = base_config()
  c.model.emb_dim = 1500       # 2 x 1500
  c.model.hidden = 1500
  c.model.num_layers = 2
  c.model.init_scale = 0.04    # U(-0.04, 0.04)
  c.model.lua_biases = True    # Lua i2h and h2h: two trained biases per gate
  c.train.batch_size = 20
  c.train.seq_length = 35
  c.train.num_epochs = 55
  c.train.lr = 1.0
  c.train.max_grad_norm = 10.0
  if arg in ("untied", "tied"):
    c.model.scheme = "variational"
    c.model.tied_gates = arg == "tied"
    c.model.p_emb = 0.3        # dropout_x, word types
    c.model.p_x = 0.5          # dropout_i, every layer's input
    c.model.p_h = 0.3          # dropout_h
    c.model.p_out = 0.5        # dropout_o
    c.train.max_epoch = 10     # after finishing epoch k > 10, lr /= 1.15
    c.train.lr_decay = 1.15
    c.train.weight_decay = 1e-7  # params -= 1e-7 * params after every step
    c.eval.mc_samples = 1000   # the paper's MC test: 1000 samples
  else:                        # zaremba
    c.model.scheme = "naive"
    c.model.p_x = 0.65         # Zaremba large: 65% non-recurrent dropout
    c.model.p_out = 0.65
    c.train.max_epoch = 14     # / 1.15 every epoch after epoch 14
    c.train.lr_decay = 1.15
  return c
