"""vdrnn: variational (Bayesian) dropout for LSTMs and GRUs in JAX (Gal & Ghahramani 2016)."""

from vdrnn import masks, models, rnn  # noqa: F401

__version__ = "0.1.0"
