"""A tiny PTB model for tests and smoke runs: the large recipe's semantics at toy size.

Arg picks the scheme as in ptb_medium (default variational_untied). The data can be cut to
the first ``data_limit`` tokens of each split to keep a run to seconds.
"""

from vdrnn.config import parse_arg
from vdrnn.lm import base_config


def get_config(arg=None):
  arg, _ = parse_arg(arg, "ptb_tiny", ("variational_untied", "variational_tied", "naive", "none"),
                     "variational_untied")
  c = base_config()
  c.model.emb_dim = 16
  c.model.hidden = 16
  c.model.num_layers = 2
  c.model.init_scale = 0.1
  c.train.batch_size = 8
  c.train.seq_length = 10
  c.train.num_epochs = 3
  c.train.max_epoch = 1
  c.train.lr_decay = 1.5
  c.train.max_grad_norm = 5.0
  c.train.weight_decay = 1e-7
  c.train.checkpoint_every_steps = 7
  c.train.log_every_steps = 5
  c.train.progress = False
  c.data_limit = 4000          # tokens kept per split
  c.eval.mc_samples = 0
  c.eval.mc_chunk = 4
  if arg.startswith("variational"):
    c.model.scheme = "variational"
    c.model.tied_gates = arg == "variational_tied"
    c.model.p_emb, c.model.p_x, c.model.p_h, c.model.p_out = 0.3, 0.5, 0.3, 0.5
  elif arg == "naive":
    c.model.scheme = "naive"
    c.model.p_x = c.model.p_out = 0.5
  return c
