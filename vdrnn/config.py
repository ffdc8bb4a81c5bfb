"""What every config shares: reading config files and their arg, the checks of dropout rates
and switches, the compute dtype, and filling a saved config's missing fields.

Each file in ``configs/`` starts from its task's ``base_config()`` (``vdrnn.lm``,
``vdrnn.sentiment``, ``vdrnn.imdb``; ``vdrnn.tasks`` lists them) and sets the paper's values,
each commented with its source (``configs/PAPER.md``). A config file's ``get_config(arg)`` takes
the text after the colon in ``--config file.py:arg``; ``parse_arg`` splits it into known
options.
"""

from __future__ import annotations

import importlib.util
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


def fill_defaults(saved: dict, base: dict) -> dict:
  """``saved`` (a config an older run wrote: its ``config.json``, a checkpoint's metadata) with
  every field it lacks, at any depth, from ``base`` (its task's base config as a dict): each
  field added since defaults to the behaviour before it. The saved values are kept."""
  out = dict(saved)
  for k, v in base.items():
    if k not in out:
      out[k] = v
    elif isinstance(v, dict) and isinstance(out[k], dict):
      out[k] = fill_defaults(out[k], v)
  return out


def get_field(config, dotted: str):
  """``config.a.b`` for ``"a.b"``."""
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def check_positive_ints(config, names: Sequence[str]) -> None:
  """A one-line ``UserError`` for the first field of ``names`` (dotted) below 1."""
  for name in names:
    v = get_field(config, name)
    if int(v) < 1:
      raise UserError(f"{name} must be a positive integer, got {v!r}")


COMPUTE_DTYPES = ("float32", "bfloat16")


def check_compute_dtype(config) -> None:
  name = config.train.compute_dtype
  if name not in COMPUTE_DTYPES:
    raise UserError(f"train.compute_dtype must be float32 or bfloat16, got {name!r}")


def compute_dtype(config):
  """The matmul operand dtype of ``train.compute_dtype`` (None: float32, no casts)."""
  name = config.train.compute_dtype
  return None if name == "float32" else jnp.dtype(name)


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
