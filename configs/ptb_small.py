"""Zaremba et al. 2014 "small" PTB model: no dropout. Reference 120.7 val / 114.5 test
(configs/PAPER.md, Zaremba recipes table). Every gate has the two trained biases of Zaremba's
``main.lua`` (``model.lua_biases``; configs/PAPER.md, details of the released code):
``--config.model.lua_biases=False`` gives one bias per gate (test 116.9 against 115.0 with
two, launch/results/)."""

from vdrnn.config import parse_arg
from vdrnn.lm import base_config


def get_config(arg=None):
  parse_arg(arg, "ptb_small", (), "")
  c = base_config()
  c.model.emb_dim = 200        # Zaremba small: 2 x 200
  c.model.hidden = 200
  c.model.num_layers = 2
  c.model.init_scale = 0.1     # U(-0.1, 0.1)
  c.model.lua_biases = True    # main.lua's i2h and h2h: two trained biases per gate
  c.model.scheme = "none"      # no dropout
  c.train.batch_size = 20
  c.train.seq_length = 20      # unrolled 20 steps
  c.train.num_epochs = 13
  c.train.lr = 1.0
  c.train.max_epoch = 4        # halved after epoch 4 (Lua boundary: epochs 1-5 at lr 1)
  c.train.lr_decay = 2.0
  c.train.max_grad_norm = 5.0
  return c
