"""Flax front end: variational LSTM / GRU layers for Flax NNX (and Linen) models.

The layers are thin wrappers around the functional core: parameters are Flax variables in
the core's layout, a call draws its masks with ``vdrnn.masks`` and runs ``vdrnn.rnn.lstm`` /
``vdrnn.rnn.gru`` (hoisted input projection, hand-written backward passes). So a Flax
model gets Gal & Ghahramani's variational dropout in one line::

  from flax import nnx
  from vdrnn import nn as vnn

  lstm = vnn.VariationalLSTM(128, 256, rate_x=0.25, rate_h=0.25, rngs=nnx.Rngs(0))
  ys = lstm(xs)                    # xs [B, T, 128] -> ys [B, T, 256], one key from 'dropout'
  lstm.eval(); ys = lstm(xs)       # the dropout approximation (no masks)

Randomness. A call in training mode takes **one** key from its rng stream (the
``rng_collection`` stream, ``'dropout'`` by default, of the ``rngs`` given at construction
or at call time; a call may also pass a key) and derives every mask from it: the masks
are those that ``vdrnn.masks.sample_masks`` draws for a one-layer model from that key.
Row ``b`` of a batch uses ``fold_in(., b)``, so a row's masks depend only on the key and the
row index: not on the batch size, nor on how the batch is sharded. Masks are held fixed
over the sequence (input mask ``[B, D]`` and recurrent mask ``[B, H]`` with ``tied_gates``;
one per gate, ``[G, B, D]`` / ``[G, B, H]``, without). ``deterministic=True`` (or
``model.eval()`` / ``nnx.view(model, deterministic=True)``) is the dropout approximation;
MC dropout is ``nnx.vmap`` over split keys (see ``vdrnn/examples/flax_sentiment.py``).

Layers:

* ``VariationalLSTM`` / ``VariationalGRU`` (NNX) and their Linen twins
  ``VariationalLSTMLinen`` / ``VariationalGRULinen`` (fields like ``linen.Dropout``'s;
  ``make_rng`` once per call).
* ``WordTypeDropout``: Gal's embedding dropout (drop word types, per row or per batch).
* ``LockedDropout``: one mask per sequence, held over time (per-row keys).

Parameters (``nnx.Param`` / Linen ``params``): ``w_x [D, G*H]``, ``w_h [H, G*H]``, ``b [G*H]``,
gate order (i, f, g, o) for the LSTM and (z, r, n) for the GRU. For the LSTM these are
exactly ``nnx.OptimizedLSTMCell``'s ``dense_i.kernel``, ``dense_h.kernel`` and
``dense_h.bias`` (``VariationalLSTM.from_cell`` / ``to_cell`` convert losslessly), and the
default initialisers are the cell's, drawn in the same order: the same ``rngs`` give the
same parameters. (Flax's ``GRUCell`` applies the reset gate after the ``h`` matmul and has
a second bias; the GRU here is Keras's / Gal's, reset before ``W_hn``, so it has no
``from_cell``.)

Layouts: batch-major ``[B, T, D]`` by default like ``nnx.RNN``; ``time_major=True`` for
``[T, B, D]`` (the core's layout; no transposes). Padding: ``seq_lengths [B]`` (right
padding) or a validity mask ``valid`` (``[B, T]``, or ``[T, B]`` when time-major; any
padding side). At a step that is not valid the state is left unchanged and the output is
the previous ``h``, so the final carry is the state after the last valid step.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from flax import linen, nnx

from vdrnn import masks as masks_lib
from vdrnn import rnn

Array = jax.Array
Initializer = Callable[..., Array]

_NO_DETERMINISTIC = ("no `deterministic` was given to {name}: pass deterministic=True/False to its "
                     "constructor or call, or use model.train() / model.eval()")


# ----------------------------------------------------------------------------------------
# Shared helpers.


def rnn_masks(key: Array, batch: int, steps: int, in_features: int, hidden_features: int,
              n_gates: int, *, rate_x: Any, rate_h: Any, tied_gates: bool,
              weight_drop: Any = 0.0, zoneout_c: Any = 0.0, zoneout_h: Any = 0.0) -> dict:
  """Every mask of one recurrent layer from one key: ``{"x", "h"}`` ``[B, D]`` / ``[B, H]``
  (tied) or ``[G, B, D]`` / ``[G, B, H]`` (untied), ``"w_h"`` ``[H, G*H]`` (weight drop) and
  ``"zone_c"``, ``"zone_h"`` ``[T, B, H]`` (zoneout); ``None`` for a rate of exactly 0.

  These are the masks ``vdrnn.masks.sample_masks(key, ...)`` draws for a one-layer model
  (its ``[0]`` entries), so a layer and the functional core agree for the same key.

  Args:
    key: PRNG key.
    batch: B, the number of rows.
    steps: T, the number of time steps (the zoneout masks' length).
    in_features: D, the input features.
    hidden_features: H, the hidden units.
    n_gates: G (4 for the LSTM, 3 for the GRU).
    rate_x: drop probability of the input ``x_t``.
    rate_h: drop probability of the recurrent state ``h_{t-1}``.
    tied_gates: one mask shared by the gates (``[B, .]``) or one per gate (``[G, B, .]``).
    weight_drop: drop probability of ``W_h``'s entries (DropConnect).
    zoneout_c, zoneout_h: zoneout probabilities of the LSTM's cell and hidden state.
  Returns:
    ``{"x", "h", "w_h", "zone_c", "zone_h"}`` with the shapes above.
  """
  rates = {"emb": 0.0, "x": rate_x, "h": rate_h, "out": 0.0, "weight": weight_drop,
           "zone_c": zoneout_c, "zone_h": zoneout_h}
  placeholder = jnp.zeros((batch, steps), jnp.int32)  # its shape only (no embedding mask)
  m = masks_lib.sample_masks(key, rates, placeholder, scheme="variational", tied=tied_gates,
                             layers=[(in_features, hidden_features)], n_gates=n_gates)
  return {k: m[k][0] for k in ("x", "h", "w_h", "zone_c", "zone_h")}


def valid_steps(T: int, B: int, seq_lengths: Optional[Array], valid: Optional[Array],
                time_major: bool) -> Optional[Array]:
  """The core's ``valid [T, B]`` from ``seq_lengths [B]`` (right padding: step ``t`` of row
  ``b`` is valid when ``t < seq_lengths[b]``) or a validity mask (``[B, T]``; ``[T, B]`` when
  time-major); None when neither is given.

  Args:
    T: time steps.
    B: batch rows.
    seq_lengths: None or ``[B]`` ints (right padding).
    valid: None or a validity mask, ``[B, T]`` (``[T, B]`` when ``time_major``). Giving both
      raises ValueError, as does a wrong shape.
    time_major: the layout of ``valid``.
  Returns:
    ``[T, B]`` bool, or None.
  """
  if seq_lengths is not None and valid is not None:
    raise ValueError("pass seq_lengths or valid, not both")
  if seq_lengths is not None:
    seq_lengths = jnp.asarray(seq_lengths)
    if seq_lengths.shape != (B,):
      raise ValueError(f"seq_lengths must have shape [B] = {[B]}, got {list(seq_lengths.shape)}")
    return jnp.arange(T)[:, None] < seq_lengths[None, :]
  if valid is None:
    return None
  valid = jnp.asarray(valid)
  want = (T, B) if time_major else (B, T)
  if valid.shape != want:
    name = "[T, B]" if time_major else "[B, T]"
    raise ValueError(f"valid must have shape {name} = {list(want)}, got {list(valid.shape)}")
  return valid.astype(bool) if time_major else valid.astype(bool).T


def _constant(value: Array) -> Initializer:
  """An initializer that returns ``value`` (cast to the requested dtype)."""
  def init(key, shape, dtype=jnp.float32):
    del key
    if tuple(shape) != tuple(value.shape):
      raise ValueError(f"shape {list(shape)} requested, the value has {list(value.shape)}")
    return jnp.asarray(value, dtype)
  return init


class _RandomLayer(nnx.Module):
  """Resolution of ``deterministic`` and of the key source, as in ``nnx.Dropout``. Subclasses
  set ``deterministic`` and ``rng_collection`` and call ``_init_rngs``; ``rates`` (all drop
  probabilities) is ``(self.rate,)`` unless overridden."""

  def _init_rngs(self, rngs) -> None:
    if isinstance(rngs, nnx.Rngs):
      try:
        self.rngs = rngs[self.rng_collection].fork()
      except KeyError:  # neither that stream nor a default one: keys come with each call
        self.rngs = nnx.data(None)
    elif isinstance(rngs, nnx.RngStream):
      self.rngs = rngs.fork()
    elif rngs is None:
      self.rngs = nnx.data(None)
    else:
      raise TypeError(f"rngs must be an nnx.Rngs, an nnx.RngStream or None, "
                      f"got {type(rngs).__name__}")

  def _key(self, deterministic: Optional[bool], rngs) -> Optional[Array]:
    """The call's one dropout key, or None (deterministic, or every rate exactly 0)."""
    if deterministic is None:
      deterministic = self.deterministic
    if deterministic is None:
      raise ValueError(_NO_DETERMINISTIC.format(name=type(self).__name__))
    if deterministic or all(masks_lib.is_zero(r) for r in self.rates):
      return None
    rngs = self.rngs if rngs is None else rngs
    if rngs is None:
      raise ValueError(f"{type(self).__name__} is not deterministic but has no rngs: pass "
                       f"rngs=nnx.Rngs(...) (with a {self.rng_collection!r} or default stream) "
                       f"to its constructor or call")
    if isinstance(rngs, nnx.Rngs):
      return rngs[self.rng_collection]()
    if isinstance(rngs, nnx.RngStream):
      return rngs()
    if isinstance(rngs, jax.Array):
      typed = jnp.issubdtype(rngs.dtype, jax.dtypes.prng_key)
      return rngs if typed else jax.random.wrap_key_data(rngs)
    raise TypeError(f"rngs must be an nnx.Rngs, an nnx.RngStream or a key, "
                    f"got {type(rngs).__name__}")

  @property
  def rates(self) -> tuple:
    """The layer's drop probabilities: ``(rate,)``."""
    return (self.rate,)

  def set_view(self, deterministic: Optional[bool] = None):
    """``nnx.view`` hook.

    Args:
      deterministic: True for the dropout approximation, False for sampled masks; None leaves
        the stored value unchanged.
    Returns:
      None (sets ``self.deterministic`` in place).
    """
    if deterministic is not None:
      self.deterministic = deterministic


# ----------------------------------------------------------------------------------------
# NNX recurrent layers.


class _VariationalRNN(_RandomLayer):
  n_gates = 0  # set by the subclass

  def __init__(self, in_features: int, hidden_features: int, *, rate_x: float = 0.0,
               rate_h: float = 0.0, tied_gates: bool = False, weight_drop: float = 0.0,
               zoneout_c: float = 0.0, zoneout_h: float = 0.0, unroll: int = 1, compute_dtype=None,
               time_major: bool = False, return_carry: bool = False,
               deterministic: Optional[bool] = False, rng_collection: str = "dropout",
               kernel_init: Initializer = nnx.initializers.lecun_normal(),
               recurrent_kernel_init: Initializer = nnx.initializers.orthogonal(),
               bias_init: Initializer = nnx.initializers.zeros_init(), param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    G = self.n_gates
    self.in_features, self.hidden_features = in_features, hidden_features
    self.rate_x = masks_lib.check_rate(rate_x, "rate_x")
    self.rate_h = masks_lib.check_rate(rate_h, "rate_h")
    self.weight_drop = masks_lib.check_rate(weight_drop, "weight_drop")
    self.zoneout_c = masks_lib.check_zoneout(zoneout_c, "zoneout_c")
    self.zoneout_h = masks_lib.check_zoneout(zoneout_h, "zoneout_h")
    if G != 4 and not (masks_lib.is_zero(zoneout_c) and masks_lib.is_zero(zoneout_h)):
      raise ValueError("zoneout is the LSTM's (Krueger et al.'s cell and hidden state); the GRU "
                       "takes weight_drop only")
    self.tied_gates, self.unroll, self.compute_dtype = tied_gates, unroll, compute_dtype
    self.time_major, self.return_carry = time_major, return_carry
    self.deterministic, self.rng_collection = deterministic, rng_collection
    # The same draws, in the same order, as nnx.OptimizedLSTMCell's dense_i / dense_h.
    D, H = in_features, hidden_features
    self.w_x = nnx.Param(kernel_init(rngs.params(), (D, G * H), param_dtype))
    self.w_h = nnx.Param(recurrent_kernel_init(rngs.params(), (H, G * H), param_dtype))
    self.b = nnx.Param(bias_init(rngs.params(), (G * H,), param_dtype))
    self._init_rngs(rngs)

  @property
  def rates(self) -> tuple:
    """The layer's rates: ``(rate_x, rate_h, weight_drop, zoneout_c, zoneout_h)``."""
    return (self.rate_x, self.rate_h, self.weight_drop, self.zoneout_c, self.zoneout_h)

  def params(self) -> dict:
    """The core's parameter dict ``{"w_x", "w_h", "b"}`` (the variables' current arrays).

    Returns:
      ``{"w_x": [D, G*H], "w_h": [H, G*H], "b": [G*H]}``, the argument ``rnn.lstm`` /
      ``rnn.gru`` take.
    """
    return {"w_x": self.w_x[...], "w_h": self.w_h[...], "b": self.b[...]}

  def draw_masks(self, key: Array, batch: int, steps: int = 1) -> dict:
    """The masks (``rnn_masks``) a call with ``key`` uses for ``batch`` rows of ``steps``.

    Args:
      key: PRNG key.
      batch: B, the number of rows.
      steps: T, the number of time steps (only the zoneout masks depend on it).
    Returns:
      ``rnn_masks``' dict: ``"x"`` ``[B, D]`` or ``[G, B, D]``, ``"h"`` ``[B, H]`` or
      ``[G, B, H]``, ``"w_h"`` ``[H, G*H]``, ``"zone_c"``, ``"zone_h"`` ``[T, B, H]``; ``None``
      for a rate of exactly 0.
    """
    return rnn_masks(key, batch, steps, self.in_features, self.hidden_features, self.n_gates,
                     rate_x=self.rate_x, rate_h=self.rate_h, tied_gates=self.tied_gates,
                     weight_drop=self.weight_drop, zoneout_c=self.zoneout_c,
                     zoneout_h=self.zoneout_h)

  def __call__(self, inputs: Array, *, initial_carry=None, seq_lengths: Optional[Array] = None,
               valid: Optional[Array] = None, return_carry: Optional[bool] = None,
               time_major: Optional[bool] = None, deterministic: Optional[bool] = None, rngs=None):
    """Runs the layer over ``inputs`` ``[B, T, D]`` (``[T, B, D]`` when time-major).

    Args:
      inputs: ``[B, T, D]`` (``[T, B, D]`` when time-major).
      initial_carry: the state to start from (default zeros): ``(c, h)`` for the LSTM, ``h``
        for the GRU, each ``[B, H]``.
      seq_lengths: ``[B]`` ints, right padding; or ``valid``: validity mask (see module doc).
      valid: ``[B, T]`` bool (``[T, B]`` time-major), any padding side; not with
        ``seq_lengths``.
      return_carry, time_major, deterministic: override the constructor's values.
      rngs: an ``nnx.Rngs``, an ``nnx.RngStream`` or a key, instead of the stored stream.
    Returns:
      outputs ``[B, T, H]`` (``[T, B, H]`` time-major), float32; with ``return_carry``,
      ``(carry, outputs)``, carry the final state: ``(c, h)`` for the LSTM, ``h`` for the GRU,
      each ``[B, H]`` (the state after the last valid step).
    """
    time_major = self.time_major if time_major is None else time_major
    return_carry = self.return_carry if return_carry is None else return_carry
    if inputs.ndim != 3:
      raise ValueError(f"inputs must have shape {'[T, B, D]' if time_major else '[B, T, D]'}, "
                       f"got {list(inputs.shape)}")
    xs = inputs if time_major else jnp.swapaxes(inputs, 0, 1)  # [T, B, D]
    T, B, _ = xs.shape
    valid_tb = valid_steps(T, B, seq_lengths, valid, time_major)
    key = self._key(deterministic, rngs)
    masks = {} if key is None else self.draw_masks(key, B, T)
    carry, ys = self._scan(self.params(), initial_carry, xs, masks, valid_tb, B)
    ys = ys if time_major else jnp.swapaxes(ys, 0, 1)
    return (carry, ys) if return_carry else ys


def _lstm_scan(layer, params, carry, xs, masks, valid, B):
  """The LSTM layers' (NNX and Linen) scan: ``rnn.lstm`` from a zero carry by default, with
  ``masks`` from ``rnn_masks`` (empty: the dropout approximation, zoneout's expectation)."""
  if carry is None:
    z = jnp.zeros((B, layer.hidden_features), jnp.float32)
    carry = (z, z)
  zone = [masks.get(k, None if masks else (rate or None))
          for k, rate in (("zone_c", layer.zoneout_c), ("zone_h", layer.zoneout_h))]
  return rnn.lstm(params, carry, xs, masks.get("x"), masks.get("h"), valid=valid,
                  unroll=layer.unroll, compute_dtype=layer.compute_dtype,
                  hoist_input=layer.hoist_input, mask_w=masks.get("w_h"), zone_c=zone[0],
                  zone_h=zone[1])


def _gru_scan(layer, params, carry, xs, masks, valid, B):
  """The GRU layers' (NNX and Linen) scan: ``rnn.gru`` from a zero carry by default."""
  if carry is None:
    carry = jnp.zeros((B, layer.hidden_features), jnp.float32)
  return rnn.gru(params, carry, xs, masks.get("x"), masks.get("h"), valid=valid,
                 unroll=layer.unroll, compute_dtype=layer.compute_dtype, mask_w=masks.get("w_h"))


class VariationalLSTM(_VariationalRNN):
  """LSTM layer with variational dropout (Gal & Ghahramani 2016), on ``vdrnn.rnn.lstm``.

  Args:
    in_features: D; hidden_features: H.
    rate_x: drop probability of the input ``x_t`` (one mask per sequence); rate_h: of the
      recurrent state ``h_{t-1}``.
    weight_drop: DropConnect on ``W_h`` (AWD-LSTM): one mask per call, shared by the rows.
    zoneout_c, zoneout_h: zoneout (Krueger et al. 2016): probability that a cell / hidden unit
      keeps its previous value, fresh per step and row; the deterministic pass uses the
      expectation. (``rnn.lstm``'s ``mask_w``, ``zone_c``, ``zone_h``.)
    tied_gates: one mask shared by all four gates (one fused matmul per step) or, False, one
      mask per gate (the paper's Eq. 7-8, Keras's recurrent dropout).
    unroll: ``lax.scan`` unroll. compute_dtype: matmul operand dtype (e.g. ``jnp.bfloat16``;
      float32 accumulation and state).
    hoist_input: True (training): the input projection of all steps is one matmul before
      the scan; False for very large batches (see ``vdrnn.rnn.lstm``). Same values.
    time_major, return_carry, deterministic, rng_collection: as in ``nnx.RNN`` / ``nnx.Dropout``.
    kernel_init, recurrent_kernel_init, bias_init, param_dtype: as ``nnx.OptimizedLSTMCell``'s.
    rngs: ``params`` initialise the weights; the ``rng_collection`` stream (or the default
      one) is forked and stored for the masks.
  """

  n_gates = 4

  def __init__(self, in_features: int, hidden_features: int, *, hoist_input: bool = True, **kwargs):
    super().__init__(in_features, hidden_features, **kwargs)
    self.hoist_input = hoist_input

  _scan = _lstm_scan

  @classmethod
  def from_cell(cls, cell: nnx.OptimizedLSTMCell, *, rngs: Optional[nnx.Rngs] = None,
                **kwargs) -> "VariationalLSTM":
    """A layer holding copies of ``cell``'s parameters (``dense_i.kernel`` -> ``w_x``,
    ``dense_h.kernel`` -> ``w_h``, ``dense_h.bias`` -> ``b``); ``kwargs`` as the constructor's.
    ``rngs`` supplies the dropout stream (none: pass keys at call time, or use rates 0).

    Args:
      cell: an ``nnx.OptimizedLSTMCell`` with the default ``gate_fn`` (sigmoid) and
        ``activation_fn`` (tanh); ``dense_i.kernel [D, 4H]``, ``dense_h.kernel [H, 4H]``,
        ``dense_h.bias [4H]``.
      rngs: the dropout stream's source (optional).
      **kwargs: the constructor's keyword arguments (``param_dtype`` defaults to the cell's).
    Returns:
      A ``VariationalLSTM`` with ``in_features`` D, ``hidden_features`` H and the cell's
      parameters.
    """
    if not isinstance(cell, nnx.OptimizedLSTMCell):
      raise TypeError(f"from_cell takes an nnx.OptimizedLSTMCell, got {type(cell).__name__}")
    if cell.gate_fn is not jax.nn.sigmoid or cell.activation_fn is not jnp.tanh:
      raise ValueError("from_cell needs the cell's default gate_fn (sigmoid) and activation_fn "
                       "(tanh)")
    w_x, w_h, b = cell.dense_i.kernel[...], cell.dense_h.kernel[...], cell.dense_h.bias[...]
    kwargs.setdefault("param_dtype", w_x.dtype)
    return cls(cell.in_features, cell.hidden_features, kernel_init=_constant(w_x),
               recurrent_kernel_init=_constant(w_h), bias_init=_constant(b),
               rngs=rngs if rngs is not None else nnx.Rngs(params=0), **kwargs)

  def to_cell(self, **kwargs) -> nnx.OptimizedLSTMCell:
    """An ``nnx.OptimizedLSTMCell`` holding copies of this layer's parameters (no dropout:
    the cell has none); ``kwargs`` go to its constructor (e.g. ``dtype``).

    Args:
      **kwargs: further keyword arguments of ``nnx.OptimizedLSTMCell``.
    Returns:
      The cell, ``dense_i.kernel [D, 4H]`` = ``w_x``, ``dense_h.kernel [H, 4H]`` = ``w_h``,
      ``dense_h.bias [4H]`` = ``b``.
    """
    w_x, w_h, b = self.w_x[...], self.w_h[...], self.b[...]
    return nnx.OptimizedLSTMCell(self.in_features, self.hidden_features, kernel_init=_constant(w_x),
                                 recurrent_kernel_init=_constant(w_h), bias_init=_constant(b),
                                 param_dtype=w_x.dtype, rngs=nnx.Rngs(0), **kwargs)


class VariationalGRU(_VariationalRNN):
  """GRU layer with variational dropout, on ``vdrnn.rnn.gru`` (gate order z, r, n; reset
  before ``W_hn``, as Gal's Keras GRU). Arguments as ``VariationalLSTM``'s (no
  ``hoist_input``, no zoneout); the carry is ``h [B, H]``.

  Args:
    in_features, hidden_features, rate_x, rate_h, weight_drop, tied_gates, unroll,
      compute_dtype, time_major, return_carry, deterministic, rng_collection, kernel_init,
      recurrent_kernel_init, bias_init, param_dtype, rngs: as ``VariationalLSTM``'s; the
      parameters are ``w_x [D, 3H]``, ``w_h [H, 3H]``, ``b [3H]``.
    zoneout_c, zoneout_h: must be 0 (ValueError otherwise).
  """

  n_gates = 3

  _scan = _gru_scan


# ----------------------------------------------------------------------------------------
# NNX companion layers.


class WordTypeDropout(_RandomLayer):
  """Gal's embedding dropout: drops whole word types, not single tokens
  (``vdrnn.masks.word_type_mask``). Within a row every occurrence of a token id gets the
  same value, so a dropped word is gone from the whole sequence; with
  ``shared_across_batch`` one draw per word type serves the whole batch (Keras's
  ``Embedding(dropout=p)``, AWD-LSTM). ``nnx.Dropout`` has no equivalent: its masks do not
  follow token ids.

  Call: ``inputs`` ``[B, T, E]`` embeddings and ``tokens`` ``[B, T]`` ids (``[T, B, E]`` and
  ``[T, B]`` when time-major); returns ``inputs * mask[..., None]``.

  Args:
    rate: probability of dropping a word type, in [0, 1).
    shared_across_batch: one draw per word type for the whole batch instead of per row.
    time_major: inputs ``[T, B, E]`` and tokens ``[T, B]``.
    deterministic, rng_collection: as in ``nnx.Dropout``.
    rngs: the ``rng_collection`` stream (or the default one) is forked and stored for the
      masks; None: pass keys at call time.
  """

  def __init__(self, rate: float, *, shared_across_batch: bool = False, time_major: bool = False,
               deterministic: Optional[bool] = False, rng_collection: str = "dropout",
               rngs: nnx.Rngs | nnx.RngStream | None = None):
    self.rate = masks_lib.check_rate(rate, "rate")
    self.shared_across_batch, self.time_major = shared_across_batch, time_major
    self.deterministic, self.rng_collection = deterministic, rng_collection
    self._init_rngs(rngs)

  def __call__(self, inputs: Array, tokens: Array, *, deterministic: Optional[bool] = None,
               rngs=None) -> Array:
    """Drops word types of ``inputs``.

    Args:
      inputs: ``[B, T, E]`` embeddings (``[T, B, E]`` time-major).
      tokens: ``[B, T]`` integer token ids of ``inputs`` (``[T, B]`` time-major).
      deterministic: overrides the constructor's value.
      rngs: an ``nnx.Rngs``, an ``nnx.RngStream`` or a key, instead of the stored stream.
    Returns:
      ``inputs * mask[..., None]``, ``inputs``' shape and dtype (``inputs`` itself when
      deterministic or at rate 0).
    """
    key = self._key(deterministic, rngs)
    if key is None:
      return inputs
    toks = tokens.T if self.time_major else tokens
    mask = masks_lib.word_type_mask(key, toks, self.rate, dtype=inputs.dtype,
                                    shared_across_batch=self.shared_across_batch)  # [B, T]
    return inputs * (mask.T if self.time_major else mask)[..., None]


class LockedDropout(_RandomLayer):
  """Per-sequence ("locked") dropout: one mask per row, held over time; row ``b`` drawn from
  ``fold_in(key, b)`` (``vdrnn.masks.per_row``).

  ``inputs`` are ``[B, ..., F]`` (the mask ``[B, F]`` is broadcast over the middle axes,
  e.g. time in ``[B, T, F]``) or, with ``time_major``, ``[T, B, F]``. A ``[B, F]`` input
  (e.g. the last hidden state before a dense layer) gets one mask per row.

  When ``nnx.Dropout`` is enough: ``nnx.Dropout(rate, broadcast_dims=(1,))`` on
  ``[B, T, F]`` (``(0,)`` time-major) also holds one mask per sequence over time, with the
  same distribution; use it unless you need the masks to depend only on (key, row), so that
  they do not change with the batch size or the sharding and equal those of the functional
  core (``vdrnn.models`` / ``vdrnn.masks``) for the same key. It is not enough for the
  *recurrent* state: there the mask must be applied inside the scan (``VariationalLSTM``).

  Args:
    rate: drop probability in [0, 1).
    time_major: inputs ``[T, B, F]``.
    deterministic, rng_collection: as in ``nnx.Dropout``.
    rngs: the ``rng_collection`` stream (or the default one) is forked and stored for the
      masks; None: pass keys at call time.
  """

  def __init__(self, rate: float, *, time_major: bool = False,
               deterministic: Optional[bool] = False, rng_collection: str = "dropout",
               rngs: nnx.Rngs | nnx.RngStream | None = None):
    self.rate = masks_lib.check_rate(rate, "rate")
    self.time_major = time_major
    self.deterministic, self.rng_collection = deterministic, rng_collection
    self._init_rngs(rngs)

  def __call__(self, inputs: Array, *, deterministic: Optional[bool] = None, rngs=None) -> Array:
    """Multiplies ``inputs`` by one ``[B, F]`` mask per row, held over the other axes.

    Args:
      inputs: ``[B, ..., F]`` (e.g. ``[B, T, F]`` or ``[B, F]``), or ``[T, B, F]`` time-major.
      deterministic: overrides the constructor's value.
      rngs: an ``nnx.Rngs``, an ``nnx.RngStream`` or a key, instead of the stored stream.
    Returns:
      The masked ``inputs``, same shape and dtype (``inputs`` itself when deterministic or at
      rate 0).
    """
    key = self._key(deterministic, rngs)
    if key is None:
      return inputs
    if self.time_major:
      if inputs.ndim != 3:
        raise ValueError(f"time-major inputs must have shape [T, B, F], got {list(inputs.shape)}")
      B, F = inputs.shape[1], inputs.shape[2]
      return inputs * masks_lib.per_row(key, B, (F,), self.rate, inputs.dtype)
    if inputs.ndim < 2:
      raise ValueError(f"inputs must have shape [B, ..., F], got {list(inputs.shape)}")
    B, F = inputs.shape[0], inputs.shape[-1]
    mask = masks_lib.per_row(key, B, (F,), self.rate, inputs.dtype)
    return inputs * mask.reshape((B,) + (1,) * (inputs.ndim - 2) + (F,))


# ----------------------------------------------------------------------------------------
# Linen twins.


class _LinenVariationalRNN(linen.Module):
  """Shared fields and call of the Linen layers (see ``VariationalLSTM`` for their meaning).
  ``in_features`` is taken from the input; parameters ``w_x``, ``w_h``, ``b`` in ``params``."""

  hidden_features: int
  rate_x: float = 0.0
  rate_h: float = 0.0
  tied_gates: bool = False
  weight_drop: float = 0.0
  zoneout_c: float = 0.0
  zoneout_h: float = 0.0
  unroll: int = 1
  compute_dtype: Any = None
  time_major: bool = False
  return_carry: bool = False
  deterministic: Optional[bool] = None
  rng_collection: str = "dropout"
  kernel_init: Initializer = linen.initializers.lecun_normal()
  recurrent_kernel_init: Initializer = linen.initializers.orthogonal()
  bias_init: Initializer = linen.initializers.zeros_init()
  param_dtype: Any = jnp.float32

  n_gates = 0

  @linen.compact
  def __call__(self, inputs: Array, *, initial_carry=None, seq_lengths: Optional[Array] = None,
               valid: Optional[Array] = None, return_carry: Optional[bool] = None,
               deterministic: Optional[bool] = None):
    """As ``VariationalLSTM.__call__``; the dropout key is ``make_rng(rng_collection)``, taken
    once per call (not when deterministic or every rate is 0).

    Args:
      inputs: ``[B, T, D]`` (``[T, B, D]`` with ``time_major``); D sets the ``w_x [D, G*H]``.
      initial_carry: the state to start from (default zeros): ``(c, h)`` for the LSTM, ``h``
        for the GRU, each ``[B, H]``.
      seq_lengths: ``[B]`` ints, right padding; or ``valid``: ``[B, T]`` bool (``[T, B]``
        time-major), any padding side; not both.
      return_carry: overrides the field.
      deterministic: given here or as the field, exactly once (``linen.merge_param``).
    Returns:
      outputs ``[B, T, H]`` (``[T, B, H]`` time-major); with ``return_carry``,
      ``(carry, outputs)``, carry ``(c, h)`` for the LSTM, ``h`` for the GRU, each ``[B, H]``.
    """
    G, H = self.n_gates, self.hidden_features
    return_carry = self.return_carry if return_carry is None else return_carry
    masks_lib.check_rate(self.rate_x, "rate_x")
    masks_lib.check_rate(self.rate_h, "rate_h")
    masks_lib.check_rate(self.weight_drop, "weight_drop")
    zone = (masks_lib.check_zoneout(self.zoneout_c, "zoneout_c"),
            masks_lib.check_zoneout(self.zoneout_h, "zoneout_h"))
    if G != 4 and not all(masks_lib.is_zero(z) for z in zone):
      raise ValueError("zoneout is the LSTM's; the GRU takes weight_drop only")
    if inputs.ndim != 3:
      raise ValueError(f"inputs must have shape {'[T, B, D]' if self.time_major else '[B, T, D]'}, "
                       f"got {list(inputs.shape)}")
    xs = inputs if self.time_major else jnp.swapaxes(inputs, 0, 1)  # [T, B, D]
    T, B, D = xs.shape
    params = {"w_x": self.param("w_x", self.kernel_init, (D, G * H), self.param_dtype),
              "w_h": self.param("w_h", self.recurrent_kernel_init, (H, G * H), self.param_dtype),
              "b": self.param("b", self.bias_init, (G * H,), self.param_dtype)}
    valid_tb = valid_steps(T, B, seq_lengths, valid, self.time_major)
    deterministic = linen.merge_param("deterministic", self.deterministic, deterministic)
    masks = {}
    rates = (self.rate_x, self.rate_h, self.weight_drop, *zone)
    if not deterministic and not all(masks_lib.is_zero(r) for r in rates):
      masks = rnn_masks(self.make_rng(self.rng_collection), B, T, D, H, G, rate_x=self.rate_x,
                        rate_h=self.rate_h, tied_gates=self.tied_gates,
                        weight_drop=self.weight_drop, zoneout_c=zone[0], zoneout_h=zone[1])
    carry, ys = self._scan(params, initial_carry, xs, masks, valid_tb, B)
    ys = ys if self.time_major else jnp.swapaxes(ys, 0, 1)
    return (carry, ys) if return_carry else ys


class VariationalLSTMLinen(_LinenVariationalRNN):
  """Linen twin of ``VariationalLSTM`` (same fields, plus ``hoist_input``).

  Args:
    hidden_features: H (``in_features`` D is taken from the input).
    rate_x, rate_h, tied_gates, weight_drop, zoneout_c, zoneout_h, unroll, compute_dtype,
      time_major, return_carry, rng_collection, kernel_init, recurrent_kernel_init, bias_init,
      param_dtype, hoist_input: as ``VariationalLSTM``'s. Parameters ``w_x [D, 4H]``,
      ``w_h [H, 4H]``, ``b [4H]`` in ``params``.
    deterministic: default None: give it here or at call time (``linen.merge_param``).
  """

  hoist_input: bool = True
  n_gates = 4

  _scan = _lstm_scan


class VariationalGRULinen(_LinenVariationalRNN):
  """Linen twin of ``VariationalGRU``.

  Args:
    hidden_features, rate_x, rate_h, tied_gates, weight_drop, unroll, compute_dtype,
      time_major, return_carry, deterministic, rng_collection, kernel_init,
      recurrent_kernel_init, bias_init, param_dtype: as ``VariationalLSTMLinen``'s (no
      ``hoist_input``; zoneout must be 0). Parameters ``w_x [D, 3H]``, ``w_h [H, 3H]``,
      ``b [3H]`` in ``params``.
  """

  n_gates = 3

  _scan = _gru_scan
