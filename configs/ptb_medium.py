"""PTB medium (2 x 650): Zaremba et al. 2014 recipe with the dropout scheme chosen by arg.

  variational_untied (default)  Gal & Ghahramani, untied gates: 81.9 val / 79.7 test, MC 78.6
  variational_tied               tied gates: 81.8 / 79.7, MC 79.0
  naive                          Zaremba et al.: dropout 0.5, non-recurrent: 86.2 / 82.7
  none                           no dropout (over-fits)
(configs/PAPER.md, Table 1.)

The paper grid-searched the medium rates (embedding tied with recurrent, input with output)
without publishing the chosen values. Our defaults p_emb = p_h = 0.2, p_x = p_out = 0.5 are
a point on that tied grid chosen by us: the large recipe's input/output rate (0.5) and a
lower embedding/recurrent rate than its 0.3 for the smaller model. They are a documented
choice, not a published value; sweep them with launch/sweep.py.
"""

from vdrnn.config import lm_base, parse_arg


def get_config(arg=None):
  arg, _ = parse_arg(arg, "ptb_medium", ("variational_untied", "variational_tied", "naive", "none"),
                     "variational_untied")
  c = lm_base()
  c.model.emb_dim = 650        # Zaremba medium: 2 x 650
  c.model.hidden = 650
  c.model.num_layers = 2
  c.model.init_scale = 0.05    # U(-0.05, 0.05)
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
    c.model.p_emb = 0.2        # grid point, tied with p_h (see docstring)
    c.model.p_h = 0.2
    c.model.p_x = 0.5          # grid point, tied with p_out
    c.model.p_out = 0.5
    c.eval.mc_samples = 1000   # the paper's MC test: 1000 samples
  elif arg == "naive":
    c.model.scheme = "naive"
    c.model.p_x = 0.5          # Zaremba medium: 50% dropout on non-recurrent connections
    c.model.p_out = 0.5
  return c
